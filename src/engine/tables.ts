// The engine's shared tables beside the rings and page states (shared.ts): the region
// table, the control block, the claim records and the callback slots. Each is a typed view
// over a SharedArrayBuffer that every engine thread rebuilds from its EngineSetup; the word
// layout is private to this module. Accessors are small and monomorphic: they sit on the
// per-fault path and allocate nothing.
import { PAGE_SIZE } from '../kernel/constants.js';

// ---------------------------------------------------------------------------
// Region table: one row of float64 per region (rows are added when a mremap moves part of
// a region). Rows partition the page-state index space.
// ---------------------------------------------------------------------------
const RT_START = 0; // current start address
const RT_SIZE = 1; // bytes
const RT_PAGE_SIZE = 2;
const RT_STATE_BASE = 3; // index of its first page in the page-state table
const RT_MISSING_OP = 4; // MissOp
const RT_SRC_ADDR = 5; // address of the source bytes of its first page (memory sources)
const RT_SOURCE = 6; // index of the region's source spec (callback routing)
const RT_ALIVE = 7; // 0 once unmapped
const RT_SRC_OFFSET = 8; // byte offset of its first page within its source
const RT_MINOR = 9; // 1: a page-cache source (minor faults, CONTINUE)
const RT_OWN = 10; // 1: memory of this process (the engine registered it)
const RT_PEER_PID = 11; // the process owning the memory, when known (for /proc/PID/mem)
const RT_GATE = 12; // 1 + index into EngineSetup.gates of the source's chunk gate; 0: none
const RT_WORDS = 13;
export const MAX_REGION_ROWS = 256;

/** How a missing fault is resolved. */
export const MissOp = {
  /** UFFDIO_ZEROPAGE */
  zeropage: 0,
  /** UFFDIO_COPY from the source address */
  copy: 1,
  /** UFFDIO_COPY from a zero buffer (hugetlbfs has no ZEROPAGE) */
  copyZero: 2,
  /** UFFDIO_COPY from bytes a user callback returned */
  callback: 3,
} as const;
export type MissOp = typeof MissOp[keyof typeof MissOp];

/** What a row holds when it is written. */
export interface RegionRowInit {
  start: number;
  size: number;
  pageSize: number;
  stateBase: number;
  missingOp: MissOp;
  srcAddr: number;
  source: number;
  srcOffset: number;
  minor: boolean;
  own: boolean;
  peerPid: number;
  /** 1 + gate index, 0: none. */
  gate: number;
}

/** A fault's address, and where RegionTable.locate found it: row (-1: none) and page index in the row. */
export interface Located {
  addr: number;
  row: number;
  local: number;
}

export class RegionTable {
  private readonly t: Float64Array;
  private readonly ctl: ControlBlock;

  constructor(buffer: SharedArrayBuffer, control: ControlBlock) {
    this.t = new Float64Array(buffer);
    this.ctl = control;
  }

  static allocate(): SharedArrayBuffer {
    return new SharedArrayBuffer(MAX_REGION_ROWS * RT_WORDS * 8);
  }

  private w(row: number, k: number): number {
    return this.t[row * RT_WORDS + k] as number;
  }

  /** Rows written so far (alive or retired). */
  rows(): number { return this.ctl.regionRows(); }
  start(row: number): number { return this.w(row, RT_START); }
  size(row: number): number { return this.w(row, RT_SIZE); }
  end(row: number): number { return this.w(row, RT_START) + this.w(row, RT_SIZE); }
  pageSize(row: number): number { return this.w(row, RT_PAGE_SIZE); }
  /** Pages in the row. */
  pages(row: number): number { return this.w(row, RT_SIZE) / this.w(row, RT_PAGE_SIZE); }
  stateBase(row: number): number { return this.w(row, RT_STATE_BASE); }
  missingOp(row: number): MissOp { return this.w(row, RT_MISSING_OP) as MissOp; }
  srcAddr(row: number): number { return this.w(row, RT_SRC_ADDR); }
  source(row: number): number { return this.w(row, RT_SOURCE); }
  srcOffset(row: number): number { return this.w(row, RT_SRC_OFFSET); }
  alive(row: number): boolean { return this.w(row, RT_ALIVE) !== 0; }
  minor(row: number): boolean { return this.w(row, RT_MINOR) !== 0; }
  own(row: number): boolean { return this.w(row, RT_OWN) !== 0; }
  peerPid(row: number): number { return this.w(row, RT_PEER_PID); }
  /** Index into EngineSetup.gates of the row's chunk gate, or -1 (not a remote source). */
  gate(row: number): number { return this.w(row, RT_GATE) - 1; }

