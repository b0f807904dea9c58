// The `wss` demo guest: worker threads that write a known 10% of a region and read another
// known 10%, over and over, while the rest stays cold (written once before tracking starts).
// Knowing the sets exactly lets the demo and the tests check what the tracker reports.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Range } from './tracker.js';

export interface WorkloadOptions {
  addr: number;
  size: number;
  pageSize: number;
  /** Fraction of the region written every pass, and where it starts (fractions of the size). */
  writeFrac?: number;
  writeAt?: number;
  /** Fraction read every pass, and where it starts. */
  readFrac?: number;
  readAt?: number;
  threads?: number;
  /** Stop each thread after this many passes (0: until stop()). */
  passes?: number;
}

export interface WorkloadSets {
  write: Range;
  read: Range;
  writePages: number;
  readPages: number;
}

/** The write and read sets of a workload (page-aligned, disjoint when the fractions allow). */
export function workloadSets(o: WorkloadOptions): WorkloadSets {
  const P = o.pageSize;
  const pages = o.size / P;
  const at = (f: number) => o.addr + Math.floor(pages * f) * P;
  const wf = o.writeFrac ?? 0.1;
  const rf = o.readFrac ?? 0.1;
  const write = { start: at(o.writeAt ?? 0.2), end: 0 };
  write.end = Math.min(o.addr + o.size, write.start + Math.max(1, Math.round(pages * wf)) * P);
  const read = { start: at(o.readAt ?? 0.6), end: 0 };
  read.end = Math.min(o.addr + o.size, read.start + Math.max(1, Math.round(pages * rf)) * P);
  return { write, read, writePages: (write.end - write.start) / P, readPages: (read.end - read.start) / P };
}

/** Splits [start, end) into n page-aligned slices (some may be empty). */
function split(r: Range, n: number, P: number): [number, number][] {
  const pages = (r.end - r.start) / P;
  const out: [number, number][] = [];
  for (let i = 0; i < n; i++) {
    const a = r.start + Math.floor((pages * i) / n) * P;
    const b = r.start + Math.floor((pages * (i + 1)) / n) * P;
    out.push([a, b]);
  }
  return out;
}

export class Workload {
  readonly sets: WorkloadSets;
  readonly threads: number;
  /** Per thread: the [start, end) it writes and the one it reads. */
  readonly slices: { write: [number, number]; read: [number, number] }[] = [];
  private readonly control: Int32Array;
  private readonly stats: Float64Array;
  private readonly workers: Worker[] = [];
  private readonly done: Promise<unknown>[] = [];

  private constructor(sets: WorkloadSets, threads: number, control: Int32Array, stats: Float64Array) {
    this.sets = sets;
    this.threads = threads;
    this.control = control;
    this.stats = stats;
  }

  static workerPath(): string {
    return path.resolve(__dirname, 'threads/guest.js');
  }

  /** Starts the guest threads (each writes its slice of the write set and reads its slice of the read set). */
  static async start(o: WorkloadOptions): Promise<Workload> {
    const sets = workloadSets(o);
    const threads = Math.max(1, o.threads ?? 2);
    const sab = new SharedArrayBuffer(4);
    const stats = new SharedArrayBuffer(8 * 2 * threads);
    const wl = new Workload(sets, threads, new Int32Array(sab), new Float64Array(stats));
    const ws = split(sets.write, threads, o.pageSize);
    const rs = split(sets.read, threads, o.pageSize);
    const ready: Promise<void>[] = [];
    for (let id = 0; id < threads; id++) {
      const write = ws[id];
      const read = rs[id];
      if (!write || !read) throw new Error(`workload: no slice for thread ${id} of ${threads}`);
      wl.slices.push({ write, read });
      const w = new Worker(Workload.workerPath(), {
        workerData: { writes: [write], reads: [read], pageSize: o.pageSize, control: sab, stats, id, passes: o.passes ?? 0 },
      });
      wl.workers.push(w);
      ready.push(new Promise((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      }));
      wl.done.push(new Promise((resolve) => w.once('exit', resolve)));
    }
    await Promise.all(ready);
    return wl;
  }

  /**
   * The byte a thread's last pass left at offset k*8 (k < 64) of each page of its write
   * slice: pass p writes (p & 0xff) at offset (p & 63) * 8. undefined: never written.
   */
  static expectedByte(passes: number, k: number): number | undefined {
    // the last pass p <= passes with (p & 63) === k, p >= 1
    let p = passes - ((passes - k) & 63);
    if (p > passes) p -= 64;
    return p >= 1 ? p & 0xff : undefined;
  }

  /** Passes completed and pages touched so far, summed over threads, and passes per thread. */
  progress(): { passes: number; touches: number; perThread: number[] } {
    let passes = 0;
    let touches = 0;
    const perThread: number[] = [];
    for (let i = 0; i < this.threads; i++) {
      const p = this.stats[2 * i] ?? 0;
      passes += p;
      touches += this.stats[2 * i + 1] ?? 0;
      perThread.push(p);
    }
    return { passes, touches, perThread };
  }

  /** Resolves when every thread finished its passes (with `passes` set). */
  async finished(): Promise<void> {
    await Promise.all(this.done);
  }

  async stop(): Promise<void> {
    Atomics.store(this.control, 0, 1);
    await Promise.all(this.done);
  }
}
