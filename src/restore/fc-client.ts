// A test client that restores "guest memory" the way Firecracker does, so a handler can
// be tested end to end without Firecracker. This module is the library (runFcClient, and
// spawnFcClient to run it as its own process); the process entry is src/cli/fc-client.ts:
//
//   node dist/src/cli/fc-client.js --socket /run/h.sock --mem-file snap.mem \
//        [--regions 2] [--region-size 64M] [--page-size-field v1.12] [--hugetlb] \
//        [--threads 4] [--remove 0:1M:256K] [--timeout-ms 30000]
//
// 1. creates a userfaultfd (O_NONBLOCK, close-on-exec, EVENT_REMOVE, not user-mode-only),
// 2. maps anonymous memory for each region (or 2 MiB hugetlb) and registers it MISSING,
// 3. connects to the handler's socket and sends, in one sendmsg, the JSON region array
//    plus the uffd as SCM_RIGHTS — the payload fields chosen by --page-size-field
//    (v1.1: three fields; v1.7: + page_size_kib; v1.12: page_size and page_size_kib;
//    page_size_only) — and keeps the socket open until it exits, as Firecracker does,
// 4. reads its memory page by page from --threads worker threads (fc-reader.ts) and checks
//    every byte against the memory file; optionally madvise(DONTNEED)s a range during the
//    restore (a balloon) — the handler gets UFFD_EVENT_REMOVE — and then checks that range
//    reads zeros,
// 5. prints one JSON line and exits 0, or prints the first mismatch and exits 1
//    (2: error or timeout).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import * as C from '../kernel/constants.js';
import { exitImmediately, madvise, mapAnonymous, mmap, openFile } from '../kernel/memory.js';
import { PAGE_IS_PRESENT, PAGE_IS_SWAPPED } from '../kernel/constants.js';
import { Scanner } from '../kernel/pagemap.js';
import { connectUnix, recvWithFds, sendWithFds, watchFd } from '../kernel/socket.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { encodeHandshake, HandshakeVariant } from './handshake.js';
import { parseSize } from '../sizes.js';
import type { Mismatch, ReadTask, ReaderData, ReaderResult } from './fc-reader.js';

export type { Mismatch } from './fc-reader.js';

/** The process entry that spawnFcClient runs. */
export const FC_CLIENT_SCRIPT = path.resolve(__dirname, '../cli/fc-client.js');
const READER = path.resolve(__dirname, 'fc-reader.js');

export type PageSizeField = HandshakeVariant | 'page_size_only';

export interface FcClientOptions {
  socket: string;
  memFile: string;
  /** Number of regions (packed back to back in the file from fileOffset). */
  regions?: number;
  /** Bytes per region; default: the file (after fileOffset) split evenly, rounded down to the page size. */
  regionSize?: number;
  fileOffset?: number;
  pageSizeField?: PageSizeField;
  /** Back the regions with 2 MiB hugetlb pages (page size 2 MiB). */
  hugetlb?: boolean;
  /** Reader worker threads (at least 1). */
  threads?: number;
  /** "region:offset:length" to madvise(DONTNEED) during the restore; it must then read zeros. */
  remove?: string;
  timeoutMs?: number;
  /** Pages each reader takes in turn (interleaves the threads). */
  stripePages?: number;
  /**
   * 'fail': when the handler's end of the socket closes while pages of the regions are
   * still not present, exit 3 at once with a message, instead of waiting (no handler is
   * left to serve them) — what a VMM can do to fail loudly when its page-fault handler is
   * gone. Default 'ignore' (Firecracker does not watch the socket).
   */
  onHandlerHangup?: 'ignore' | 'fail';
  /**
   * With remove: before the madvise, create FILE.ready and wait until FILE exists (a test
   * stops the handler in between, so the REMOVE is still unread when it dies).
   */
  removeGate?: string;
  /**
   * After the handshake: create FILE.ready and wait until FILE exists before touching
   * anything (a test stops the handler in between, with every page still missing).
   */
  startGate?: string;
}

export interface FcClientResult {
  ok: boolean;
  regions: number;
  pageSize: number;
  pagesChecked: number;
  bytesChecked: number;
  removed?: { region: number; offset: number; length: number };
  ms: number;
  mismatch?: Mismatch;
}

function runReaders(tasks: ReadTask[], pageSize: number, threads: number, stripePages: number,
  expectation: 'file' | 'zero'): Promise<ReaderResult> {
  const jobs = Array.from({ length: threads }, (_, index) => new Promise<ReaderResult>((resolve, reject) => {
    const data: ReaderData = { role: 'fc-client-reader', tasks, pageSize, index, threads, stripePages, expectation };
    const w = new Worker(READER, { workerData: data });
    w.once('message', (r: ReaderResult) => resolve(r));
    w.once('error', reject);
    w.once('exit', (code) => { if (code !== 0) reject(new Error(`reader ${index} exited with ${code}`)); });
  }));
  return Promise.all(jobs).then((rs) => ({
    pages: rs.reduce((s, r) => s + r.pages, 0),
    mismatch: rs.find((r) => r.mismatch)?.mismatch,
  }));
}

