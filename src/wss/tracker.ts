// Working-set tracking of one registered region: arm, let an interval pass, sample (scan and
// re-arm), repeat. Each sample reports the pages written and the pages accessed in the
// interval, the working-set size, and a hot/warm/cold classification from a per-page access
// history (one byte per page: the last 7 intervals as bits, in sparse chunks).
//
// Methods (see methods.ts for costs and exactness):
//   write  wp-async  UFFD_FEATURE_WP_ASYNC, MODE_WP; PAGEMAP_SCAN with PM_SCAN_WP_MATCHING
//                    re-arms what it reports in the same walk
//          soft-dirty with rwp (MODE_WP and MODE_RWP exclude each other): PAGE_IS_SOFT_DIRTY,
//                    cleared with /proc/self/clear_refs in the sample window
//   access rwp       RWP + RWP_ASYNC; PAGE_IS_ACCESSED, re-armed with UFFDIO_RWPROTECT while
//                    the uffd is switched to sync (Linux 7.3); the engine leaves RWP faults
//                    waiting while the window is open (Engine.holdRwp)
//          zap       memfd/hugetlbfs: MADV_DONTNEED of the pages seen present; PAGE_IS_PRESENT
//                    later says which were touched again
//          minor     like zap, registered MINOR: each first touch is a fault served by the
//                    handler thread (UFFDIO_CONTINUE); safe for eviction
//          move      anon: pages seen present are moved to a holding area (UFFDIO_MOVE); the
//                    first touch is a missing fault and the handler moves the page back
// The memory manager part (evictCold / restoreAll) saves cold pages to a store and frees them;
// they are served back, byte-exact, on the next touch.
//
// Who serves the faults (methods.ts, ServerKind): by default the parallel engine (src/engine/)
// on the tracker's userfaultfd, with the store as the region's source and the page-state
// table started 'resident'; the tracker hands it each page it moves aside or evicts
// (hold → move/save+punch → forget). The small dedicated handler thread (TrapServer, serve.ts)
// is kept for the method the engine cannot serve: minor (CONTINUE with MODE_WP for reads,
// and eviction that must keep a minor fault waiting), and for server 'trap' on request.
import * as C from '../kernel/constants.js';
import { ConfigError, UnsupportedError } from '../kernel/errors.js';
import { ERRNO } from '../kernel/libc.js';
import {
  close as closeFd, ftruncate, madvise, mapAnonymous, memcmp, memcpy, memfdCreate, mmap, munmap, openFile, preadTo, punchHole, tryMadvise,
} from '../kernel/memory.js';
import { Scanner } from '../kernel/pagemap.js';
import { RegisterMode, Userfaultfd } from '../kernel/userfaultfd.js';
import type { FeatureName } from '../kernel/constants.js';
import { featuresFor } from '../memory-types/check.js';
import { memoryType } from '../memory-types/index.js';
import type { MemoryTypeName } from '../memory-types/types.js';
import { Engine, EngineStats } from '../engine/engine.js';
import { PAGE_DROPPED, PAGE_FILLING, PAGE_MISSING, PAGE_PRESENT } from '../engine/shared.js';
import { yieldCpu } from '../kernel/time.js';
import { sources } from '../sources/index.js';
import { TrapHandler } from './handler.js';
import { AccessMethod, chooseMethods, MethodChoice, ServerKind, WriteMethod } from './methods.js';
import { PagePins } from './pins.js';
import { addSoftDirtyUser, clearSoftDirty, removeSoftDirtyUser, SoftDirtyUser } from './soft-dirty.js';
import {
  CHUNK_PAGES, CHUNK_SHIFT, PS_EVICTED, PS_EVICTING, PS_HELD, PS_NONE, PS_SERVING, SharedPageStates, SparseBytes,
} from './pages.js';
import type { CounterName } from './serve.js';

/** What the tracker needs of a region (memory-types' Region has all of it). */
export interface TrackedRegion {
  readonly type: string;
  readonly addr: number;
  readonly size: number;
  readonly pageSize: number;
  /** The backing file (memfd, hugetlbfs) or -1 for anon. */
  readonly fd: number;
}

export interface TrackerOptions {
  /** Write tracking: true, false or 'auto' (on when possible and not excluded by rwp). */
  write?: boolean | 'auto';
  /** Access tracking method, or 'auto': rwp when the kernel has it, else move (anon) / zap or minor (files). */
  access?: AccessMethod | 'auto';
  /** Prepare for evictCold('store'): a store for saved bytes and a handler that serves them back. */
  evict?: boolean;
  /** File for evicted bytes (default: an anonymous memfd). */
  storePath?: string;
  /** A page is hot when accessed in at least hotMin of the last hotWindow intervals (defaults 2 of 4). */
  hotMin?: number;
  hotWindow?: number;
  /** A known page is cold when not accessed in the last coldAfter intervals (default 3). */
  coldAfter?: number;
  /** Regions per PAGEMAP_SCAN call (default 4096). */
  vecLen?: number;
  /** Handler spin before sleeping, microseconds (default 50; the engine's workers: its own default). */
  spinMicros?: number;
  /**
   * Who serves faults (trap methods, evicted pages): 'engine' (the parallel engine), 'trap'
   * (the tracker's single handler thread) or 'auto' (default: the engine, except for the
   * methods only the trap can serve — minor, and eviction under rwp).
   */
  server?: 'engine' | 'trap' | 'auto';
  /** Engine worker threads (server 'engine'; default 2). */
  workers?: number;
}

export interface IntervalStats {
  interval: number;
  /** Length of the interval that ended with this sample. */
  elapsedMs: number;
  /** Pages written in the interval (null: writes are not tracked). */
  written: number | null;
  /** Pages accessed (read or written) in the interval (null: the method sees only writes). */
  accessed: number | null;
  /** Working-set size: accessed (or, with writes only, written) pages times the page size. */
  wssBytes: number;
  /** Classification of the pages seen so far. */
  hot: number;
  warm: number;
  cold: number;
  known: number;
  /** Pages in the store / in the holding area right now. */
  evicted: number;
  held: number;
  /** Time in PAGEMAP_SCAN ioctls, and in re-arming (zap, move, rwprotect, mode switches). */
  scanMs: number;
  rearmMs: number;
  scanCalls: number;
  regions: number;
  /** Scan speed over the whole region (its pages per second of scan time) and per GiB. */
  pagesPerSec: number;
  msPerGiB: number;
  /** Faults the server (engine or trap handler) received in the interval. */
  faults: number;
  /** Of which reads / writes (null: the engine does not tell them apart). */
  faultReads: number | null;
  faultWrites: number | null;
  /** Pages the server put back in the region in the interval (moved back, copied from the store). */
  servedBack: number;
  server: ServerKind;
}

export interface EvictResult {
  how: 'store' | 'pageout' | 'cold';
  pages: number;
  bytes: number;
  ms: number;
}

export interface Range { start: number; end: number }

const GiB = 1024 ** 3;
// History byte: bit 7 = accessed in the newest interval ... bit 1 = six intervals before;
// bit 0 = known (seen present at least once).
const KNOWN = 0x01;
const NEWEST = 0x80;

function popcount8(x: number): number {
  let n = 0;
  for (; x; x &= x - 1) n++;
  return n;
}

