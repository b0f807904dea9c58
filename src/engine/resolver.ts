// How a fault becomes resolved: claim the page(s) in the page-state table, fill them
// with the region's operation, publish the new state. Used by every worker and by the
// dispatcher when it resolves a fault itself. One Resolver per thread; nothing on the
// per-fault path allocates.
import { UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_RWP, UFFD_PAGEFAULT_FLAG_WP } from '../kernel/constants.js';
import { UffdError } from '../kernel/errors.js';
import { ERRNO } from '../kernel/libc.js';
import { MADV_DONTNEED, O_RDWR } from '../kernel/constants.js';
import { bytesAt, eventfdSignal, openFile, pwriteFrom, tryMadvise } from '../kernel/memory.js';
import { threadCpuSeconds, yieldCpu } from '../kernel/time.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { Gate } from '../remote/gate.js';
import * as L from './layout.js';
import {
  C_BYTES, C_CPU_SEC, C_EEXIST, C_FIRST_MS, C_ERRORS, C_FAULTS_MINOR, C_FAULTS_MISSING, C_FAULTS_RWP, C_FAULTS_WP, C_IOCTLS,
  C_PAGES_BACKGROUND, C_PAGES_DEMAND, C_PAGES_READAHEAD, C_REZEROED, C_RETRIES, C_SPURIOUS, C_WAKES, C_ZERO_FILLS,
  COUNTER_WORDS, Counters, PAGE_DROPPED, PAGE_FILLING, PAGE_MISSING, PAGE_PRESENT, PageStates, recordLatency,
} from './shared.js';

export const CAUSE_DEMAND = 0;
export const CAUSE_READAHEAD = 1;
export const CAUSE_BACKGROUND = 2;

const EAGAIN_LIMIT = 2000; // then give the fault back to the kernel (wake: it re-faults)