  /** Page index in the row of addr (which must be in the row). */
  localPage(row: number, addr: number): number {
    return Math.floor((addr - this.w(row, RT_START)) / this.w(row, RT_PAGE_SIZE));
  }

  /** The live row holding addr, or -1. */
  findRow(addr: number): number {
    const t = this.t;
    const n = this.rows();
    for (let r = 0; r < n; r++) {
      const b = r * RT_WORDS;
      const start = t[b + RT_START] as number;
      if (addr >= start && addr < start + (t[b + RT_SIZE] as number) && t[b + RT_ALIVE] !== 0) return r;
    }
    return -1;
  }

  /**
   * Sets f.row (the live row holding f.addr, or -1) and f.local (its page index in the
   * row). Takes the fault rather than the address: on the per-fault path an address
   * crosses no call (see resolver.ts, Fault).
   */
  locate(f: Located): void {
    const t = this.t;
    const addr = f.addr;
    const n = this.rows();
    for (let r = 0; r < n; r++) {
      const b = r * RT_WORDS;
      const start = t[b + RT_START] as number;
      if (addr >= start && addr < start + (t[b + RT_SIZE] as number) && t[b + RT_ALIVE] !== 0) {
        f.row = r;
        f.local = Math.floor((addr - start) / (t[b + RT_PAGE_SIZE] as number));
        return;
      }
    }
    f.row = -1;
    f.local = 0;
  }

  /** The live row whose page-state range holds global page g, or -1. */
  rowOfPage(g: number): number {
    const n = this.rows();
    for (let r = 0; r < n; r++) {
      const base = this.stateBase(r);
      if (g >= base && g < base + this.pages(r) && this.alive(r)) return r;
    }
    return -1;
  }

  /** Global page index of the page holding addr. */
  globalPage(row: number, addr: number): number {
    return this.stateBase(row) + this.localPage(row, addr);
  }

  /** Writes row `row` (the Engine, before any thread starts; scratch setups). */
  write(row: number, r: RegionRowInit): void {
    const t = this.t;
    const b = row * RT_WORDS;
    t[b + RT_START] = r.start;
    t[b + RT_SIZE] = r.size;
    t[b + RT_PAGE_SIZE] = r.pageSize;
    t[b + RT_STATE_BASE] = r.stateBase;
    t[b + RT_MISSING_OP] = r.missingOp;
    t[b + RT_SRC_ADDR] = r.srcAddr;
    t[b + RT_SOURCE] = r.source;
    t[b + RT_ALIVE] = 1;
    t[b + RT_SRC_OFFSET] = r.srcOffset;
    t[b + RT_MINOR] = r.minor ? 1 : 0;
    t[b + RT_OWN] = r.own ? 1 : 0;
    t[b + RT_PEER_PID] = r.peerPid;
    t[b + RT_GATE] = r.gate;
  }

  // ---- changes by the thread applying events (under the read lock) ------------------

  /** The row is gone (unmapped): never matched again. */
  retire(row: number): void { this.t[row * RT_WORDS + RT_ALIVE] = 0; }
  /** The whole row moved to `start` (mremap). */
  move(row: number, start: number): void { this.t[row * RT_WORDS + RT_START] = start; }
  /** The row keeps only its first `size` bytes (mremap moved the rest). */
  truncate(row: number, size: number): void { this.t[row * RT_WORDS + RT_SIZE] = size; }