export class WssTracker implements SoftDirtyUser {
  readonly region: TrackedRegion;
  readonly pageSize: number;
  readonly pages: number;
  readonly methods: MethodChoice;
  readonly uffd?: Userfaultfd;
  readonly scanner: Scanner;
  /** Access (or, with writes only, write) history per page. */
  readonly hist: SparseBytes;
  /** Write history per page (bit 7 newest). */
  readonly whist: SparseBytes;
  readonly states?: SharedPageStates;
  readonly handler?: TrapHandler;
  /** The parallel engine serving this region's faults (server 'engine'). */
  readonly engine?: Engine;
  readonly holdingAddr: number = 0;
  readonly storeFd: number = -1;
  /** Where evicted (and, for anon with the engine, held) bytes are kept: the engine's source. */
  readonly storeAddr: number = 0;
  /** A mapping of the region's file that is never registered (engine eviction of files). */
  readonly aliasAddr: number = 0;
  private readonly pins?: PagePins;
  readonly hotMin: number;
  readonly hotWindow: number;
  readonly coldAfter: number;
  /** Intervals sampled since arm(). */
  intervals = 0;
  private armed = false;
  private closed = false;
  private lastSampleAt = 0;
  private lastFaults = { faults: 0, reads: 0, writes: 0, served: 0 };
  private readonly classOf = new Uint8Array(256); // 0 unknown, 1 hot, 2 warm, 3 cold
  private readonly modes: RegisterMode[];
  private readonly isAnon: boolean;
  private readonly isHugetlb: boolean;

  private constructor(region: TrackedRegion, methods: MethodChoice, opts: TrackerOptions, parts: {
    uffd?: Userfaultfd; states?: SharedPageStates; handler?: TrapHandler; holdingAddr: number; storeFd: number; storeAddr: number; modes: RegisterMode[];
    engine?: Engine; aliasAddr: number; pins?: PagePins;
  }) {
    this.region = region;
    this.pageSize = region.pageSize;
    this.pages = region.size / region.pageSize;
    this.methods = methods;
    this.uffd = parts.uffd;
    this.states = parts.states;
    this.handler = parts.handler;
    this.holdingAddr = parts.holdingAddr;
    this.storeFd = parts.storeFd;
    this.storeAddr = parts.storeAddr;
    this.engine = parts.engine;
    this.aliasAddr = parts.aliasAddr;
    this.pins = parts.pins;
    this.modes = parts.modes;
    this.isAnon = region.type === 'anon';
    this.isHugetlb = region.type === 'hugetlbfs';
    this.scanner = new Scanner({ vecLen: opts.vecLen });
    this.hist = new SparseBytes(this.pages);
    this.whist = new SparseBytes(this.pages);
    this.hotMin = opts.hotMin ?? 2;
    this.hotWindow = opts.hotWindow ?? 4;
    this.coldAfter = opts.coldAfter ?? 3;
    if (this.hotWindow < 1 || this.hotWindow > 7 || this.hotMin < 1 || this.hotMin > this.hotWindow) {
      throw new ConfigError(`hotMin (${this.hotMin}) must be in 1..hotWindow and hotWindow (${this.hotWindow}) in 1..7`);
    }
    if (this.coldAfter < 1 || this.coldAfter > 7) throw new ConfigError(`coldAfter must be in 1..7, got ${this.coldAfter}`);
    const hotMask = (0xff << (8 - this.hotWindow)) & 0xfe;
    const coldMask = (0xff << (8 - this.coldAfter)) & 0xfe;
    for (let b = 0; b < 256; b++) {
      if (!(b & KNOWN)) this.classOf[b] = 0;
      else if (popcount8(b & hotMask) >= this.hotMin) this.classOf[b] = 1;
      else if ((b & coldMask) === 0) this.classOf[b] = 3;
      else this.classOf[b] = 2;
    }
  }

  /** Sets up tracking of a region: negotiates, registers, starts the handler when the method needs one. */
  static async create(region: TrackedRegion, opts: TrackerOptions = {}): Promise<WssTracker> {
    const P = region.pageSize;
    if (region.size % P || region.addr % P) throw new ConfigError(`region [0x${region.addr.toString(16)}, +${region.size}) is not aligned to its page size ${P}`);
    const methods = chooseMethods(region.type, { write: opts.write, access: opts.access, evict: opts.evict, server: opts.server });
    const { write, access, server } = methods;
    const useEngine = server === 'engine';
    if (useEngine && opts.storePath && region.type === 'anon') {
      throw new UnsupportedError('with the engine server, anon pages are evicted by UFFDIO_MOVE into an anonymous store (MOVE cannot ' +
        "move into a file), which MADV_PAGEOUT hands to swap; a file store for anon needs server 'trap' (it copies the held pages)");
    }
    const modes: RegisterMode[] = [];
    const features = new Set<FeatureName>();
    if (write === 'wp-async' || access === 'zap') {
      // zap without write tracking registers wp too (never armed): a uffd-wp (or minor) VMA
      // has the kernel's fault-around switched off, which would otherwise map up to 16
      // neighbouring page-cache pages on every read fault and report them as accessed.
      modes.push('wp');
      features.add('WP_ASYNC').add('WP_UNPOPULATED');
    }
    if (access === 'rwp') { modes.push('rwp'); features.add('RWP').add('RWP_ASYNC'); }
    if (access === 'move') { modes.push('missing'); features.add('MOVE'); }
    // With the engine, a guest's madvise(DONTNEED) of an anon page must reach it (REMOVE: the
    // page is DROPPED and reads zeros, as the kernel would), or the engine would fill the page
    // again from its store copy. The tracker's own DONTNEEDs of the store then wait for the
    // dispatcher to read the event (one per run moved aside). Files keep their data in the page
    // cache over a DONTNEED, so the zap method (one DONTNEED per run per sample) goes without.
    // Anon under RWP with eviction moves cold pages into the store the same way.
    const moveStore = access === 'move' || (access === 'rwp' && useEngine && !!opts.evict && region.type === 'anon');
    if (server === 'engine' && moveStore) features.add('EVENT_REMOVE');
    if (moveStore) features.add('MOVE');
    if (access === 'minor') modes.push('minor', 'missing');
    if (opts.evict && !modes.includes('missing')) modes.push('missing');
    const needsHandler = server === 'trap';
    let uffd: Userfaultfd | undefined;
    let handler: TrapHandler | undefined;
    let engine: Engine | undefined;
    let states: SharedPageStates | undefined;
    let holdingAddr = 0;
    let storeFd = -1;
    let storeAddr = 0;
    let aliasAddr = 0;
    let pins: PagePins | undefined;
    try {
      if (modes.length) {
        for (const f of featuresFor(memoryType(region.type), modes)) features.add(f);
        if (moveStore) features.add('PAGEFAULT_FLAG_WP'); // the holding area is registered wp
        uffd = Userfaultfd.create({ features: [...features] });
      }
      // Page granularity: a THP would be tracked (and, for RWP on files, lose its marks) as a whole.
      if (region.type !== 'hugetlbfs') madvise(region.addr, region.size, C.MADV_NOHUGEPAGE);
      if (uffd) uffd.register(region.addr, region.size, modes, P);
      if (moveStore) {
        // UFFDIO_MOVE needs its destination registered with the same uffd. wp mode never
        // raises a missing fault, so reading the holding area cannot fault.
        holdingAddr = mapAnonymous(region.size, C.MAP_NORESERVE);
        madvise(holdingAddr, region.size, C.MADV_NOHUGEPAGE);
        uffd!.register(holdingAddr, region.size, ['wp']);
      }
      if (useEngine && moveStore) {
        // The holding area is the store: pages moved aside (atomically, no copy) stay there
        // until the engine copies them back; cold ones are the evicted ones.
        storeAddr = holdingAddr;
      } else if (opts.evict) {
        storeFd = opts.storePath ? openFile(opts.storePath, C.O_RDWR | C.O_CREAT | C.O_TRUNC) : memfdCreate('uffd-engine-wss-store');
        ftruncate(storeFd, region.size);
        storeAddr = mmap(region.size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED | C.MAP_NORESERVE, storeFd, 0);
      }
      if (useEngine && region.type !== 'anon' && opts.evict) {
        // Pages are pinned (vmsplice) through an alias that is never registered, so pinning
        // never raises a fault the engine would have to serve.
        aliasAddr = mmap(region.size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED | C.MAP_NORESERVE, region.fd, 0);
        pins = new PagePins(Math.max(P, 1 << 20));
      }
      if (needsHandler || useEngine) states = new SharedPageStates(SharedPageStates.allocate(region.size / P));
      if (useEngine) {
        engine = await Engine.start({
          regions: [{ start: region.addr, size: region.size, pageSize: P, type: region.type as MemoryTypeName, source: sources.address(storeAddr, region.size) }],
          uffd: uffd!, ownsUffd: false, workers: opts.workers, initially: 'resident', prefetch: false,
          ...(opts.spinMicros !== undefined ? { spinMicros: opts.spinMicros } : {}),
        });
      }
      if (needsHandler) {
        handler = await TrapHandler.start({
          uffdFd: uffd!.fd, features: uffd!.features.toString(), regionAddr: region.addr, regionSize: region.size,
          pageSize: P, anon: region.type === 'anon', hugetlb: region.type === 'hugetlbfs', holdingAddr, storeAddr, storeFd,
          protectReads: write === 'wp-async', states: states!.init, spinMicros: opts.spinMicros,
        });
      }
    } catch (e) {
      if (handler) await handler.stop();
      if (engine) await engine.stop({ mode: 'abandon' }).catch(() => undefined);
      pins?.close();
      if (aliasAddr) munmap(aliasAddr, region.size);
      uffd?.close();
      if (holdingAddr) munmap(holdingAddr, region.size);
      if (storeAddr && storeAddr !== holdingAddr) munmap(storeAddr, region.size);
      if (storeFd >= 0) closeFd(storeFd);
      throw e;
    }
    return new WssTracker(region, methods, opts, { uffd, states, handler, holdingAddr, storeFd, storeAddr, modes, engine, aliasAddr, pins });
  }

