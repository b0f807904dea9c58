// Reading pages of a tracked region back from worker threads (threads/reader.ts), checking
// their bytes: each first touch of an evicted page is a fault the engine serves. Used by
// `uffd-engine wss --evict` and bench/wss-bench.ts; the main thread stays free meanwhile.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ReaderData, ReaderResult } from './threads/reader.js';
import type { Range } from './tracker.js';

export interface ReadBackResult { pages: number; bad: number; ms: number }

/** Path of the compiled reader worker. */
export function readerPath(): string {
  return path.resolve(__dirname, 'threads/reader.js');
}

/**
 * Reads `ranges` from `threads` worker threads, the pages split evenly in address order, and
 * counts the pages that do not hold `byte` (every byte of the page, or the first with 'first').
 */
export async function readBack(ranges: Range[], opts: { threads: number; pageSize: number; byte: number; check?: 'page' | 'first' }): Promise<ReadBackResult> {
  const { threads, pageSize } = opts;
  if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`readBack needs at least one thread (got ${threads})`);
  const total = ranges.reduce((n, r) => n + (r.end - r.start) / pageSize, 0);
  const per = Math.ceil(total / threads);
  const jobs: [number, number][][] = Array.from({ length: threads }, () => []);
  let t = 0;
  let left = per;
  for (const r of ranges) {
    let s = r.start;
    while (s < r.end) {
      const n = Math.min(left, (r.end - s) / pageSize);
      const job = jobs[t];
      if (n > 0 && job) job.push([s, s + n * pageSize]);
      s += n * pageSize;
      left -= n;
      if (left === 0 && t < threads - 1) { t++; left = per; }
    }
  }
  const t0 = performance.now();
  const results = await Promise.all(jobs.map((job) => new Promise<ReaderResult>((resolve, reject) => {
    const workerData: ReaderData = { ranges: job, pageSize, byte: opts.byte, check: opts.check ?? 'page' };
    const w = new Worker(readerPath(), { workerData });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`wss reader thread exited with code ${code} before it reported`)));
  })));
  return { pages: results.reduce((n, r) => n + r.pages, 0), bad: results.reduce((n, r) => n + r.bad, 0), ms: performance.now() - t0 };
}
