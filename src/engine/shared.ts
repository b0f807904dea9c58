// Shared-memory structures of the engine, all in SharedArrayBuffers so every thread
// sees the same bytes: the fault ring (one per worker), the page-state table and the
// per-thread counters. Threads rebuild the views from the buffers they are handed.
// Nothing here allocates after construction.
import { eventfdSignal } from '../kernel/memory.js';

// ---------------------------------------------------------------------------
// Ring: single producer (the dispatcher), single consumer (one worker).
// Each entry is ENTRY_WORDS float64: fault address, fault flags (the kernel's), time read
// (ms), and what the entry asks for (EntryKind).
// Indices only grow; slot = index & mask. The consumer advances `head` only after it
// has resolved an entry, so a worker that dies leaves its entries for its replacement.
// ---------------------------------------------------------------------------
export const ENTRY_WORDS = 4;
/** What a ring entry asks the worker to do with its address. */
export const EntryKind = {
  /** Resolve the fault. */
  fault: 0,
  /** Make the page read zeros again (a REMOVE raced with its fill; see Resolver.rezero). */
  rezero: 1,
} as const;
export type EntryKind = typeof EntryKind[keyof typeof EntryKind];
// Control words, 64 bytes apart so head, tail and the sleep flag sit in separate cache lines.
const R_HEAD = 0; // next entry to consume
const R_TAIL = 16; // next entry to produce
const R_SLEEPING = 32; // consumer is (about to be) in Atomics.wait
const R_AWAY = 36; // while the consumer fills a background chunk: when it began (nowUs, never 0); else 0
const R_WATCHING = 37; // 1 while the consumer spins on the ring: a fault handed over is taken at once
const R_WORDS = 48;

export interface RingBuffers {
  control: SharedArrayBuffer;
  entries: SharedArrayBuffer;
  /** An eventfd the consumer may sleep on in poll(2) (beside the uffd) instead of Atomics.wait; -1: none. */
  eventFd: number;
}

/** What a fault entry holds (the resolver's Fault). */
export interface StagedFault { addr: number; flags: number; readUs: number }

export class Ring {
  readonly control: Int32Array;
  readonly entries: Float64Array;
  readonly capacity: number;
  readonly eventFd: number;
  private readonly mask: number;

  constructor(buffers: RingBuffers) {
    this.eventFd = buffers.eventFd;
    this.control = new Int32Array(buffers.control);
    this.entries = new Float64Array(buffers.entries);
    this.capacity = this.entries.length / ENTRY_WORDS;
    this.mask = this.capacity - 1;
  }

  static allocate(capacity: number, eventFd = -1): RingBuffers {
    if (capacity < 2 || (capacity & (capacity - 1)) !== 0) throw new RangeError('ring capacity must be a power of two');
    return {
      control: new SharedArrayBuffer(R_WORDS * 4),
      entries: new SharedArrayBuffer(capacity * ENTRY_WORDS * 8),
      eventFd,
    };
  }

  get head(): number { return Atomics.load(this.control, R_HEAD); }
  get tail(): number { return Atomics.load(this.control, R_TAIL); }
  size(): number { return (this.tail - this.head) | 0; }
  free(): number { return this.capacity - this.size(); }

