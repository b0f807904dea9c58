// How a fault becomes resolved: claim the page(s) in the page-state table, fill them
// with the region's operation, publish the new state. Used by every worker and by the
// dispatcher when it resolves a fault itself. One Resolver per thread; nothing on the
// per-fault path allocates.
import {
  MADV_DONTNEED, O_RDWR, PAGE_SIZE, UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_RWP, UFFD_PAGEFAULT_FLAG_WP,
  UFFDIO_COPY_MODE_DONTWAKE,
} from '../kernel/constants.js';
import { UffdError } from '../kernel/errors.js';
import { ERRNO } from '../kernel/libc.js';
import { bytesAt, close as closeFd, eventfdSignal, openFile, pwriteFrom, tryMadvise } from '../kernel/memory.js';
import { monoMicros32, monotonicMs, threadCpuSeconds, yieldCpu } from '../kernel/time.js';
import { RangeResult, Userfaultfd } from '../kernel/userfaultfd.js';
import { Gate } from '../remote/gate.js';
import type { EngineSetup } from './layout.js';
import {
  C_BYTES, C_CPU_SEC, C_EEXIST, C_FIRST_MS, C_ERRORS, C_FAULTS_MINOR, C_FAULTS_MISSING, C_FAULTS_RWP, C_FAULTS_WP, C_IOCTLS,
  C_PAGES_BACKGROUND, C_PAGES_DEMAND, C_PAGES_READAHEAD, C_REZEROED, C_RETRIES, C_SPURIOUS, C_WAKES, C_ZERO_FILLS,
  COUNTER_WORDS, CounterBlock, Counters, PAGE_DROPPED, PAGE_FILLING, PAGE_MISSING, PAGE_PRESENT, PageStates,
} from './shared.js';
import { Claims, ControlBlock, type Located, MissOp, RegionTable } from './tables.js';

/** Why pages are filled (which counter they go to). */
export const Cause = { demand: 0, readahead: 1, background: 2 } as const;
export type Cause = typeof Cause[keyof typeof Cause];

/** How fill() treats a run. Each call site keeps one and reuses it: nothing allocates per fault. */
export interface FillHow {
  /** Pages from the run's first that count as demand (the rest count as read-ahead). */
  demand: number;
  /** Zeros instead of the source (a page the application removed). */
  zero: boolean;
  cause: Cause;
  /** The state the pages were claimed from: pages not filled go back to it. */
  from: number;
}

/** handleFault / fill result of the dispatcher when it cannot finish without waiting: hand the fault to a worker. */
export const DEFERRED = -1;

const EAGAIN_LIMIT = 2000; // then give the fault back to the kernel (wake: it re-faults)

// The ioctl a run of pages is filled with.
const K_COPY = 0; // UFFDIO_COPY from the source
const K_ZEROPAGE = 1;
const K_COPY_ZERO = 2; // UFFDIO_COPY from the zero buffer, a page at a time
const K_CONTINUE = 3;
const K_POISON = 4;

/** What runRange did (one per Resolver, reused). */
class RangeRun {
  /** The ioctl it ran (K_*). */
  kind = K_COPY;
  /** The read sequence (ControlBlock.readSeq) before its first ioctl: see Resolver.settle. */
  seq = 0;
  /** Bytes passed from the start: filled, or skipped because already there (EEXIST). */
  done = 0;
  /** Bytes this thread filled. */
  filled = 0;
  /** Offset of the first page skipped on EEXIST, or -1. */
  firstExist = -1;
  /** Stopped on EAGAIN before the end (not allowed to retry, or retried too often). */
  gaveUp = false;
}

/** The per-fault clock: µs, int32, comparable across threads (kernel/time.ts). */
export const nowUs = monoMicros32;

/** This thread's monotonic clock, ms (deadlines). */
export const monoMs = monotonicMs;

/**
 * One fault for handleFault. Each caller keeps one and refills it per fault: nothing
 * allocates on the per-fault path. Only small integers cross calls on that path (V8 boxes
 * any other number that crosses a call it did not inline): the address is read from here,
 * and the page is found by row and local index.
 */
export class Fault implements Located {
  /** The faulting address and the kernel's fault flags (kind bits). */
  addr = 0;
  flags = 0;
  /** Its region-table row (RegionTable.locate; negative: none of ours). */
  row = -1;
  /** Its page's index within the row (RegionTable.locate). */
  local = 0;
  /** When it was read (monoMicros32, µs): the latency counts from there. */
  readUs = 0;
  /** How many directly following pages are also faulting (served by the same ioctl). */
  more = 0;
}

export type CallbackFetch = (sourceIndex: number, offset: number, len: number, stagingAddr: number) => boolean;

