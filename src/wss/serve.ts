// How the access trap and the memory manager put a page back when it is touched.
// TrapServer.serve(address, flags) resolves one page fault on a tracked region from the
// shared page states:
//   held     (anon access trap)   UFFDIO_MOVE the page back from the holding area (a read with
//                                  write tracking on: UFFDIO_COPY with MODE_WP, then drop the copy)
//   evicted  (memory manager)     UFFDIO_COPY the saved bytes from the store, free the store page
//   evicting                      wait until the evictor is done, then as evicted
//   none + minor fault            UFFDIO_CONTINUE (page cache page, memfd/hugetlbfs)
//   none + missing fault          a zero page (never populated)
// A page served for a read is installed write-protected when write tracking is on, so
// PAGE_IS_WRITTEN keeps meaning "written". Resolve operations never overwrite: EEXIST means
// another fault already filled the page, and only a wake is needed.
//
// It is a plain class over a Userfaultfd so the engine's workers can call it later in place of
// the small dedicated handler thread in workers/wss-handler.ts.
import * as C from '../kernel/constants.js';
import { UffdError } from '../kernel/errors.js';
import { ERRNO, addressOf } from '../kernel/libc.js';
import { madvise, punchHole } from '../kernel/memory.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import {
  PS_EVICTED, PS_EVICTING, PS_HELD, PS_NONE, PS_SERVING, SharedPageStates, SharedPageStatesInit,
} from './pages.js';

export interface TrapConfig {
  uffdFd: number;
  /** Features negotiated on that fd (decimal string of the bigint mask). */
  features: string;
  regionAddr: number;
  regionSize: number;
  pageSize: number;
  /** 'anon' regions get ZEROPAGE and MOVE; file-backed ones COPY and CONTINUE. */
  anon: boolean;
  /** hugetlbfs has no ZEROPAGE: zero fill is a COPY of a zero page. */
  hugetlb: boolean;
  /** Holding area of the anon access trap (same size as the region), or 0. */
  holdingAddr: number;
  /** Store of evicted bytes: a MAP_SHARED mapping of storeFd, same offsets as the region; or 0 / -1. */
  storeAddr: number;
  storeFd: number;
  /** Install pages served for a read write-protected (write tracking is on). */
  protectReads: boolean;
  states: SharedPageStatesInit;
  counters: SharedArrayBuffer;
}

// Counter slots (Int32, Atomics).
export const K = {
  faults: 0, reads: 1, writes: 2, missing: 3, minor: 4, rwp: 5, wp: 6,
  movedBack: 7, fromStore: 8, zeroFilled: 9, continued: 10, eexist: 11, waits: 12, errors: 13,
  batches: 14, ready: 15, lastErrno: 16, busyMicros: 17, sleeps: 18,
} as const;
export const COUNTER_SLOTS = 24;
export type CounterName = keyof typeof K;

export class TrapServer {
  readonly uffd: Userfaultfd;
  readonly cfg: TrapConfig;
  readonly states: SharedPageStates;
  readonly counters: Int32Array;
  private readonly zero: Uint8Array;
  private readonly zeroAddr: number;
  private readonly P: number;

  constructor(cfg: TrapConfig) {
    this.cfg = cfg;
    this.uffd = Userfaultfd.fromFd(cfg.uffdFd, BigInt(cfg.features), 0n, true);
    this.states = new SharedPageStates(cfg.states);
    this.counters = new Int32Array(cfg.counters);
    this.P = cfg.pageSize;
    // A page-aligned zero page to COPY from (an over-allocated buffer, sliced at alignment).
    const raw = new Uint8Array(this.P * 2);
    const base = addressOf(raw);
    const skew = (this.P - (base % this.P)) % this.P;
    this.zero = raw.subarray(skew, skew + this.P);
    this.zeroAddr = base + skew;
  }

  private count(k: number, n = 1): void {
    Atomics.add(this.counters, k, n);
  }