  /**
   * Appends a row for `size` bytes at `start` that were bytes [offset, offset+size) of row
   * `from` (same source, page states shifted by offset). False when the table is full.
   */
  addPart(from: number, start: number, size: number, offset: number): boolean {
    const rows = this.rows();
    if (rows >= MAX_REGION_ROWS) return false;
    const t = this.t;
    const src = from * RT_WORDS;
    const dst = rows * RT_WORDS;
    t.copyWithin(dst, src, src + RT_WORDS);
    const ps = this.pageSize(from);
    t[dst + RT_START] = start;
    t[dst + RT_SIZE] = size;
    t[dst + RT_STATE_BASE] = this.stateBase(from) + offset / ps;
    t[dst + RT_SRC_ADDR] = this.srcAddr(from) + offset;
    t[dst + RT_SRC_OFFSET] = this.srcOffset(from) + offset;
    this.ctl.setRegionRows(rows + 1);
    return true;
  }
}

/** A scratch row for warm-ups and micro-benchmarks: 4 KiB pages copied from srcAddr. */
export function scratchRow(start: number, size: number, srcAddr: number, stateBase: number): RegionRowInit {
  return {
    start, size, pageSize: PAGE_SIZE, stateBase, missingOp: MissOp.copy, srcAddr, source: 0, srcOffset: 0,
    minor: false, own: true, peerPid: 0, gate: 0,
  };
}

// ---------------------------------------------------------------------------
// Control block: Int32 words every thread reads and writes with Atomics.
// ---------------------------------------------------------------------------
const CT_STOP = 0; // 1: stop now
const CT_COMPLETE = 1; // 1: fill every remaining page (stop 'complete', populate()), demand first
const CT_BG_CURSOR = 2; // next global page index for background population
const CT_ORDER_CURSOR = 3; // next index into the hot-first order list
const CT_REGION_ROWS = 4; // rows in the region table
const CT_READY = 5; // threads that started
const CT_BG_DONE = 6; // background population passed the end
const CT_DISPATCHER_DONE = 7;
const CT_PEER_GONE = 8; // the process owning the memory exited (ESRCH)
const CT_EPOCH = 9; // bumped after each non-fault event applied
const CT_READ_LOCK = 10; // holder's thread index + 1 while it reads the uffd and applies the batch's events (reader.ts)
const CT_DISPATCHER_IDLE = 11; // 1 while the dispatcher sleeps without watching the uffd (readers 'all')
const CT_RWP_HOLD = 12; // 1: an RWP window is open: RWP faults wait (Engine.holdRwp)
const CT_READ_SEQ = 13; // odd while a thread holds the read lock (a batch read, its events not all applied yet)
const CT_REZERO_PENDING = 14; // re-zeroings the dispatcher queued that no worker has done yet
const CT_POPULATION_OPEN = 15; // 1 once background population may start (the dispatcher opens it: demand first)
const CT_THREAD_IDS = 16; // threadId of worker i at CT_THREAD_IDS + i
const CT_KILL = 80; // fault injection (tests): worker i throws at its next fill when CT_KILL + i is 1
const CT_HELP = 144; // readers 'all': 1 at CT_HELP + i while worker i is busy away from the uffd
const CT_DOWN = 208; // WorkerState of worker i at CT_DOWN + i (a dead worker's shard is taken over by the dispatcher)
const CT_DEATHS = 272; // deaths of worker i so far at CT_DEATHS + i
const CT_DISPATCHER_TID = 336; // the dispatcher's kernel thread id (0: not started)
const CT_DISPATCHER_NICE = 337; // its nice value while it serves
const CT_DISPATCHER_NICE_ERRNO = 338; // why the nice value asked for was refused (0: it was not)
const CT_WORDS = 339;

/**
 * Whether a worker serves its shard. When one dies the dispatcher takes its shard over until
 * the replacement serves: it finishes the dead worker's claim, wakes the threads of faults
 * left in its ring, and resolves the shard's new faults itself. The dead worker's claim is
 * recovered by one thread at a time: the dispatcher or the replacement, never both.
 */
export const enum WorkerState {
  serving = 0,
  /** Dead, or started and not serving yet. */
  down = 1,
  /** Down, and the dispatcher is finishing its claim. */
  dispatcherRecovering = 2,
  /** Down, and the replacement is finishing its predecessor's claim. */
  workerRecovering = 3,
}
/** Worker threads a control block has words for. */
export const MAX_WORKERS = 64;

