// Working-set tracking of one registered region: arm, let an interval pass, sample (scan and
// re-arm), repeat. Each sample reports the pages written and the pages accessed in the
// interval, the working-set size, and a hot/warm/cold classification from a per-page history
// (history.ts).
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
//          minor     like zap, registered MINOR: each first touch is a minor fault the engine
//                    resolves with UFFDIO_CONTINUE
//          move      anon: pages seen present are moved into the store (UFFDIO_MOVE); the
//                    first touch is a missing fault and the engine copies the page back
// The memory manager part (evictCold / restoreAll) saves cold pages to the store and frees
// them; they are served back, byte-exact, on the next touch.
//
// One server: when the methods raise fault messages (move, minor, eviction), the parallel
// engine (src/engine/) serves the tracker's userfaultfd, with the store as the region's
// source and the page-state table started 'resident'; store.ts hands it each page the
// tracker moves aside or evicts (hold -> move the bytes -> forget).
import * as C from '../kernel/constants.js';
import { ConfigError, UnsupportedError } from '../kernel/errors.js';
import {
  close as closeFd, ftruncate, madvise, mapAnonymous, memfdCreate, mmap, munmap, openFile, tryMadvise,
} from '../kernel/memory.js';
import { Scanner } from '../kernel/pagemap.js';
import { RegisterMode, Userfaultfd } from '../kernel/userfaultfd.js';
import type { FeatureName } from '../kernel/constants.js';
import { featuresFor } from '../memory-types/check.js';
import { memoryType } from '../memory-types/index.js';
import type { MemoryTypeName } from '../memory-types/types.js';
import { Engine, EngineStats } from '../engine/engine.js';
import { sources } from '../sources/index.js';
import { HistoryKind, idleTest, PageHistory } from './history.js';
import { AccessMethod, chooseMethods, MethodChoice, ServerKind, WriteMethod } from './methods.js';
import { PagePins } from './pins.js';
import { addSoftDirtyUser, clearSoftDirty, removeSoftDirtyUser, SoftDirtyUser } from './soft-dirty.js';
import { COPY_EVICTED } from './pages.js';
import { PageStore } from './store.js';

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
  /** Write tracking: true, false or 'auto' (on when possible and not excluded by rwp or minor). */
  write?: boolean | 'auto';
  /** Access tracking method, or 'auto': rwp when the kernel has it, else move (anon) / zap (files). */
  access?: AccessMethod | 'auto';
  /** Prepare for evictCold('store'): a store for saved bytes, served back by the engine. */
  evict?: boolean;
  /** File for evicted bytes of shmem/hugetlbfs regions (default: an anonymous memfd). */
  storePath?: string;
  /** A page is hot when accessed in at least hotMin of the last hotWindow intervals (defaults 2 of 4). */
  hotMin?: number;
  hotWindow?: number;
  /** A known page is cold when not accessed in the last coldAfter intervals (default 3). */
  coldAfter?: number;
  /** Regions per PAGEMAP_SCAN call (default 4096). */
  vecLen?: number;
  /** How long the engine's idle workers spin before sleeping, microseconds (default: the engine's). */
  spinMicros?: number;
  /** Engine worker threads (default 2). */
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
  /** Pages evicted into the store / held there by the anon access trap right now. */
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
  /** Faults the engine received in the interval. */
  faults: number;
  /** Pages the engine put back in the region in the interval (copied from the store, zero pages, CONTINUE). */
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

interface ScanResult { accessed: number; written: number; rearmMs: number; regions: number; calls: number }

const GiB = 1024 ** 3;

export class WssTracker implements SoftDirtyUser {
  readonly region: TrackedRegion;
  readonly pageSize: number;
  readonly pages: number;
  readonly methods: MethodChoice;
  readonly uffd?: Userfaultfd;
  readonly scanner: Scanner;
  readonly history: PageHistory;
  /** The store and the engine serving this region's faults (server 'engine'). */
  private readonly store?: PageStore;
  /** Intervals sampled since arm(). */
  intervals = 0;
  private armed = false;
  private closed = false;
  private lastSampleAt = 0;
  private lastCounts = { faults: 0, served: 0 };
  private readonly modes: RegisterMode[];
  private readonly isAnon: boolean;
  private readonly isHugetlb: boolean;
  private finalEngineStats?: EngineStats;
  // Pages reported written that came back through the engine with their bytes unchanged at
  // the scan, in the last interval (see unchangedBack()).
  private readonly unchanged: Range[] = [];
  // Soft-dirty runs saved before another tracker cleared the process's bits.
  private readonly dirtySaved: [number, number][] = [];
  private lateAccesses = 0;