  /** Resolves one page fault message (address, pagefault flags). */
  serve(address: number, flags: number): void {
    const { cfg, P } = this;
    if (address < cfg.regionAddr || address >= cfg.regionAddr + cfg.regionSize) {
      // Not ours (e.g. the holding area, which nothing should touch): wake so the thread
      // sees a clear error rather than hanging. This does not fill anything.
      this.count(K.errors);
      this.uffd.wake(address - (address % C.PAGE_SIZE), C.PAGE_SIZE);
      return;
    }
    const off = Math.floor((address - cfg.regionAddr) / P) * P;
    const dst = cfg.regionAddr + off;
    const page = off / P;
    const write = (flags & C.UFFD_PAGEFAULT_FLAG_WRITE) !== 0;
    this.count(K.faults);
    this.count(write ? K.writes : K.reads);
    if (flags & C.UFFD_PAGEFAULT_FLAG_RWP) {
      // A sync RWP fault during an eviction window: the evictor wakes it (UFFDIO_WAKE after
      // the punch, or the switch back to RWP_ASYNC); it then retries and, when its page was
      // evicted, comes back as a missing fault.
      this.count(K.rwp);
      return;
    }
    if (flags & C.UFFD_PAGEFAULT_FLAG_WP) {
      // Write tracking is async (WP_ASYNC): a sync WP fault means the negotiation differs.
      this.count(K.wp);
      this.uffd.writeprotect(dst, P, false);
      return;
    }
    const minor = (flags & C.UFFD_PAGEFAULT_FLAG_MINOR) !== 0;
    this.count(minor ? K.minor : K.missing);
    const protect = cfg.protectReads && !write;
    for (let spins = 0; ; spins++) {
      const s = this.states.get(page);
      if (s === PS_HELD) {
        if (this.states.cas(page, PS_HELD, PS_SERVING) !== PS_HELD) continue;
        this.moveBack(dst, off, write, protect);
        this.states.set(page, PS_NONE);
        return;
      }
      if (s === PS_EVICTED) {
        if (this.states.cas(page, PS_EVICTED, PS_SERVING) !== PS_EVICTED) continue;
        this.fromStore(dst, off, protect);
        this.states.set(page, PS_NONE);
        return;
      }
      if (s === PS_EVICTING || s === PS_SERVING) {
        this.count(K.waits);
        this.states.waitWhile(page, s, 50);
        continue;
      }
      // none: claim it so an evictor cannot take it while we map it.
      if (this.states.cas(page, PS_NONE, PS_SERVING) !== PS_NONE) continue;
      try {
        if (minor) {
          this.retry(() => this.uffd.continue(dst, P, protect ? C.UFFDIO_CONTINUE_MODE_WP : 0), dst);
          this.count(K.continued);
        } else {
          this.zeroFill(dst, write, protect);
        }
      } finally {
        this.states.set(page, PS_NONE);
      }
      return;
    }
  }

  private moveBack(dst: number, off: number, write: boolean, protect: boolean): void {
    const { P, cfg } = this;
    const src = cfg.holdingAddr + off;
    if (protect) {
      // A read with write tracking on: install the page write-protected in one step (COPY
      // with MODE_WP), so no write can slip in unseen, then drop the held copy.
      let e: number;
      try {
        e = this.retry(() => this.uffd.copy(dst, src, P, C.UFFDIO_COPY_MODE_WP), dst);
      } catch (err) { this.fail(err); return; }
      if (e === 0) this.count(K.movedBack);
      madvise(src, P, C.MADV_DONTNEED);
      return;
    }
    try {
      const e = this.retry(() => this.uffd.move(dst, src, P, 0), dst);
      if (e === 0) this.count(K.movedBack);
      else if (e === ERRNO.EEXIST) this.count(K.errors); // a page is already there: nothing to move into
    } catch (err) {
      // ENOENT: nothing at the holding offset (the page was a hole when moved aside).
      if (err instanceof UffdError && err.errno === ERRNO.ENOENT) this.zeroFill(dst, write, protect);
      else this.fail(err);
    }
  }

  private fromStore(dst: number, off: number, protect: boolean): void {
    const { P, cfg } = this;
    this.retry(() => this.uffd.copy(dst, cfg.storeAddr + off, P, protect ? C.UFFDIO_COPY_MODE_WP : 0), dst);
    this.count(K.fromStore);
    // The bytes are back in the region: free them in the store.
    try {
      punchHole(cfg.storeFd, off, P);
    } catch (e) {
      this.fail(e);
    }
  }

  private zeroFill(dst: number, write: boolean, protect: boolean): void {
    const { P, cfg } = this;
    if (cfg.anon && !write) this.retry(() => this.uffd.zeropage(dst, P), dst);
    else this.retry(() => this.uffd.copy(dst, this.zeroAddr, P, protect && !cfg.anon ? C.UFFDIO_COPY_MODE_WP : 0), dst);
    this.count(K.zeroFilled);
  }

  // Runs a resolve op until it is done or met EEXIST (filled by someone else: the kernel
  // did not wake, so wake here). Returns the final errno (0 or EEXIST).
  private retry(op: () => number, dst: number): number {
    for (let i = 0; i < 1000; i++) {
      op();
      const e = this.uffd.lastErrno;
      if (e === 0) return 0;
      if (e === ERRNO.EEXIST) {
        this.count(K.eexist);
        this.uffd.wake(dst, this.P);
        return e;
      }
      // EAGAIN / partial: the mappings are changing; try again.
    }
    this.count(K.errors);
    this.uffd.wake(dst, this.P);
    return ERRNO.EAGAIN;
  }

  private fail(e: unknown): void {
    this.count(K.errors);
    if (e instanceof UffdError) Atomics.store(this.counters, K.lastErrno, e.errno);
  }

  /** Wakes everything waiting in the region (after an error, so no thread is left hanging). */
  wakeAll(): void {
    this.uffd.wake(this.cfg.regionAddr, this.cfg.regionSize);
  }
}

/** A snapshot of the counters by name. */
export function readCounters(counters: Int32Array): Record<CounterName, number> {
  const out = {} as Record<CounterName, number>;
  for (const [k, i] of Object.entries(K)) out[k as CounterName] = Atomics.load(counters, i);
  return out;
}
