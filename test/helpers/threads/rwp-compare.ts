// Worker entry for the RWP tests: compares pages [first, last) of a region with their expected
// bytes and posts the pages that differ. Runs off the main thread, which must not block on a
// sync RWP fault the engine (on other threads) resolves.
import { parentPort, workerData } from 'node:worker_threads';
import { memcmp } from '../../../src/kernel/memory.js';

export interface CompareJob {
  addr: number;
  expected: number;
  P: number;
  first: number;
  last: number;
}

function run(d: CompareJob): number[] {
  const bad: number[] = [];
  for (let p = d.first; p < d.last; p++) if (memcmp(d.addr + p * d.P, d.expected + p * d.P, d.P) !== 0) bad.push(p);
  return bad;
}

parentPort?.postMessage(run(workerData as CompareJob));