  // Producer side -----------------------------------------------------------
  /**
   * Writes a fault entry (address, the kernel's fault flags, time read) after `pending`
   * staged ones, without publishing it; returns false when the ring is full.
   */
  stage(pending: number, f: StagedFault): boolean {
    const i = this.slot(pending);
    if (i < 0) return false;
    this.entries[i] = f.addr; // read here, not passed: an address would be boxed crossing the call
    this.entries[i + 1] = f.flags;
    this.entries[i + 2] = f.readUs;
    this.entries[i + 3] = EntryKind.fault;
    return true;
  }
  /** Writes an entry asking to re-zero the page at addr (see stage). */
  stageRezero(pending: number, addr: number, t: number): boolean {
    const i = this.slot(pending);
    if (i < 0) return false;
    this.entries[i] = addr;
    this.entries[i + 1] = 0;
    this.entries[i + 2] = t;
    this.entries[i + 3] = EntryKind.rezero;
    return true;
  }
  /** Index in `entries` of the entry after `pending` staged ones, or -1 when the ring is full. */
  private slot(pending: number): number {
    const tail = Atomics.load(this.control, R_TAIL);
    if (((tail + pending - Atomics.load(this.control, R_HEAD)) | 0) >= this.capacity) return -1;
    return ((tail + pending) & this.mask) * ENTRY_WORDS;
  }
  /** Publishes n staged entries; wakes the consumer if it sleeps. Returns true if it woke it. */
  publish(n: number): boolean {
    Atomics.add(this.control, R_TAIL, n);
    if (Atomics.load(this.control, R_SLEEPING) !== 0) {
      this.kick();
      return true;
    }
    return false;
  }
  consumerSleeping(): boolean { return Atomics.load(this.control, R_SLEEPING) !== 0; }
  /** The consumer spins on the ring (a fault handed over now is taken at once). */
  consumerWatching(): boolean { return Atomics.load(this.control, R_WATCHING) !== 0; }
  /** How long (µs) the consumer has been filling its current background chunk at `now` (nowUs); -1 when it is not. */
  consumerAwayFor(now: number): number {
    const since = Atomics.load(this.control, R_AWAY);
    return since === 0 ? -1 : (now - since) | 0;
  }
  /** Wakes the consumer regardless (shutdown, or work that is not in the ring). */
  kick(): void {
    Atomics.notify(this.control, R_TAIL, 1);
    if (this.eventFd >= 0) eventfdSignal(this.eventFd);
  }

  // Consumer side -----------------------------------------------------------
  /** Copies fault entry `index` into f (address, flags, time read): the address is not returned (see resolver.ts, Fault). */
  loadFault(index: number, f: StagedFault): void {
    const e = (index & this.mask) * ENTRY_WORDS;
    const entries = this.entries;
    f.addr = entries[e] as number;
    f.flags = entries[e + 1] as number;
    f.readUs = entries[e + 2] as number;
  }
  /** Whether entry `index` is a fault of f's flags at f.addr + delta (a run one ioctl can serve). */
  follows(index: number, f: StagedFault, delta: number): boolean {
    const e = (index & this.mask) * ENTRY_WORDS;
    const entries = this.entries;
    return entries[e + 3] === EntryKind.fault && entries[e + 1] === f.flags && entries[e] === f.addr + delta;
  }
  addrAt(index: number): number { return this.entries[(index & this.mask) * ENTRY_WORDS] as number; }
  flagsAt(index: number): number { return this.entries[(index & this.mask) * ENTRY_WORDS + 1] as number; }
  timeAt(index: number): number { return this.entries[(index & this.mask) * ENTRY_WORDS + 2] as number; }
  kindAt(index: number): EntryKind { return this.entries[(index & this.mask) * ENTRY_WORDS + 3] as EntryKind; }
  /** Marks entries up to (not including) index as done. */
  commit(index: number): void { Atomics.store(this.control, R_HEAD, index); }
  /**
   * Sleeps until the producer publishes past `seenTail` or timeoutMs passes.
   * The sleeping flag is raised before the tail is re-checked, so a publish cannot be missed.
   */
  sleep(seenTail: number, timeoutMs: number): void {
    Atomics.store(this.control, R_SLEEPING, 1);
    if (Atomics.load(this.control, R_TAIL) === seenTail) {
      Atomics.wait(this.control, R_TAIL, seenTail, timeoutMs);
    }
    Atomics.store(this.control, R_SLEEPING, 0);
  }
  /**
   * Sleeping in poll(2) instead (a consumer that also waits for the uffd): raise the flag,
   * then re-check the tail; true if the consumer may sleep. Lower it with awake().
   */
  mayPoll(seenTail: number): boolean {
    Atomics.store(this.control, R_SLEEPING, 1);
    return Atomics.load(this.control, R_TAIL) === seenTail;
  }
  awake(): void {
    Atomics.store(this.control, R_SLEEPING, 0);
  }
  /** Raised while the consumer spins on the ring (see consumerWatching). */
  setWatching(watching: boolean): void {
    Atomics.store(this.control, R_WATCHING, watching ? 1 : 0);
  }
  /** The consumer starts a background chunk at `since` (nowUs), or is back from it (0). */
  setAway(since: number): void {
    Atomics.store(this.control, R_AWAY, since);
  }
}