/**
 * Exits 3 when the handler hangs up while pages are still missing (the removed range does
 * not count: it is empty on purpose). A hang-up after every page is present is a handler
 * that finished and detached.
 */
function watchHandler(sock: number, regions: { base: number; size: number }[], removed?: { base: number; len: number }): void {
  const stop = watchFd(sock, () => {
    let eof = false;
    try {
      for (;;) {
        const m = recvWithFds(sock, 4096, 4);
        if (m.eof) { eof = true; break; }
        if (m.wouldBlock) break;
      }
    } catch {
      eof = true;
    }
    if (!eof) return;
    stop();
    const scanner = new Scanner();
    let present = 0;
    let total = 0;
    for (const r of regions) {
      total += r.size;
      scanner.scan(r.base, r.base + r.size, { categoryAnyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED }, (s, e) => {
        const cut = removed ? Math.max(0, Math.min(e, removed.base + removed.len) - Math.max(s, removed.base)) : 0;
        present += e - s - cut;
      });
    }
    scanner.close();
    const missing = (total - (removed?.len ?? 0) - present) / C.PAGE_SIZE;
    if (missing > 0) {
      fs.writeSync(2, `fc-client: the page-fault handler hung up with ${missing} page(s) never served; failing now instead of waiting forever\n`);
      // Not process.exit(): it would wait for reader threads that wait for the pages.
      exitImmediately(3);
    }
  });
}

function parseRemove(spec: string): { region: number; offset: number; length: number } {
  const [region, offset, length, ...rest] = spec.split(':');
  if (region === undefined || offset === undefined || length === undefined || rest.length) {
    throw new Error(`--remove wants region:offset:length, got "${spec}"`);
  }
  return { region: Number(region), offset: parseSize(offset), length: parseSize(length) };
}

/** The restore itself (runs in the client process). */
export async function runFcClient(o: FcClientOptions): Promise<FcClientResult> {
  const pageSize = o.hugetlb ? C.HUGE_PAGE_2M : C.PAGE_SIZE;
  const fileSize = fs.statSync(o.memFile).size;
  const fileOffset = o.fileOffset ?? 0;
  const count = o.regions ?? 1;
  const regionSize = o.regionSize ?? Math.floor((fileSize - fileOffset) / count / pageSize) * pageSize;
  const threads = Math.max(1, o.threads ?? 1);
  const stripePages = o.stripePages ?? (o.hugetlb ? 1 : 8);
  if (!(count >= 1) || !(regionSize > 0)) throw new Error(`no room for ${count} region(s) in a ${fileSize}-byte memory file`);
  if (regionSize % pageSize) throw new Error(`region size ${regionSize} is not a multiple of the page size ${pageSize}`);
  if (fileOffset + count * regionSize > fileSize) throw new Error('the regions extend past the end of the memory file');

  // The memory file as the reference the pages are checked against.
  const fileFd = openFile(o.memFile, C.O_RDONLY);
  const fileMap = mmap(fileSize, C.PROT_READ, C.MAP_PRIVATE, fileFd, 0);

  const uffd = Userfaultfd.create({ nonBlocking: true, closeOnExec: true, userModeOnly: false, features: ['EVENT_REMOVE'] });
  const regions: { base: number; size: number; offset: number }[] = [];
  for (let i = 0; i < count; i++) {
    const base = mapAnonymous(regionSize, o.hugetlb ? C.MAP_HUGETLB | C.MAP_HUGE_2MB | C.MAP_NORESERVE : 0);
    // THP would make one fault fill 2 MiB of a 4 KiB-page region; Firecracker's UFFD path has none.
    if (!o.hugetlb) madvise(base, regionSize, C.MADV_NOHUGEPAGE);
    uffd.register(base, regionSize, ['missing'], pageSize);
    regions.push({ base, size: regionSize, offset: fileOffset + i * regionSize });
  }

  const t0 = performance.now();
  const sock = connectUnix(o.socket);
  const payload = encodeHandshake(regions.map((r) => ({ baseHostVirtAddr: r.base, size: r.size, offset: r.offset, pageSize })),
    { variant: o.pageSizeField ?? 'v1.12' });
  sendWithFds(sock, Buffer.from(payload), [uffd.fd]);
  // Like Firecracker, keep our uffd and the socket open until we exit: the handler takes
  // the hang-up as the end of the session.

  const removed = o.remove ? parseRemove(o.remove) : undefined;
  const removedRegion = removed && regions[removed.region];
  if (removed && (!removedRegion || removed.offset % pageSize || removed.length % pageSize || removed.length <= 0 ||
    removed.offset + removed.length > removedRegion.size)) {
    throw new Error(`--remove ${o.remove}: not a page-aligned range inside a region`);
  }
  if (o.onHandlerHangup === 'fail') {
    watchHandler(sock, regions, removed && removedRegion && { base: removedRegion.base + removed.offset, len: removed.length });
  }
  if (o.startGate) await waitAtGate(o.startGate);
  const task = (r: { base: number; offset: number }, i: number, from: number, len: number): ReadTask => ({
    region: i, addr: r.base + from, fileAddr: fileMap + r.offset + from,
    regionOffset: from, fileOffset: r.offset + from, len,
  });
  const all: ReadTask[] = [];
  let removeTask: ReadTask | undefined;
  regions.forEach((r, i) => {
    if (removed && removed.region === i) {
      if (removed.offset > 0) all.push(task(r, i, 0, removed.offset));
      removeTask = task(r, i, removed.offset, removed.length);
      const end = removed.offset + removed.length;
      if (end < r.size) all.push(task(r, i, end, r.size - end));
    } else all.push(task(r, i, 0, r.size));
  });

  let pages = 0;
  let mismatch: Mismatch | undefined;
  if (removeTask) {
    // Phase 1: fault the range in from the file and check it.
    const r1 = await runReaders([removeTask], pageSize, threads, stripePages, 'file');
    pages += r1.pages;
    mismatch = r1.mismatch;
  }
  if (!mismatch) {
    // Phase 2: the rest of memory, while (if asked) the balloon range is dropped.
    const readers = all.length ? runReaders(all, pageSize, threads, stripePages, 'file') : Promise.resolve({ pages: 0 } as ReaderResult);
    if (removeTask && o.removeGate) await waitAtGate(o.removeGate);
    if (removeTask) {
      // With EVENT_REMOVE this blocks until the handler has read the REMOVE message.
      madvise(removeTask.addr, removeTask.len, C.MADV_DONTNEED);
    }
    const r2 = await readers;
    pages += r2.pages;
    mismatch = r2.mismatch;
  }
  if (!mismatch && removeTask) {
    // Phase 3: after REMOVE the range must read zeros (a handler must not refill it from the file).
    const r3 = await runReaders([removeTask], pageSize, threads, stripePages, 'zero');
    pages += r3.pages;
    mismatch = r3.mismatch;
  }
  const ms = performance.now() - t0;
  return {
    ok: !mismatch, regions: count, pageSize, pagesChecked: pages, bytesChecked: pages * pageSize,
    removed, ms: Math.round(ms * 1000) / 1000, mismatch,
  };
}

