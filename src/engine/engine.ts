// The Engine: the main-thread face of the parallel fault engine. It registers the
// regions, builds the shared tables, starts the dispatcher thread and one long-lived
// piscina task per shard, answers callback sources, replaces workers that die, reports
// live statistics and events, and stops deterministically.
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { MessageChannel, Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { FeatureName, MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PAGE_SIZE, PROT_READ } from '../kernel/constants.js';
import { ConfigError, UnsupportedError } from '../kernel/errors.js';
import { errnoName } from '../kernel/libc.js';
import { close as closeFd, eventfd, eventfdSignal, mmap, munmap } from '../kernel/memory.js';
import { RegisterMode, Userfaultfd } from '../kernel/userfaultfd.js';
import { checkResolve, registerChecked } from '../memory-types/check.js';
import { memoryType } from '../memory-types/index.js';
import type { MemoryTypeName, Region } from '../memory-types/types.js';
import { openRemoteRegions, OpenedRemotes } from '../remote/engine-sources.js';
import { GateSetup, watchArrivals } from '../remote/gate.js';
import { OpenedSource, openSource, PageSource } from '../sources/index.js';
import type { BufferRecycler } from './buffer-recycler.js';
import type { EngineSetup } from './layout.js';
import type { CallbackRequest, DispatcherMessage, WorkerMessage } from './messages.js';
import { DISPATCHER, EngineThreads, SHARD_WORKER, startLimitMs } from './threads.js';
import {
  C_BYTES, C_CPU_SEC, C_EEXIST, C_ERRORS, C_EVENTS, C_FAULTS_MINOR, C_FAULTS_MISSING, C_FAULTS_RWP, C_FAULTS_WP,
  C_HANDOFFS, C_HIST, C_INLINE, C_IOCTLS, C_PAGES_BACKGROUND, C_PAGES_DEMAND, C_PAGES_READAHEAD, C_READS, C_RETRIES,
  C_DIRECT, C_FIRST_MS, C_REMOVES, C_REZEROED, C_SPURIOUS, C_WAKES, C_ZERO_FILLS, COUNTER_WORDS, Counters, HIST_BUCKETS, histogramPercentile, PAGE_DROPPED,
  PAGE_FILLING, PAGE_MISSING, PAGE_PRESENT, PageStates, Ring,
} from './shared.js';
import { CallbackSlot, Claims, ControlBlock, MAX_WORKERS, MissOp, RegionTable } from './tables.js';

export interface EngineRegion {
  /** A region made by a memory type; the engine registers it. */
  region?: Region;
  /** Or a range its owner registered already (e.g. a VMM's memory, uffd received over a socket). */
  start?: number;
  size?: number;
  pageSize?: number;
  type?: MemoryTypeName;
  source: PageSource;
  /** Modes to register (own regions). Default: missing, plus minor for pageCache sources. */
  modes?: RegisterMode[];
}

export interface PrefetchOptions {
  /** Largest read-ahead window around a demand fault, in bytes (0: none). */
  readAhead?: number;
  /** Smallest window, in bytes; the window doubles on sequential faults up to readAhead. */
  readAheadMin?: number;
  /** Idle workers populate the rest of the regions, demand faults first. */
  background?: boolean;
  /** Global page indices to populate first (a recorded working set), before address order. */
  order?: ArrayLike<number>;
  /** Pages per background step, in bytes. */
  chunk?: number;
}

export interface EngineOptions {
  regions: EngineRegion[];
  /** A userfaultfd to serve (received, or made by the caller). Default: one is created. */
  uffd?: Userfaultfd;
  /** Close the userfaultfd on stop (default: only if the engine created it). */
  ownsUffd?: boolean;
  workers?: number;
  /** Bytes of address space per shard stripe (a multiple of the page size). */
  stripe?: number;
  prefetch?: boolean | PrefetchOptions;
  /**
   * Who reads the userfaultfd. 'dispatcher' (default): the dispatcher alone reads and hands
   * faults to the workers' rings (see `inline`). 'all' (opt-in, experimental): every worker
   * waits on it and resolves what it read (native handlers work this way), the dispatcher
   * reads in the place of a worker busy elsewhere; non-fault events are applied under a read
   * lock before any later fault is looked at.
   */
  readers?: 'all' | 'dispatcher';
  /**
   * What the dispatcher does with a fault it read. 'auto' (default with readers
   * 'dispatcher'): resolve it itself when its worker sleeps and the batch is small;
   * 'always' (default with readers 'all'): resolve it itself; 'never': hand it to a worker.
   */
  inline?: 'auto' | 'never' | 'always';
  /** 'auto': the largest batch (faults per read) the dispatcher still resolves itself while workers sleep. */
  inlineBatch?: number;
  /**
   * A batch of up to this many messages that the dispatcher reads and resolves itself is
   * filled without waking the faulting threads (DONTWAKE), which one UFFDIO_WAKE over the
   * span of its pages then wakes: the kernel walks its wait queues once per wake, with
   * interrupts off, which at 16 faulting threads was a third of the dispatcher's time. A
   * larger batch wakes per fault. A thread waiting in the span for a page not filled yet
   * wakes too and faults again (harmless). 1: every fill wakes its own threads. Default 16.
   */
  wakeBatch?: number;
  /** How long an idle worker spins on its ring before sleeping. */
  spinMicros?: number;
  /**
   * How long the dispatcher keeps reading an empty userfaultfd before sleeping in epoll, µs,
   * after a read that returned faults (default 50). A sleeping vCPU takes tens of µs to wake
   * on a VM: with few faulting threads each round trip paid that twice (measured: 1 faulting
   * thread 23k faults/s at 0, 48k at 50; at 16 threads no difference).
   */
  dispatcherSpinMicros?: number;
  /**
   * The dispatcher thread's nice value while it serves (default -10; null: leave it as the
   * thread has it). Every fault waits for the dispatcher, and with more faulting threads than
   * CPUs the scheduler otherwise shares its CPU with them evenly: they wait for it to run
   * again while it waits for its turn. Only ever lowered (never above the thread's own);
   * lowering needs root, CAP_SYS_NICE or RLIMIT_NICE — without, it serves at its own nice and
   * `stats().dispatcher` says why. The workers keep the process's priority (their background
   * population must not take CPU from the faulting threads).
   */
  dispatcherNice?: number | null;
  /** When a source fails for a page: poison it (the faulting thread gets SIGBUS) or serve zeros. */
  onSourceError?: 'poison' | 'zero';
  /** What a fault after madvise(DONTNEED/REMOVE) gets: zeros, as the kernel would, or the source again. */
  afterRemove?: 'zero' | 'source';
  /** A module whose export sees each write-protected page before it is un-protected (live snapshots). */
  wpHook?: { module: string; export?: string };
  ringCapacity?: number;
  callbackTimeoutMs?: number;
  /**
   * The process owning regions the engine did not register (a VMM), when known: a page that a
   * REMOVE raced with its fill is zeroed again through /proc/PID/mem.
   */
  peerPid?: number;
  /**
   * An fd to which the thread that reads a REMOVE appends its range before applying it
   * (remove-journal.ts): the serve supervisor's journal, which outlives this process.
   */
  removeJournalFd?: number;
  /** Extra userfaultfd features to request when the engine creates the uffd (e.g. EVENT_FORK). */
  features?: FeatureName[];
  /**
   * Runs after the shared tables exist and before any engine thread starts (awaited):
   * attach an observer of `engine.pageStateBuffer` that must see every fill from the first.
   */
  beforeLaunch?: (engine: Engine) => void | Promise<void>;
  /**
   * What the page-state table says before the first fault. 'missing' (default): every page
   * is served from its source on its first fault. 'resident': the memory already holds its
   * bytes (a running guest, a tracked region): every page starts DROPPED — a fault there is
   * a hole and gets zeros (the source with afterRemove 'source') — and only pages handed
   * over with forget() are served from the source; stop('complete') and populate() fill
   * only those. Costs one write of the whole table (64 MiB per TiB of 4 KiB pages).
   */
  initially?: 'missing' | 'resident';
  /**
   * Before serving, each engine thread runs the per-fault path on a private scratch region so
   * V8 has compiled it before the first real fault (default false: it costs start-up time,
   * 10-30 ms per thread on a quiet machine; warm threads, `threads`, always did it ahead).
   */
  warmUp?: boolean;
  /**
   * Threads started ahead (EngineThreads.start(workers), e.g. kept warm by a restore server):
   * the engine takes them instead of starting its own. Their worker count must match. At
   * stop the engine ends them, or, for a reusable set, leaves them idle for the next engine.
   */
  threads?: EngineThreads;
  /**
   * Tests only: workers honour killWorker(shard, 'throw') (checked once at start: an engine
   * without it has no such check on its fill path).
   */
  faultInjection?: boolean;
  /**
   * Tests only: called after each step of start() (see StartStep); a throw there fails the
   * start at that step, which must leave nothing registered or open.
   */
  onStartStep?: (step: StartStep) => void;
}

/** The steps of Engine.start, in order, each acquiring something that a failed start gives back. */
export type StartStep = 'remotes' | 'uffd' | 'sources' | 'register' | 'buffers' | 'beforeLaunch' | 'threads';

export interface StopOptions {
  /**
   * 'complete' (default): every page not yet filled is filled from its source, then the
   * regions are unregistered: every faulting thread returns with the right bytes.
   * 'abandon': the regions are unregistered at once; waiting threads are woken and see
   * what the kernel gives an unregistered page (zeros for anon, the page cache for shmem).
   */
  mode?: 'complete' | 'abandon';
  /** 'complete' falls back to 'abandon' after this long (default 60 s). */
  timeoutMs?: number;
}

export interface LatencySummary { p50: number; p90: number; p99: number; max: number; histogram: number[] }

export interface EngineStats {
  elapsedSec: number;
  faults: { missing: number; minor: number; wp: number; rwp: number; total: number };
  pages: { demand: number; readahead: number; background: number; total: number; zeroFilled: number };
  bytes: number;
  ioctls: number;
  retries: number;
  eexist: number;
  wakes: number;
  errors: number;
  spurious: number;
  /** Pages made zero again because a REMOVE raced with their fill. */
  rezeroed: number;
  /** REMOVE events applied (madvise DONTNEED/REMOVE in a served range). */
  removes: number;
  inline: number;
  handoffs: number;
  /** Faults a worker read from the uffd and resolved itself (readers 'all'). */
  direct: number;
  /** Wall-clock ms (Date.now() scale) when the first fault was resolved; 0: none yet. */
  firstFaultAt: number;
  events: number;
  reads: number;
  incidents: number;
  workers: { faults: number; pages: number; cpuSec: number }[];
  /** The dispatcher's faults, CPU and priority (Engine.dispatcherPriority). */
  dispatcher: { faults: number; cpuSec: number } & DispatcherPriority;
  /** Engine-side latency: from the dispatcher's read to the resolving ioctl, µs (bucket upper edges). */
  latencyUs: LatencySummary;
}

export interface Incident { time: number; shard: number; message: string }

/**
 * The dispatcher's kernel thread id (0 until it started), the nice value it serves at and,
 * when the one asked for (`dispatcherNice`) was refused, why.
 */
export interface DispatcherPriority { tid: number; nice: number; niceRefused?: string }


/** EngineOptions.dispatcherNice: favoured enough that it is not queued behind the faulting threads it serves. */
export const DEFAULT_DISPATCHER_NICE = -10;
/** EngineOptions.wakeBatch, and its largest value (a batch read holds at most 256 messages). */
export const DEFAULT_WAKE_BATCH = 16;
export const MAX_WAKE_BATCH = 256;
/** EngineOptions.dispatcherSpinMicros. */
export const DEFAULT_DISPATCHER_SPIN_US = 50;

const DEFAULT_FEATURES: FeatureName[] = [
  'EVENT_REMOVE', 'EVENT_UNMAP', 'EVENT_REMAP', 'THREAD_ID', 'MISSING_SHMEM', 'MISSING_HUGETLBFS', 'MINOR_SHMEM',
  'MINOR_HUGETLBFS', 'PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM', 'WP_UNPOPULATED', 'POISON',
];

/** A region as checked by validate(): nothing opened or registered yet. */
interface RegionPlan {
  spec: EngineRegion;
  what: string;
  start: number;
  size: number;
  pageSize: number;
  type: MemoryTypeName;
  own: boolean;
  stateBase: number;
}

/** Everything start() checked before acquiring anything. */
interface StartPlan {
  workers: number;
  readers: 'all' | 'dispatcher';
  regions: RegionPlan[];
  totalPages: number;
  minPage: number;
  maxPage: number;
  stripe: number;
  prefetch: ReturnType<typeof normalizePrefetch>;
  ringCapacity: number;
}

interface RegionRow {
  start: number;
  size: number;
  pageSize: number;
  type: MemoryTypeName;
  source: OpenedSource;
  missingOp: MissOp;
  stateBase: number;
  own: boolean;
}

/** Undo steps of a start in progress, run in reverse when a later step fails. */
class Cleanup {
  private readonly undo: (() => void | Promise<void>)[] = [];
  add(fn: () => void | Promise<void>): void { this.undo.push(fn); }
  async run(): Promise<void> {
    for (let f = this.undo.pop(); f; f = this.undo.pop()) {
      try { await f(); } catch { /* best effort: the rest must still be given back */ }
    }
  }
}

/** What the engine acquired at start and owns until stop. */
interface Acquired {
  uffd: Userfaultfd;
  ownsUffd: boolean;
  remotes: OpenedRemotes;
  rows: RegionRow[];
  setup: EngineSetup;
  zeroLen: number;
}

export class Engine extends EventEmitter {
  readonly uffd: Userfaultfd;
  readonly workers: number;
  readonly incidents: Incident[] = [];
  #setup: EngineSetup;
  readonly #rows: RegionRow[];
  readonly #ownsUffd: boolean;
  #ctl: ControlBlock;
  #table: RegionTable;
  readonly #counters: Counters;
  #states: PageStates;
  /** pageStateBuffer was handed out: its reader may outlive the engine, so the table is never recycled. */
  #statesLent = false;
  readonly #rings: Ring[];
  readonly #failures: number[];
  readonly #lastFailure: number[];
  readonly #startTime = Date.now();
  readonly #zeroLen: number;
  readonly #remotes: OpenedRemotes;
  readonly #threads: EngineThreads | undefined;
  #pool: Piscina | null = null;
  readonly #tasks: Promise<void>[] = [];
  #stopping = false;
  #stopped = false;
  /** The statistics at stop: the counters may serve the next engine on the same threads by then. */
  #final: EngineStats | null = null;
  #dispatcherExit: Promise<void> = Promise.resolve();
  #dispatcher: Worker | undefined;
  /** Takes this engine's listeners off the dispatcher (a warm one outlives the engine). */
  #detachDispatcher: () => void = () => undefined;
  #unwatchGates: (() => void) | null = null;

  private constructor(a: Acquired, threads: EngineThreads | undefined) {
    super();
    this.uffd = a.uffd;
    this.#ownsUffd = a.ownsUffd;
    this.#remotes = a.remotes;
    this.#rows = a.rows;
    this.#setup = a.setup;
    this.#zeroLen = a.zeroLen;
    this.#threads = threads;
    this.workers = a.setup.workers;
    this.#failures = new Array<number>(this.workers).fill(0);
    this.#lastFailure = new Array<number>(this.workers).fill(0);
    this.#ctl = new ControlBlock(a.setup.control);
    this.#table = new RegionTable(a.setup.regionTable, this.#ctl);
    this.#counters = new Counters(a.setup.counters);
    this.#states = new PageStates(a.setup.states, a.setup.totalPages);
    this.#rings = a.setup.rings.map((b) => new Ring(b));
  }

  /**
   * Creates, registers and starts an engine; resolves when every thread is serving.
   * Every option is checked before anything is opened or registered; a start that fails
   * later gives back everything it took (registrations, fds, mappings, sources, threads).
   */
  static async start(opts: EngineOptions): Promise<Engine> {
    const plan = validate(opts);
    const step = opts.onStartStep ?? (() => undefined);
    const cleanup = new Cleanup();
    let engine: Engine;
    try {
      // Remote sources (s3, http) first (async: their size and manifest are fetched).
      const remotes = await openRemoteRegions(opts.regions);
      cleanup.add(() => remotes.close());
      step('remotes');
      const created = !opts.uffd;
      const uffd = opts.uffd ?? Userfaultfd.create({ optionalFeatures: [...DEFAULT_FEATURES, ...(opts.features ?? [])] });
      if (created) cleanup.add(() => uffd.close());
      step('uffd');
      const sourcesOpened: OpenedSource[] = [];
      plan.regions.forEach((r, i) => {
        const spec = remotes.regions[i] as { source: PageSource };
        // A huge-page UFFDIO_COPY whose source page is not mapped yet needs a spare huge page
        // (the kernel copies through a temporary one) and fails ENOMEM when exactly enough are
        // reserved: map file sources of hugetlb regions populated.
        const src = spec.source.kind === 'file' && r.pageSize > PAGE_SIZE ? { ...spec.source, populate: true } : spec.source;
        const s = openSource(src, r.size, r.what);
        cleanup.add(() => s.close());
        sourcesOpened.push(s);
      });
      step('sources');
      const rows = plan.regions.map((r, i) => registerRegion(uffd, r, sourcesOpened[i] as OpenedSource, cleanup));
      step('register');
      const acquired = allocate(opts, plan, { uffd, created, remotes, rows }, cleanup);
      step('buffers');
      engine = new Engine(acquired, opts.threads);
    } catch (err) {
      await cleanup.run();
      throw err;
    }
    // From here on the engine owns what was acquired: stop() gives it back.
    try {
      await opts.beforeLaunch?.(engine);
      step('beforeLaunch');
      await engine.#launch();
      step('threads');
    } catch (err) {
      await engine.stop({ mode: 'abandon' }).catch(() => undefined);
      throw err;
    }
    return engine;
  }

  async #launch(): Promise<void> {
    let dispatcher: Worker | undefined;
    if (this.#threads) {
      const t = this.#threads.take(this.#setup);
      this.#pool = t.pool;
      dispatcher = t.dispatcher;
    } else {
      this.#pool = new Piscina({
        filename: SHARD_WORKER,
        minThreads: this.workers,
        maxThreads: this.workers,
        concurrentTasksPerWorker: 1,
        idleTimeout: 2 ** 31 - 1,
      });
    }
    for (let s = 0; s < this.workers; s++) this.#tasks[s] = this.#runShard(s);
    this.#startDispatcher(dispatcher);
    // Chunks of remote sources arriving in the background: wake idle workers to install them.
    if (this.#setup.gates.length) this.#unwatchGates = watchArrivals(this.#setup.gates, () => this.#kickAll());
    const limitMs = startLimitMs();
    const deadline = Date.now() + limitMs;
    while (this.#ctl.readyThreads() < this.workers + 1) {
      if (Date.now() > deadline) {
        throw new Error(`engine threads did not start within ${limitMs / 1000} s (set UFFD_ENGINE_START_TIMEOUT_MS on a slow machine)`);
      }
      await sleep(2);
    }
  }

  #kickAll(): void {
    for (const r of this.#rings) r.kick();
  }

  /** A message from the dispatcher or a worker: an event it read, or an incident. */
  #onThreadMessage(m: DispatcherMessage, shard: number): void {
    if (m.type === 'exit') return;
    if (m.type === 'incident') { this.#incident(shard, m.message); return; }
    if (m.type === 'fork') {
      const child = Userfaultfd.fromFd(m.ufd, this.uffd.features);
      if (this.listenerCount('fork') === 0) child.close(); // nobody serves the child: its ranges fall back to the kernel
      else this.emit('fork', { uffd: child });
      return;
    }
    this.emit('event', m);
    this.emit(m.type, m);
  }

  #startDispatcher(warm?: Worker): void {
    const w = warm ?? new Worker(DISPATCHER, { workerData: this.#setup });
    this.#dispatcher = w;
    this.#dispatcherExit = new Promise((resolve) => {
      // A warm dispatcher says it is done with this engine ('exit' message) and lives on; a
      // cold one ends its thread.
      const onMessage = (m: DispatcherMessage): void => {
        if (m.type !== 'exit') this.#onThreadMessage(m, -1);
        else if (warm) resolve();
      };
      const onError = (err: Error): void => this.#incident(-1, `dispatcher failed: ${err.message}`);
      const onExit = (): void => {
        this.#detachDispatcher();
        if (!this.#stopping) {
          // Never leave faults unread: start a new dispatcher. Faults it had read and not
          // yet handed on died with it (the kernel does not send them again): wake every
          // region so their threads fault again and are read anew.
          this.#incident(-1, 'dispatcher thread exited; restarting it');
          this.#startDispatcher();
          this.#wakeAll();
        }
        resolve();
      };
      w.on('message', onMessage);
      w.on('error', onError);
      w.on('exit', onExit);
      this.#detachDispatcher = () => {
        w.off('message', onMessage);
        w.off('error', onError);
        w.off('exit', onExit);
      };
    });
  }

  async #runShard(shard: number): Promise<void> {
    // A port for the events a worker reads (readers 'all') and its requests for the bytes of
    // callback sources; nothing else goes over it, so a worker that does neither gets none:
    // each MessagePort sent to a thread keeps ~10 KiB of native memory that Node never gives
    // back (measured: 2000 piscina tasks with a port each, +19.7 MiB RssAnon; without, +8).
    const wantsPort = this.#setup.readers === 'all' || this.#setup.callbackControl !== null;
    while (!this.#stopping) {
      const ch = wantsPort ? new MessageChannel() : null;
      ch?.port1.on('message', (m: WorkerMessage) => {
        if (m.type === 'callback') this.#answerCallback(m);
        else this.#onThreadMessage(m, shard);
      });
      ch?.port1.unref();
      const port = ch?.port2 ?? null;
      try {
        await (this.#pool as Piscina).run({ setup: this.#setup, shard, port }, port ? { transferList: [port] } : undefined);
        return;
      } catch (err) {
        if (this.#stopping) return;
        this.#ctl.markWorkerDown(shard); // the dispatcher serves this shard until the replacement does
        this.#ctl.setHelpWanted(shard, true); // readers 'all': the dispatcher reads until the replacement does
        eventfdSignal(this.#setup.eventFd);
        // Faults the dead worker had read (readers 'all') are gone with it and the kernel does
        // not send them again: wake every region, so their threads fault again and are read anew.
        if (this.#setup.readers === 'all') this.#wakeAll();
        // Back off only in a crash loop (deaths less than a second apart); a death after a
        // while of serving restarts at once.
        const now = Date.now();
        const failures = now - (this.#lastFailure[shard] ?? 0) < 1000 ? (this.#failures[shard] ?? 0) + 1 : 1;
        this.#failures[shard] = failures;
        this.#lastFailure[shard] = now;
        this.#incident(shard, `worker ${shard} died: ${(err as Error).message}; restarting it, its ring resumes where it stopped`);
        if (failures > 3) await sleep(Math.min(1000, 10 * failures));
      } finally {
        ch?.port1.close(); // both ends: the thread may live on to serve another engine
      }
    }
  }

  #answerCallback(m: CallbackRequest): void {
    const setup = this.#setup;
    const slot = new CallbackSlot(setup.callbackControl as SharedArrayBuffer, setup.callbackStaging as SharedArrayBuffer, setup.callbackRunBytes, m.shard);
    const fetch = this.#rows[m.source]?.source.fetch;
    Promise.resolve()
      .then(() => {
        if (!fetch) throw new Error(`region ${m.source} has no callback source`);
        return fetch(m.offset, m.len);
      })
      .then((bytes) => {
        if (!(bytes instanceof Uint8Array) || bytes.byteLength !== m.len) {
          throw new Error(`returned ${bytes instanceof Uint8Array ? bytes.byteLength + ' bytes' : typeof bytes}, expected a Uint8Array of ${m.len} bytes`);
        }
        if (slot.awaits(m.id)) slot.staging.set(bytes);
        slot.answer(m.id, true);
      })
      .catch((err: unknown) => {
        this.#incident(m.shard, `callback source failed for offset ${m.offset} (+${m.len}): ${(err as Error)?.message ?? String(err)}`);
        slot.answer(m.id, false);
      });
  }

  #incident(shard: number, message: string): void {
    const inc = { time: Date.now(), shard, message };
    this.incidents.push(inc);
    if (this.incidents.length > 1000) this.incidents.shift();
    this.emit('incident', inc);
  }

  /** Total pages the engine serves (all regions). */
  get totalPages(): number {
    return this.#setup.totalPages;
  }

  /**
   * The page-state table (2 bits per page, then the drop marks: shared.ts PageStates; global page order of the
   * regions as given), for observers that watch fills as they happen (e.g. a session's
   * page map). Read it with `new PageStates(engine.pageStateBuffer, engine.totalPages)`.
   */
  get pageStateBuffer(): SharedArrayBuffer {
    this.#statesLent = true;
    return this.#setup.states;
  }

  /** The process owning the served memory exited (a copy answered ESRCH): nothing is left to serve. */
  get peerGone(): boolean {
    return this.#ctl.peerGone();
  }

  /** Pages not yet filled (MISSING or being filled). Scans the table: not for the hot path. */
  pagesMissing(): number {
    return this.#states.countBelow(PAGE_PRESENT);
  }

  /** The state of global page g (0 missing, 1 filling, 2 present, 3 dropped). */
  pageState(g: number): number {
    return this.#states.get(g);
  }

  stats(): EngineStats {
    if (this.#final) return this.#final;
    const c = this.#counters;
    const at = (t: number, f: number): number => c.all[t * COUNTER_WORDS + f] ?? 0;
    const sum = (f: number) => c.sum(f);
    const hist = new Array<number>(HIST_BUCKETS).fill(0);
    for (let t = 0; t < c.threads; t++) for (let b = 0; b < HIST_BUCKETS; b++) hist[b] = (hist[b] ?? 0) + at(t, C_HIST + b);
    let maxBucket = 0;
    hist.forEach((v, i) => { if (v) maxBucket = i; });
    const faults = (t: number) => at(t, C_FAULTS_MISSING) + at(t, C_FAULTS_MINOR) + at(t, C_FAULTS_WP) + at(t, C_FAULTS_RWP);
    const missing = sum(C_FAULTS_MISSING), minor = sum(C_FAULTS_MINOR), wp = sum(C_FAULTS_WP), rwp = sum(C_FAULTS_RWP);
    const demand = sum(C_PAGES_DEMAND), ra = sum(C_PAGES_READAHEAD), bg = sum(C_PAGES_BACKGROUND);
    return {
      elapsedSec: (Date.now() - this.#startTime) / 1000,
      faults: { missing, minor, wp, rwp, total: missing + minor + wp + rwp },
      pages: { demand, readahead: ra, background: bg, total: demand + ra + bg, zeroFilled: sum(C_ZERO_FILLS) },
      bytes: sum(C_BYTES),
      ioctls: sum(C_IOCTLS),
      retries: sum(C_RETRIES),
      eexist: sum(C_EEXIST),
      wakes: sum(C_WAKES),
      errors: sum(C_ERRORS),
      spurious: sum(C_SPURIOUS),
      rezeroed: sum(C_REZEROED),
      removes: sum(C_REMOVES),
      inline: sum(C_INLINE),
      handoffs: sum(C_HANDOFFS),
      direct: sum(C_DIRECT),
      firstFaultAt: firstFault(c),
      events: sum(C_EVENTS),
      reads: sum(C_READS),
      incidents: this.incidents.length,
      workers: Array.from({ length: this.workers }, (_, t) => ({
        faults: faults(t),
        pages: at(t, C_PAGES_DEMAND) + at(t, C_PAGES_READAHEAD) + at(t, C_PAGES_BACKGROUND),
        cpuSec: at(t, C_CPU_SEC),
      })),
      dispatcher: { faults: faults(this.workers), cpuSec: at(this.workers, C_CPU_SEC), ...this.dispatcherPriority },
      latencyUs: {
        p50: histogramPercentile(hist, 0.5), p90: histogramPercentile(hist, 0.9), p99: histogramPercentile(hist, 0.99),
        max: hist.some((v) => v) ? 2 ** (maxBucket + 1) : 0, histogram: hist,
      },
    };
  }

  /** The dispatcher's priority (DispatcherPriority; also in stats(), which reads everything). */
  get dispatcherPriority(): DispatcherPriority {
    const ctl = this.#ctl;
    const tid = ctl.dispatcherTid();
    if (tid === 0) return { tid, nice: 0 };
    const e = ctl.dispatcherNiceErrno();
    const p: DispatcherPriority = { tid, nice: ctl.dispatcherNice() };
    if (e !== 0) {
      p.niceRefused = `nice ${String(this.#setup.dispatcherNice)} refused (${errnoName(e)}): it needs root, CAP_SYS_NICE ` +
        'or RLIMIT_NICE; serving at the thread\'s own priority';
    }
    return p;
  }

  /** True once background population has passed over every page. */
  get populated(): boolean {
    return this.#ctl.backgroundDone() && this.pagesMissing() === 0;
  }

  // ---- pages handed between the engine and its caller (see docs/engine.md) ----------------

  /** Calls fn(global page, page size) for each page of [start, start+len) in order until it returns false. */
  #eachPage(start: number, len: number, fn: (g: number, pageSize: number) => boolean): void {
    const tb = this.#table;
    let a = start;
    const end = start + len;
    while (a < end) {
      const row = tb.findRow(a);
      if (row < 0) throw new ConfigError(`0x${a.toString(16)} is not in a region this engine serves`);
      const rs = tb.start(row);
      const ps = tb.pageSize(row);
      if ((a - rs) % ps) throw new ConfigError(`0x${a.toString(16)} is not aligned to the region's page size ${ps}`);
      const rowEnd = Math.min(end, tb.end(row));
      for (let g = tb.globalPage(row, a); a < rowEnd; a += ps, g++) {
        if (!fn(g, ps)) return;
      }
    }
  }

  /**
   * Takes pages [start, start+len) from the engine while the caller moves their bytes
   * itself (e.g. evicts them): each page becomes FILLING, so the engine neither fills it
   * nor answers a fault on it (the faulting thread waits). Stops at the first page the
   * engine is filling right now. Returns the bytes held, from start. End a hold with
   * forget() (the source has the bytes now) or markResident() (the memory has them).
   */
  hold(start: number, len: number): number {
    let held = 0;
    this.#eachPage(start, len, (g, ps) => {
      for (;;) {
        const s = this.#states.get(g);
        if (s === PAGE_FILLING) return false;
        if (this.#states.claim(g, s)) break;
        // Refused, not raced: dropped while being filled, its filler not done with it yet.
        if (this.#states.get(g) === s) return false;
      }
      held += ps;
      return true;
    });
    return held;
  }

  /**
   * Pages [start, start+len) are MISSING again: the next fault on each is served from the
   * region's source (which must hold their bytes now), e.g. after the caller evicted them to
   * a store that is the source. Wakes threads that faulted on them while they were held.
   * Meant for pages the caller holds or that the engine is not filling.
   */
  forget(start: number, len: number): void {
    this.#eachPage(start, len, (g) => { this.#states.set(g, PAGE_MISSING); return true; });
    this.#wakeRange(start, len);
  }

  /**
   * Pages [start, start+len) are the memory's again (present, or a hole): DROPPED, as after
   * madvise(DONTNEED) — never filled in the background, a fault there gets zeros (the source
   * with afterRemove 'source'). Wakes threads that faulted on them while they were held.
   */
  markResident(start: number, len: number): void {
    this.#eachPage(start, len, (g) => { this.#states.set(g, PAGE_DROPPED); return true; });
    this.#wakeRange(start, len);
  }

  #wakeRange(start: number, len: number): void {
    try {
      this.uffd.wake(start, len);
    } catch {
      // The range is gone (unmapped or unregistered): nobody can be waiting there.
    }
  }

  /**
   * Fills every MISSING page now, demand faults first (the sweep stop('complete') does,
   * without stopping). Resolves with the pages still missing: 0, unless timeoutMs passed.
   */
  async populate(timeoutMs = 60_000): Promise<number> {
    try {
      await this.#complete(Date.now() + timeoutMs);
    } finally {
      if (!this.#stopping) this.#ctl.setCompleting(false);
    }
    return this.pagesMissing();
  }

  /**
   * The completion sweep (populate, stop 'complete'): workers fill every page still
   * MISSING, demand faults first, in passes over the table until none is left, the
   * deadline passes, the engine stops or the peer is gone. True if nothing is missing.
   */
  async #complete(deadline: number): Promise<boolean> {
    const ctl = this.#ctl;
    ctl.setCompleting(true);
    for (;;) {
      if (this.#stopping || ctl.peerGone() || Date.now() > deadline) break;
      if (this.pagesMissing() === 0) return true;
      ctl.restartBackground();
      this.#kickAll();
      while (!ctl.backgroundDone() && !this.#stopping && Date.now() <= deadline) await sleep(2);
    }
    return this.pagesMissing() === 0;
  }

  /**
   * Opens (true) or closes (false) an RWP window. While it is open, RWP faults are left
   * waiting instead of being un-protected at once: the owner can scan PAGE_IS_ACCESSED,
   * re-protect and evict in sync mode (UFFDIO_SET_MODE) without an access slipping between
   * its scan and its re-protection. Closing wakes every waiting thread of every region; switch
   * the uffd back to RWP_ASYNC first, so they resolve in the kernel when they retry.
   */
  holdRwp(on: boolean): void {
    this.#ctl.setRwpHold(on);
    if (!on) this.#wakeAll();
  }

  /** Wakes every thread waiting on a fault in any live region (they fault again if still unserved). */
  #wakeAll(): void {
    const tb = this.#table;
    for (let r = 0, n = tb.rows(); r < n; r++) if (tb.alive(r)) this.#wakeRange(tb.start(r), tb.size(r));
  }

  /** Write-protects [start, start+len) of a region registered with mode wp. */
  writeProtect(start: number, len: number, protect = true): void {
    this.uffd.writeprotect(start, len, protect);
  }

  /**
   * Diagnostics for tests and soak runs: make worker `shard` die. 'terminate' ends its
   * thread; 'throw' makes it throw at its next fill, holding a claim as a crashed worker
   * would (needs the engine started with faultInjection: true). `'dispatcher'` terminates
   * the dispatcher thread (the engine starts another, which frees what it held).
   */
  async killWorker(shard: number | 'dispatcher', how: 'throw' | 'terminate'): Promise<void> {
    // Once its threads are released (#final is set then) they may serve another engine: never touch them.
    if (this.#final) throw new Error('killWorker: this engine has stopped');
    if (shard === 'dispatcher') {
      if (how !== 'terminate') throw new ConfigError("the dispatcher can only be killed with 'terminate'");
      const w = this.#dispatcher;
      if (!w) return;
      // Termination takes effect when the thread runs JavaScript again: wake it out of
      // epoll_wait (a native call) first.
      const ended = w.terminate();
      eventfdSignal(this.#setup.eventFd);
      await ended;
      return;
    }
    if (!Number.isInteger(shard) || shard < 0 || shard >= this.workers) throw new ConfigError(`no worker ${shard}: this engine has workers 0 to ${this.workers - 1}`);
    if (how === 'throw') {
      if (!this.#setup.faultInjection) throw new ConfigError("killWorker(shard, 'throw') needs an engine started with faultInjection: true");
      this.#ctl.armKill(shard);
      return;
    }
    const tid = this.#ctl.threadId(shard);
    const w = (this.#pool as Piscina).threads.find((t) => t.threadId === tid);
    if (!w) throw new Error(`no thread found for worker ${shard}`);
    const ended = w.terminate();
    this.#rings[shard]?.kick(); // out of a native wait (readers 'all': epoll_wait), so the termination takes effect
    await ended;
  }

  /**
   * Before unregistering: lets the fills in flight finish and the re-zeroings queued be done
   * (bounded: a fill waiting on a slow source is abandoned). A page a REMOVE raced with is
   * then zeroed while its REMOVE is still delivered, and no fill lands after the stop.
   */
  async #settleFills(): Promise<void> {
    // Fills may wait on a slow source: a short bound. A queued re-zeroing is local work
    // (one madvise by a live worker) whose skipping would leave source bytes in a removed
    // page: a long bound (a slow machine, an emulator, may take seconds to wake a worker).
    const fills = Date.now() + SETTLE_LIMIT_MS;
    const rezeros = Date.now() + REZERO_LIMIT_MS;
    for (;;) {
      const now = Date.now();
      const pending = (this.#ctl.rezerosPending() > 0 && now < rezeros) || (Claims.anyHeld(this.#setup.claims, this.workers + 1) && now < fills);
      if (!pending) return;
      await sleep(1);
    }
  }

  /**
   * Gives this stopped engine's shared tables to the next engine on the same threads. What a
   * stopped engine still answers from (control block, region table, page states) is copied
   * into buffers no thread has seen first; page states handed out by pageStateBuffer stay.
   */
  #giveBackTables(recycler: BufferRecycler): void {
    const setup = this.#setup;
    const own = (b: SharedArrayBuffer): SharedArrayBuffer => {
      const copy = new SharedArrayBuffer(b.byteLength);
      new Uint8Array(copy).set(new Uint8Array(b));
      return copy;
    };
    const used = [setup.counters, setup.claims, setup.gateCursors, setup.control, setup.regionTable, ...setup.rings.flatMap((r) => [r.control, r.entries])];
    if (!this.#statesLent) used.push(setup.states);
    const kept = { control: own(setup.control), regionTable: own(setup.regionTable), states: this.#statesLent ? setup.states : own(setup.states) };
    recycler.giveBack(used);
    this.#setup = { ...setup, ...kept };
    this.#ctl = new ControlBlock(kept.control);
    this.#table = new RegionTable(kept.regionTable, this.#ctl);
    this.#states = new PageStates(kept.states, setup.totalPages);
  }

  /**
   * Stops serving. See StopOptions for what happens to pages not yet filled; either
   * way no faulting thread is left waiting.
   */
  async stop(opts: StopOptions = {}): Promise<EngineStats> {
    if (this.#stopped) return this.stats();
    const mode = opts.mode ?? 'complete';
    const ctl = this.#ctl;
    if (mode === 'complete' && !this.#stopping && this.#pool) {
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const deadline = Date.now() + timeoutMs;
      if (!(await this.#complete(deadline)) && Date.now() > deadline) {
        this.#incident(-1, `stop: pages still missing after ${timeoutMs} ms; abandoning them`);
      }
    }
    this.#stopping = true;
    this.#unwatchGates?.();
    if (this.#pool) await this.#settleFills();
    // Unregistering wakes every thread still waiting in these ranges.
    for (const r of this.#rows) {
      try {
        this.uffd.unregister(r.start, r.size, r.pageSize);
      } catch {
        // Already gone (unmapped, or the owner exited).
      }
    }
    ctl.requestStop();
    this.#kickAll();
    eventfdSignal(this.#setup.eventFd);
    await Promise.all(this.#tasks);
    await this.#dispatcherExit;
    this.#detachDispatcher();
    if (!this.#threads) await this.#pool?.destroy();
    else if (this.#pool) await this.#threads.release(); // idle again (reusable), or ended
    else if (!this.#threads.reusable) await this.#threads.destroy(); // never launched: the threads it was given (a reusable set stays its owner's)
    const stats = this.stats();
    this.#final = stats;
    // No thread uses this engine's tables any more: on to the next engine on these threads.
    const recycler = this.#threads?.buffers;
    if (recycler) this.#giveBackTables(recycler);
    closeFd(this.#setup.eventFd);
    for (const r of this.#rings) if (r.eventFd >= 0) closeFd(r.eventFd);
    if (this.#ownsUffd) this.uffd.close();
    for (const r of this.#rows) r.source.close();
    munmap(this.#setup.zeroAddr, this.#zeroLen);
    await this.#remotes.close();
    this.#stopped = true;
    return stats;
  }
}

const SETTLE_LIMIT_MS = 1000;
const REZERO_LIMIT_MS = 30_000;

/** Checks every option (nothing is opened or registered yet); throws ConfigError naming what is wrong. */
function validate(opts: EngineOptions): StartPlan {
  const workers = opts.workers ?? 2;
  if (!Number.isInteger(workers) || workers < 1 || workers > MAX_WORKERS) {
    throw new ConfigError(`workers must be an integer from 1 to ${MAX_WORKERS} (got ${workers})`);
  }
  if (!opts.regions || opts.regions.length === 0) throw new ConfigError('an engine needs at least one region to serve');
  if (opts.readers !== undefined && opts.readers !== 'all' && opts.readers !== 'dispatcher') {
    throw new ConfigError(`readers must be 'all' or 'dispatcher' (got ${String(opts.readers)})`);
  }
  if (opts.threads && opts.threads.workers !== workers) {
    throw new ConfigError(`the engine threads given were started for ${opts.threads.workers} workers, not ${workers}`);
  }
  const nice = opts.dispatcherNice;
  if (nice !== undefined && nice !== null && (!Number.isInteger(nice) || nice < -20 || nice > 19)) {
    throw new ConfigError(`dispatcherNice must be an integer from -20 to 19, or null to leave the thread's priority alone (got ${String(nice)})`);
  }
  const wb = opts.wakeBatch;
  if (wb !== undefined && (!Number.isInteger(wb) || wb < 1 || wb > MAX_WAKE_BATCH)) {
    throw new ConfigError(`wakeBatch must be an integer from 1 (every fill wakes its threads) to ${MAX_WAKE_BATCH} (got ${String(wb)})`);
  }
  if (opts.initially !== undefined && opts.initially !== 'missing' && opts.initially !== 'resident') {
    throw new ConfigError(`initially must be 'missing' or 'resident' (got ${String(opts.initially)})`);
  }
  const regions: RegionPlan[] = [];
  let stateBase = 0;
  opts.regions.forEach((spec, i) => {
    const what = `region ${i}`;
    const own = !!spec.region;
    const start = spec.region?.addr ?? spec.start;
    const size = spec.region?.size ?? spec.size;
    const pageSize = spec.region?.pageSize ?? spec.pageSize ?? PAGE_SIZE;
    const type: MemoryTypeName = spec.region?.type ?? spec.type ?? (pageSize > PAGE_SIZE ? 'hugetlbfs' : 'anon');
    if (start === undefined || size === undefined) throw new ConfigError(`${what}: give either region (from a memory type) or start and size`);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || size <= 0 || start % pageSize || size % pageSize) {
      throw new ConfigError(`${what}: [0x${start.toString(16)}, +0x${size.toString(16)}) must be non-empty and aligned to its page size ${pageSize}`);
    }
    for (const r of regions) {
      if (start < r.start + r.size && r.start < start + size) throw new ConfigError(`${what} overlaps another region`);
    }
    if (!spec.source) throw new ConfigError(`${what}: no source given (use sources.zero(), buffer(), file(), pageCache() or callback())`);
    memoryType(type); // an unknown type throws here
    regions.push({ spec, what, start, size, pageSize, type, own, stateBase });
    stateBase += size / pageSize;
  });
  const totalPages = stateBase;
  const minPage = Math.min(...regions.map((r) => r.pageSize));
  const maxPage = Math.max(...regions.map((r) => r.pageSize));
  const stripe = opts.stripe ?? Math.max(64 * 1024, maxPage);
  if (!Number.isInteger(stripe) || stripe <= 0 || stripe % minPage) {
    throw new ConfigError(`stripe must be a positive multiple of the page size ${minPage} (got ${stripe})`);
  }
  const prefetch = normalizePrefetch(opts.prefetch, minPage);
  if (prefetch.order) {
    for (let i = 0; i < prefetch.order.length; i++) {
      const g = Number(prefetch.order[i]);
      if (!Number.isInteger(g) || g < 0 || g >= totalPages) throw new ConfigError(`prefetch.order[${i}] = ${prefetch.order[i]} is not a page index below ${totalPages}`);
    }
  }
  const ringCapacity = opts.ringCapacity ?? 4096;
  if (!Number.isInteger(ringCapacity) || ringCapacity < 2 || (ringCapacity & (ringCapacity - 1)) !== 0) {
    throw new ConfigError(`ringCapacity must be a power of two of at least 2 (got ${ringCapacity})`);
  }
  if (opts.onSourceError !== undefined && opts.onSourceError !== 'poison' && opts.onSourceError !== 'zero') {
    throw new ConfigError(`onSourceError must be 'poison' or 'zero' (got ${String(opts.onSourceError)})`);
  }
  if (opts.afterRemove !== undefined && opts.afterRemove !== 'zero' && opts.afterRemove !== 'source') {
    throw new ConfigError(`afterRemove must be 'zero' or 'source' (got ${String(opts.afterRemove)})`);
  }
  return { workers, readers: opts.readers ?? 'dispatcher', regions, totalPages, minPage, maxPage, stripe, prefetch, ringCapacity };
}

/** Registers a region the engine owns (checking its memory type can be resolved as asked) and builds its row. */
function registerRegion(uffd: Userfaultfd, r: RegionPlan, source: OpenedSource, cleanup: Cleanup): RegionRow {
  const type = memoryType(r.type);
  const missingOp: MissOp = source.mode === 'copy' ? MissOp.copy : source.mode === 'callback' ? MissOp.callback
    : type.ops.includes('zeropage') ? MissOp.zeropage : MissOp.copyZero;
  if (r.own) {
    const region = r.spec.region as Region;
    const modes = r.spec.modes ?? (source.minor ? ['missing', 'minor'] as RegisterMode[] : ['missing'] as RegisterMode[]);
    if (source.minor && !modes.includes('minor')) throw new ConfigError(`${r.what}: a pageCache source needs the minor mode`);
    if (source.minor && !region.aliasAddr) throw new UnsupportedError(`${r.what}: a pageCache source needs a memory type with a page cache (shmem or hugetlbfs), not ${region.type}`);
    const ioctls = registerChecked(uffd, region, modes);
    cleanup.add(() => uffd.unregister(region.addr, region.size, region.pageSize));
    if (modes.includes('missing')) checkResolve(type, missingOp === MissOp.zeropage ? 'zeropage' : 'copy', ioctls);
    if (modes.includes('minor')) checkResolve(type, 'continue', ioctls);
    if (modes.includes('wp')) checkResolve(type, 'writeprotect', ioctls);
  }
  return { start: r.start, size: r.size, pageSize: r.pageSize, type: r.type, source, missingOp, stateBase: r.stateBase, own: r.own };
}

/** What start() took before allocate(): the userfaultfd (created: by start), remote sources, registered rows. */
interface Registered { uffd: Userfaultfd; created: boolean; remotes: OpenedRemotes; rows: RegionRow[] }

/** Allocates the shared tables, the zero page and the eventfds (each given back by `cleanup` on failure). */
function allocate(opts: EngineOptions, plan: StartPlan, got: Registered, cleanup: Cleanup): Acquired {
  const { uffd, created, remotes, rows } = got;
  const { workers, readers, maxPage, prefetch: pf } = plan;
  const hasCallback = rows.some((r) => r.missingOp === MissOp.callback);
  const callbackRunBytes = hasCallback ? Math.max(maxPage, 256 * 1024) : 0;
  // Populated: UFFDIO_COPY reads its source with page faults disabled; for a hugetlb
  // destination an unmapped source makes the kernel take a spare huge page for the
  // retry (ENOMEM when none is free, e.g. zero-filling a page after a balloon REMOVE).
  const zeroAddr = mmap(maxPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE);
  cleanup.add(() => munmap(zeroAddr, maxPage));
  const eventFd = eventfd();
  cleanup.add(() => closeFd(eventFd));
  const gates: GateSetup[] = [];
  for (const r of rows) if (r.source.gate && !gates.includes(r.source.gate)) gates.push(r.source.gate);
  let order: SharedArrayBuffer | null = null;
  if (pf.order && pf.order.length) {
    order = new SharedArrayBuffer(pf.order.length * 8);
    const o = new Float64Array(order);
    for (let i = 0; i < pf.order.length; i++) o[i] = Number(pf.order[i]);
  }
  // On a reusable set of threads, tables the threads have seen before (buffer-recycler.ts).
  const keep = (b: SharedArrayBuffer): SharedArrayBuffer => opts.threads?.buffers?.swap(b) ?? b;
  const rings = Array.from({ length: workers }, () => {
    // Workers that read the uffd sleep in epoll_wait: a ring wakes them through an eventfd.
    const fd = readers === 'all' ? eventfd() : -1;
    if (fd >= 0) cleanup.add(() => closeFd(fd));
    const r = Ring.allocate(plan.ringCapacity, fd);
    return { ...r, control: keep(r.control), entries: keep(r.entries) };
  });
  const setup: EngineSetup = {
    uffdFd: uffd.fd,
    features: uffd.features.toString(),
    workers,
    stripePages: plan.stripe / plan.minPage,
    regionTable: keep(RegionTable.allocate()),
    states: keep(PageStates.allocate(plan.totalPages)),
    totalPages: plan.totalPages,
    counters: keep(Counters.allocate(workers + 1)),
    control: keep(ControlBlock.allocate()),
    claims: keep(Claims.allocate(workers + 1)),
    rings,
    order,
    prefetch: {
      readAheadMin: pf.readAheadMin, readAheadMax: pf.readAheadMax, background: pf.background,
      chunkPages: pf.chunkPages, orderLength: pf.order?.length ?? 0,
    },
    zeroAddr,
    onSourceError: opts.onSourceError ?? 'poison',
    afterRemove: opts.afterRemove ?? 'zero',
    readers,
    warmUp: opts.warmUp ?? false,
    inline: opts.inline ?? (readers === 'all' ? 'always' : 'auto'),
    spinMicros: opts.spinMicros ?? 30,
    dispatcherSpinMicros: opts.dispatcherSpinMicros ?? DEFAULT_DISPATCHER_SPIN_US,
    dispatcherNice: opts.dispatcherNice === undefined ? DEFAULT_DISPATCHER_NICE : opts.dispatcherNice,
    inlineBatch: opts.inlineBatch ?? 64,
    wakeBatch: opts.wakeBatch ?? DEFAULT_WAKE_BATCH,
    wpHook: opts.wpHook ? { module: path.resolve(opts.wpHook.module), export: opts.wpHook.export ?? 'default' } : null,
    faultInjection: opts.faultInjection ?? false,
    callbackStaging: hasCallback ? new SharedArrayBuffer(callbackRunBytes * workers) : null,
    callbackControl: hasCallback ? CallbackSlot.allocate(workers) : null,
    callbackRunBytes,
    callbackTimeoutMs: opts.callbackTimeoutMs ?? 10_000,
    eventFd,
    gates,
    gateCursors: keep(new SharedArrayBuffer(Math.max(1, gates.length) * 4)),
    removeJournalFd: opts.removeJournalFd ?? -1,
  };
  if (opts.initially === 'resident') new PageStates(setup.states, plan.totalPages).words.fill(-1); // every 2-bit field DROPPED
  const ctl = new ControlBlock(setup.control);
  const table = new RegionTable(setup.regionTable, ctl);
  rows.forEach((r, i) => table.write(i, {
    start: r.start, size: r.size, pageSize: r.pageSize, stateBase: r.stateBase, missingOp: r.missingOp,
    srcAddr: r.source.addr, source: i, srcOffset: 0, minor: r.source.minor, own: r.own, peerPid: opts.peerPid ?? 0,
    gate: r.source.gate ? gates.indexOf(r.source.gate) + 1 : 0,
  }));
  ctl.setRegionRows(rows.length);
  // Until a worker reads the uffd for the first time, the dispatcher reads in its place.
  for (let w = 0; w < workers; w++) ctl.setHelpWanted(w, true);
  return { uffd, ownsUffd: opts.ownsUffd ?? created, remotes, rows, setup, zeroLen: maxPage };
}

function normalizePrefetch(p: EngineOptions['prefetch'], page: number) {
  const o: PrefetchOptions = p === true ? { readAhead: 1024 * 1024, background: true } : p ? p : {};
  const readAheadMax = Math.floor((o.readAhead ?? 0) / page);
  const readAheadMin = Math.min(readAheadMax, Math.floor((o.readAheadMin ?? Math.min(o.readAhead ?? 0, 16 * 1024)) / page));
  const chunkPages = Math.max(1, Math.floor((o.chunk ?? 256 * 1024) / page));
  return { readAheadMax, readAheadMin, background: !!o.background, chunkPages, order: o.order };
}

/** The earliest first-fault time of any thread (0: none), as Date.now() milliseconds. */
function firstFault(c: Counters): number {
  let first = 0;
  for (let t = 0; t < c.threads; t++) {
    const v = c.all[t * COUNTER_WORDS + C_FIRST_MS] ?? 0;
    if (v > 0 && (first === 0 || v < first)) first = v;
  }
  return first;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
