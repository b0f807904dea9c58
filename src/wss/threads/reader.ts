// Worker entry that reads pages of a tracked region back (src/wss/read-back.ts): every page
// of its ranges is compared with the byte it should hold, so each first touch of an evicted
// page is a fault the engine serves while this thread waits. Runs off the main thread, which
// must stay free (the engine's events and statistics live there).
import { parentPort, workerData } from 'node:worker_threads';
import { bytesAt } from '../../kernel/memory.js';

export interface ReaderData {
  /** [start, end) address ranges, page-aligned. */
  ranges: [number, number][];
  pageSize: number;
  /** The byte every checked position should hold. */
  byte: number;
  /** 'page': every byte of each page; 'first': the first byte of each page (one touch, cheapest). */
  check: 'page' | 'first';
}

export interface ReaderResult { pages: number; bad: number }

function run(d: ReaderData): ReaderResult {
  const pattern = new Uint8Array(d.pageSize).fill(d.byte);
  let pages = 0;
  let bad = 0;
  for (const [s, e] of d.ranges) {
    const v = bytesAt(s, e - s);
    const b = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    for (let o = 0; o < b.length; o += d.pageSize) {
      const ok = d.check === 'first' ? b[o] === d.byte : b.subarray(o, o + d.pageSize).equals(pattern);
      if (!ok) bad++;
      pages++;
    }
  }
  return { pages, bad };
}

parentPort?.postMessage(run(workerData as ReaderData));