// ---------------------------------------------------------------------------
// Page-state table: 2 bits per page, 16 pages per Int32 word. A 1 TiB region of 4 KiB
// pages needs 64 MiB of address space, and only the words of touched pages become
// resident. Transitions are compare-and-swap on the word, so a page is claimed by
// exactly one filler. After the states, 1 bit per page: "dropped under a claim" (drop()),
// set while a page a REMOVE dropped is still held by the thread that was filling it.
// ---------------------------------------------------------------------------
export const PAGE_MISSING = 0; // never filled: a fault or prefetch may claim it
export const PAGE_FILLING = 1; // claimed by one thread, being filled
export const PAGE_PRESENT = 2; // filled
export const PAGE_DROPPED = 3; // removed or unmapped by the application: zero on fault, never prefetched

export class PageStates {
  /** The 2-bit states, 16 pages per word. */
  readonly words: Int32Array;
  /** 1 bit per page, 32 pages per word: dropped while claimed, the claimer not done yet (drop()). */
  private readonly droppedUnderClaim: Int32Array;
  readonly pages: number;
  constructor(buffer: SharedArrayBuffer, pages: number) {
    const stateWords = PageStates.stateWords(pages);
    this.words = new Int32Array(buffer, 0, stateWords);
    this.droppedUnderClaim = new Int32Array(buffer, stateWords * 4, PageStates.markWords(pages));
    this.pages = pages;
  }
  private static stateWords(pages: number): number {
    return Math.max(1, Math.ceil(pages / 16));
  }
  private static markWords(pages: number): number {
    return Math.max(1, Math.ceil(pages / 32));
  }
  static allocate(pages: number): SharedArrayBuffer {
    return new SharedArrayBuffer((PageStates.stateWords(pages) + PageStates.markWords(pages)) * 4);
  }
  /** Bytes of the 2-bit states at the start of a table of `pages` pages (what observers read). */
  static stateBytes(pages: number): number {
    return PageStates.stateWords(pages) * 4;
  }
  get(page: number): number {
    return (Atomics.load(this.words, page >>> 4) >>> ((page & 15) << 1)) & 3;
  }
  /** Atomically moves a page from `from` to `to`; false if it was not in `from`. */
  transition(page: number, from: number, to: number): boolean {
    const w = page >>> 4;
    const shift = (page & 15) << 1;
    const mask = 3 << shift;
    // The first guess is a plain read (Atomics.load is a builtin call, not inlined): the
    // compare-and-swap checks it, and a guess that says "not in `from`" is confirmed
    // atomically before the answer is no.
    let old = this.words[w] as number;
    for (;;) {
      if (((old >>> shift) & 3) !== from) {
        const now = Atomics.load(this.words, w);
        if (now === old || ((now >>> shift) & 3) !== from) return false;
        old = now;
      }
      const seen = Atomics.compareExchange(this.words, w, old, (old & ~mask) | (to << shift));
      if (seen === old) return true;
      old = seen;
    }
  }
  /** Sets a page's state whatever it was; returns the previous state. */
  set(page: number, to: number): number {
    const w = page >>> 4;
    const shift = (page & 15) << 1;
    const mask = 3 << shift;
    for (;;) {
      const old = Atomics.load(this.words, w);
      const next = (old & ~mask) | (to << shift);
      if (Atomics.compareExchange(this.words, w, old, next) === old) return (old >>> shift) & 3;
    }
  }
  /**
   * A REMOVE or UNMAP (the reader, under the read lock): the page becomes DROPPED. A page
   * being filled is first marked "dropped under a claim": until its claimer has seen the
   * drop (its FILLING -> PRESENT fails) and let go (clearDroppedUnderClaim), no other thread
   * claims it. Otherwise a second claimer's FILLING would let the first one's publish
   * succeed on a page it no longer owns, and bytes it copied after the kernel zapped the
   * page would stay where zeros belong.
   */
  drop(page: number): void {
    const w = page >>> 5;
    const bit = 1 << (page & 31);
    let marked = false;
    for (;;) {
      const s = this.get(page);
      if (s === PAGE_FILLING) {
        if (!marked) Atomics.or(this.droppedUnderClaim, w, bit);
        marked = true;
        if (this.transition(page, PAGE_FILLING, PAGE_DROPPED)) return;
      } else {
        // The claimer published meanwhile: the mark is not for anyone (cleared before the
        // page reads DROPPED, so no thread sees both).
        if (marked) Atomics.and(this.droppedUnderClaim, w, ~bit);
        marked = false;
        if (this.transition(page, s, PAGE_DROPPED)) return;
      }
    }
  }
  /**
   * Claims a page (`from` -> FILLING) for a fill or an owner's hold. A DROPPED page whose
   * former claimer has not let go yet (drop()) is refused: that claimer wakes its faults.
   */
  claim(page: number, from: number): boolean {
    if (from === PAGE_DROPPED && this.isDroppedUnderClaim(page)) return false;
    return this.transition(page, from, PAGE_FILLING);
  }
  /** Whether the page was dropped while claimed and its claimer has not let go yet (see drop()). */
  isDroppedUnderClaim(page: number): boolean {
    return (Atomics.load(this.droppedUnderClaim, page >>> 5) & (1 << (page & 31))) !== 0;
  }
  /** The claimer of a page drop() took from it lets go: other threads may claim it now. */
  clearDroppedUnderClaim(page: number): void {
    Atomics.and(this.droppedUnderClaim, page >>> 5, ~(1 << (page & 31)));
  }
  /** Counts pages in each state over [first, first+count). */
  count(first: number, count: number, out: Float64Array): void {
    out.fill(0);
    for (let p = first; p < first + count; p++) {
      const st = this.get(p);
      out[st] = (out[st] as number) + 1;
    }
  }
  /** Pages whose state is below `limit` (limit PRESENT: MISSING or FILLING), a word at a time. */
  countBelow(limit: number): number {
    let n = 0;
    const full = this.pages >>> 4;
    for (let w = 0; w < full; w++) {
      const v = Atomics.load(this.words, w);
      if (v === -1) continue; // all DROPPED
      if (limit === PAGE_PRESENT) {
        // A field is below PRESENT when its high bit is clear.
        n += 16 - popcount((v >>> 1) & 0x55555555);
      } else {
        for (let i = 0; i < 16; i++) if (((v >>> (i << 1)) & 3) < limit) n++;
      }
    }
    for (let p = full << 4; p < this.pages; p++) if (this.get(p) < limit) n++;
    return n;
  }
  /** First page at or after `from` (below `end`) in state MISSING, or -1. Skips whole words. */
  nextMissing(from: number, end: number): number {
    let p = from;
    while (p < end) {
      if ((p & 15) === 0 && p + 16 <= end) {
        // A word with no MISSING page: every 2-bit field non-zero.
        const v = Atomics.load(this.words, p >>> 4);
        const nonzero = (v | (v >>> 1)) & 0x55555555;
        if (nonzero === 0x55555555) { p += 16; continue; }
      }
      if (this.get(p) === PAGE_MISSING) return p;
      p++;
    }
    return -1;
  }
}