  private constructor(region: TrackedRegion, methods: MethodChoice, opts: TrackerOptions, modes: RegisterMode[], uffd?: Userfaultfd, store?: PageStore) {
    this.region = region;
    this.pageSize = region.pageSize;
    this.pages = region.size / region.pageSize;
    this.methods = methods;
    this.uffd = uffd;
    this.store = store;
    this.modes = modes;
    this.isAnon = region.type === 'anon';
    this.isHugetlb = region.type === 'hugetlbfs';
    this.scanner = new Scanner({ vecLen: opts.vecLen });
    this.history = new PageHistory(this.pages, opts);
  }

  /** Sets up tracking of a region: negotiates, registers, starts the engine when the methods need one. */
  static async create(region: TrackedRegion, opts: TrackerOptions = {}): Promise<WssTracker> {
    const P = region.pageSize;
    if (region.size % P || region.addr % P) throw new ConfigError(`region [0x${region.addr.toString(16)}, +${region.size}) is not aligned to its page size ${P}`);
    if ('server' in opts && (opts as { server?: unknown }).server !== undefined) {
      throw new ConfigError("the 'server' option is gone: the engine serves every fault of a tracked region (docs/wss.md)");
    }
    const methods = chooseMethods(region.type, { write: opts.write, access: opts.access, evict: opts.evict });
    const { write, access, server } = methods;
    const isAnon = region.type === 'anon';
    if (opts.storePath && isAnon) {
      throw new UnsupportedError('anon pages are evicted by UFFDIO_MOVE into an anonymous store (MOVE cannot move into a file), ' +
        'which MADV_PAGEOUT hands to swap; storePath is for shmem/hugetlbfs regions');
    }
    new PageHistory(1, opts); // refuses bad hotMin/hotWindow/coldAfter before anything is acquired
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
    if (access === 'minor') modes.push('minor');
    if (access === 'move' || access === 'minor' || opts.evict) modes.push('missing');
    // Anon pages go into the store with UFFDIO_MOVE: moved aside by the access trap, or evicted.
    // A guest's madvise(DONTNEED) of an anon page must then reach the engine (REMOVE: the page
    // is DROPPED and reads zeros, as the kernel would), or the engine would fill the page again
    // from its store copy. Files keep their data in the page cache over a DONTNEED, so the zap
    // method (one DONTNEED per run per sample) goes without.
    const moveStore = isAnon && (access === 'move' || !!opts.evict);
    if (moveStore) features.add('MOVE').add('EVENT_REMOVE').add('PAGEFAULT_FLAG_WP'); // the holding area is registered wp
    let uffd: Userfaultfd | undefined;
    let engine: Engine | undefined;
    let storeAddr = 0;
    let storeFd = -1;
    let aliasAddr = 0;
    let pins: PagePins | undefined;
    let registered = false;
    try {
      if (modes.length) {
        for (const f of featuresFor(memoryType(region.type), modes)) features.add(f);
        uffd = Userfaultfd.create({ features: [...features] });
      }
      // Page granularity: a THP would be tracked (and, for RWP on files, lose its marks) as a whole.
      if (region.type !== 'hugetlbfs') madvise(region.addr, region.size, C.MADV_NOHUGEPAGE);
      if (uffd) { uffd.register(region.addr, region.size, modes, P); registered = true; }
      if (moveStore && uffd) {
        // The store is an anonymous holding area: UFFDIO_MOVE needs its destination registered
        // with the same uffd; wp mode never raises a missing fault, so reading it cannot fault.
        storeAddr = mapAnonymous(region.size, C.MAP_NORESERVE);
        madvise(storeAddr, region.size, C.MADV_NOHUGEPAGE);
        uffd.register(storeAddr, region.size, ['wp']);
      } else if (opts.evict) {
        storeFd = opts.storePath ? openFile(opts.storePath, C.O_RDWR | C.O_CREAT | C.O_TRUNC) : memfdCreate('uffd-engine-wss-store');
        ftruncate(storeFd, region.size);
        storeAddr = mmap(region.size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED | C.MAP_NORESERVE, storeFd, 0);
        // Pages are pinned (vmsplice) through an alias that is never registered, so pinning
        // never raises a fault the engine would have to serve.
        aliasAddr = mmap(region.size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED | C.MAP_NORESERVE, region.fd, 0);
        pins = new PagePins(Math.max(P, 1 << 20));
      }
      if (server === 'engine' && uffd) {
        // No read-ahead or background fill: a neighbour brought back early would read as accessed.
        engine = await Engine.start({
          regions: [{
            start: region.addr, size: region.size, pageSize: P, type: region.type as MemoryTypeName,
            source: storeAddr ? sources.address(storeAddr, region.size) : sources.zero(),
          }],
          uffd, ownsUffd: false, workers: opts.workers, initially: 'resident', prefetch: false,
          ...(opts.spinMicros !== undefined ? { spinMicros: opts.spinMicros } : {}),
        });
      }
    } catch (e) {
      if (engine) await engine.stop({ mode: 'abandon' }).catch(() => undefined);
      pins?.close();
      if (aliasAddr) munmap(aliasAddr, region.size);
      if (uffd) {
        if (registered) try { uffd.unregister(region.addr, region.size, P); } catch { /* region gone */ }
        uffd.close();
      }
      if (storeAddr) munmap(storeAddr, region.size);
      if (storeFd >= 0) closeFd(storeFd);
      throw e;
    }
    const store = engine && uffd ? new PageStore({
      regionAddr: region.addr, size: region.size, pageSize: P, fd: isAnon ? -1 : region.fd, uffd, engine,
      addr: storeAddr, storeFd, aliasAddr, pins,
    }) : undefined;
    return new WssTracker(region, methods, opts, modes, uffd, store);
  }