/** Wall-clock ms, comparable across threads (each thread has its own performance.timeOrigin). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export type CallbackFetch = (sourceIndex: number, offset: number, len: number, stagingAddr: number) => boolean;

export class Resolver {
  readonly uffd: Userfaultfd;
  readonly states: PageStates;
  readonly table: Float64Array;
  readonly control: Int32Array;
  readonly counters: Float64Array;
  readonly claim: Float64Array;
  readonly thread: number;
  readonly setup: L.EngineSetup;
  private readonly zeroAddr: number;
  private readonly order: Float64Array | null;
  /** Chunk gates of remote sources (RT_GATE - 1 indexes them) and this engine's arrival cursors. */
  private readonly gates: Gate[];
  private readonly gateCursors: Int32Array;
  private wpHook: ((addr: number, len: number, bytes: Uint8Array) => void) | null = null;
  /** Set by a worker that can fetch callback bytes; the dispatcher has none. */
  fetchCallback: CallbackFetch | null = null;
  callbackStagingAddr = 0;
  /** True in the dispatcher: it must never spin on EAGAIN (it is the one that reads the events). */
  readonly mayRetry: boolean;
  // Read-ahead window (pages), grown on sequential access.
  private window: number;
  private lastEnd = -1;
  private lastCpuUpdate = 0;
  /** Set when the last fill gave up on EAGAIN (dispatcher: hand the fault to a worker). */
  deferred = false;
  /** Pages the last fill made present, counted from its first page without a gap. */
  lastFilled = 0;
  /** This worker's CT_HELP word (readers 'all'), or -1 (the dispatcher; readers 'dispatcher'). */
  private readonly helpWord: number;
  private helping = false;

  constructor(setup: L.EngineSetup, thread: number, mayRetry: boolean) {
    this.setup = setup;
    this.thread = thread;
    this.mayRetry = mayRetry;
    this.uffd = Userfaultfd.fromFd(setup.uffdFd, BigInt(setup.features));
    this.states = new PageStates(setup.states, setup.totalPages);
    this.table = new Float64Array(setup.regionTable);
    this.control = new Int32Array(setup.control);
    this.counters = new Counters(setup.counters).block(thread);
    this.claim = new Float64Array(setup.claims, thread * L.CL_WORDS * 8, L.CL_WORDS);
    this.zeroAddr = setup.zeroAddr;
    this.order = setup.order ? new Float64Array(setup.order) : null;
    this.gates = setup.gates.map((g) => new Gate(g));
    this.gateCursors = new Int32Array(setup.gateCursors);
    this.window = setup.prefetch.readAheadMin;
    this.helpWord = setup.readers === 'all' && thread < setup.workers ? L.CT_HELP + thread : -1;
    this.helping = this.helpWord >= 0; // raised until this worker first reads (the Engine raised it)
    if (setup.wpHook) {
      const mod = require(setup.wpHook.module) as Record<string, unknown>;
      const fn = mod[setup.wpHook.export];
      if (typeof fn !== 'function') throw new Error(`wpHook: ${setup.wpHook.module} has no function export "${setup.wpHook.export}"`);
      this.wpHook = fn as (addr: number, len: number, bytes: Uint8Array) => void;
    }
  }

  /**
   * This worker is about to be busy away from the uffd (background population, ring work,
   * waiting for an event to be read, a callback): the dispatcher reads meanwhile, so faults
   * and events never wait for a worker. Lowered by readerAgain() when the worker reads again.
   */
  needReader(): void {
    if (this.helpWord < 0 || this.helping) return;
    this.helping = true;
    Atomics.store(this.control, this.helpWord, 1);
    if (Atomics.load(this.control, L.CT_DISPATCHER_IDLE) !== 0) eventfdSignal(this.setup.eventFd);
  }

  readerAgain(): void {
    if (!this.helping) return;
    this.helping = false;
    Atomics.store(this.control, this.helpWord, 0);
  }

  rows(): number {
    return Atomics.load(this.control, L.CT_REGION_ROWS);
  }

  /** The region-table row holding addr, or -1. */
  findRow(addr: number): number {
    const t = this.table;
    const n = this.rows();
    for (let r = 0; r < n; r++) {
      const b = r * L.RT_WORDS;
      const start = t[b + L.RT_START];
      if (addr >= start && addr < start + t[b + L.RT_SIZE] && t[b + L.RT_ALIVE] !== 0) return r;
    }
    return -1;
  }

  /** The row whose page-state range holds global page g, or -1. */
  rowOfPage(g: number): number {
    const t = this.table;
    const n = this.rows();
    for (let r = 0; r < n; r++) {
      const b = r * L.RT_WORDS;
      const base = t[b + L.RT_STATE_BASE];
      if (g >= base && g < base + t[b + L.RT_SIZE] / t[b + L.RT_PAGE_SIZE] && t[b + L.RT_ALIVE] !== 0) return r;
    }
    return -1;
  }

  /** Global page index of the first page of the stripe holding addr (for sharding). */
  globalPage(row: number, addr: number): number {
    const b = row * L.RT_WORDS;
    return this.table[b + L.RT_STATE_BASE] + Math.floor((addr - this.table[b + L.RT_START]) / this.table[b + L.RT_PAGE_SIZE]);
  }

  /**
   * Resolves one fault. `more` = how many directly following pages are also faulting
   * (from the ring), so they are served by the same ioctl.
   */
  handleFault(addr: number, flags: number, tRead: number, more: number, knownRow = -2): number {
    const c = this.counters;
    const row = knownRow === -2 ? this.findRow(addr) : knownRow; // callers that looked it up pass it
    if (flags & L.FAULT_REZERO) {
      if (row >= 0) this.rezero(row, Math.floor((addr - this.table[row * L.RT_WORDS + L.RT_START]) / this.table[row * L.RT_WORDS + L.RT_PAGE_SIZE]));
      return 0;
    }
    if (row < 0) {
      // Not one of ours (a region unmapped meanwhile): let the thread retry; the kernel decides.
      c[C_SPURIOUS]++;
      this.safeWake(addr - (addr % 4096), 4096);
      return 0;
    }
    const b = row * L.RT_WORDS;
    const t = this.table;
    const ps = t[b + L.RT_PAGE_SIZE];
    const start = t[b + L.RT_START];
    const local = Math.floor((addr - start) / ps);
    const g = t[b + L.RT_STATE_BASE] + local;
    const pageAddr = start + local * ps;
    if (flags & UFFD_PAGEFAULT_FLAG_WP) {
      c[C_FAULTS_WP]++;
      if (this.wpHook) this.wpHook(pageAddr, ps, bytesAt(pageAddr, ps));
      this.uffd.writeprotect(pageAddr, ps, false);
      c[C_IOCTLS]++;
      this.latency(tRead);
      return 0;
    }
    if (flags & UFFD_PAGEFAULT_FLAG_RWP) {
      c[C_FAULTS_RWP]++;
      // The owner has an RWP window open (it scans, re-protects or evicts in sync mode): the
      // thread waits; closing the window wakes it and it retries (async by then).
      if (Atomics.load(this.control, L.CT_RWP_HOLD) !== 0) return 0;
      this.uffd.rwprotect(pageAddr, ps, false);
      c[C_IOCTLS]++;
      this.latency(tRead);
      return 0;
    }
    if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
      c[C_FAULTS_MINOR]++;
      // The page is in the page cache: map it. Racing faults on the same page get EEXIST.
      const n = Math.min(1 + more, (t[b + L.RT_SIZE] / ps) - local);
      try {
        this.continueRun(row, g, local, n);
      } catch {
        // The page left the page cache between the fault and CONTINUE (a hole punched):
        // wake the thread; it faults again, now as a missing fault.
        c[C_ERRORS]++;
        this.safeWake(pageAddr, n * ps);
        return 0;
      }
      this.latency(tRead);
      c[C_FAULTS_MINOR] += n - 1;
      return n - 1;
    }
    c[C_FAULTS_MISSING]++;
    const state = this.states.get(g);
    if (state === PAGE_MISSING && this.states.transition(g, PAGE_MISSING, PAGE_FILLING)) {
      // Sequential access grows the read-ahead window; anything else resets it.
      if (this.setup.prefetch.readAheadMax > 0) {
        this.window = g === this.lastEnd ? Math.min(this.window * 2 || 1, this.setup.prefetch.readAheadMax)
          : this.setup.prefetch.readAheadMin;
      }
      const maxPages = Math.max(1 + more, 1 + this.window);
      const n = this.extendClaim(row, g, local, maxPages);
      this.lastEnd = g + n;
      this.fill(row, local, n, 1 + Math.min(more, n - 1), false);
      this.latency(tRead);
      const absorbed = this.lastFilled > 0 ? Math.min(more, this.lastFilled - 1) : 0;
      c[C_FAULTS_MISSING] += absorbed; // the faults this ioctl served for the caller's ring
      return absorbed;
    }
    if (state === PAGE_DROPPED && this.states.transition(g, PAGE_DROPPED, PAGE_FILLING)) {
      // Removed by the application (madvise DONTNEED/REMOVE) or unmapped: serve zeros
      // as the kernel would, unless configured to serve the source again.
      this.fill(row, local, 1, 1, this.setup.afterRemove === 'zero');
      this.latency(tRead);
      return 0;
    }
    c[C_SPURIOUS]++;
    if (state === PAGE_PRESENT && this.states.transition(g, PAGE_PRESENT, PAGE_FILLING)) {
      // The table says present, yet the kernel reports the page missing: a race with the
      // fill that mapped it, a hole punched without an event, or a REMOVE not yet read.
      // Fill it again: EEXIST means it was a race. Wake either way so no thread is left.
      this.fill(row, local, 1, 1, false);
      this.safeWake(pageAddr, ps);
    }
    // Otherwise another thread is filling it: its ioctl wakes this one.
    this.latency(tRead);
    return 0;
  }

  /** Claims up to maxPages contiguous MISSING pages after an already claimed first page. */
  private extendClaim(row: number, g: number, local: number, maxPages: number): number {
    const b = row * L.RT_WORDS;
    const limit = Math.min(maxPages, this.table[b + L.RT_SIZE] / this.table[b + L.RT_PAGE_SIZE] - local,
      this.table[b + L.RT_MISSING_OP] === L.MISS_CALLBACK ? Math.max(1, this.setup.callbackRunBytes / this.table[b + L.RT_PAGE_SIZE]) : Infinity);
    let n = 1;
    while (n < limit && this.states.transition(g + n, PAGE_MISSING, PAGE_FILLING)) n++;
    return n;
  }

  /**
   * Fills pages [local, local+n) of a row, all claimed (FILLING) by this thread.
   * The first `demand` pages count as demand, the rest as read-ahead.
   */
  fill(row: number, local: number, n: number, demand: number, zero: boolean, cause = CAUSE_DEMAND): void {
    const c = this.counters;
    const t = this.table;
    const b = row * L.RT_WORDS;
    const ps = t[b + L.RT_PAGE_SIZE];
    const g = t[b + L.RT_STATE_BASE] + local;
    const dst = t[b + L.RT_START] + local * ps;
    let len = n * ps;
    let op = zero ? (t[b + L.RT_MISSING_OP] === L.MISS_COPY_ZERO || ps > 4096 ? L.MISS_COPY_ZERO : L.MISS_ZEROPAGE) : t[b + L.RT_MISSING_OP];
    const claim = this.claim;
    claim[L.CL_ROW] = row;
    claim[L.CL_FIRST] = local;
    claim[L.CL_COUNT] = n;
    if (Atomics.load(this.control, L.CT_KILL + this.thread) === 1) {
      // Test hook: die holding a claim, as a crashed worker would.
      Atomics.store(this.control, L.CT_KILL + this.thread, 2);
      throw new Error(`worker ${this.thread} killed by test hook`);
    }
    let src = t[b + L.RT_SRC_ADDR] + local * ps;
    if (op === L.MISS_CALLBACK) {
      const fetch = this.fetchCallback;
      if (!fetch || !fetch(t[b + L.RT_SOURCE], t[b + L.RT_SRC_OFFSET] + local * ps, len, this.callbackStagingAddr)) {
        this.failPages(row, local, n);
        return;
      }
      src = this.callbackStagingAddr;
    }
    this.deferred = false;
    this.lastFilled = 0;
    if (t[b + L.RT_GATE] !== 0 && op === L.MISS_COPY) {
      // A remote source: copy only what its chunk cache holds.
      n = this.gateRun(row, local, n, src, cause);
      if (n <= 0) return;
      len = n * ps;
    }
    let done = 0;
    let retries = 0;
    let filled = 0;
    try {
      while (done < len) {
        let got: number;
        if (op === L.MISS_COPY || op === L.MISS_CALLBACK) got = this.uffd.copy(dst + done, src + done, len - done);
        else if (op === L.MISS_ZEROPAGE) got = this.uffd.zeropage(dst + done, len - done);
        else got = this.uffd.copy(dst + done, this.zeroAddr, ps); // one zero page at a time
        c[C_IOCTLS]++;
        done += got;
        filled += got;
        if (op === L.MISS_COPY_ZERO && got === ps) continue;
        const e = this.uffd.lastErrno;
        if (e === 0) break;
        if (e === ERRNO.EEXIST) {
          // That page is already there: someone outside our claims filled it (a racing
          // path, or memory touched before registration). Skip it.
          c[C_EEXIST]++;
          done += ps;
          continue;
        }
        if (got > 0) continue; // partial progress: go on from there
        // EAGAIN with nothing done: the mappings are changing under an unread event.
        c[C_RETRIES]++;
        if (op !== L.MISS_ZEROPAGE && op !== L.MISS_COPY_ZERO && this.setup.afterRemove === 'zero'
          && this.states.get(g + Math.floor(done / ps)) === PAGE_DROPPED) {
          // The event was a REMOVE over this page: what the thread must see now is zeros.
          this.states.transition(g + Math.floor(done / ps), PAGE_DROPPED, PAGE_FILLING);
          op = ps > 4096 || t[b + L.RT_MISSING_OP] === L.MISS_COPY_ZERO ? L.MISS_COPY_ZERO : L.MISS_ZEROPAGE;
        }
        if (!this.mayRetry || ++retries > EAGAIN_LIMIT) {
          this.releaseFrom(row, local, n, done, PAGE_MISSING);
          this.deferred = !this.mayRetry;
          if (this.mayRetry) this.safeWake(dst + done, len - done);
          this.finish(row, local, Math.ceil(done / ps), n, demand, cause, op, filled);
          return;
        }
        this.needReader();
        yieldCpu();
      }
    } catch (err) {
      const e = err instanceof UffdError ? err.errno : 0;
      if (e === ERRNO.ESRCH) Atomics.store(this.control, L.CT_PEER_GONE, 1);
      // ENOENT/ESRCH: the mapping or the process is gone: nothing will fault there again,
      // and nobody was failed (a VM that exits mid-population). Anything else is an error.
      if (e !== ERRNO.ENOENT && e !== ERRNO.ESRCH) c[C_ERRORS]++;
      this.releaseFrom(row, local, n, done, e === ERRNO.ENOENT || e === ERRNO.ESRCH ? PAGE_DROPPED : PAGE_MISSING);
      this.safeWake(dst + done, len - done);
      this.finish(row, local, Math.ceil(done / ps), n, demand, cause, op, filled);
      if (e !== ERRNO.ENOENT && e !== ERRNO.ESRCH && e !== ERRNO.EFAULT) throw err;
      return;
    }
    this.finish(row, local, n, n, demand, cause, op, filled);
  }

  /**
   * For a fill from a remote source: how many of the n claimed pages from `src` can be
   * copied now. A demand fill in a worker waits for the chunk (the fetch thread bounds the
   * wait); the dispatcher never waits (the fault goes to a worker: `deferred`); a
   * background fill takes only what is cached (arrivals install the rest), except when
   * completing. Pages not taken are released; pages of a chunk that failed are failed
   * (poisoned). Returns the pages to copy (0: nothing, all handled).
   */
  private gateRun(row: number, local: number, n: number, src: number, cause: number): number {
    const gate = this.gates[this.table[row * L.RT_WORDS + L.RT_GATE] - 1];
    const ps = this.table[row * L.RT_WORDS + L.RT_PAGE_SIZE];
    let ok = gate.ready(src, n * ps);
    if (ok === 0) {
      if (!this.mayRetry) {
        this.releaseFrom(row, local, n, 0, PAGE_MISSING);
        this.deferred = true;
        this.counters[C_FAULTS_MISSING]--; // the worker that resolves it counts it
        return 0;
      }
      if (cause !== CAUSE_BACKGROUND || Atomics.load(this.control, L.CT_COMPLETE) !== 0) {
        ok = gate.wait(src, ps, n * ps, this.control, L.CT_STOP);
      }
    }
    if (ok < 0) {
      const bad = Math.min(n, Math.ceil(-ok / ps));
      if (bad < n) this.releaseFrom(row, local, n, bad * ps, PAGE_MISSING);
      this.failPages(row, local, bad);
      return 0;
    }
    const take = Math.min(n, Math.floor(ok / ps));
    if (take < n) {
      this.releaseFrom(row, local, n, take * ps, PAGE_MISSING);
      this.claim[L.CL_COUNT] = take;
    }
    return take;
  }

  /** Workers: some chunk arrived that this engine has not installed yet. */
  arrivalsPending(): boolean {
    for (let k = 0; k < this.gates.length; k++) if (Atomics.load(this.gateCursors, k) < this.gates[k].published()) return true;
    return false;
  }

  /** Takes the next chunk that arrived in a gate's cache and fills this engine's missing pages of it. */
  private installArrival(): boolean {
    for (let k = 0; k < this.gates.length; k++) {
      const gate = this.gates[k];
      for (;;) {
        const i = Atomics.load(this.gateCursors, k);
        if (i >= gate.published()) break;
        if (Atomics.compareExchange(this.gateCursors, k, i, i + 1) !== i) continue;
        this.installChunk(k, Atomics.load(gate.arrivals, i));
        return true;
      }
    }
    return false;
  }

  private installChunk(k: number, chunk: number): void {
    const t = this.table;
    const cs = this.gates[k].setup.chunkSize;
    const from = this.gates[k].setup.base + chunk * cs;
    const rows = this.rows();
    for (let r = 0; r < rows; r++) {
      const b = r * L.RT_WORDS;
      if (t[b + L.RT_GATE] !== k + 1 || t[b + L.RT_ALIVE] === 0) continue;
      const ps = t[b + L.RT_PAGE_SIZE];
      const src = t[b + L.RT_SRC_ADDR];
      const first = Math.max(0, Math.floor((from - src) / ps));
      const last = Math.min(t[b + L.RT_SIZE] / ps, Math.ceil((from + cs - src) / ps));
      const end = t[b + L.RT_STATE_BASE] + last;
      let g = t[b + L.RT_STATE_BASE] + first;
      while (g < end) {
        g = this.states.nextMissing(g, end);
        if (g < 0) break;
        g += this.fillMissingAround(g, end - g, true);
      }
    }
  }

  private finish(row: number, local: number, ok: number, n: number, demand: number, cause: number, op: number, bytes: number): void {
    const c = this.counters;
    const g = this.table[row * L.RT_WORDS + L.RT_STATE_BASE] + local;
    for (let i = 0; i < ok; i++) {
      if (this.states.transition(g + i, PAGE_FILLING, PAGE_PRESENT)) continue;
      // A REMOVE over this page was applied while we filled it. If our copy landed after
      // the kernel zapped the page, it now holds source bytes where zeros belong.
      if (bytes > 0 && op !== L.MISS_ZEROPAGE && op !== L.MISS_COPY_ZERO && this.states.get(g + i) === PAGE_DROPPED) {
        this.rezero(row, local + i);
      }
    }
    this.claim[L.CL_COUNT] = 0;
    this.lastFilled = ok;
    c[C_BYTES] += bytes;
    // Count what this thread filled; pages skipped on EEXIST were filled by someone else.
    const filled = Math.round(bytes / this.table[row * L.RT_WORDS + L.RT_PAGE_SIZE]);
    if (op === L.MISS_ZEROPAGE || op === L.MISS_COPY_ZERO) c[C_ZERO_FILLS] += filled;
    if (cause === CAUSE_BACKGROUND) c[C_PAGES_BACKGROUND] += filled;
    else {
      const d = Math.min(demand, filled);
      c[C_PAGES_DEMAND] += d;
      c[C_PAGES_READAHEAD] += filled - d;
    }
  }

  /** Pages from byte `done` on were not filled: give them back. */
  private releaseFrom(row: number, local: number, n: number, done: number, to: number): void {
    const ps = this.table[row * L.RT_WORDS + L.RT_PAGE_SIZE];
    const g = this.table[row * L.RT_WORDS + L.RT_STATE_BASE] + local;
    for (let i = Math.ceil(done / ps); i < n; i++) this.states.transition(g + i, PAGE_FILLING, to);
    this.claim[L.CL_COUNT] = 0;
  }

  /** A source failure: poison the pages (the faulting thread gets SIGBUS) or zero them. */
  private failPages(row: number, local: number, n: number): void {
    const c = this.counters;
    const b = row * L.RT_WORDS;
    const ps = this.table[b + L.RT_PAGE_SIZE];
    const dst = this.table[b + L.RT_START] + local * ps;
    c[C_ERRORS] += n;
    try {
      if (this.setup.onSourceError === 'poison') {
        let done = 0;
        while (done < n * ps) {
          done += this.uffd.poison(dst + done, n * ps - done);
          if (this.uffd.lastErrno === ERRNO.EEXIST) done += ps;
          else if (this.uffd.lastErrno === ERRNO.EAGAIN) { this.needReader(); yieldCpu(); }
        }
        this.finish(row, local, n, n, 0, CAUSE_DEMAND, -1, 0);
      } else {
        this.fill(row, local, n, n, true);
      }
    } catch {
      this.releaseFrom(row, local, n, 0, PAGE_MISSING);
      this.safeWake(dst, n * ps);
    }
  }

  private continueRun(row: number, g: number, local: number, n: number, cause = CAUSE_DEMAND): void {
    const b = row * L.RT_WORDS;
    const ps = this.table[b + L.RT_PAGE_SIZE];
    const dst = this.table[b + L.RT_START] + local * ps;
    let done = 0;
    let retries = 0;
    while (done < n * ps) {
      done += this.uffd.continue(dst + done, n * ps - done);
      this.counters[C_IOCTLS]++;
      const e = this.uffd.lastErrno;
      if (e === 0) break;
      if (e === ERRNO.EEXIST) { this.counters[C_EEXIST]++; done += ps; continue; }
      this.counters[C_RETRIES]++;
      if (!this.mayRetry || ++retries > EAGAIN_LIMIT) { this.safeWake(dst + done, n * ps - done); break; }
      this.needReader();
      yieldCpu();
    }
    for (let i = 0; i < n; i++) this.states.set(g + i, PAGE_PRESENT);
    this.counters[cause === CAUSE_BACKGROUND ? C_PAGES_BACKGROUND : C_PAGES_DEMAND] += n;
    this.counters[C_BYTES] += done;
  }

  /**
   * Makes a page that a REMOVE dropped while we were filling it read zeros again: our own
   * memory is zapped with MADV_DONTNEED (the engine serves zeros on the next touch), a peer's
   * is overwritten with zeros through /proc/PID/mem. Both block until the dispatcher has
   * served or read what they cause, so the dispatcher hands this to a worker.
   */
  rezero(row: number, local: number): void {
    const b = row * L.RT_WORDS;
    const ps = this.table[b + L.RT_PAGE_SIZE];
    const addr = this.table[b + L.RT_START] + local * ps;
    if (!this.mayRetry) {
      this.deferRezero?.(addr);
      return;
    }
    this.counters[C_REZEROED]++;
    this.needReader(); // both ways below wait for a reader (the REMOVE we cause, the fault pwrite takes)
    if (this.table[b + L.RT_OWN] === 1) {
      tryMadvise(addr, ps, MADV_DONTNEED);
      return;
    }
    const pid = this.table[b + L.RT_PEER_PID];
    if (!pid) return; // unknown owner: reported through the counter
    if (this.peerMemFd < 0) {
      try { this.peerMemFd = openFile(`/proc/${pid}/mem`, O_RDWR); } catch { return; }
    }
    try { pwriteFrom(this.peerMemFd, this.zeroAddr, ps, addr); } catch { /* the peer exited */ }
  }
  /** Set by the dispatcher: queue a rezero for a worker. */
  deferRezero: ((addr: number) => void) | null = null;
  private peerMemFd = -1;

  safeWake(addr: number, len: number): void {
    if (len <= 0) return;
    try {
      this.uffd.wake(addr, len);
      this.counters[C_WAKES]++;
    } catch {
      // The range is gone: nobody can be waiting there.
    }
  }

  private latency(tRead: number): void {
    const now = nowMs();
    recordLatency(this.counters, (now - tRead) * 1000);
    if (this.counters[C_FIRST_MS] === 0) this.counters[C_FIRST_MS] = now;
  }

  /**
   * Background population: claims the next chunk of pages (hot-first order, then
   * address order) and fills its missing runs. Returns false when nothing is left.
   */
  backgroundStep(): boolean {
    const ctl = this.control;
    const chunk = this.setup.prefetch.chunkPages;
    const order = this.order;
    if (this.gates.length && this.installArrival()) return true;
    if (order) {
      const i = Atomics.add(ctl, L.CT_ORDER_CURSOR, 16);
      if (i < this.setup.prefetch.orderLength) {
        const end = Math.min(i + 16, this.setup.prefetch.orderLength);
        for (let k = i; k < end; k++) this.fillMissingAround(order[k], 1);
        return true;
      }
    }
    const first = Atomics.add(ctl, L.CT_BG_CURSOR, chunk);
    if (first >= this.setup.totalPages) {
      Atomics.store(ctl, L.CT_BG_DONE, 1);
      return false;
    }
    let g = first;
    const end = Math.min(first + chunk, this.setup.totalPages);
    while (g < end) {
      g = this.states.nextMissing(g, end);
      if (g < 0) break;
      g += this.fillMissingAround(g, end - g);
    }
    return true;
  }

  /** Claims and fills up to max MISSING pages from global page g (stays in one row). Returns pages consumed. */
  private fillMissingAround(g: number, max: number, arrived = false): number {
    const row = this.rowOfPage(g);
    if (row < 0) return 1;
    const b = row * L.RT_WORDS;
    if (this.table[b + L.RT_MISSING_OP] === L.MISS_CALLBACK && !this.fetchCallback) return max;
    // Remote pages are installed as their chunks arrive (installArrival), or waited for when completing.
    if (this.table[b + L.RT_GATE] !== 0 && !arrived && Atomics.load(this.control, L.CT_COMPLETE) === 0) return max;
    if (!this.states.transition(g, PAGE_MISSING, PAGE_FILLING)) return 1;
    const local = g - this.table[b + L.RT_STATE_BASE];
    const n = this.extendClaim(row, g, local, max);
    if (this.table[b + L.RT_MINOR] === 1) {
      // A page-cache source: map what the cache holds (CONTINUE); what it lacks is filled
      // from the missing-fault source below.
      try {
        this.continueRun(row, g, local, n, CAUSE_BACKGROUND);
        return n;
      } catch {
        // Not in the page cache (or gone): fill it as a missing page.
      }
    }
    this.fill(row, local, n, 0, false, CAUSE_BACKGROUND);
    return n;
  }

  /** Finishes the claims a dead thread left: fill what it held (EEXIST is fine), then wake. */
  recoverClaims(deadThread: number): void {
    const cl = new Float64Array(this.setup.claims, deadThread * L.CL_WORDS * 8, L.CL_WORDS);
    const n = cl[L.CL_COUNT];
    if (n <= 0) return;
    const row = cl[L.CL_ROW];
    const local = cl[L.CL_FIRST];
    const g = this.table[row * L.RT_WORDS + L.RT_STATE_BASE] + local;
    cl[L.CL_COUNT] = 0;
    // Take over the pages still marked FILLING; a page another live thread holds is
    // filled twice at most, and the kernel keeps the first (EEXIST for the second).
    let i = 0;
    while (i < n) {
      if (this.states.get(g + i) !== PAGE_FILLING) { i++; continue; }
      let k = 1;
      while (i + k < n && this.states.get(g + i + k) === PAGE_FILLING) k++;
      this.fill(row, local + i, k, k, false);
      i += k;
    }
  }

  updateCpu(force = false): void {
    const now = performance.now();
    if (!force && now - this.lastCpuUpdate < 50) return;
    this.lastCpuUpdate = now;
    this.counters[C_CPU_SEC] = threadCpuSeconds();
  }
}

export { COUNTER_WORDS };