// ---------------------------------------------------------------------------
// Counters: one block of float64 per thread (workers, then the dispatcher). Each block
// has a single writer, so plain stores suffice; readers may see a value one update old.
// ---------------------------------------------------------------------------
export const C_FAULTS_MISSING = 0;
export const C_FAULTS_MINOR = 1;
export const C_FAULTS_WP = 2;
export const C_FAULTS_RWP = 3;
export const C_PAGES_DEMAND = 4; // pages filled because a thread faulted on them
export const C_PAGES_READAHEAD = 5; // pages filled around a fault
export const C_PAGES_BACKGROUND = 6; // pages filled by background population
export const C_BYTES = 7;
export const C_IOCTLS = 8;
export const C_RETRIES = 9; // EAGAIN retries
export const C_EEXIST = 10; // another path filled the page first
export const C_WAKES = 11; // UFFDIO_WAKE issued
export const C_ERRORS = 12; // pages failed (poisoned or zero-filled after a source error)
export const C_INLINE = 13; // faults the dispatcher resolved itself
export const C_HANDOFFS = 14; // faults handed to a worker ring
export const C_CPU_SEC = 15; // thread CPU time (seconds)
export const C_READS = 16; // read(2) calls that returned messages
export const C_EVENTS = 17; // non-fault events applied
export const C_ZERO_FILLS = 18; // pages zero-filled (zero source, or after REMOVE)
export const C_SPURIOUS = 19; // faults on a page already present or being filled elsewhere
export const C_REZEROED = 20; // pages made zero again after a REMOVE raced with their fill
export const C_REMOVES = 21; // REMOVE events applied
export const C_DIRECT = 22; // faults a worker read from the uffd and resolved itself
export const C_FIRST_MS = 23; // wall-clock ms when this thread resolved its first fault (0: none yet)
export const C_HIST = 24; // latency histogram: bucket b counts [2^b, 2^(b+1)) µs, bucket 0 also < 1 µs
export const HIST_BUCKETS = 32;
/** The lower edge of the last bucket, µs (a constant: V8 calls pow() for `2 ** x` at run time). */
const HIST_TOP_US = 2 ** (HIST_BUCKETS - 1);
export const COUNTER_WORDS = C_HIST + HIST_BUCKETS;

