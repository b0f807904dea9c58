// Worker entry for the wss tests: reads one byte at each address in order (writing `write` at
// each first, when given) and posts the bytes back. Runs off the main thread, so a touch that
// faults waits here while the engine serves it.
import { parentPort, workerData } from 'node:worker_threads';
import { bytesAt } from '../../../src/kernel/memory.js';

export interface BytesJob {
  addrs: number[];
  write?: number;
}

function run(job: BytesJob): number[] {
  return job.addrs.map((a) => {
    const b = bytesAt(a, 1);
    if (job.write !== undefined) b[0] = job.write;
    return b[0] ?? -1;
  });
}

parentPort?.postMessage(run(workerData as BytesJob));
