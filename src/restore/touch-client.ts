// A Firecracker-style client that touches chosen pages in a chosen order, or watches its
// memory being populated without touching it — the working-set and background-population
// counterpart of fc-client.ts. This module is the library (runTouchClient); the process
// entry is src/cli/touch-client.ts (TOUCH_CLIENT_SCRIPT):
//
//   node dist/src/cli/touch-client.js --socket S --mem-file M --region-size 16M \
//        [--regions 1] [--touch '[[40,30,20],[1,2,3]]' --gap-ms 100] [--watch] [--verify-all] \
//        [--wait-stdin] [--timeout-ms 20000]
//
// 1. maps --regions anonymous regions (MADV_NOHUGEPAGE, packed back to back in the memory
//    file from --file-offset), registers them MISSING on a userfaultfd made as Firecracker
//    makes it (non-blocking, EVENT_REMOVE, not user-mode-only), connects and sends the
//    v1.12 handshake with the uffd, and keeps the socket open until it exits;
// 2. --wait-stdin: prints {"ready":true} and waits for a line on stdin;
// 3. --watch: without touching anything, polls /proc/self/pagemap (present bit) until every
//    page is present and reports the order pages appeared in (one array per poll that saw
//    new pages; page indices are global: region-major, 4 KiB);
// 4. --touch: touches the pages of each group in order (one read each, checked against the
//    memory file), sleeping --gap-ms between groups;
// 5. --verify-all: compares every page with the memory file;
// 6. prints one JSON line and exits 0 (1: a mismatch; 2: error or timeout).
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import * as C from '../kernel/constants.js';
import { bytesAt, madvise, mapAnonymous, memcmp, mmap, munmap, openFile } from '../kernel/memory.js';
import { connectUnix, sendWithFds } from '../kernel/socket.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { encodeHandshake } from './handshake.js';

/** The process entry: node TOUCH_CLIENT_SCRIPT --socket S --mem-file M ... */
export const TOUCH_CLIENT_SCRIPT = path.resolve(__dirname, '../cli/touch-client.js');

export interface TouchClientOptions {
  socket: string;
  memFile: string;
  regions: number;
  /** Bytes per region; default: the file (after fileOffset) split evenly. */
  regionSize?: number;
  fileOffset: number;
  /** JSON array of groups of global page indices to touch in order. */
  touch?: string;
  gapMs: number;
  watch: boolean;
  verifyAll: boolean;
  waitStdin: boolean;
  timeoutMs: number;
  /**
   * Touch and free as much memory as the regions take right before mapping them, so that
   * their pages come from memory the kernel has just freed (benchmarks: on a VM with free
   * page reporting, memory idle for seconds is back with the host and slow to touch again;
   * uffd-bench.c does the same unless --no-prewarm).
   */
  prewarm?: boolean;
}

export interface TouchClientResult {
  ok: boolean;
  pages: number;
  touched: number;
  verified: number;
  /** --watch: pages newly present at each poll, in order. */
  population?: number[][];
  polls?: number;
  mismatch?: { page: number; offset: number };
  ms: number;
}