  get write(): WriteMethod { return this.methods.write; }
  get server(): ServerKind { return this.methods.server; }
  get access(): AccessMethod { return this.methods.access; }
  /** Whether per-interval reads are visible (an access method is on). */
  get seesReads(): boolean { return this.methods.access !== 'none'; }

  // ---- marking ---------------------------------------------------------------------------
  private pageRange(s: number, e: number): [number, number] {
    const a = this.region.addr;
    const P = this.pageSize;
    return [Math.floor((s - a) / P), Math.ceil((e - a) / P)];
  }

  /** Marks pages known and (when `activity`) active in the newest interval; returns pages newly marked active. */
  private mark(h: SparseBytes, first: number, last: number, activity: boolean): number {
    let added = 0;
    const set = activity ? NEWEST | KNOWN : KNOWN;
    let p = first;
    while (p < last) {
      const chunk = p >>> CHUNK_SHIFT;
      const end = Math.min((chunk + 1) << CHUNK_SHIFT, last);
      const base = (h.slot(chunk) << CHUNK_SHIFT) - (chunk << CHUNK_SHIFT);
      const b = h.bytes; // length-tracking: valid after the pool grew
      for (let i = base + p, n = base + end; i < n; i++) {
        const x = b[i];
        if (activity && !(x & NEWEST)) added++;
        b[i] = x | set;
      }
      p = end;
    }
    return added;
  }

  private age(h: SparseBytes): void {
    const w = h.words;
    const n = (h.used * CHUNK_PAGES) >>> 2;
    for (let i = 0; i < n; i++) {
      const x = w[i];
      w[i] = ((x >>> 1) & 0x7e7e7e7e) | (x & 0x01010101);
    }
  }

  // ---- arm / sample ----------------------------------------------------------------------
  /** Starts the first interval: protects (or zaps, or moves aside) what is present now. */
  arm(): void {
    if (this.armed) throw new ConfigError('arm() was already called; call sample() to end an interval');
    const { region } = this;
    if (this.write === 'wp-async' && !this.isAnon) {
      // Files: put a write-protect marker on every page, present or not, so that a page read
      // in later (from the page cache) comes in protected and reads are not taken for writes.
      this.uffd!.writeprotect(region.addr, region.size, true);
    }
    if (!this.isHugetlb) this.splitHugeMappings();
    if (this.access === 'rwp') {
      this.scanner.scan(region.addr, region.addr + region.size, { categoryAnyof: C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED },
        (s, e) => { const [f, l] = this.pageRange(s, e); this.mark(this.hist, f, l, false); });
      this.uffd!.rwprotect(region.addr, region.size, true);
      if (this.write === 'soft-dirty') {
        addSoftDirtyUser(this);
        clearSoftDirty(this);
      }
    } else {
      this.scanAndRearm(true);
    }
    this.armed = true;
    this.intervals = 0;
    this.lastSampleAt = performance.now();
    this.lastFaults = this.serverCounts();
  }

  /** Running totals of the server: faults received, of which reads and writes, pages put back. */
  private serverCounts(): { faults: number; reads: number; writes: number; served: number } {
    if (this.engine) {
      const s = this.engine.stats();
      return { faults: s.faults.total, reads: 0, writes: 0, served: s.pages.total };
    }
    if (this.handler) {
      const s = this.handler.stats();
      return { faults: s.faults, reads: s.reads, writes: s.writes, served: s.movedBack + s.fromStore };
    }
    return { faults: 0, reads: 0, writes: 0, served: 0 };
  }

  // One PAGEMAP_SCAN over the region; each reported run is marked and re-armed at once.
  private scanAndRearm(initial: boolean): { accessed: number; written: number; rearmMs: number; regions: number; calls: number } {
    const { region, uffd } = this;
    const access = this.access;
    const tracksWrites = this.write === 'wp-async';
    const present = C.PAGE_IS_PRESENT | (this.isAnon ? C.PAGE_IS_SWAPPED : 0);
    const flags = tracksWrites && access !== 'move' ? C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC : 0;
    const base = region.addr;
    const P = this.pageSize;
    let accessed = 0;
    let written = 0;
    let rearm = 0;
    const activityIsAccess = access !== 'none';
    // With writes only, an interval asks for the written pages alone (written, not the zero
    // page, present or swapped): fewer regions than reporting every present run. The known
    // set is then what was present at arm() plus what was written since.
    const writesOnly = !initial && access === 'none';
    const opts = writesOnly
      ? { flags, categoryMask: C.PAGE_IS_WRITTEN | C.PAGE_IS_PFNZERO, categoryInverted: C.PAGE_IS_PFNZERO, categoryAnyof: present, returnMask: C.PAGE_IS_WRITTEN }
      : { flags, categoryAnyof: present, returnMask: present | C.PAGE_IS_WRITTEN | C.PAGE_IS_PFNZERO };
    const sum = this.scanner.scan(region.addr, region.addr + region.size, opts, (s, e, cats) => {
      const first = Math.floor((s - base) / P);
      const last = Math.ceil((e - base) / P);
      const isWritten = tracksWrites && (cats & C.PAGE_IS_WRITTEN) !== 0 && (cats & C.PAGE_IS_PFNZERO) === 0;
      if (initial) {
        this.mark(this.hist, first, last, false);
      } else {
        if (activityIsAccess) accessed += this.mark(this.hist, first, last, true);
        else this.mark(this.hist, first, last, isWritten);
        if (isWritten) written += this.engine ? this.markWritten(first, last) : this.mark(this.whist, first, last, true);
      }
      if (access === 'none' || access === 'rwp') return;
      const t0 = performance.now();
      if (access === 'zap' || access === 'minor') {
        madvise(s, e - s, C.MADV_DONTNEED);
        if (this.engine) this.settleReturned(first, last);
      } else if (access === 'move') {
        if (this.engine) this.moveAsideEngine(s, e, tracksWrites);
        else this.moveAside(first, last, s, e, tracksWrites);
      }
      rearm += performance.now() - t0;
    });
    return { accessed, written, rearmMs: rearm, regions: sum.regions, calls: sum.calls };
  }