  get write(): WriteMethod { return this.methods.write; }
  get server(): ServerKind { return this.methods.server; }
  get access(): AccessMethod { return this.methods.access; }
  /** Whether per-interval reads are visible (an access method is on). */
  get seesReads(): boolean { return this.methods.access !== 'none'; }
  /** The engine serving the region's faults (server 'engine'). */
  get engine(): Engine | undefined { return this.store?.engine; }
  /** Address of the store (the engine's source, same offsets as the region), or 0. */
  get storeAddr(): number { return this.store?.addr ?? 0; }

  private get fd(): Userfaultfd {
    if (!this.uffd) throw new ConfigError(`write=${this.write} access=${this.access} registers nothing: there is no userfaultfd`);
    return this.uffd;
  }

  private pageRange(s: number, e: number): [number, number] {
    const a = this.region.addr;
    const P = this.pageSize;
    return [Math.floor((s - a) / P), Math.ceil((e - a) / P)];
  }

  // ---- arm / sample ----------------------------------------------------------------------
  /** Starts the first interval: protects (or zaps, or moves aside) what is present now. */
  arm(): void {
    if (this.armed) throw new ConfigError('arm() was already called; call sample() to end an interval');
    const { region } = this;
    if (this.write === 'wp-async' && !this.isAnon) {
      // Files: put a write-protect marker on every page, present or not, so that a page read
      // in later (from the page cache) comes in protected and reads are not taken for writes.
      this.fd.writeprotect(region.addr, region.size, true);
    }
    if (!this.isHugetlb) this.splitHugeMappings();
    if (this.access === 'rwp') {
      this.scanner.scan(region.addr, region.addr + region.size, { categoryAnyof: C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED },
        (s, e) => { const [f, l] = this.pageRange(s, e); this.history.mark(this.history.access, f, l, false); });
      this.fd.rwprotect(region.addr, region.size, true);
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
    this.lastCounts = this.engineCounts();
  }

  /** Running totals of the engine: faults received, pages put back. */
  private engineCounts(): { faults: number; served: number } {
    const s = this.engine?.stats();
    return s ? { faults: s.faults.total, served: s.pages.total } : { faults: 0, served: 0 };
  }

  // One PAGEMAP_SCAN over the region; each reported run is marked and re-armed at once.
  private scanAndRearm(initial: boolean): ScanResult {
    const { region, history: h } = this;
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
    const store = this.store;
    const sum = this.scanner.scan(region.addr, region.addr + region.size, opts, (s, e, cats) => {
      const first = Math.floor((s - base) / P);
      const last = Math.ceil((e - base) / P);
      const isWritten = tracksWrites && (cats & C.PAGE_IS_WRITTEN) !== 0 && (cats & C.PAGE_IS_PFNZERO) === 0;
      if (initial) {
        h.mark(h.access, first, last, false);
      } else {
        if (activityIsAccess) accessed += h.mark(h.access, first, last, true);
        else h.mark(h.access, first, last, isWritten);
        if (isWritten) written += this.markWritten(first, last);
      }
      if (access === 'none' || access === 'rwp') return;
      const t0 = performance.now();
      if (access === 'zap' || access === 'minor') {
        madvise(s, e - s, C.MADV_DONTNEED);
        store?.settleReturned(first, last);
      } else if (access === 'move' && store) {
        store.moveAside(s, e, tracksWrites);
      }
      rearm += performance.now() - t0;
    });
    return { accessed, written, rearmMs: rearm, regions: sum.regions, calls: sum.calls };
  }

  /**
   * Marks the written pages of a run reported written. A page the engine copied back from the
   * store is installed writable and dirty, so the kernel reports it written even after a
   * read: for those, written means its bytes differ from the store copy it came from.
   */
  private markWritten(first: number, last: number): number {
    const { store, history: h } = this;
    if (!store) return h.mark(h.write, first, last, true);
    let n = 0;
    let p = first;
    while (p < last) {
      let q = p;
      while (q < last && !store.hasCopy(q)) q++;
      if (q > p) {
        n += h.mark(h.write, p, q, true);
        p = q;
        continue;
      }
      while (q < last && store.hasCopy(q)) q++;
      if (store.differs(p, q)) {
        for (let k = p; k < q; k++) {
          if (store.differs(k, k + 1)) n += h.mark(h.write, k, k + 1, true);
          else this.noteUnchanged(k, k + 1);
        }
      } else {
        this.noteUnchanged(p, q);
      }
      p = q;
    }
    return n;
  }

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
   * flight at the scan (counted in the next interval).
   */
  unchangedBack(): Range[] {
    return this.unchanged.map((r) => ({ ...r }));
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
    this.history.age();
    this.unchanged.length = 0;
    const scanNanos0 = this.scanner.nanos;
    const r = this.access === 'rwp' ? this.sampleRwp() : this.scanAndRearm(false);
    this.intervals++;
    const scanMs = Number(this.scanner.nanos - scanNanos0) / 1e6;
    const cls = this.history.classify();
    this.store?.reconcile(this.access === 'rwp');
    const counts = this.engineCounts();
    const faults = counts.faults - this.lastCounts.faults;
    const servedBack = counts.served - this.lastCounts.served;
    this.lastCounts = counts;
    const st = this.store?.counts();
    const scanSec = scanMs / 1000;
    const seen = this.seesReads ? r.accessed : r.written;
    return {
      interval: this.intervals,
      elapsedMs,
      written: this.write !== 'none' ? r.written : null,
      accessed: this.seesReads ? r.accessed : null,
      wssBytes: seen * this.pageSize,
      hot: cls[1], warm: cls[2], cold: cls[3], known: cls[1] + cls[2] + cls[3],
      evicted: st?.evicted ?? 0,
      held: st?.held ?? 0,
      scanMs, rearmMs: r.rearmMs, scanCalls: r.calls, regions: r.regions,
      pagesPerSec: scanSec > 0 ? (this.region.size / C.PAGE_SIZE) / scanSec : 0,
      msPerGiB: scanMs / (this.region.size / GiB),
      faults, servedBack, server: this.server,
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
   * (the engine, when there is one, leaves RWP faults alone while the window is open; without
   * one nobody reads them). Afterwards async mode is back and every waiting thread is woken:
   * it retries and its access resolves in the kernel, counted in the next interval.
   */
  private rwpWindow<T>(fn: () => T): T {
    const uffd = this.fd;
    const engine = this.engine;
    engine?.holdRwp(true);
    uffd.setMode([], ['RWP_ASYNC']);
    try {
      return fn();
    } finally {
      uffd.setMode(['RWP_ASYNC'], []);
      if (engine) engine.holdRwp(false);
      else uffd.wake(this.region.addr, this.region.size);
    }
  }

  // Marks what the hot scan (PAGE_IS_ACCESSED) reports; returns the pages newly marked this
  // interval, each once (inside 7.3 the scan reported 512 of 106496 pages twice at 4 GiB: a
  // sum of run lengths counted them twice, the marks did not).
  private scanAccessed(): { pages: number; regions: number; calls: number } {
    const { region, history: h } = this;
    let pages = 0;
    const r = this.scanner.scan(region.addr, region.addr + region.size, { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED },
      (s, e) => {
        const [f, l] = this.pageRange(s, e);
        pages += h.mark(h.access, f, l, true);
      });
    return { pages, regions: r.regions, calls: r.calls };
  }

  // RWP: freeze (sync mode), scan the hot set, re-protect everything, read and clear the
  // soft-dirty bits, thaw. Accesses in the window wait and resume once async mode is back,
  // counted in the next interval.
  private sampleRwp(): ScanResult {
    const { region } = this;
    const t0 = performance.now();
    const scan0 = this.scanner.nanos;
    let accessed = 0;
    let written = 0;
    const sum = this.rwpWindow(() => {
      // The scan reports exactly this interval's accesses (everything was re-protected at the
      // previous sample); pages an eviction window already marked count as well.
      const r = this.scanAccessed();
      accessed = r.pages;
      this.fd.rwprotect(region.addr, region.size, true);
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
    const { history: h, store } = this;
    const runs = this.dirtySaved.splice(0);
    this.scanner.scan(this.region.addr, this.region.addr + this.region.size, { categoryMask: C.PAGE_IS_SOFT_DIRTY | C.PAGE_IS_PRESENT },
      (s, e) => { runs.push(this.pageRange(s, e)); });
    clearSoftDirty(this);
    let n = 0;
    const P = this.pageSize;
    // A written page was accessed too (a write in the instant between the two scans of a window shows only here).
    const markWrite = (f: number, l: number) => {
      this.lateAccesses += h.mark(h.access, f, l, true);
      return h.mark(h.write, f, l, true);
    };
    for (const [f, l] of runs) {
      if (!store) { n += markWrite(f, l); continue; }
      let p = f;
      while (p < l) {
        let q = p;
        while (q < l && !store.hasCopy(q)) q++;
        if (q > p) { n += markWrite(p, q); p = q; continue; }
        while (q < l && store.hasCopy(q)) q++;
        const a = this.region.addr + p * P;
        this.fd.rwprotect(a, (q - p) * P, false, true);
        try {
          n += this.markWritten(p, q);
        } finally {
          this.fd.rwprotect(a, (q - p) * P, true);
        }
        this.lateAccesses += h.mark(h.access, p, q, true);
        p = q;
      }
    }
    return n;
  }

  // ---- queries ---------------------------------------------------------------------------
  /**
   * Address ranges of the pages that are `kind` now: accessed / written in the last interval,
   * hot, warm, cold or known, in address order.
   */
  ranges(kind: HistoryKind, max = Infinity): Range[] {
    const out: Range[] = [];
    this.history.forPages(this.history.of(kind), this.history.test(kind), (first, last) => {
      const s = this.region.addr + first * this.pageSize;
      const e = this.region.addr + last * this.pageSize;
      const prev = out[out.length - 1];
      if (prev && prev.end === s) prev.end = e;
      else out.push({ start: s, end: e });
      return out.length < max;
    });
    return out;
  }

  /** Cold address ranges (not accessed in the last coldAfter intervals and not evicted). */
  coldRanges(): Range[] {
    const copies = this.store?.copies;
    if (!copies) return this.ranges('cold');
    const out: Range[] = [];
    for (const r of this.ranges('cold')) {
      const [f, l] = this.pageRange(r.start, r.end);
      let runStart = -1;
      for (let p = f; p <= l; p++) {
        const ok = p < l && copies.get(p) !== COPY_EVICTED;
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
    this.history.heat(accessed, written);
    return { accessed, written };
  }

  /** Bytes the tracker itself holds for per-page state (histories, store copies, scan vector, the engine's page-state table). */
  footprint(): number {
    return this.history.footprint + (this.store?.copies.footprint ?? 0) + this.scanner.vecLen * C.SIZEOF_PAGE_REGION + C.SIZEOF_PM_SCAN_ARG +
      (this.engine ? this.engine.pageStateBuffer.byteLength : 0);
  }

  /** Statistics of the engine serving the region: faults, pages served back, latency, per worker (final figures after close()). */
  engineStats(): EngineStats | undefined {
    return this.finalEngineStats ?? this.engine?.stats();
  }

  // ---- memory manager --------------------------------------------------------------------
  /**
   * Evicts cold pages (idle for at least minIdle intervals). 'store' saves the bytes to the
   * store and frees the memory (anon: moved into the store; files: pinned and punched out of
   * the backing file); the engine serves them back byte-exact on the next touch. 'pageout'
   * and 'cold' only advise the kernel (MADV_PAGEOUT / MADV_COLD; anon needs swap to gain anything).
   */
  evictCold(opts: { how?: 'store' | 'pageout' | 'cold'; minIdle?: number; maxPages?: number } = {}): EvictResult {
    const how = opts.how ?? 'store';
    const minIdle = opts.minIdle ?? this.history.coldAfter;
    const maxPages = opts.maxPages ?? Infinity;
    const isIdle = idleTest(minIdle);
    if (!this.armed) throw new ConfigError('evictCold needs an armed tracker with at least minIdle sampled intervals');
    if (this.intervals < minIdle) return { how, pages: 0, bytes: 0, ms: 0 };
    const t0 = performance.now();
    const h = this.history;
    let pages = 0;
    if (how !== 'store') {
      const advice = how === 'pageout' ? C.MADV_PAGEOUT : C.MADV_COLD;
      // Under move the cold pages sit in the store (held).
      const base = this.access === 'move' && this.store ? this.store.addr : this.region.addr;
      h.forPages(h.access, isIdle, (f, l) => {
        const n = Math.min(l - f, maxPages - pages);
        madvise(base + f * this.pageSize, n * this.pageSize, advice);
        pages += n;
        return pages < maxPages;
      });
      return { how, pages, bytes: pages * this.pageSize, ms: performance.now() - t0 };
    }
    const store = this.store;
    if (!store || !store.addr) throw new ConfigError("evictCold('store') needs a tracker created with { evict: true }");
    const rwp = this.access === 'rwp';
    const evictIdle = () => {
      let n = 0;
      h.forPages(h.access, isIdle, (f, l) => {
        const r = store.evictRun(f, l, maxPages - n, rwp);
        n += r.pages;
        return !r.stop && n < maxPages;
      });
      return n;
    };
    pages = rwp ? this.rwpWindow(() => {
      // In the frozen window: whatever was touched since the last sample is hot now.
      this.scanAccessed();
      return evictIdle();
    }) : evictIdle();
    return { how, pages, bytes: pages * this.pageSize, ms: performance.now() - t0 };
  }

  /**
   * Puts every page back in the region now: the engine's workers fill every page it holds
   * (populate()); the store copies are freed at the next sample. Safe while the workload runs.
   */
  async restoreAll(): Promise<{ copied: number }> {
    const engine = this.engine;
    if (!engine || !this.store) return { copied: 0 };
    const before = engine.stats().pages.total;
    await engine.populate();
    this.store.reconcile(this.access === 'rwp');
    return { copied: engine.stats().pages.total - before };
  }

  /** Restores every page, stops the engine, unregisters and frees what the tracker made. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    removeSoftDirtyUser(this);
    try {
      if (this.store) {
        // 'complete': the workers fill every page still in the store, then unregister.
        this.finalEngineStats = await this.store.engine.stop({ mode: 'complete' });
        this.store.rescueAfterStop(this.scanner);
      }
    } finally {
      if (this.uffd) {
        try { this.uffd.unregister(this.region.addr, this.region.size, this.pageSize); } catch { /* region gone */ }
        if (this.store?.addr && this.isAnon) try { this.uffd.unregister(this.store.addr, this.region.size); } catch { /* */ }
        this.uffd.close();
      }
      this.store?.close();
      this.scanner.close();
    }
  }

  /** A one-line description of the methods in use. */
  describe(): string {
    return `write=${this.write} access=${this.access} type=${this.region.type} page=${this.pageSize}` +
      (this.modes.length ? ` registered=${this.modes.join('+')}` : '') +
      (this.engine ? ` server=engine(${this.engine.workers} workers)` : '');
  }
}