export class ControlBlock {
  readonly words: Int32Array;

  constructor(buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer);
  }

  static allocate(): SharedArrayBuffer {
    return new SharedArrayBuffer(CT_WORDS * 4);
  }

  // ---- life cycle ----
  stopping(): boolean { return Atomics.load(this.words, CT_STOP) !== 0; }
  requestStop(): void { Atomics.store(this.words, CT_STOP, 1); }
  /** The stop word's index in `words`, for waits that end on stop (remote chunk gates). */
  get stopIndex(): number { return CT_STOP; }
  /** Sleeps up to ms unless stop is requested (a bounded back-off). */
  pause(ms: number): void { Atomics.wait(this.words, CT_STOP, 0, ms); }
  /** A thread is serving. */
  markReady(): void { Atomics.add(this.words, CT_READY, 1); }
  readyThreads(): number { return Atomics.load(this.words, CT_READY); }
  markDispatcherDone(): void { Atomics.store(this.words, CT_DISPATCHER_DONE, 1); }
  /** The dispatcher's thread and the priority it serves at (EngineOptions.dispatcherNice). */
  setDispatcherPriority(tid: number, nice: number, refusedErrno: number): void {
    Atomics.store(this.words, CT_DISPATCHER_NICE, nice);
    Atomics.store(this.words, CT_DISPATCHER_NICE_ERRNO, refusedErrno);
    Atomics.store(this.words, CT_DISPATCHER_TID, tid); // last: a tid says the others are set
  }
  dispatcherTid(): number { return Atomics.load(this.words, CT_DISPATCHER_TID); }
  dispatcherNice(): number { return Atomics.load(this.words, CT_DISPATCHER_NICE); }
  dispatcherNiceErrno(): number { return Atomics.load(this.words, CT_DISPATCHER_NICE_ERRNO); }
  peerGone(): boolean { return Atomics.load(this.words, CT_PEER_GONE) !== 0; }
  markPeerGone(): void { Atomics.store(this.words, CT_PEER_GONE, 1); }

  // ---- population ----
  completing(): boolean { return Atomics.load(this.words, CT_COMPLETE) !== 0; }
  setCompleting(on: boolean): void { Atomics.store(this.words, CT_COMPLETE, on ? 1 : 0); }
  /** Takes the next n pages for background population; returns the first. */
  takeBackground(n: number): number { return Atomics.add(this.words, CT_BG_CURSOR, n); }
  takeOrder(n: number): number { return Atomics.add(this.words, CT_ORDER_CURSOR, n); }
  backgroundDone(): boolean { return Atomics.load(this.words, CT_BG_DONE) === 1; }
  markBackgroundDone(): void { Atomics.store(this.words, CT_BG_DONE, 1); }
  /**
   * Workers start background population only once the dispatcher has served its first batch
   * of faults (or found none for a moment): a guest's first faults are resolved while the
   * workers sleep, not queued behind their first chunks.
   */
  openPopulation(): void { Atomics.store(this.words, CT_POPULATION_OPEN, 1); }
  populationOpen(): boolean { return Atomics.load(this.words, CT_POPULATION_OPEN) !== 0; }
  /** Population starts over from the first page (a sweep of stop 'complete' or populate()). */
  restartBackground(): void {
    Atomics.store(this.words, CT_BG_CURSOR, 0);
    Atomics.store(this.words, CT_BG_DONE, 0);
  }

  // ---- region table ----
  regionRows(): number { return Atomics.load(this.words, CT_REGION_ROWS); }
  setRegionRows(n: number): void { Atomics.store(this.words, CT_REGION_ROWS, n); }

  // ---- reading the uffd (reader.ts) ----
  /** Thread `thread` takes the read lock (spinning with `yieldCpu`); the sequence turns odd. */
  lockRead(yieldCpu: () => void, thread: number): void {
    while (Atomics.compareExchange(this.words, CT_READ_LOCK, 0, thread + 1) !== 0) yieldCpu();
    Atomics.add(this.words, CT_READ_SEQ, 1);
  }
  /**
   * The successor of a thread that died (terminated) holding the read lock frees it, so the
   * other readers do not spin forever. Only the dead holder could change the words while
   * the lock names it: the sequence is made even first, then the lock released.
   * Returns whether the lock was held.
   */
  breakReadLock(thread: number): boolean {
    if (Atomics.load(this.words, CT_READ_LOCK) !== thread + 1) return false;
    if (Atomics.load(this.words, CT_READ_SEQ) & 1) Atomics.add(this.words, CT_READ_SEQ, 1);
    Atomics.store(this.words, CT_READ_LOCK, 0);
    return true;
  }
  unlockRead(): void {
    Atomics.add(this.words, CT_READ_SEQ, 1);
    Atomics.store(this.words, CT_READ_LOCK, 0);
  }
  /** Odd while a batch is read and its events are being applied. */
  readSeq(): number { return Atomics.load(this.words, CT_READ_SEQ); }
  eventApplied(): void { Atomics.add(this.words, CT_EPOCH, 1); }
  dispatcherIdle(): boolean { return Atomics.load(this.words, CT_DISPATCHER_IDLE) !== 0; }
  setDispatcherIdle(on: boolean): void { Atomics.store(this.words, CT_DISPATCHER_IDLE, on ? 1 : 0); }
  /** readers 'all': worker w is busy away from the uffd (or not started): the dispatcher reads. */
  helpWanted(w: number): boolean { return Atomics.load(this.words, CT_HELP + w) !== 0; }
  setHelpWanted(w: number, on: boolean): void { Atomics.store(this.words, CT_HELP + w, on ? 1 : 0); }

  // ---- faults ----
  rwpHold(): boolean { return Atomics.load(this.words, CT_RWP_HOLD) !== 0; }
  setRwpHold(on: boolean): void { Atomics.store(this.words, CT_RWP_HOLD, on ? 1 : 0); }
  rezeroQueued(): void { Atomics.add(this.words, CT_REZERO_PENDING, 1); }
  rezeroDone(): void { Atomics.sub(this.words, CT_REZERO_PENDING, 1); }
  rezerosPending(): number { return Atomics.load(this.words, CT_REZERO_PENDING); }

  // ---- workers ----
  threadId(w: number): number { return Atomics.load(this.words, CT_THREAD_IDS + w); }
  setThreadId(w: number, id: number): void { Atomics.store(this.words, CT_THREAD_IDS + w, id); }
  /** Fault injection: worker w throws at its next fill (tests; see EngineOptions.faultInjection). */
  armKill(w: number): void { Atomics.store(this.words, CT_KILL + w, 1); }
  /** True once for an armed worker (it disarms it). */
  takeKill(w: number): boolean { return Atomics.compareExchange(this.words, CT_KILL + w, 1, 2) === 1; }

  // ---- worker deaths ----
  workerState(w: number): WorkerState { return Atomics.load(this.words, CT_DOWN + w); }
  deaths(w: number): number { return Atomics.load(this.words, CT_DEATHS + w); }
  /** Worker w died (the main thread, before it starts the replacement). */
  markWorkerDown(w: number): void {
    Atomics.store(this.words, CT_DOWN + w, WorkerState.down);
    Atomics.add(this.words, CT_DEATHS + w, 1);
  }
  /** The dispatcher: takes the right to finish a dead worker's claim; false if its replacement has it (or serves). */
  beginDispatcherRecovery(w: number): boolean {
    return Atomics.compareExchange(this.words, CT_DOWN + w, WorkerState.down, WorkerState.dispatcherRecovering) === WorkerState.down;
  }
  endDispatcherRecovery(w: number): void {
    Atomics.compareExchange(this.words, CT_DOWN + w, WorkerState.dispatcherRecovering, WorkerState.down);
  }
  /** A (re)started worker: waits out the dispatcher's recovery of its predecessor's claim, then takes the right itself. */
  beginWorkerRecovery(w: number, yieldCpu: () => void): void {
    for (;;) {
      const s = Atomics.load(this.words, CT_DOWN + w);
      if (s === WorkerState.serving || s === WorkerState.workerRecovering) return; // first start, or a predecessor died recovering
      if (s === WorkerState.down && Atomics.compareExchange(this.words, CT_DOWN + w, s, WorkerState.workerRecovering) === s) return;
      yieldCpu(); // the dispatcher is recovering: a fill or two
    }
  }
  /** The worker serves its shard again (after its recovery). */
  markWorkerServing(w: number): void { Atomics.store(this.words, CT_DOWN + w, WorkerState.serving); }
}

