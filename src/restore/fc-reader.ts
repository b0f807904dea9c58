// One reader thread of fc-client: touches its share of the pages (page-granular stripes
// across the threads; the first access to each page faults and the handler serves it) and
// compares each page with the memory file, or with zeros for a removed range. Loaded by
// runReaders() in fc-client.ts as a worker; it posts one ReaderResult and ends.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as C from '../kernel/constants.js';
import { bytesAt, mapAnonymous, memcmp } from '../kernel/memory.js';

export interface Mismatch {
  region: number;
  /** Byte offset inside the region. */
  regionOffset: number;
  fileOffset: number;
  expected: number;
  got: number;
  expectation: 'file' | 'zero';
}

export interface ReadTask {
  region: number;
  addr: number;
  fileAddr: number;
  /** Offset of addr inside the region. */
  regionOffset: number;
  fileOffset: number;
  len: number;
}

export interface ReaderData {
  role: 'fc-client-reader';
  tasks: ReadTask[];
  pageSize: number;
  index: number;
  threads: number;
  stripePages: number;
  expectation: 'file' | 'zero';
}

export interface ReaderResult { pages: number; mismatch?: Mismatch }

/** Checks this reader's share of the pages; stops at the first page that differs. */
export function readPages(d: ReaderData): ReaderResult {
  const ps = d.pageSize;
  // An untouched private anonymous mapping reads as zeros (and is never freed under us).
  const zero = d.expectation === 'zero' ? mapAnonymous(ps, 0, C.PROT_READ) : 0;
  let global = 0;
  let pages = 0;
  for (const t of d.tasks) {
    const n = t.len / ps;
    for (let p = 0; p < n; p++, global++) {
      if (Math.floor(global / d.stripePages) % d.threads !== d.index) continue;
      const addr = t.addr + p * ps;
      const ref = d.expectation === 'zero' ? zero : t.fileAddr + p * ps;
      // The first access to the page faults; the handler serves it; then compare.
      if (memcmp(addr, ref, ps) !== 0) {
        const got = bytesAt(addr, ps);
        const want = bytesAt(ref, ps);
        let i = 0;
        while (i < ps && got[i] === want[i]) i++;
        return {
          pages,
          mismatch: {
            region: t.region, regionOffset: t.regionOffset + p * ps + i, fileOffset: t.fileOffset + p * ps + i,
            expected: want[i] ?? 0, got: got[i] ?? 0, expectation: d.expectation,
          },
        };
      }
      pages++;
    }
  }
  return { pages };
}

if (!isMainThread && parentPort && (workerData as ReaderData | undefined)?.role === 'fc-client-reader') {
  parentPort.postMessage(readPages(workerData as ReaderData));
}
