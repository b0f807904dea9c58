// A faulting thread for tests, the demo and the benchmark: touches pages of a region
// (each touch may fault), measures each touch, then verifies every byte of every page
// it touched against the expected source (or zeros).
import { parentPort, workerData } from 'node:worker_threads';
import { bytesAt, memcmp } from '../../kernel/memory.js';
import { HIST_BUCKETS } from '../../engine/shared.js';

export interface TouchJob {
  addr: number;
  pageSize: number;
  /** Page indices to touch, in order. */
  pages: number[] | Float64Array;
  /** Address of the expected bytes of page 0 (0: expect zeros). */
  expectAddr: number;
  write: boolean;
  /** Start together: wait until this Int32Array[0] becomes 1. */
  go?: SharedArrayBuffer;
  /** Progress counter (Int32Array[0] += 1 per page), optional. */
  progress?: SharedArrayBuffer;
  verify?: boolean;
}

export interface TouchResult {
  touched: number;
  mismatches: number;
  firstMismatch: number; // page index, or -1
  histogram: number[]; // log2 µs buckets of touch latency
  latencies: number[]; // sample of touch latencies, µs (up to 20000)
  elapsedMs: number;
}

export function touch(job: TouchJob): TouchResult {
  const { addr, pageSize, pages } = job;
  const n = pages.length;
  const hist = new Array<number>(HIST_BUCKETS).fill(0);
  const sampleEvery = Math.max(1, Math.floor(n / 20000));
  const latencies: number[] = [];
  const progress = job.progress ? new Int32Array(job.progress) : null;
  if (job.go) {
    const go = new Int32Array(job.go);
    while (Atomics.load(go, 0) === 0) Atomics.wait(go, 0, 0, 50);
  }
  const t0 = performance.now();
  // One view per page is an allocation, but on the faulting side, outside the engine.
  let lo = Infinity;
  let hi = -1;
  for (const p of pages) { if (p < lo) lo = p; if (p > hi) hi = p; }
  const span = n ? bytesAt(addr + lo * pageSize, (hi - lo + 1) * pageSize) : new Uint8Array(0);
  for (let i = 0; i < n; i++) {
    const off = ((pages[i] ?? lo) - lo) * pageSize;
    const t = performance.now();
    if (job.write) span[off + 1] = span[off + 1] ?? 0; // a write fault, bytes unchanged
    else if (span[off] === 0x100) throw new Error('unreachable'); // a read fault
    const us = (performance.now() - t) * 1000;
    let b = 0;
    for (let v = us; v >= 2 && b < HIST_BUCKETS - 1; v /= 2) b++;
    hist[b] = (hist[b] ?? 0) + 1;
    if (i % sampleEvery === 0) latencies.push(us);
    if (progress && (i & 63) === 63) Atomics.add(progress, 0, 64);
  }
  if (progress) Atomics.add(progress, 0, n & 63);
  const elapsedMs = performance.now() - t0;
  let mismatches = 0;
  let firstMismatch = -1;
  if (job.verify !== false) {
    const zero = new Uint8Array(pageSize);
    for (const p of pages) {
      const pageAddr = addr + p * pageSize;
      let bad: boolean;
      if (job.expectAddr) bad = memcmp(pageAddr, job.expectAddr + p * pageSize, pageSize) !== 0;
      else bad = Buffer.compare(span.subarray((p - lo) * pageSize, (p - lo + 1) * pageSize), zero) !== 0;
      if (bad) {
        mismatches++;
        if (firstMismatch < 0) firstMismatch = p;
      }
    }
  }
  return { touched: n, mismatches, firstMismatch, histogram: hist, latencies, elapsedMs };
}

if (parentPort && workerData && (workerData as { toucher?: boolean }).toucher) {
  // Loaded (the FFI library with it): from here on the thread may be terminated safely. A thread
  // terminated while the FFI library (src/kernel) initialises its native module aborts the whole process.
  parentPort.postMessage({ loaded: true });
  parentPort.postMessage(touch((workerData as { job: TouchJob }).job));
}