export class Resolver {
  readonly uffd: Userfaultfd;
  readonly states: PageStates;
  readonly table: RegionTable;
  readonly ctl: ControlBlock;
  readonly counters: CounterBlock;
  /** This thread's claim record (finished by its replacement if it dies). */
  readonly claim: Claims;
  readonly thread: number;
  /**
   * Whether this thread may wait for the kernel (EAGAIN retries, re-zeroing, remote chunks,
   * callbacks): true in workers, false in the dispatcher, which must keep reading events.
   */
  readonly mayRetry: boolean;
  private readonly setup: EngineSetup;
  // Numbers from the setup the per-fault path reads, copied: a setup built here (a warm-up,
  // a rehearsal) and one posted from the main thread are objects of different shapes, and
  // optimised code that loaded through this.setup was thrown away at the first real fault.
  private readonly readAheadMin: number;
  private readonly readAheadMax: number;
  private readonly callbackRunBytes: number;
  private readonly eventFd: number;
  /** Where REMOVE ranges are journaled before they are applied (remove-journal.ts); -1: nowhere. */
  readonly removeJournalFd: number;
  private readonly zeroAddr: number;
  private readonly order: Float64Array | null;
  /** Chunk gates of remote sources (RegionTable.gate indexes them) and this engine's arrival cursors. */
  private readonly gates: Gate[];
  private readonly gateCursors: Int32Array;
  private wpHook: ((addr: number, len: number, bytes: Uint8Array) => void) | null = null;
  /** Set by a worker that can fetch callback bytes; the dispatcher has none. */
  fetchCallback: CallbackFetch | null = null;
  callbackStagingAddr = 0;
  /** Set by the dispatcher: queue a page to be re-zeroed by a worker (it cannot wait for the REMOVE it causes). */
  deferRezero: ((addr: number) => void) | null = null;
  // Read-ahead window (pages), grown on sequential access.
  private window: number;
  private lastEnd = -1;
  private lastCpuUpdate = 0;
  /** This thread has stamped its first fault served (C_FIRST_MS). */
  private firstServed = false;
  /** This worker's index for help words (readers 'all'), or -1 (the dispatcher; readers 'dispatcher'). */
  private readonly helpIndex: number;
  private helping = false;
  private peerMemFd = -1;
  private readonly result = new RangeResult();
  private readonly run = new RangeRun();
  // Deferred wake-ups (the dispatcher: deferWakes, flushWakes): fills made while deferring
  // do not wake their threads (DONTWAKE); their ranges are kept here until flushWakes()
  // wakes them, with one UFFDIO_WAKE over their span when nothing else waits there. The
  // kernel walks its wait queues under a lock with interrupts off for every wake (a third
  // of the dispatcher's time at 16 faulting threads): once for many faults instead of each.
  private wakeDeferred = false;
  /** The deferred ranges (start, length), at most their capacity; then fills wake at once. */
  private readonly wakeStarts: Float64Array;
  private readonly wakeLens: Float64Array;
  private wakeRanges = 0;
  /** Read times (nowUs) of the faults waiting for the deferred wake: their latency ends there. */
  private readonly wakeWaiting: Int32Array;
  private wakeCount = 0;
  // One FillHow per kind of call (see FillHow).
  private readonly demandHow: FillHow = { demand: 1, zero: false, cause: Cause.demand, from: PAGE_MISSING };
  private readonly droppedHow: FillHow;
  private readonly refillHow: FillHow = { demand: 1, zero: false, cause: Cause.demand, from: PAGE_PRESENT };
  private readonly backgroundHow: FillHow = { demand: 0, zero: false, cause: Cause.background, from: PAGE_MISSING };
  private readonly continueDemand: FillHow = { demand: 1 << 30, zero: false, cause: Cause.demand, from: PAGE_MISSING };
  private readonly continueBackground: FillHow = { demand: 0, zero: false, cause: Cause.background, from: PAGE_FILLING };
  private readonly failHow: FillHow = { demand: 0, zero: true, cause: Cause.demand, from: PAGE_MISSING };
  private readonly recoverHow: FillHow = { demand: 0, zero: false, cause: Cause.demand, from: PAGE_MISSING };

  constructor(setup: EngineSetup, thread: number, mayRetry: boolean) {
    this.setup = setup;
    this.readAheadMin = setup.prefetch.readAheadMin;
    this.readAheadMax = setup.prefetch.readAheadMax;
    this.callbackRunBytes = setup.callbackRunBytes;
    this.eventFd = setup.eventFd;
    this.removeJournalFd = setup.removeJournalFd ?? -1;
    this.thread = thread;
    this.mayRetry = mayRetry;
    this.uffd = Userfaultfd.fromFd(setup.uffdFd, BigInt(setup.features));
    this.states = new PageStates(setup.states, setup.totalPages);
    this.ctl = new ControlBlock(setup.control);
    this.table = new RegionTable(setup.regionTable, this.ctl);
    this.counters = new Counters(setup.counters).block(thread);
    this.claim = new Claims(setup.claims, thread);
    this.zeroAddr = setup.zeroAddr;
    this.order = setup.order ? new Float64Array(setup.order) : null;
    this.gates = setup.gates.map((g) => new Gate(g));
    this.gateCursors = new Int32Array(setup.gateCursors);
    this.window = setup.prefetch.readAheadMin;
    this.wakeStarts = new Float64Array(setup.wakeBatch);
    this.wakeLens = new Float64Array(setup.wakeBatch);
    this.wakeWaiting = new Int32Array(setup.wakeBatch);
    this.droppedHow = { demand: 1, zero: setup.afterRemove === 'zero', cause: Cause.demand, from: PAGE_DROPPED };
    this.helpIndex = setup.readers === 'all' && thread < setup.workers ? thread : -1;
    this.helping = this.helpIndex >= 0; // raised until this worker first reads (the Engine raised it)
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
    if (this.helpIndex < 0 || this.helping) return;
    this.helping = true;
    this.ctl.setHelpWanted(this.helpIndex, true);
    if (this.ctl.dispatcherIdle()) eventfdSignal(this.eventFd);
  }