// ---------------------------------------------------------------------------
// Claim records: per thread, the pages it has claimed and not yet finished, so that the
// replacement of a thread that died can finish them.
// ---------------------------------------------------------------------------
const CL_ROW = 0;
const CL_FIRST = 1;
const CL_COUNT = 2;
const CL_FROM = 3; // the state the pages were claimed from: what they go back to if not filled
const CL_WORDS = 4;

export class Claims {
  private readonly c: Float64Array;

  /** The claim record of one thread (threads: workers, then the dispatcher). */
  constructor(buffer: SharedArrayBuffer, thread: number) {
    this.c = new Float64Array(buffer, thread * CL_WORDS * 8, CL_WORDS);
  }

  static allocate(threads: number): SharedArrayBuffer {
    return new SharedArrayBuffer(threads * CL_WORDS * 8);
  }

  /** Whether any of `threads` threads holds a claim. */
  static anyHeld(buffer: SharedArrayBuffer, threads: number): boolean {
    for (let t = 0; t < threads; t++) if (new Claims(buffer, t).count > 0) return true;
    return false;
  }

  record(row: number, first: number, count: number, from: number): void {
    this.c[CL_ROW] = row;
    this.c[CL_FIRST] = first;
    this.c[CL_FROM] = from;
    this.c[CL_COUNT] = count;
  }
  get row(): number { return this.c[CL_ROW] as number; }
  get first(): number { return this.c[CL_FIRST] as number; }
  get count(): number { return this.c[CL_COUNT] as number; }
  set count(n: number) { this.c[CL_COUNT] = n; }
  /** The page state the claimed pages came from. */
  get from(): number { return this.c[CL_FROM] as number; }
}