/** A test's gate: say we are at it (GATE.ready), then wait until the test creates GATE. */
async function waitAtGate(gate: string): Promise<void> {
  fs.writeFileSync(`${gate}.ready`, '');
  while (!fs.existsSync(gate)) await new Promise((r) => setTimeout(r, 2));
}

/** The argv that runs the client with these options. */
export function fcClientArgs(o: FcClientOptions): string[] {
  const args = [FC_CLIENT_SCRIPT, '--socket', o.socket, '--mem-file', o.memFile];
  const add = (k: string, v: unknown): void => { if (v !== undefined && v !== false) args.push(`--${k}`, ...(v === true ? [] : [String(v)])); };
  add('regions', o.regions);
  add('region-size', o.regionSize);
  add('file-offset', o.fileOffset);
  add('page-size-field', o.pageSizeField);
  add('hugetlb', o.hugetlb);
  add('threads', o.threads);
  add('stripe-pages', o.stripePages);
  add('remove', o.remove);
  add('timeout-ms', o.timeoutMs);
  add('on-handler-hangup', o.onHandlerHangup);
  add('remove-gate', o.removeGate);
  add('start-gate', o.startGate);
  return args;
}

export interface FcClientRun { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; result?: FcClientResult }

/**
 * Starts the client as a child process; resolves when it exits. Its own watchdog ends it
 * timeoutMs after it has started; a backstop kills it at twice that plus 5 s (starting Node
 * takes seconds on a slow or emulated machine).
 */
export function spawnFcClient(o: FcClientOptions): { child: ChildProcess; done: Promise<FcClientRun> } {
  const child = spawn(process.execPath, fcClientArgs(o), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => { stdout += b.toString(); });
  child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  const killer = setTimeout(() => child.kill('SIGKILL'), (o.timeoutMs ?? 30000) * 2 + 5000);
  const done = new Promise<FcClientRun>((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      let result: FcClientResult | undefined;
      const line = stdout.trim().split('\n').pop();
      try { result = line ? JSON.parse(line) as FcClientResult : undefined; } catch { /* not JSON */ }
      resolve({ code, signal, stdout, stderr, result });
    });
  });
  return { child, done };
}

/** One line that says where the first wrong byte was and what it should have been. */
export function describeMismatch(m: Mismatch): string {
  return `mismatch in region ${m.region} at offset 0x${m.regionOffset.toString(16)} (file offset 0x${m.fileOffset.toString(16)}): ` +
    `got 0x${m.got.toString(16).padStart(2, '0')}, expected 0x${m.expected.toString(16).padStart(2, '0')}` +
    (m.expectation === 'zero' ? ' (a removed range must read zeros)' : ' (from the memory file)');
}