/** Touches len bytes of fresh anonymous memory (one write per page) and frees them. */
function prewarm(len: number): void {
  const at = mapAnonymous(len);
  try {
    madvise(at, len, C.MADV_NOHUGEPAGE);
    const view = bytesAt(at, len);
    for (let off = 0; off < len; off += C.PAGE_SIZE) view[off] = 1;
  } finally {
    munmap(at, len);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The client's whole run in this process (see the top of this file). */
export async function runTouchClient(o: TouchClientOptions): Promise<TouchClientResult> {
  const PS = C.PAGE_SIZE;
  const fileSize = fs.statSync(o.memFile).size;
  const regionSize = o.regionSize ?? Math.floor((fileSize - o.fileOffset) / o.regions / PS) * PS;
  if (regionSize <= 0 || regionSize % PS || o.fileOffset + o.regions * regionSize > fileSize) throw new Error('the regions do not fit in the memory file');
  const fileFd = openFile(o.memFile, C.O_RDONLY);
  const fileMap = mmap(fileSize, C.PROT_READ, C.MAP_PRIVATE, fileFd, 0);
  const uffd = Userfaultfd.create({ nonBlocking: true, closeOnExec: true, userModeOnly: false, features: ['EVENT_REMOVE'] });
  if (o.prewarm) prewarm(regionSize * o.regions);
  const regions: { base: number; offset: number }[] = [];
  for (let i = 0; i < o.regions; i++) {
    const base = mapAnonymous(regionSize);
    madvise(base, regionSize, C.MADV_NOHUGEPAGE);
    uffd.register(base, regionSize, ['missing']);
    regions.push({ base, offset: o.fileOffset + i * regionSize });
  }
  const perRegion = regionSize / PS;
  const pages = perRegion * o.regions;
  /** The region of global page g (g is checked against `pages` before any use). */
  const regionOf = (g: number): { base: number; offset: number } => {
    const r = regions[Math.floor(g / perRegion)];
    if (!r) throw new Error(`page ${g} is outside the ${pages} pages of the regions`);
    return r;
  };
  const addrOf = (g: number): number => regionOf(g).base + (g % perRegion) * PS;
  const srcOf = (g: number): number => fileMap + regionOf(g).offset + (g % perRegion) * PS;
  const sock = connectUnix(o.socket);
  const t0 = performance.now();
  sendWithFds(sock, Buffer.from(encodeHandshake(regions.map((r) => ({ baseHostVirtAddr: r.base, size: regionSize, offset: r.offset, pageSize: PS }))) ), [uffd.fd]);
  const result: TouchClientResult = { ok: true, pages, touched: 0, verified: 0, ms: 0 };
  const check = (g: number): boolean => {
    if (memcmp(addrOf(g), srcOf(g), PS) === 0) return true;
    const got = bytesAt(addrOf(g), PS);
    const want = bytesAt(srcOf(g), PS);
    let i = 0;
    while (got[i] === want[i]) i++;
    result.ok = false;
    result.mismatch = { page: g, offset: i };
    return false;
  };

  if (o.watch) {
    // Poll the present bit of every page (8 bytes each in pagemap) until all are present.
    const pm = fs.openSync('/proc/self/pagemap', 'r');
    const buf = Buffer.alloc(perRegion * 8);
    const seen = new Uint8Array(pages);
    let present = 0;
    let polls = 0;
    result.population = [];
    while (present < pages) {
      polls++;
      const fresh: number[] = [];
      for (const [r, region] of regions.entries()) {
        fs.readSync(pm, buf, 0, buf.length, (region.base / PS) * 8);
        for (let p = 0; p < perRegion; p++) {
          const g = r * perRegion + p;
          if (!seen[g] && ((buf[p * 8 + 7] ?? 0) & 0x80) !== 0) {
            seen[g] = 1;
            fresh.push(g);
          }
        }
      }
      if (fresh.length) {
        present += fresh.length;
        result.population.push(fresh);
      } else if (polls % 64 === 0) {
        await sleep(0); // let the watchdog timer run
      }
      if (performance.now() - t0 > o.timeoutMs) throw new Error(`timed out watching: ${present} of ${pages} pages present`);
    }
    fs.closeSync(pm);
    result.polls = polls;
  }
  if (o.waitStdin) {
    process.stdout.write(JSON.stringify({ ready: true }) + '\n');
    const rl = readline.createInterface({ input: process.stdin });
    await new Promise<void>((resolve) => { rl.once('line', () => resolve()); rl.once('close', () => resolve()); });
    rl.close();
  }
  if (o.touch) {
    const groups = JSON.parse(o.touch) as unknown;
    if (!Array.isArray(groups) || !groups.every((x) => Array.isArray(x))) throw new Error(`--touch wants a JSON array of arrays of page indices, got ${o.touch}`);
    for (const [k, group] of (groups as number[][]).entries()) {
      if (!result.ok) break;
      if (k > 0) await sleep(o.gapMs);
      for (const g of group) {
        if (!Number.isInteger(g) || g < 0 || g >= pages) throw new Error(`--touch: page ${g} is not between 0 and ${pages - 1}`);
        if (!check(g)) break;
        result.touched++;
      }
    }
  }
  if (o.verifyAll && result.ok) {
    for (let g = 0; g < pages; g++) {
      if (!check(g)) break;
      result.verified++;
    }
  }
  result.ms = Math.round((performance.now() - t0) * 1000) / 1000;
  return result;
}