// ---------------------------------------------------------------------------
// Callback slots: per worker, a request/response slot for callback sources, which run on
// the main thread. The bytes go through the worker's staging area.
// ---------------------------------------------------------------------------
const CB_STATE = 0; // CallbackState
const CB_ID = 1; // request number: a late answer to an abandoned request is dropped
const CB_WORDS = 16;

export const CallbackState = { idle: 0, requested: 1, ready: 2, failed: 3 } as const;

export class CallbackSlot {
  private readonly s: Int32Array;
  /** Where the answer's bytes go. */
  readonly staging: Uint8Array;

  constructor(control: SharedArrayBuffer, staging: SharedArrayBuffer, runBytes: number, shard: number) {
    this.s = new Int32Array(control, shard * CB_WORDS * 4, CB_WORDS);
    this.staging = new Uint8Array(staging, shard * runBytes, runBytes);
  }

  static allocate(workers: number): SharedArrayBuffer {
    return new SharedArrayBuffer(CB_WORDS * 4 * workers);
  }

  // Worker side.
  request(id: number): void {
    Atomics.store(this.s, CB_ID, id);
    Atomics.store(this.s, CB_STATE, CallbackState.requested);
  }
  /** Waits up to ms while the request is pending; returns the state. */
  wait(ms: number): number {
    Atomics.wait(this.s, CB_STATE, CallbackState.requested, ms);
    return Atomics.load(this.s, CB_STATE);
  }
  state(): number { return Atomics.load(this.s, CB_STATE); }
  reset(): void { Atomics.store(this.s, CB_STATE, CallbackState.idle); }

  // Main-thread side.
  /** Still waiting for request `id` (not abandoned by the worker). */
  awaits(id: number): boolean {
    return Atomics.load(this.s, CB_ID) === id && Atomics.load(this.s, CB_STATE) === CallbackState.requested;
  }
  answer(id: number, ok: boolean): void {
    if (!this.awaits(id)) return; // abandoned
    Atomics.store(this.s, CB_STATE, ok ? CallbackState.ready : CallbackState.failed);
    Atomics.notify(this.s, CB_STATE);
  }
}
