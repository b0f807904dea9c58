// Worker entry of the `wss` demo guest: touches pages of a tracked region in a loop, one
// byte per page: a write set (a store per page) and a read set (a load per page), until told
// to stop. Runs on its own thread so that its faults are served by the handler thread.
import { workerData, parentPort } from 'node:worker_threads';
import { bytesAt } from '../../kernel/memory.js';

interface GuestData {
  /** [start, end) address ranges. */
  writes: [number, number][];
  reads: [number, number][];
  pageSize: number;
  /** Int32 control: [0] stop flag. */
  control: SharedArrayBuffer;
  /** Float64 per thread: [2*id] passes done, [2*id + 1] pages touched (one writer each). */
  stats: SharedArrayBuffer;
  id: number;
  /** Stop after this many passes (0: until stopped). */
  passes: number;
}

function run(d: GuestData): void {
  const ctl = new Int32Array(d.control);
  const stats = new Float64Array(d.stats);
  const P = d.pageSize;
  const views = (rs: [number, number][]) => rs.map(([s, e]) => bytesAt(s, e - s));
  const w = views(d.writes);
  const r = views(d.reads);
  parentPort?.postMessage('ready');
  let sum = 0;
  for (let pass = 1; Atomics.load(ctl, 0) === 0; pass++) {
    const v = pass & 0xff;
    let touched = 0;
    for (const a of w) {
      for (let o = 0; o < a.length; o += P) {
        a[o + (pass & 63) * 8] = v;
        touched++;
      }
    }
    for (const a of r) {
      for (let o = 0; o < a.length; o += P) {
        sum += a[o + (pass & 63) * 8] ?? 0;
        touched++;
      }
    }
    stats[2 * d.id] = pass;
    stats[2 * d.id + 1] = (stats[2 * d.id + 1] ?? 0) + touched;
    if (d.passes && pass >= d.passes) break;
  }
  parentPort?.postMessage({ done: true, sum });
}

run(workerData as GuestData);