export const COUNTER_NAMES = [
  'faultsMissing', 'faultsMinor', 'faultsWp', 'faultsRwp', 'pagesDemand', 'pagesReadahead', 'pagesBackground',
  'bytes', 'ioctls', 'retries', 'eexist', 'wakes', 'errors', 'inline', 'handoffs', 'cpuSec', 'reads', 'events',
  'zeroFills', 'spurious', 'rezeroed', 'removes', 'direct', 'firstMs',
] as const;
export type CounterName = typeof COUNTER_NAMES[number];

export class Counters {
  readonly all: Float64Array;
  readonly threads: number;
  constructor(buffer: SharedArrayBuffer) {
    this.all = new Float64Array(buffer);
    this.threads = this.all.length / COUNTER_WORDS;
  }
  static allocate(threads: number): SharedArrayBuffer {
    return new SharedArrayBuffer(threads * COUNTER_WORDS * 8);
  }
  /** The block of one thread (a view: create once per thread). */
  block(thread: number): CounterBlock {
    return new CounterBlock(this.all.subarray(thread * COUNTER_WORDS, (thread + 1) * COUNTER_WORDS));
  }
  sum(field: number): number {
    let s = 0;
    for (let t = 0; t < this.threads; t++) s += this.all[t * COUNTER_WORDS + field] as number;
    return s;
  }
}

/**
 * One thread's counters (its only writer): typed access to the fields of its block, for the
 * per-fault path (C_* field indices, always inside the block).
 */
export class CounterBlock {
  readonly words: Float64Array;
  constructor(words: Float64Array) {
    if (words.length !== COUNTER_WORDS) throw new RangeError(`a counter block has ${COUNTER_WORDS} words, not ${words.length}`);
    this.words = words;
  }
  get(field: number): number { return this.words[field] as number; }
  set(field: number, value: number): void { this.words[field] = value; }
  add(field: number, n = 1): void { this.words[field] = (this.words[field] as number) + n; }
  /** Adds one latency sample (µs) to the histogram. */
  recordLatency(micros: number): void {
    // Bucket b holds [2^b, 2^(b+1)) µs (bucket 0 also below 1 µs): floor(log2) by counting bits.
    // Negative: an interval of the wrapping int32 µs clock (nowUs) over 35 minutes.
    const b = micros < 0 || micros >= HIST_TOP_US ? HIST_BUCKETS - 1 : micros < 2 ? 0 : 31 - Math.clz32(micros);
    this.add(C_HIST + b);
  }
}

/** Percentile (0..1) of a log2 histogram, reported as the upper edge of its bucket, in µs. */
export function histogramPercentile(hist: ArrayLike<number>, q: number): number {
  let total = 0;
  for (let i = 0; i < hist.length; i++) total += hist[i] as number;
  if (total === 0) return 0;
  const target = q * total;
  let acc = 0;
  for (let i = 0; i < hist.length; i++) {
    acc += hist[i] as number;
    if (acc >= target) return 2 ** (i + 1);
  }
  return 2 ** hist.length;
}

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}
