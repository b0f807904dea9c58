// Worker thread for test/hot-path.test.ts: in each round it reads two bytes of every page of
// a registered region (each first touch is a userfaultfd fault the test's main thread
// serves), checks them against the source's pattern, and reports the mismatches.
//   control: Int32Array [0] round to run (the main thread raises it; -1: end), [1] rounds
//            done, [2] mismatches so far
import { workerData } from 'node:worker_threads';
import { viewOf } from '../../../src/kernel/libc.js';

const { addr, pages, control } = workerData as { addr: number; pages: number; control: SharedArrayBuffer };
const words = new Int32Array(control);
const view = new Uint8Array(viewOf(addr, pages * 4096));

/** The byte the source holds at the start of page p (the end holds its complement; hot-path.test.ts writes them). */
function patternByte(p: number): number {
  return (p * 7 + 1) & 0xff;
}

for (let round = 1; ; round++) {
  let asked = Atomics.load(words, 0);
  while (asked >= 0 && asked < round) {
    Atomics.wait(words, 0, asked, 1000);
    asked = Atomics.load(words, 0);
  }
  if (asked < 0) break; // told to end
  let bad = 0;
  for (let p = 0; p < pages; p++) {
    if (view[p * 4096] !== patternByte(p) || view[p * 4096 + 4095] !== (~patternByte(p) & 0xff)) bad++;
  }
  Atomics.add(words, 2, bad);
  Atomics.store(words, 1, round);
}