  readerAgain(): void {
    if (!this.helping) return;
    this.helping = false;
    this.ctl.setHelpWanted(this.helpIndex, false);
  }

  /**
   * Resolves one fault. Returns how many of its `more` following pages (from the ring or
   * the batch read) it served too, or DEFERRED (dispatcher only: a worker must finish it).
   */
  handleFault(f: Fault): number {
    const c = this.counters;
    const tb = this.table;
    const { flags, row, local, more } = f;
    const tRead = f.readUs;
    if (row < 0) {
      // Not one of ours (a region unmapped meanwhile): let the thread retry; the kernel decides.
      c.add(C_SPURIOUS);
      this.safeWake(f.addr - (f.addr % PAGE_SIZE), PAGE_SIZE);
      return 0;
    }
    const ps = tb.pageSize(row);
    const g = tb.stateBase(row) + local;
    if (flags & UFFD_PAGEFAULT_FLAG_WP) {
      if (this.wpHook) this.callWpHook(row, local);
      return this.unprotect(row, local, false, tRead);
    }
    if (flags & UFFD_PAGEFAULT_FLAG_RWP) {
      // The owner has an RWP window open (it scans, re-protects or evicts in sync mode): the
      // thread waits; closing the window wakes it and it retries (async by then).
      if (this.ctl.rwpHold()) {
        c.add(C_FAULTS_RWP);
        return 0;
      }
      return this.unprotect(row, local, true, tRead);
    }
    if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
      c.add(C_FAULTS_MINOR);
      // The page is in the page cache: map it. Racing faults on the same page get EEXIST.
      // A page someone holds (FILLING: a fill, or an owner's hold() while it evicts) is
      // left alone: the holder wakes the thread when it is done, as for a missing fault.
      const from = this.states.get(g);
      if (from === PAGE_FILLING) {
        this.latency(tRead);
        return 0;
      }
      // The run takes the following pages in the same state, so that one compare-and-set
      // per page can tell whether a hold came between the CONTINUE and its record.
      const limit = Math.min(1 + more, tb.pages(row) - local);
      let n = 1;
      while (n < limit && this.states.get(g + n) === from) n++;
      try {
        this.continueRun(row, local, n, Cause.demand, from);
      } catch {
        // The page left the page cache between the fault and CONTINUE (a hole punched):
        // wake the thread; it faults again, now as a missing fault.
        c.add(C_ERRORS);
        this.safeWake(tb.start(row) + local * ps, n * ps);
        return 0;
      }
      this.latency(tRead);
      c.add(C_FAULTS_MINOR, n - 1);
      return n - 1;
    }
    c.add(C_FAULTS_MISSING);
    const state = this.states.get(g);
    if (state === PAGE_MISSING && this.states.transition(g, PAGE_MISSING, PAGE_FILLING)) {
      // Sequential access grows the read-ahead window; anything else resets it.
      if (this.readAheadMax > 0) this.window = g === this.lastEnd ? Math.min(this.window * 2 || 1, this.readAheadMax) : this.readAheadMin;
      const n = this.extendClaim(row, g, local, Math.max(1 + more, 1 + this.window));
      this.lastEnd = g + n;
      const how = this.demandHow;
      how.demand = 1 + Math.min(more, n - 1);
      const filled = this.fill(row, local, n, how);
      if (filled === DEFERRED) return DEFERRED;
      this.latency(tRead);
      const absorbed = filled > 0 ? Math.min(more, filled - 1) : 0;
      c.add(C_FAULTS_MISSING, absorbed); // the faults this ioctl served for the caller's ring
      return absorbed;
    }
    // (A page dropped while another thread was filling it stays that thread's until it lets
    // go: PageStates.claim refuses it, and that thread wakes this fault's thread then.)
    if (state === PAGE_DROPPED && this.states.claim(g, PAGE_DROPPED)) {
      // Removed by the application (madvise DONTNEED/REMOVE) or unmapped: serve zeros
      // as the kernel would, unless configured to serve the source again.
      if (this.fill(row, local, 1, this.droppedHow) === DEFERRED) return DEFERRED;
      this.latency(tRead);
      return 0;
    }
    c.add(C_SPURIOUS);
    if (state === PAGE_PRESENT && this.states.transition(g, PAGE_PRESENT, PAGE_FILLING)) {
      // The table says present, yet the kernel reports the page missing: a race with the
      // fill that mapped it, or a hole punched without an event. Fill it again: EEXIST means
      // it was a race. Wake either way so no thread is left.
      const filled = this.fill(row, local, 1, this.refillHow);
      this.safeWake(tb.start(row) + local * ps, ps);
      if (filled === DEFERRED) return DEFERRED;
    }
    // Otherwise another thread is filling it: its ioctl (or its letting go) wakes this one.
    this.latency(tRead);
    return 0;
  }

  /** Shows the write-protected page to the hook (tests, dirty tracking) before it is un-protected. */
  private callWpHook(row: number, local: number): void {
    const ps = this.table.pageSize(row);
    const addr = this.table.start(row) + local * ps;
    this.wpHook?.(addr, ps, bytesAt(addr, ps));
  }

  /**
   * Resolves a WP or RWP fault by un-protecting its page; returns 0, or DEFERRED. EAGAIN
   * (an event such as a REMOVE not read yet) is retried while this thread may wait for a
   * reader; the dispatcher, which is the reader, defers (a worker retries while it reads).
   * A thread still refused after EAGAIN_LIMIT tries is woken: it faults again, and only
   * that fault is counted.
   */
  private unprotect(row: number, local: number, rwp: boolean, tRead: number): number {
    const c = this.counters;
    const ps = this.table.pageSize(row);
    const addr = this.table.start(row) + local * ps; // a local: it crosses no call on the way to the ioctl
    const ops = this.uffd.operands;
    const counter = rwp ? C_FAULTS_RWP : C_FAULTS_WP;
    // Counted before the ioctl that wakes the thread: whoever it tells it is done sees it counted.
    c.add(counter);
    for (let retries = 0; ;) {
      ops[0] = addr;
      ops[2] = ps;
      const ok = this.uffd.tryProtectOperands(rwp, false);
      c.add(C_IOCTLS);
      if (ok) break;
      if (!this.awaitReader(++retries)) {
        c.add(counter, -1); // not resolved here: a worker, or the thread's next fault, counts it
        if (!this.mayRetry) return DEFERRED;
        this.safeWake(addr, ps);
        return 0;
      }
    }
    this.latency(tRead);
    return 0;
  }

  /**
   * After an EAGAIN (the mappings change under an event not read yet): whether to try again.
   * Not in the dispatcher (it reads the events, it must not wait for them) nor past
   * EAGAIN_LIMIT; otherwise asks for a reader and yields the CPU first.
   */
  private awaitReader(retries: number): boolean {
    this.counters.add(C_RETRIES);
    if (!this.mayRetry || retries > EAGAIN_LIMIT) return false;
    this.needReader();
    yieldCpu();
    return true;
  }

  /** A ring entry asking to re-zero the page at addr (queued by the dispatcher). */
  rezeroAt(addr: number): void {
    const row = this.table.findRow(addr);
    if (row >= 0) this.rezero(row, this.table.localPage(row, addr));
    this.ctl.rezeroDone();
  }

  /** Claims up to maxPages contiguous MISSING pages after an already claimed first page. */
  private extendClaim(row: number, g: number, local: number, maxPages: number): number {
    const tb = this.table;
    const limit = Math.min(maxPages, tb.pages(row) - local,
      tb.missingOp(row) === MissOp.callback ? Math.max(1, this.callbackRunBytes / tb.pageSize(row)) : Infinity);
    let n = 1;
    while (n < limit && this.states.transition(g + n, PAGE_MISSING, PAGE_FILLING)) n++;
    return n;
  }

  /**
   * Fills pages [local, local+n) of a row, all claimed (FILLING) by this thread from
   * `how.from`. Returns the pages made present from the first without a gap, or DEFERRED
   * (the dispatcher gave up on EAGAIN or a remote chunk: the pages are released).
   */
  fill(row: number, local: number, n: number, how: FillHow): number {
    const c = this.counters;
    const tb = this.table;
    const ps = tb.pageSize(row);
    const dst = tb.start(row) + local * ps;
    const miss = tb.missingOp(row);
    const kind = how.zero ? (miss === MissOp.copyZero || ps > PAGE_SIZE ? K_COPY_ZERO : K_ZEROPAGE)
      : miss === MissOp.copy || miss === MissOp.callback ? K_COPY : miss === MissOp.zeropage ? K_ZEROPAGE : K_COPY_ZERO;
    this.claim.record(row, local, n, how.from);
    if (kind === K_COPY && miss === MissOp.callback) {
      const fetch = this.fetchCallback;
      if (!fetch || !fetch(tb.source(row), tb.srcOffset(row) + local * ps, n * ps, this.callbackStagingAddr)) {
        this.failPages(row, local, n);
        return 0;
      }
    }
    if (kind === K_COPY && tb.gate(row) >= 0) {
      // A remote source: copy only what its chunk cache holds.
      n = this.gateRun(row, local, n, how);
      if (n <= 0) return n;
    }
    const len = n * ps;
    // Counted before the ioctl that wakes the faulting threads: whoever it tells the page is
    // there sees it in the statistics too. finish() corrects it if fewer pages were filled.
    this.countFill(kind, how, n, ps);
    let run: RangeRun;
    try {
      run = this.runRange(kind, row, local, n);
    } catch (err) {
      const e = err instanceof UffdError ? err.errno : 0;
      const gone = e === ERRNO.ENOENT || e === ERRNO.ESRCH;
      if (e === ERRNO.ESRCH) this.ctl.markPeerGone();
      // ENOENT/ESRCH: the mapping or the process is gone: nothing will fault there again,
      // and nobody was failed (a VM that exits mid-population). Anything else is an error.
      if (!gone) c.add(C_ERRORS);
      const r = this.run;
      const ok = Math.ceil(r.done / ps);
      this.release(row, local + ok, local + n, gone ? PAGE_DROPPED : how.from);
      this.safeWake(dst + r.done, len - r.done);
      this.finish(row, local, ok, how, n);
      if (!gone && e !== ERRNO.EFAULT) throw err;
      return ok;
    }
    let ok = n;
    if (run.gaveUp) {
      ok = Math.ceil(run.done / ps);
      this.release(row, local + ok, local + n, how.from);
      if (this.mayRetry) this.safeWake(dst + run.done, len - run.done);
    }
    const stale = how.zero && how.from === PAGE_DROPPED && run.firstExist >= 0 ? local + Math.floor(run.firstExist / ps) : -1;
    this.finish(row, local, ok, how, n);
    // A removed page we zero-filled was already mapped: a source fill that raced with the
    // REMOVE landed after the zap. Its bytes must go.
    if (stale >= 0) this.rezero(row, stale);
    return run.gaveUp && !this.mayRetry ? DEFERRED : ok;
  }

  /**
   * The one loop around a range ioctl: fills pages [local, local+n) of a row with `kind`
   * until done, skipping a page already there (EEXIST), going on after partial progress,
   * and retrying EAGAIN (the mappings change under an event not read yet) while this thread
   * may wait. Ioctls that fail otherwise throw (UffdError); this.run holds the progress made.
   * A copy reads the row's source, or the callback staging buffer (filled by fill()).
   */
  private runRange(kind: number, row: number, local: number, n: number): RangeRun {
    const tb = this.table;
    const ps = tb.pageSize(row);
    const dst = tb.start(row) + local * ps;
    const len = n * ps;
    const src = kind !== K_COPY ? 0
      : tb.missingOp(row) === MissOp.callback ? this.callbackStagingAddr : tb.srcAddr(row) + local * ps;
    const run = this.run;
    const res = this.result;
    const uffd = this.uffd;
    const c = this.counters;
    run.kind = kind;
    run.seq = this.ctl.readSeq();
    run.done = 0;
    run.filled = 0;
    run.firstExist = -1;
    run.gaveUp = false;
    let retries = 0;
    const ops = uffd.operands; // the ioctl's operands: written, not passed (see Fault)
    // DONTWAKE is bit 0 of every range ioctl's mode (COPY, ZEROPAGE, CONTINUE, POISON).
    const mode = this.wakeDeferred && this.deferWake(dst, len) ? UFFDIO_COPY_MODE_DONTWAKE : 0;
    while (run.done < len) {
      ops[0] = dst + run.done;
      ops[2] = len - run.done;
      if (kind === K_COPY) {
        ops[1] = src + run.done;
        uffd.copyOperands(mode, res);
      } else if (kind === K_ZEROPAGE) uffd.zeropageOperands(mode, res);
      else if (kind === K_COPY_ZERO) {
        ops[1] = this.zeroAddr;
        ops[2] = ps; // one zero page at a time
        uffd.copyOperands(mode, res);
      } else if (kind === K_CONTINUE) uffd.continueOperands(mode, res);
      else uffd.poisonOperands(mode, res);
      c.add(C_IOCTLS);
      run.done += res.bytes;
      run.filled += res.bytes;
      if (res.errno === 0) continue;
      if (res.errno === ERRNO.EEXIST) {
        // That page is already there: someone outside our claims filled it (a racing path,
        // or memory touched before registration). Skip it.
        c.add(C_EEXIST);
        if (run.firstExist < 0) run.firstExist = run.done;
        run.done += ps;
        continue;
      }
      if (res.bytes > 0) continue; // partial progress: go on from there
      if (!this.awaitReader(++retries)) {
        run.gaveUp = true;
        break;
      }
    }
    return run;
  }

  /**
   * For a fill from a remote source: how many of the n claimed pages from `src` can be
   * copied now. A demand fill in a worker waits for the chunk (the fetch thread bounds the
   * wait); the dispatcher never waits (DEFERRED: the fault goes to a worker); a background
   * fill takes only what is cached (arrivals install the rest), except when completing.
   * Pages not taken are released; pages of a chunk that failed are failed (poisoned).
   * Returns the pages to copy (0: nothing, all handled).
   */
  private gateRun(row: number, local: number, n: number, how: FillHow): number {
    const gate = this.gates[this.table.gate(row)] as Gate;
    const ps = this.table.pageSize(row);
    const src = this.table.srcAddr(row) + local * ps; // a remote row is never a callback row
    let ok = gate.ready(src, n * ps);
    if (ok === 0) {
      if (!this.mayRetry) {
        this.release(row, local, local + n, how.from);
        this.counters.add(C_FAULTS_MISSING, -1); // the worker that resolves it counts it
        return DEFERRED;
      }
      if (how.cause !== Cause.background || this.ctl.completing()) {
        ok = gate.wait(src, ps, n * ps, this.ctl.words, this.ctl.stopIndex);
      }
    }
    if (ok < 0) {
      const bad = Math.min(n, Math.ceil(-ok / ps));
      if (bad < n) this.release(row, local + bad, local + n, how.from);
      this.failPages(row, local, bad);
      return 0;
    }
    const take = Math.min(n, Math.floor(ok / ps));
    if (take < n) {
      this.release(row, local + take, local + n, how.from);
      this.claim.count = take;
    }
    return take;
  }

  /** Workers: some chunk arrived that this engine has not installed yet. */
  arrivalsPending(): boolean {
    for (let k = 0; k < this.gates.length; k++) {
      if (Atomics.load(this.gateCursors, k) < (this.gates[k] as Gate).published()) return true;
    }
    return false;
  }

  /** Takes the next chunk that arrived in a gate's cache and fills this engine's missing pages of it. */
  private installArrival(): boolean {
    for (let k = 0; k < this.gates.length; k++) {
      const gate = this.gates[k] as Gate;
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
    const tb = this.table;
    const gate = this.gates[k] as Gate;
    const cs = gate.setup.chunkSize;
    const from = gate.setup.base + chunk * cs;
    const rows = tb.rows();
    for (let r = 0; r < rows; r++) {
      if (tb.gate(r) !== k || !tb.alive(r)) continue;
      const ps = tb.pageSize(r);
      const src = tb.srcAddr(r);
      const first = Math.max(0, Math.floor((from - src) / ps));
      const last = Math.min(tb.pages(r), Math.ceil((from + cs - src) / ps));
      const end = tb.stateBase(r) + last;
      let g = tb.stateBase(r) + first;
      while (g < end) {
        g = this.states.nextMissing(g, end);
        if (g < 0) break;
        g += this.fillMissingAround(g, end - g, true);
      }
    }
  }

  /**
   * Publishes a fill: pages [local, local+ok) become PRESENT. `counted` pages were counted
   * before the ioctl (countFill): if the run filled another number (EEXIST skips, a failure,
   * a poison), the statistics are corrected first, so whoever sees the pages PRESENT
   * (populate(), stop) sees them counted. A page whose transition fails was dropped by a
   * REMOVE while we filled it: if our copy may have landed after the kernel zapped it, it
   * holds source bytes where zeros belong, so it is zeroed again; then we let go of it.
   */
  private finish(row: number, local: number, ok: number, how: FillHow, counted: number): void {
    const g = this.table.stateBase(row) + local;
    const run = this.run; // the run that filled them
    const kind = run.kind;
    const bytes = kind === K_POISON ? 0 : run.filled; // poisoned pages hold no bytes
    const copied = bytes > 0 && (kind === K_COPY || kind === K_CONTINUE);
    if (copied) this.settle(run.seq);
    const ps = this.table.pageSize(row);
    const filled = Math.round(bytes / ps);
    if (filled !== counted) {
      this.countFill(kind, how, -counted, ps);
      this.countFill(kind, how, filled, ps);
    }
    for (let i = 0; i < ok; i++) {
      if (this.states.transition(g + i, PAGE_FILLING, PAGE_PRESENT)) continue;
      if (copied && this.states.get(g + i) === PAGE_DROPPED) this.rezero(row, local + i);
      this.letGo(row, local + i);
    }
    this.claim.count = 0;
  }

  /**
   * A page this thread claimed is not FILLING any more: if a REMOVE dropped it meanwhile
   * (PageStates.drop marked it), other threads may claim it now. A thread that faulted on
   * it since was left waiting for us (handleFault): woken after the mark is gone, its next
   * fault is served.
   */
  private letGo(row: number, local: number): void {
    const g = this.table.stateBase(row) + local;
    if (!this.states.isDroppedUnderClaim(g)) return;
    this.states.clearDroppedUnderClaim(g);
    const ps = this.table.pageSize(row);
    this.safeWake(this.table.start(row) + local * ps, ps);
  }

  /** Counts `pages` pages of `ps` bytes filled with `kind` for `how` (negative: takes them back). */
  private countFill(kind: number, how: FillHow, pages: number, ps: number): void {
    if (pages === 0) return;
    const c = this.counters;
    const sign = Math.sign(pages);
    const abs = pages * sign;
    c.add(C_BYTES, pages * ps);
    if (kind === K_ZEROPAGE || kind === K_COPY_ZERO) c.add(C_ZERO_FILLS, pages);
    if (how.cause === Cause.background) c.add(C_PAGES_BACKGROUND, pages);
    else {
      const d = Math.min(how.demand, abs);
      c.add(C_PAGES_DEMAND, sign * d);
      c.add(C_PAGES_READAHEAD, sign * (abs - d));
    }
  }

  /**
   * Waits until the REMOVE events of every batch read so far are in the page-state table.
   * The kernel lets madvise zap as soon as its REMOVE is read, before the reader marks the
   * pages DROPPED: a copy that landed in that gap is only found out (by the FILLING ->
   * PRESENT transition failing) once the reader is done. `seq` is the read sequence before
   * the copy: unchanged and even, no batch was read meanwhile (the common case: one load).
   */
  private settle(seq: number): void {
    const ctl = this.ctl;
    if (ctl.readSeq() === seq && (seq & 1) === 0) return;
    // One read(2) and its events take a microsecond or two: spin briefly before yielding
    // the CPU (a syscall), which matters only when the reader was preempted.
    for (let spins = 0; (ctl.readSeq() & 1) !== 0; spins++) if (spins > 256) yieldCpu();
  }

  /** Claimed pages [first, end) of a row were not filled: give them back (to `to`, unless a REMOVE dropped them meanwhile). */
  private release(row: number, first: number, end: number, to: number): void {
    const base = this.table.stateBase(row);
    for (let p = first; p < end; p++) {
      if (!this.states.transition(base + p, PAGE_FILLING, to)) this.letGo(row, p);
    }
    this.claim.count = 0;
  }

  /** A source failure: poison the pages (the faulting thread gets SIGBUS) or zero them. */
  private failPages(row: number, local: number, n: number): void {
    const tb = this.table;
    const ps = tb.pageSize(row);
    const dst = tb.start(row) + local * ps;
    this.counters.add(C_ERRORS, n);
    try {
      if (this.setup.onSourceError === 'poison') {
        this.runRange(K_POISON, row, local, n);
        this.finish(row, local, n, this.failHow, 0);
      } else {
        this.failHow.demand = n;
        this.failHow.from = this.claim.from;
        this.fill(row, local, n, this.failHow);
      }
    } catch {
      this.release(row, local, local + n, this.claim.from);
      this.safeWake(dst, n * ps);
    }
  }

  /**
   * Maps n pages the page cache holds (minor faults, page-cache sources), all in state
   * `from` before (FILLING: claimed by this thread). Each page mapped becomes PRESENT only
   * if its state is still `from`: a page an owner took meanwhile (hold(), then forget() or
   * markResident()) keeps what the owner recorded, and the owner's punch unmaps what this
   * CONTINUE mapped. Pages not mapped (gave up on EAGAIN) go back to `from`'s owner.
   */
  private continueRun(row: number, local: number, n: number, cause: Cause, from: number): void {
    const ps = this.table.pageSize(row);
    const g = this.table.stateBase(row) + local;
    const dst = this.table.start(row) + local * ps;
    const how = cause === Cause.background ? this.continueBackground : this.continueDemand;
    this.countFill(K_CONTINUE, how, n, ps); // counted before the ioctl that wakes the threads, as in fill()
    let run: RangeRun;
    try {
      run = this.runRange(K_CONTINUE, row, local, n);
    } finally {
      this.countFill(K_CONTINUE, how, Math.round(this.run.filled / ps) - n, ps); // what it did not map is taken back
    }
    const ok = Math.floor(run.done / ps);
    if (run.gaveUp) {
      if (from === PAGE_FILLING) this.release(row, local + ok, local + n, PAGE_MISSING);
      this.safeWake(dst + run.done, n * ps - run.done);
    }
    for (let i = 0; i < ok; i++) {
      if (!this.states.transition(g + i, from, PAGE_PRESENT) && from === PAGE_FILLING) this.letGo(row, local + i);
    }
  }

  /**
   * Makes a page that a REMOVE dropped while we were filling it read zeros again: our own
   * memory is zapped with MADV_DONTNEED (the engine serves zeros on the next touch), a peer's
   * is overwritten with zeros through /proc/PID/mem. Both block until a reader has read or
   * served what they cause, so the dispatcher hands this to a worker.
   */
  rezero(row: number, local: number): void {
    const tb = this.table;
    const ps = tb.pageSize(row);
    const addr = tb.start(row) + local * ps;
    if (!this.mayRetry) {
      this.deferRezero?.(addr);
      return;
    }
    this.counters.add(C_REZEROED);
    this.needReader(); // both ways below wait for a reader (the REMOVE we cause, the fault pwrite takes)
    if (tb.own(row)) {
      tryMadvise(addr, ps, MADV_DONTNEED);
      return;
    }
    const pid = tb.peerPid(row);
    if (!pid) return; // unknown owner: reported through the counter
    if (this.peerMemFd < 0) {
      try { this.peerMemFd = openFile(`/proc/${pid}/mem`, O_RDWR); } catch { return; }
    }
    try { pwriteFrom(this.peerMemFd, this.zeroAddr, ps, addr); } catch { /* the peer exited */ }
  }

  /** Gives back what this resolver opened (a thread that lives on serves the next engine). */
  close(): void {
    if (this.peerMemFd >= 0) closeFd(this.peerMemFd);
    this.peerMemFd = -1;
  }

  /**
   * While on, fills do not wake the threads waiting for their pages (DONTWAKE) and their
   * ranges wait for flushWakes(), up to `wakeBatch` of them (further fills wake at once).
   */
  deferWakes(on: boolean): void {
    this.wakeDeferred = on;
  }

  /** Fills whose threads wait for flushWakes(). */
  wakesDeferred(): number {
    return this.wakeRanges;
  }

  /** Keeps [start, start+len) for flushWakes(); false when full (the fill wakes itself). */
  private deferWake(start: number, len: number): boolean {
    const k = this.wakeRanges;
    if (k === this.wakeStarts.length) return false;
    this.wakeStarts[k] = start;
    this.wakeLens[k] = len;
    this.wakeRanges = k + 1;
    return true;
  }

  /**
   * Wakes the threads of the deferred fills. `span`: with one UFFDIO_WAKE over all their
   * ranges — only when no other fault is known to wait in between (the reader just found
   * nothing pending): a thread waiting there for a page not filled yet would wake too and
   * fault again (harmless, but a fault read twice or lost and redone). Otherwise range by range.
   */
  flushWakes(span: boolean): void {
    // Latencies first, as fills count before the ioctl that wakes: whoever the wake tells
    // its page is there sees it in the statistics too.
    const n = this.wakeCount;
    this.wakeCount = 0;
    if (n > 0) {
      const now = nowUs();
      const w = this.wakeWaiting;
      for (let i = 0; i < n; i++) this.counters.recordLatency((now - (w[i] as number)) | 0);
    }
    const k = this.wakeRanges;
    this.wakeRanges = 0;
    const starts = this.wakeStarts;
    const lens = this.wakeLens;
    if (!span) {
      for (let i = 0; i < k; i++) this.safeWake(starts[i] as number, lens[i] as number);
      return;
    }
    if (k === 0) return;
    let lo = starts[0] as number;
    let hi = lo + (lens[0] as number);
    for (let i = 1; i < k; i++) {
      const a = starts[i] as number;
      if (a < lo) lo = a;
      if (a + (lens[i] as number) > hi) hi = a + (lens[i] as number);
    }
    this.safeWake(lo, hi - lo);
  }

  safeWake(addr: number, len: number): void {
    if (len <= 0) return;
    try {
      this.uffd.wake(addr, len);
      this.counters.add(C_WAKES);
    } catch {
      // The range is gone: nobody can be waiting there.
    }
  }

  /** Records the latency of a fault read at tRead (µs, nowUs); the first one served also stamps the wall clock. */
  private latency(tRead: number): void {
    if (this.wakeDeferred && this.wakeCount < this.wakeWaiting.length) this.wakeWaiting[this.wakeCount++] = tRead;
    else this.counters.recordLatency((nowUs() - tRead) | 0);
    if (this.firstServed) return;
    this.firstServed = true;
    if (this.counters.get(C_FIRST_MS) === 0) this.counters.set(C_FIRST_MS, Date.now());
  }

  /**
   * Background population: claims the next chunk of pages (hot-first order, then
   * address order) and fills its missing runs. Returns false when nothing is left.
   */
  backgroundStep(): boolean {
    const ctl = this.ctl;
    const pf = this.setup.prefetch;
    const order = this.order;
    if (this.gates.length && this.installArrival()) return true;
    if (order) {
      const i = ctl.takeOrder(16);
      if (i < pf.orderLength) {
        const end = Math.min(i + 16, pf.orderLength);
        for (let k = i; k < end; k++) this.fillMissingAround(order[k] as number, 1);
        return true;
      }
    }
    const first = ctl.takeBackground(pf.chunkPages);
    if (first >= this.setup.totalPages) {
      ctl.markBackgroundDone();
      return false;
    }
    let g = first;
    const end = Math.min(first + pf.chunkPages, this.setup.totalPages);
    while (g < end) {
      g = this.states.nextMissing(g, end);
      if (g < 0) break;
      g += this.fillMissingAround(g, end - g);
    }
    return true;
  }

  /** Claims and fills up to max MISSING pages from global page g (stays in one row). Returns pages consumed. */
  private fillMissingAround(g: number, max: number, arrived = false): number {
    const tb = this.table;
    const row = tb.rowOfPage(g);
    if (row < 0) return 1;
    if (tb.missingOp(row) === MissOp.callback && !this.fetchCallback) return max;
    // Remote pages are installed as their chunks arrive (installArrival), or waited for when completing.
    if (tb.gate(row) >= 0 && !arrived && !this.ctl.completing()) return max;
    if (!this.states.transition(g, PAGE_MISSING, PAGE_FILLING)) return 1;
    const local = g - tb.stateBase(row);
    const n = this.extendClaim(row, g, local, max);
    if (tb.minor(row)) {
      // A page-cache source: map what the cache holds (CONTINUE); what it lacks is filled
      // from the missing-fault source below.
      try {
        this.continueRun(row, local, n, Cause.background, PAGE_FILLING);
        return n;
      } catch {
        // Not in the page cache (or gone): fill it as a missing page.
      }
    }
    this.fill(row, local, n, this.backgroundHow);
    return n;
  }

  /**
   * The dispatcher, for a worker that died: finishes its claim as recoverClaims does, then
   * wakes the claimed range, since a fill here may give up (EAGAIN, a remote chunk) and
   * release pages whose threads no one else would wake: they fault again. A callback
   * source's claim is left to the replacement (callbacks are answered to workers only).
   */
  takeOverClaim(deadThread: number): void {
    const cl = new Claims(this.setup.claims, deadThread);
    const n = cl.count;
    if (n <= 0) return;
    const row = cl.row;
    if (this.table.missingOp(row) === MissOp.callback) return;
    const ps = this.table.pageSize(row);
    const start = this.table.start(row) + cl.first * ps;
    this.recoverClaims(deadThread);
    this.safeWake(start, n * ps);
  }

  /** Finishes the claims a dead thread left: fill what it held (EEXIST is fine), then wake. */
  recoverClaims(deadThread: number): void {
    const cl = new Claims(this.setup.claims, deadThread);
    const n = cl.count;
    if (n <= 0) return;
    const row = cl.row;
    const local = cl.first;
    const g = this.table.stateBase(row) + local;
    const how = this.recoverHow;
    how.from = cl.from;
    how.zero = cl.from === PAGE_DROPPED && this.setup.afterRemove === 'zero';
    cl.count = 0;
    // Take over the pages still marked FILLING; a page another live thread holds is
    // filled twice at most, and the kernel keeps the first (EEXIST for the second).
    let i = 0;
    while (i < n) {
      if (this.states.get(g + i) !== PAGE_FILLING) {
        this.letGo(row, local + i); // dropped under the dead thread's claim, maybe
        i++;
        continue;
      }
      let k = 1;
      while (i + k < n && this.states.get(g + i + k) === PAGE_FILLING) k++;
      how.demand = k;
      this.fill(row, local + i, k, how);
      i += k;
    }
  }

  updateCpu(force = false): void {
    const now = nowUs();
    const since = (now - this.lastCpuUpdate) | 0;
    if (!force && since >= 0 && since < 50_000) return;
    this.lastCpuUpdate = now;
    this.counters.set(C_CPU_SEC, threadCpuSeconds());
  }
}

export { COUNTER_WORDS };
