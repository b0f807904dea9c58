// Runs faulting threads (threads/toucher.ts) over a region and gathers their results.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { TouchJob, TouchResult } from './threads/toucher.js';

export type { TouchJob, TouchResult };
const TOUCHER = path.resolve(__dirname, 'threads/toucher.js');

/**
 * Starts one thread per job and releases them together once every one has loaded; resolves
 * with their results. timeoutMs counts from the release (loading under a slow emulator may
 * take seconds per thread); a thread is terminated only after it has loaded.
 */
export async function runTouchers(jobs: TouchJob[], timeoutMs = 120_000): Promise<TouchResult[]> {
  const go = new SharedArrayBuffer(4);
  const results: Promise<TouchResult>[] = [];
  const loaded: Promise<void>[] = [];
  const workers: Worker[] = [];
  for (const job of jobs) {
    const w = new Worker(TOUCHER, { workerData: { toucher: true, job: { ...job, go } } });
    workers.push(w);
    let onLoaded = (): void => undefined;
    loaded.push(new Promise<void>((resolve) => { onLoaded = resolve; }));
    results.push(new Promise((resolve, reject) => {
      w.on('message', (m: TouchResult | { loaded: true }) => {
        if ('loaded' in m) onLoaded();
        else resolve(m);
      });
      w.once('error', (e) => { onLoaded(); reject(e); });
      w.once('exit', (code) => { onLoaded(); reject(new Error(`faulting thread exited with code ${code} before reporting`)); });
    }));
  }
  await Promise.all(loaded); // a thread that fails to load counts as loaded (its result rejects)
  Atomics.store(new Int32Array(go), 0, 1);
  Atomics.notify(new Int32Array(go), 0);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`faulting threads did not finish within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([Promise.all(results), timeout]);
  } finally {
    clearTimeout(timer);
    workers.forEach((w, i) => { void loaded[i]?.then(() => w.terminate()); });
  }
}

/** Splits page indices 0..pages-1 among `threads` by an access pattern. */
export function assignPages(pages: number, threads: number, pattern: 'sequential' | 'random' | 'strided' | 'interleaved',
  seed = 1, stride = 16): Float64Array[] {
  const order = new Float64Array(pages);
  for (let i = 0; i < pages; i++) order[i] = i;
  if (pattern === 'random') {
    let s = seed >>> 0 || 1;
    for (let i = pages - 1; i > 0; i--) {
      s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
      const j = s % (i + 1);
      const t = order[i] ?? i; order[i] = order[j] ?? j; order[j] = t;
    }
  } else if (pattern === 'strided') {
    let k = 0;
    for (let r = 0; r < stride; r++) for (let i = r; i < pages; i += stride) order[k++] = i;
  }
  const out: Float64Array[] = [];
  if (pattern === 'interleaved') {
    // Thread t touches pages t, t+threads, ...: neighbours fault from different threads.
    for (let t = 0; t < threads; t++) {
      const mine: number[] = [];
      for (let i = t; i < pages; i += threads) mine.push(i);
      out.push(Float64Array.from(mine));
    }
    return out;
  }
  const per = Math.ceil(pages / threads);
  for (let t = 0; t < threads; t++) out.push(order.slice(t * per, Math.min(pages, (t + 1) * per)));
  return out;
}