  private moveAside(first: number, last: number, s: number, e: number, tracksWrites: boolean): void {
    const uffd = this.uffd!;
    const states = this.states!;
    // Mark held before moving: a touch right after the move faults and the handler must
    // find the page in the holding area. A page the handler is still installing (serving)
    // is claimed once it is done.
    for (let p = first; p < last; p++) {
      for (;;) {
        const prev = states.cas(p, PS_NONE, PS_HELD);
        if (prev !== PS_SERVING) break;
        states.waitWhile(p, PS_SERVING, 5);
      }
    }
    const dst = this.holdingAddr + (s - this.region.addr);
    let done = 0;
    for (let tries = 0; done < e - s && tries < 100; tries++) {
      try {
        done += uffd.move(dst + done, s + done, e - s - done, C.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
      } catch (err) {
        // EBUSY: a page that cannot move (pinned, KSM, shared). Leave the rest of the run in
        // place, protected so a later write still shows.
        const firstLeft = first + Math.floor(done / this.pageSize);
        for (let p = firstLeft; p < last; p++) states.cas(p, PS_HELD, PS_NONE);
        if (tracksWrites) uffd.writeprotect(s + done, e - s - done, true);
        return;
      }
    }
  }

  // ---- served by the engine ----------------------------------------------------------------
  // The engine's page-state table says where each page is: DROPPED (the region has it, or it
  // is a hole), MISSING (its bytes are in the store, the engine's source), FILLING (being
  // served, or held by the tracker while it moves the page), PRESENT (served back since the
  // last sample). The tracker's own states say which pages have a copy in the store: held
  // (moved aside by the anon trap) and evicted.

  private hasCopy(state: number): boolean {
    return state === PS_HELD || state === PS_EVICTED;
  }

  /**
   * Marks the written pages of a run reported written. A page the engine copied back from the
   * store is installed writable (no uffd-wp bit), so the kernel reports it written even after
   * a read: for those, written means its bytes differ from the store copy it came from.
   */
  private markWritten(first: number, last: number): number {
    const states = this.states!;
    const P = this.pageSize;
    const base = this.region.addr;
    const store = this.storeAddr;
    let n = 0;
    let p = first;
    while (p < last) {
      let q = p;
      while (q < last && !this.hasCopy(states.get(q))) q++;
      if (q > p) {
        n += this.mark(this.whist, p, q, true);
        p = q;
        continue;
      }
      while (q < last && this.hasCopy(states.get(q))) q++;
      if (memcmp(base + p * P, store + p * P, (q - p) * P) !== 0) {
        for (let k = p; k < q; k++) {
          if (memcmp(base + k * P, store + k * P, P) !== 0) n += this.mark(this.whist, k, k + 1, true);
          else this.noteUnchanged(k, k + 1);
        }
      } else {
        this.noteUnchanged(p, q);
      }
      p = q;
    }
    return n;
  }

  // Pages reported written that came back through the engine with their bytes unchanged at
  // the scan, in the last interval: reads, stores of the bytes the page already held, or a
  // store still in flight at the scan (its thread had not run again yet: counted next time).
  private readonly unchanged: Range[] = [];
  private noteUnchanged(first: number, last: number): void {
    const s = this.region.addr + first * this.pageSize;
    const e = this.region.addr + last * this.pageSize;
    const prev = this.unchanged[this.unchanged.length - 1];
    if (prev && prev.end === s) prev.end = e;
    else this.unchanged.push({ start: s, end: e });
  }

  /**
   * Address ranges of the pages that came back through the engine in the last interval and
   * had their bytes unchanged at the sample although the kernel reported them written (the
   * engine installs pages writable): reads, stores of the same bytes, or a store still in
   * flight at the scan (counted in the next interval). Empty with the trap server.
   */
  unchangedBack(): Range[] {
    return this.unchanged.map((r) => ({ ...r }));
  }

  /** Frees the store copies of pages [first, last) (the region has the bytes); their state becomes none. */
  private dropCopies(first: number, last: number): void {
    const P = this.pageSize;
    const off = first * P;
    const len = (last - first) * P;
    if (this.storeFd >= 0) punchHole(this.storeFd, off, len);
    else madvise(this.storeAddr + off, len, C.MADV_DONTNEED);
    this.states!.setRange(first, last, PS_NONE);
  }

  /** Files: evicted pages of a run seen present came back; their copies go, the engine lets them be. */
  private settleReturned(first: number, last: number): void {
    const states = this.states!;
    const P = this.pageSize;
    let p = first;
    while (p < last) {
      if (states.get(p) !== PS_EVICTED) { p++; continue; }
      let q = p + 1;
      while (q < last && states.get(q) === PS_EVICTED) q++;
      this.dropCopies(p, q);
      this.engine!.markResident(this.region.addr + p * P, (q - p) * P);
      p = q;
    }
  }

  // Holds pages of a run that the scan saw present. A page present in the region may still be
  // FILLING in the engine's table for a moment (the thread that filled it has not recorded it
  // yet; on a small machine the woken faulting thread can run first): wait for that, briefly.
  private holdPresent(a: number, len: number): number {
    const eng = this.engine!;
    const g = (a - this.region.addr) / this.pageSize;
    const deadline = performance.now() + 20;
    for (;;) {
      const h = eng.hold(a, len);
      if (h > 0 || eng.pageState(g) !== PAGE_FILLING || performance.now() > deadline) return h;
      yieldCpu();
    }
  }

  // Anon: moves a present run into the store, page by page claimed from the engine first,
  // then hands it to the engine (MISSING: the next touch copies it back).
  private moveAsideEngine(s: number, e: number, tracksWrites: boolean): void {
    const uffd = this.uffd!;
    const eng = this.engine!;
    const states = this.states!;
    const P = this.pageSize;
    let a = s;
    while (a < e) {
      const h = this.holdPresent(a, e - a);
      if (h === 0) { a += P; continue; } // the engine is still filling this page: leave it for the next sample
      const pf = (a - this.region.addr) / P;
      // Copies of pages that came back are stale now (the region has them).
      const { done, failed } = this.moveIntoStore(a, h);
      if (done > 0) {
        states.setRange(pf, pf + done / P, PS_HELD);
        eng.forget(a, done);
      }
      if (done < h) {
        states.setRange(pf + done / P, pf + h / P, PS_NONE);
        eng.markResident(a + done, h - done);
        if (tracksWrites) uffd.writeprotect(a + done, h - done, true);
      }
      if (failed) return;
      a += h;
    }
  }

  /**
   * After a sample: pages the engine served back since the scan are handed back to the
   * region (DROPPED; their copy stays for the next sample's comparison), and copies of pages
   * that came back earlier but are gone from the region now are freed.
   */
  private reconcile(): void {
    const eng = this.engine!;
    const P = this.pageSize;
    const base = this.region.addr;
    let bs = -1, be = -1, gs = -1, ge = -1;
    const flushBack = () => { if (bs >= 0) eng.markResident(base + bs * P, (be - bs) * P); bs = -1; };
    const flushGone = () => { if (gs >= 0) this.dropCopies(gs, ge); gs = -1; };
    this.states!.forEachSet((p, st) => {
      if (!this.hasCopy(st)) return;
      const es = eng.pageState(p);
      if (es === PAGE_PRESENT) {
        if (bs >= 0 && be === p) be++;
        else { flushBack(); bs = p; be = p + 1; }
      }
      // Under RWP the copy of a page that came back goes at once: its writes were told in
      // this sample's window (soft-dirty, compared with the copy), and a later eviction moves it again.
      if (es === PAGE_DROPPED || (es === PAGE_PRESENT && this.access === 'rwp')) {
        if (gs >= 0 && ge === p) ge++;
        else { flushGone(); gs = p; ge = p + 1; }
      }
    });
    flushBack();
    flushGone();
  }

  /**
   * Ends the current interval: scans, re-arms, classifies. Returns what happened in the
   * interval since arm() or the previous sample().
   */
  sample(): IntervalStats {
    if (!this.armed) throw new ConfigError('call arm() before sample()');
    if (this.closed) throw new ConfigError('the tracker is closed');
    const now = performance.now();
    const elapsedMs = now - this.lastSampleAt;
    this.lastSampleAt = now;
    this.age(this.hist);
    this.age(this.whist);
    this.unchanged.length = 0;
    const scanNanos0 = this.scanner.nanos;
    let accessed = 0;
    let written = 0;
    let rearmMs = 0;
    let regions = 0;
    let calls = 0;
    if (this.access === 'rwp') {
      const r = this.sampleRwp();
      accessed = r.accessed; written = r.written; rearmMs = r.rearmMs; regions = r.regions; calls = r.calls;
    } else {
      const r = this.scanAndRearm(false);
      accessed = r.accessed; written = r.written; rearmMs = r.rearmMs; regions = r.regions; calls = r.calls;
    }
    this.intervals++;
    const scanMs = Number(this.scanner.nanos - scanNanos0) / 1e6;
    const cls = this.classify();
    if (this.engine) this.reconcile();
    const now2 = this.serverCounts();
    const faults = now2.faults - this.lastFaults.faults;
    const faultReads = this.engine ? null : now2.reads - this.lastFaults.reads;
    const faultWrites = this.engine ? null : now2.writes - this.lastFaults.writes;
    const servedBack = now2.served - this.lastFaults.served;
    this.lastFaults = now2;
    const st = this.states?.counts();
    const scanSec = scanMs / 1000;
    const tracksWrites = this.write !== 'none';
    return {
      interval: this.intervals,
      elapsedMs,
      written: tracksWrites ? written : null,
      accessed: this.seesReads ? accessed : null,
      wssBytes: (this.seesReads ? accessed : written) * this.pageSize,
      hot: cls[1], warm: cls[2], cold: cls[3], known: cls[1] + cls[2] + cls[3],
      evicted: st ? st[PS_EVICTED] : 0,
      held: st ? st[PS_HELD] : 0,
      scanMs, rearmMs, scanCalls: calls, regions,
      pagesPerSec: scanSec > 0 ? (this.region.size / C.PAGE_SIZE) / scanSec : 0,
      msPerGiB: scanMs / (this.region.size / GiB),
      faults, faultReads, faultWrites, servedBack, server: this.server,
    };
  }

  // A THP mapped before tracking (anon with THP 'always') would be protected, and reported
  // accessed, as one 2 MiB unit; even split into PTEs, a large folio has a read fault dirty
  // its neighbours (soft-dirty). MADV_COLD of one 4 KiB page of each huge page splits the
  // mapping and the folio (the kernel splits a large folio an advice covers in part; the data
  // stays, the one page is only moved to the inactive list), and MADV_NOHUGEPAGE (create())
  // keeps new faults at 4 KiB.
  private splitHugeMappings(): void {
    const { region } = this;
    const H = C.HUGE_PAGE_2M;
    let last = -1;
    this.scanner.scan(region.addr, region.addr + region.size, { categoryMask: C.PAGE_IS_HUGE | C.PAGE_IS_PRESENT, returnMask: C.PAGE_IS_HUGE },
      (s, e) => {
        for (let a = s - (s % H); a < e; a += H) {
          if (a === last) continue;
          last = a;
          tryMadvise(Math.max(a, region.addr), C.PAGE_SIZE, C.MADV_COLD);
        }
      });
  }

  /**
   * Pages still mapped as huge pages (PAGE_IS_HUGE) in a region tracked at 4 KiB: accesses
   * there are seen per huge page. Empty after arm() split them; for reports.
   */
  hugeMappedBytes(): number {
    if (this.isHugetlb) return 0;
    return this.scanner.countBytes(this.region.addr, this.region.addr + this.region.size, { categoryMask: C.PAGE_IS_HUGE | C.PAGE_IS_PRESENT });
  }

  /**
   * Runs fn in an RWP window: the uffd in sync mode, so a touch of a protected page waits
   * (the engine leaves RWP faults alone while the window is open; the trap handler always
   * does). Afterwards async mode is back and every waiting thread is woken: it retries and
   * its access resolves in the kernel, counted in the next interval.
   */
  private rwpWindow<T>(fn: () => T): T {
    const uffd = this.uffd!;
    this.engine?.holdRwp(true);
    uffd.setMode([], ['RWP_ASYNC']);
    try {
      return fn();
    } finally {
      uffd.setMode(['RWP_ASYNC'], []);
      if (this.engine) this.engine.holdRwp(false);
      else uffd.wake(this.region.addr, this.region.size);
    }
  }

  // RWP: freeze (sync mode), scan the hot set, re-protect everything, read and clear the
  // soft-dirty bits, thaw. Accesses in the window wait and resume once async mode is back,
  // counted in the next interval.
  private sampleRwp(): { accessed: number; written: number; rearmMs: number; regions: number; calls: number } {
    const { region } = this;
    const uffd = this.uffd!;
    const t0 = performance.now();
    const scan0 = this.scanner.nanos;
    let accessed = 0;
    let written = 0;
    const sum = this.rwpWindow(() => {
      const r = this.scanner.scan(region.addr, region.addr + region.size, {
        categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED,
      }, (s, e) => {
        // The scan reports exactly this interval's accesses (everything was re-protected at
        // the previous sample); pages an eviction window already marked count as well.
        const [f, l] = this.pageRange(s, e);
        this.mark(this.hist, f, l, true);
        accessed += l - f;
      });
      uffd.rwprotect(region.addr, region.size, true);
      if (this.write === 'soft-dirty') {
        // Nothing present can be written now (every page is protected and a touch waits):
        // the bits read here and cleared next are exactly this interval's writes.
        this.lateAccesses = 0;
        written = this.sampleSoftDirty();
        accessed += this.lateAccesses;
      }
      return r;
    });
    // Re-arm cost: the mode switches, the RWPROTECT and the clear, i.e. the window minus the scans.
    const rearmMs = (performance.now() - t0) - Number(this.scanner.nanos - scan0) / 1e6;
    return { accessed, written, rearmMs: Math.max(0, rearmMs), regions: sum.regions, calls: sum.calls };
  }

  // ---- writes under RWP: soft-dirty ---------------------------------------------------------
  private readonly dirtySaved: [number, number][] = [];

  /** Another tracker is about to clear the process's soft-dirty bits: keep this region's. */
  collectSoftDirty(): void {
    if (this.closed || !this.armed) return;
    this.scanner.scan(this.region.addr, this.region.addr + this.region.size, { categoryMask: C.PAGE_IS_SOFT_DIRTY | C.PAGE_IS_PRESENT },
      (s, e) => { this.dirtySaved.push(this.pageRange(s, e)); });
  }

  // Marks the pages written since the last clear (saved ones too) and clears the bits. A
  // page the engine copied back from the store is installed dirty: for those, written means
  // its bytes differ from the copy. Reading a protected page would wait on this very window,
  // so such a run is un-protected (without waking anyone) for the comparison and protected again.
  private sampleSoftDirty(): number {
    const runs = this.dirtySaved.splice(0);
    this.scanner.scan(this.region.addr, this.region.addr + this.region.size, { categoryMask: C.PAGE_IS_SOFT_DIRTY | C.PAGE_IS_PRESENT },
      (s, e) => { runs.push(this.pageRange(s, e)); });
    clearSoftDirty(this);
    let n = 0;
    const P = this.pageSize;
    for (const [f, l] of runs) {
      if (!this.states || !this.engine) { n += this.markWrite(f, l); continue; }
      let p = f;
      while (p < l) {
        let q = p;
        while (q < l && !this.hasCopy(this.states.get(q))) q++;
        if (q > p) { n += this.markWrite(p, q); p = q; continue; }
        while (q < l && this.hasCopy(this.states.get(q))) q++;
        const a = this.region.addr + p * P;
        this.uffd!.rwprotect(a, (q - p) * P, false, true);
        try {
          n += this.markWritten(p, q);
        } finally {
          this.uffd!.rwprotect(a, (q - p) * P, true);
        }
        this.lateAccesses += this.mark(this.hist, p, q, true);
        p = q;
      }
    }
    return n;
  }

  // A written page was accessed too (a write in the instant between the two scans of a window shows only here).
  private markWrite(f: number, l: number): number {
    this.lateAccesses += this.mark(this.hist, f, l, true);
    return this.mark(this.whist, f, l, true);
  }
  private lateAccesses = 0;

  private classify(): number[] {
    const out = [0, 0, 0, 0];
    const b = this.hist.bytes;
    const n = this.hist.used * CHUNK_PAGES;
    const cls = this.classOf;
    for (let i = 0; i < n; i++) out[cls[b[i]]]++;
    return out;
  }

  // ---- queries ---------------------------------------------------------------------------
  /**
   * Address ranges of the pages that are `kind` now: accessed / written in the last interval,
   * hot, cold, or idle for at least `minIdle` intervals ('idle'), in address order.
   */
  ranges(kind: 'accessed' | 'written' | 'hot' | 'warm' | 'cold' | 'known', max = Infinity): Range[] {
    const out: Range[] = [];
    const h = kind === 'written' ? this.whist : this.hist;
    const test = (b: number): boolean => {
      switch (kind) {
        case 'accessed': case 'written': return (b & NEWEST) !== 0;
        case 'hot': return this.classOf[b] === 1;
        case 'warm': return this.classOf[b] === 2;
        case 'cold': return this.classOf[b] === 3;
        default: return (b & KNOWN) !== 0;
      }
    };
    this.forPages(h, test, (first, last) => {
      const s = this.region.addr + first * this.pageSize;
      const e = this.region.addr + last * this.pageSize;
      const prev = out[out.length - 1];
      if (prev && prev.end === s) prev.end = e;
      else out.push({ start: s, end: e });
      return out.length < max;
    });
    return out;
  }

  /** Page runs [first, last) in address order whose history byte passes test; fn returns false to stop. */
  private forPages(h: SparseBytes, test: (b: number) => boolean, fn: (first: number, last: number) => boolean): void {
    const bytes = h.bytes;
    for (let c = 0; c < h.chunks; c++) {
      const d = h.dir[c];
      if (!d) continue;
      const base = (d - 1) << CHUNK_SHIFT;
      const pageBase = c << CHUNK_SHIFT;
      const n = Math.min(CHUNK_PAGES, this.pages - pageBase);
      let runStart = -1;
      for (let k = 0; k <= n; k++) {
        const hit = k < n && test(bytes[base + k]);
        if (hit && runStart < 0) runStart = k;
        else if (!hit && runStart >= 0) {
          if (!fn(pageBase + runStart, pageBase + k)) return;
          runStart = -1;
        }
      }
    }
  }

  /** Cold address ranges (not accessed in the last coldAfter intervals and not evicted). */
  coldRanges(): Range[] {
    if (!this.states) return this.ranges('cold');
    const out: Range[] = [];
    for (const r of this.ranges('cold')) {
      const [f, l] = this.pageRange(r.start, r.end);
      let runStart = -1;
      for (let p = f; p <= l; p++) {
        const ok = p < l && this.states.get(p) !== PS_EVICTED;
        if (ok && runStart < 0) runStart = p;
        else if (!ok && runStart >= 0) {
          out.push({ start: this.region.addr + runStart * this.pageSize, end: this.region.addr + p * this.pageSize });
          runStart = -1;
        }
      }
    }
    return out;
  }

  /**
   * Heat of the newest interval over `buckets` equal address slices: the fraction of each
   * slice's pages accessed (and written). For heatmaps; allocation-free when given arrays.
   */
  heat(buckets: number, accessed = new Float32Array(buckets), written = new Float32Array(buckets)): { accessed: Float32Array; written: Float32Array } {
    accessed.fill(0);
    written.fill(0);
    const perBucket = this.pages / buckets;
    for (const [h, out] of [[this.hist, accessed], [this.whist, written]] as const) {
      const bytes = h.bytes;
      for (let s = 0; s < h.used; s++) {
        const pageBase = h.slotChunk[s] << CHUNK_SHIFT;
        const base = s << CHUNK_SHIFT;
        for (let k = 0; k < CHUNK_PAGES; k++) {
          if (bytes[base + k] & NEWEST) out[Math.min(buckets - 1, Math.floor((pageBase + k) / perBucket))] += 1;
        }
      }
      for (let i = 0; i < buckets; i++) out[i] /= perBucket;
    }
    return { accessed, written };
  }

  /** Bytes the tracker itself holds for per-page state (histories, shared states, scan vector). */
  footprint(): number {
    return this.hist.footprint + this.whist.footprint + (this.states?.footprint ?? 0) + this.scanner.vecLen * C.SIZEOF_PAGE_REGION + C.SIZEOF_PM_SCAN_ARG +
      (this.engine ? this.engine.pageStateBuffer.byteLength : 0);
  }

  /** Counters of the trap handler thread (server 'trap'). */
  handlerStats(): Record<CounterName, number> | undefined {
    return this.handler?.stats();
  }

  /** Statistics of the engine serving the region (server 'engine'): faults, pages served back, latency, per worker. */
  engineStats(): EngineStats | undefined {
    return this.finalEngineStats ?? this.engine?.stats();
  }
  private finalEngineStats?: EngineStats;

  // ---- memory manager --------------------------------------------------------------------
  /**
   * Evicts cold pages (idle for at least minIdle intervals). 'store' saves the bytes to the
   * store and frees the memory (anon: the holding-area copy; files: a hole punched in the
   * backing file); the handler serves them back byte-exact on the next touch. 'pageout' and
   * 'cold' only advise the kernel (MADV_PAGEOUT / MADV_COLD; anon needs swap to gain anything).
   */
  evictCold(opts: { how?: 'store' | 'pageout' | 'cold'; minIdle?: number; maxPages?: number } = {}): EvictResult {
    const how = opts.how ?? 'store';
    const minIdle = opts.minIdle ?? this.coldAfter;
    const maxPages = opts.maxPages ?? Infinity;
    if (minIdle < 1 || minIdle > 7) throw new ConfigError(`minIdle must be in 1..7, got ${minIdle}`);
    if (!this.armed) throw new ConfigError('evictCold needs an armed tracker with at least minIdle sampled intervals');
    if (this.intervals < minIdle) return { how, pages: 0, bytes: 0, ms: 0 };
    const t0 = performance.now();
    const idleMask = (0xff << (8 - minIdle)) & 0xfe;
    const isIdle = (b: number) => (b & KNOWN) !== 0 && (b & idleMask) === 0;
    let pages = 0;
    if (how !== 'store') {
      const advice = how === 'pageout' ? C.MADV_PAGEOUT : C.MADV_COLD;
      const base = this.access === 'move' ? this.holdingAddr : this.region.addr;
      this.forPages(this.hist, isIdle, (f, l) => {
        const n = Math.min(l - f, maxPages - pages);
        madvise(base + f * this.pageSize, n * this.pageSize, advice);
        pages += n;
        return pages < maxPages;
      });
      return { how, pages, bytes: pages * this.pageSize, ms: performance.now() - t0 };
    }
    if (!this.states || this.storeAddr === 0) {
      throw new ConfigError("evictCold('store') needs a tracker created with { evict: true }");
    }
    if (this.access === 'rwp') {
      pages = this.rwpWindow(() => {
        // In the frozen window: whatever was touched since the last sample is hot now.
        this.scanner.scan(this.region.addr, this.region.addr + this.region.size,
          { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED },
          (s, e) => { const [f, l] = this.pageRange(s, e); this.mark(this.hist, f, l, true); });
        if (!this.engine) return this.evictRuns(isIdle, maxPages);
        return this.isAnon ? this.evictAnonRwp(isIdle, maxPages) : this.evictRunsEngine(isIdle, maxPages);
      });
    } else if (this.engine) {
      pages = this.evictRunsEngine(isIdle, maxPages);
    } else {
      pages = this.evictRuns(isIdle, maxPages);
    }
    return { how, pages, bytes: pages * this.pageSize, ms: performance.now() - t0 };
  }

  // Claims idle pages page by page (compareExchange against the handler), then saves and
  // frees each claimed run with one call per step.
  private evictRuns(isIdle: (b: number) => boolean, maxPages: number): number {
    const states = this.states!;
    const P = this.pageSize;
    const from = this.access === 'move' ? PS_HELD : PS_NONE;
    let pages = 0;
    const flush = (first: number, last: number) => {
      if (last <= first) return;
      const off = first * P;
      const len = (last - first) * P;
      if (this.access === 'move') {
        memcpy(this.storeAddr + off, this.holdingAddr + off, len);
        madvise(this.holdingAddr + off, len, C.MADV_DONTNEED);
      } else {
        // Unmap first: from here on a touch faults (minor/missing) and waits for the state to change.
        if (this.access !== 'rwp') madvise(this.region.addr + off, len, C.MADV_DONTNEED);
        let done = 0;
        while (done < len) done += preadTo(this.region.fd, this.storeAddr + off + done, len - done, off + done) || len;
        punchHole(this.region.fd, off, len);
      }
      for (let p = first; p < last; p++) states.set(p, PS_EVICTED);
      if (this.access === 'rwp') this.uffd!.wake(this.region.addr + off, len);
      pages += last - first;
    };
    this.forPages(this.hist, isIdle, (f, l) => {
      let runStart = -1;
      for (let p = f; p <= l; p++) {
        const claimed = p < l && pages + (runStart < 0 ? 0 : p - runStart) < maxPages && states.cas(p, from, PS_EVICTING) === from;
        if (claimed && runStart < 0) runStart = p;
        else if (!claimed && runStart >= 0) { flush(runStart, p); runStart = -1; }
      }
      return pages < maxPages;
    });
    return pages;
  }

  // Eviction served by the engine. Anon (move): the cold pages already sit in the store, moved
  // there by the access trap, so they are only marked evicted and handed to swap
  // (MADV_PAGEOUT, a no-op without swap). Files: each run is claimed from the engine, pinned
  // (vmsplice through the alias), punched out of the file, read from the pins into the store
  // and handed to the engine: a write up to the punch is in the pinned pages, a touch after
  // it is a missing fault the engine holds until forget() and then serves from the store.
  private evictRunsEngine(isIdle: (b: number) => boolean, maxPages: number): number {
    const states = this.states!;
    const eng = this.engine!;
    const P = this.pageSize;
    const base = this.region.addr;
    let pages = 0;
    if (this.access === 'move') {
      this.forPages(this.hist, isIdle, (f, l) => {
        let runStart = -1;
        for (let p = f; p <= l; p++) {
          const ok = p < l && pages + (runStart < 0 ? 0 : p - runStart) < maxPages && states.get(p) === PS_HELD && eng.pageState(p) === PAGE_MISSING;
          if (ok && runStart < 0) runStart = p;
          else if (!ok && runStart >= 0) {
            states.setRange(runStart, p, PS_EVICTED);
            tryMadvise(this.storeAddr + runStart * P, (p - runStart) * P, C.MADV_PAGEOUT);
            pages += p - runStart;
            runStart = -1;
          }
        }
        return pages < maxPages;
      });
      return pages;
    }
    const pins = this.pins!;
    const chunk = Math.max(1, Math.floor(pins.capacity / P));
    this.forPages(this.hist, isIdle, (f, l) => {
      let p = f;
      while (p < l && pages < maxPages) {
        if (states.get(p) !== PS_NONE) { p++; continue; }
        let q = p + 1;
        while (q < l && q - p < chunk && pages + (q - p) < maxPages && states.get(q) === PS_NONE) q++;
        const held = eng.hold(base + p * P, (q - p) * P) / P;
        if (held === 0) { p++; continue; } // being served right now: it is not cold any more
        const off = p * P;
        const len = held * P;
        try {
          pins.pin(this.aliasAddr + off, len);
        } catch (e) {
          eng.markResident(base + off, len);
          throw e;
        }
        try {
          punchHole(this.region.fd, off, len);
        } finally {
          pins.drainTo(this.storeAddr + off, len);
        }
        states.setRange(p, p + held, PS_EVICTED);
        eng.forget(base + off, len);
        pages += held;
        p += held;
      }
      return pages < maxPages;
    });
    return pages;
  }

  // Anon under RWP, served by the engine, in the sync window: each cold run is claimed from
  // the engine, un-protected without waking anyone (a protnone PTE would arrive in the store
  // still protected), moved into the store with UFFDIO_MOVE (atomic: a write up to the move
  // is in the moved page; a touch after it is a missing fault the engine holds) and handed
  // to the engine, which copies each page back on its next touch.
  private evictAnonRwp(isIdle: (b: number) => boolean, maxPages: number): number {
    const states = this.states!;
    const eng = this.engine!;
    const uffd = this.uffd!;
    const P = this.pageSize;
    const base = this.region.addr;
    let pages = 0;
    this.forPages(this.hist, isIdle, (f, l) => {
      let p = f;
      while (p < l && pages < maxPages) {
        if (states.get(p) !== PS_NONE) { p++; continue; }
        let q = p + 1;
        while (q < l && pages + (q - p) < maxPages && states.get(q) === PS_NONE) q++;
        const a = base + p * P;
        const h = eng.hold(a, (q - p) * P);
        if (h === 0) { p++; continue; } // being served right now: not cold any more
        uffd.rwprotect(a, h, false, true);
        const { done, failed } = this.moveIntoStore(a, h);
        const pf = p;
        if (done > 0) {
          states.setRange(pf, pf + done / P, PS_EVICTED);
          eng.forget(a, done);
          tryMadvise(this.storeAddr + (a - base), done, C.MADV_PAGEOUT);
        }
        if (done < h) {
          uffd.rwprotect(a + done, h - done, true); // stays, protected again
          eng.markResident(a + done, h - done);
        }
        pages += done / P;
        if (failed) return false;
        p += h / P;
      }
      return pages < maxPages;
    });
    return pages;
  }

  /**
   * Moves [a, a+len) of the region into the store at the same offset (UFFDIO_MOVE, holes
   * allowed), after freeing stale store copies there (MOVE needs its destination empty).
   * Stops at a page that cannot move (EBUSY: pinned, KSM, shared; EEXIST).
   */
  private moveIntoStore(a: number, len: number): { done: number; failed: boolean } {
    const uffd = this.uffd!;
    const dst = this.storeAddr + (a - this.region.addr);
    madvise(dst, len, C.MADV_DONTNEED);
    let done = 0;
    for (let tries = 0; done < len && tries < 100; tries++) {
      try {
        done += uffd.move(dst + done, a + done, len - done, C.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
        if (uffd.lastErrno === ERRNO.EEXIST) return { done, failed: true };
        if (uffd.lastErrno === ERRNO.EAGAIN) yieldCpu(); // an event (REMOVE) not read yet
      } catch {
        return { done, failed: true };
      }
    }
    return { done, failed: false };
  }

  /**
   * Puts every page back in the region: held pages moved back, evicted pages copied from the
   * store. Safe while the workload runs (each page is claimed against the server first). With
   * the engine, its workers fill every page it holds (populate()); the store copies are freed
   * at the next sample.
   */
  async restoreAll(): Promise<{ moved: number; copied: number }> {
    if (this.engine) {
      const before = this.engine.stats().pages.total;
      await this.engine.populate();
      this.reconcile();
      return { moved: 0, copied: this.engine.stats().pages.total - before };
    }
    if (!this.states || !this.uffd) return { moved: 0, copied: 0 };
    const P = this.pageSize;
    const uffd = this.uffd;
    const states = this.states;
    const protect = this.write === 'wp-async';
    let moved = 0;
    let copied = 0;
    // Claim pages in address order and put each contiguous run back with one ioctl.
    const each = (state: number, put: (first: number, last: number) => void) => {
      const pages: number[] = [];
      states.forEachIn(state, (p) => pages.push(p));
      pages.sort((a, b) => a - b);
      let runStart = -1;
      let prev = -2;
      for (let i = 0; i <= pages.length; i++) {
        const p = i < pages.length ? pages[i] : -1;
        const claimed = p >= 0 && states.cas(p, state, PS_SERVING) === state;
        if (claimed && p === prev + 1 && runStart >= 0) { prev = p; continue; }
        if (runStart >= 0) put(runStart, prev + 1);
        runStart = claimed ? p : -1;
        prev = claimed ? p : -2;
      }
    };
    each(PS_HELD, (first, last) => {
      const off = first * P;
      const len = (last - first) * P;
      let done = 0;
      for (let tries = 0; done < len && tries < 100; tries++) {
        try {
          done += uffd.move(this.region.addr + off + done, this.holdingAddr + off + done, len - done, C.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
          if (uffd.lastErrno === ERRNO.EEXIST) done += P; // cannot happen while states are consistent
        } catch {
          break; // a page already present at the destination: leave the rest to the faults
        }
      }
      if (protect) uffd.writeprotect(this.region.addr + off, len, true);
      moved += done / P;
      for (let p = first; p < last; p++) states.set(p, PS_NONE);
    });
    each(PS_EVICTED, (first, last) => {
      const off = first * P;
      const len = (last - first) * P;
      let done = 0;
      for (let tries = 0; done < len && tries < 100; tries++) {
        done += uffd.copy(this.region.addr + off + done, this.storeAddr + off + done, len - done, protect ? C.UFFDIO_COPY_MODE_WP : 0);
        if (uffd.lastErrno === ERRNO.EEXIST) done += P; // filled meanwhile: skip that page
      }
      copied += last - first;
      punchHole(this.storeFd, off, len);
      for (let p = first; p < last; p++) states.set(p, PS_NONE);
    });
    return { moved, copied };
  }

  /** Restores every page, stops the handler, unregisters and frees what the tracker made. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    removeSoftDirtyUser(this);
    try {
      if (!this.engine) await this.restoreAll();
    } finally {
      if (this.engine) {
        // 'complete': the workers fill every page still in the store, then unregister.
        this.finalEngineStats = await this.engine.stop({ mode: 'complete' });
        this.rescueAfterStop();
      }
      if (this.handler) await this.handler.stop();
      if (this.uffd) {
        try { this.uffd.unregister(this.region.addr, this.region.size, this.pageSize); } catch { /* region gone */ }
        if (this.holdingAddr) try { this.uffd.unregister(this.holdingAddr, this.region.size); } catch { /* */ }
        this.uffd.close();
      }
      if (this.holdingAddr) munmap(this.holdingAddr, this.region.size);
      if (this.storeAddr && this.storeAddr !== this.holdingAddr) munmap(this.storeAddr, this.region.size);
      if (this.storeFd >= 0) closeFd(this.storeFd);
      if (this.aliasAddr) munmap(this.aliasAddr, this.region.size);
      this.pins?.close();
      this.scanner.close();
    }
  }

  // Only if the engine gave up filling (its stop timed out and unregistered the region): copy
  // every page it still held from the store by hand, unless the region has it already.
  private rescueAfterStop(): void {
    const eng = this.engine!;
    if (eng.pagesMissing() === 0) return;
    const P = this.pageSize;
    this.states!.forEachSet((p, st) => {
      if (!this.hasCopy(st)) return;
      const es = eng.pageState(p);
      if (es === PAGE_PRESENT || es === PAGE_DROPPED) return;
      const a = this.region.addr + p * P;
      if (this.scanner.countBytes(a, a + P, { categoryMask: C.PAGE_IS_PRESENT }) === 0) memcpy(a, this.storeAddr + p * P, P);
    });
  }

  /** A one-line description of the methods in use. */
  describe(): string {
    return `write=${this.write} access=${this.access} type=${this.region.type} page=${this.pageSize}` +
      (this.modes.length ? ` registered=${this.modes.join('+')}` : '') +
      (this.server === 'engine' ? ` server=engine(${this.engine!.workers} workers)` : this.server === 'trap' ? ' server=trap' : '');
  }
}
