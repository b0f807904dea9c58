// The parallel engine as the restore server's `serveConnection`: one Engine per
// connection (one VM), serving the regions of its handshake over the userfaultfd it sent,
// from the memory file at each region's `offset`.
//
//   const sessions = engineSessions({ workers: 2, prefetch: 'on' });
//   const server = RestoreServer.listen({ socketPath, memFilePath, serveConnection: sessions.serve });
//   await server.run();
//   ...
//   await sessions.shutdown('complete'); await server.close();
//
// Per session:
// - The fd must be a userfaultfd that went through UFFDIO_API (checked in /proc before
//   the engine touches it; its negotiated features are read from fdinfo). It is made
//   non-blocking if the peer sent a blocking one.
// - Each region's source is a read-only private mapping of the memory file at the
//   region's offset (one mmap per region). 2 MiB hugetlb regions are mapped with
//   MAP_POPULATE: UFFDIO_COPY reads the source with page faults disabled, and for hugetlb a
//   source page not yet mapped makes the kernel take a spare huge page for the retry
//   (ENOMEM when exactly enough are reserved). populateSource: 'always' does it for 4 KiB
//   regions too.
// - Demand faults first, read-ahead around them, background population (prefetch 'on'),
//   hot-first from a recorded working set ('hot-first'); REMOVE (balloon) makes the range
//   read zeros (the engine zero-fills later faults, by copying a zero page on hugetlbfs);
//   EAGAIN is retried (all of this is the engine's).
//
// When a session ends (and how the engine stops):
// - 'populated': background population is on and every page is present: stop
//   {mode:'complete'} (which unregisters the regions) and end the session without waiting
//   for the VM to exit. Nothing can fault any more; a later balloon REMOVE in an
//   unregistered range gets kernel zero pages, as the engine would have served. Frees the
//   engine's threads and the source mappings while the VM runs on. (detachWhenPopulated:
//   false keeps serving until the hang-up instead.)
// - 'hangup': the peer closed the connection (Firecracker keeps it open for its whole
//   life, so this is the VM's exit) -> stop {mode:'abandon'}.
// - 'peer-gone': an ioctl answered ESRCH (the VM's mm is gone) -> 'abandon'.
// - 'shutdown': sessions.shutdown(mode) (the CLI on SIGINT/SIGTERM): 'complete' fills
//   everything left first, so a VM that is still running keeps correct memory after we go;
//   'abandon' unregisters at once.
// The engine is always stopped before serve() settles (the server closes the uffd then).
// After the stop, messages still queued on the uffd are read: a REMOVE queued just before
// the regions were unregistered would otherwise keep the VMM's madvise() waiting forever
// (it holds its own copy of the uffd, so the kernel never releases it).
import * as fs from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { Engine, EngineOptions, EngineStats } from '../engine/engine.js';
import { EngineThreads } from '../engine/threads.js';
import { MAP_POPULATE, MAP_PRIVATE, O_NONBLOCK, PAGE_SIZE, PROT_READ } from '../kernel/constants.js';
import { ConfigError } from '../kernel/errors.js';
import { close, ftruncate, getpid, getuid, memfdCreate, mmap, munmap } from '../kernel/memory.js';
import { setNonBlocking } from '../kernel/socket.js';
import { MessageBuffer, Userfaultfd } from '../kernel/userfaultfd.js';
import { PageSource, sources } from '../sources/index.js';
import { memoryType } from '../memory-types/index.js';
import { WarmPool } from './warm-pool.js';
import { encodeHandshake, Handshake, validateHandshake } from './handshake.js';
import type { MemoryFile, ServeConnection, SessionContext } from './server.js';
import { PageSampler, startPageSampler, toEngineOrder, toFilePages, WorkingSet, WS_FORMAT, WS_PAGE_SIZE, WS_VERSION } from './working-set.js';

export type PrefetchMode = 'off' | 'on' | 'hot-first';
export type EndReason = 'populated' | 'hangup' | 'peer-gone' | 'shutdown' | 'error';

export interface EngineSessionOptions {
  /** Engine worker threads per session (default 2). */
  workers?: number;
  /**
   * 'off': demand faults only, one page each (unless readAhead is given). 'on' (default):
   * read-ahead around faults and background population of everything. 'hot-first': 'on',
   * with the pages of `workingSet` populated first.
   */
  prefetch?: PrefetchMode;
  /** Largest read-ahead window in bytes (default 1 MiB with prefetch on, 0 with off). */
  readAhead?: number;
  /** Smallest read-ahead window in bytes (default 16 KiB). */
  readAheadMin?: number;
  /** Bytes per background step (default 1 MiB: fewer, larger copies; a demand fault waits at most one step). */
  chunk?: number;
  /** The working set whose pages go first ('hot-first'). */
  workingSet?: WorkingSet;
  /**
   * Record the order in which pages were first needed. Serves demand faults only (no
   * read-ahead, no background population), so every page that leaves MISSING was needed.
   */
  record?: boolean | { intervalMs?: number };
  /** End the session (stop 'complete') once background population has filled everything (default true). */
  detachWhenPopulated?: boolean;
  /** MAP_POPULATE the source mapping: 'auto' (default) for hugetlb regions only, 'always', 'never'. */
  populateSource?: 'auto' | 'always' | 'never';
  /** Limit for a 'complete' stop (detach or shutdown) before it falls back to 'abandon' (default 60 s). */
  stopTimeoutMs?: number;
  /**
   * Where a region's pages come from, given its offset in the memory file (e.g. a remote
   * memory's chunk cache: RemoteMemory.source). Default: a private mapping of the memory file.
   */
  pageSource?: (region: { offset: number; size: number; pageSize: number }) => PageSource;
  /** Tuning passed to each engine. */
  engine?: Pick<EngineOptions, 'stripe' | 'inline' | 'spinMicros' | 'ringCapacity' | 'readers' | 'removeJournalFd'>;
  /**
   * Keep a set of engine threads warm for the next VM (threads started, JIT warmed up before
   * the handshake arrives; a fresh set for each VM). Default false; `serve` turns it on.
   * shutdown() ends the spare.
   */
  warm?: boolean | 'once';
  onEvent?: (e: SessionEvent) => void;
  /**
   * Runs after each session's engine has its tables and before its threads start (awaited):
   * e.g. mark pages the VM already has (a hand-over from an engine process that died).
   */
  beforeServe?: (engine: Engine, handshake: Handshake, ctx: SessionContext) => void | Promise<void>;
}

export type SessionEvent =
  | {
    type: 'engine-started'; id: number; ms: number; regions: number; totalBytes: number;
    /** The nice value the engine's dispatcher serves at, and why a higher priority was refused (EngineStats.dispatcher). */
    dispatcherNice: number; niceRefused?: string;
  }
  | { type: 'incident'; id: number; message: string }
  | { type: 'populated'; id: number; ms: number }
  | { type: 'recorded'; id: number; workingSet: WorkingSet }
  | { type: 'summary'; summary: SessionSummary };

export interface SessionSummary {
  id: number;
  peer: { pid: number; uid: number };
  regions: { offset: number; size: number; pageSize: number }[];
  totalBytes: number;
  totalPages: number;
  prefetch: PrefetchMode;
  workers: number;
  /** Features the peer negotiated on its userfaultfd (hex). */
  features?: string;
  endReason: EndReason;
  stopMode?: 'complete' | 'abandon';
  error?: string;
  /** From the handshake (session start) to the engine serving. */
  engineStartMs?: number;
  /** From the handshake (session start) to the first fault resolved; null without faults. */
  firstFaultMs: number | null;
  /** The engine's threads were warm (pre-started) when the handshake arrived. */
  warm: boolean;
  /** From session start to the last demand fault seen (10 ms resolution); null without faults. */
  lastDemandFaultMs: number | null;
  /** From session start to every page present; null if the session ended before. */
  populatedMs: number | null;
  /** From session start to the end (engine stopped). */
  durationMs: number;
  faults: number;
  /**
   * zeroFilled: pages answered with zeros (a REMOVE's range faulting again, a zero source);
   * rezeroed: pages made zero again because a fill raced with a REMOVE (they read zeros
   * without faulting again).
   */
  pages: { demand: number; readahead: number; background: number; prefetch: number; total: number; zeroFilled: number; rezeroed: number };
  bytes: number;
  /** Bytes filled / time to fully populated (else to the last demand fault, else the duration). */
  gibPerSec: number;
  /** Engine-side fault latency, µs (log2 bucket upper edges). */
  latencyUs: { p50: number; p90: number; p99: number; max: number };
  retries: number;
  eexist: number;
  errors: number;
  removes: number;
  /** Fill ioctls (UFFDIO_COPY/ZEROPAGE/CONTINUE...) the engine issued. */
  ioctls: number;
  incidents: string[];
  /** Hot-first: pages of the working set used (and not covered by any region). */
  preloaded?: { pages: number; outside: number };
  /** Recording: pages recorded. */
  recorded?: number;
  /** Supervised serve: engine processes that died during the session (each handed it over to a new one). */
  engineRestarts?: number;
  warnings: string[];
}

export interface SessionProgress {
  id: number;
  peerPid: number;
  elapsedSec: number;
  totalPages: number;
  pagesDemand: number;
  pagesPrefetch: number;
  bytes: number;
  faults: number;
  /** Bytes filled per second since the session started. */
  gibPerSec: number;
}

export interface LiveSession {
  id: number;
  handshake: Handshake;
  peer: { pid: number; uid: number };
  engine: Engine;
  startedAt: number;
  progress(): SessionProgress;
}

export interface EngineSessions {
  serve: ServeConnection;
  /** Sessions being served now, by connection id. */
  readonly live: Map<number, LiveSession>;
  /** Summaries of finished sessions, in the order they ended. */
  readonly summaries: SessionSummary[];
  /**
   * Ends every live session with the given stop mode (and sessions that start later end at
   * once the same way); resolves when they have ended. Call before RestoreServer.close().
   */
  shutdown(mode?: 'complete' | 'abandon'): Promise<void>;
  /** Resolves once the warm threads for the next VM are up (at once without `warm`). */
  ready(): Promise<void>;
  /**
   * warm 'once' (an engine process of `serve`): starts and stops a small engine on the warm
   * threads, over memory of this process, before the VM arrives. Its first session is then
   * not the first time this process runs the engine's start path: V8 compiles functions
   * when they first run, and the engine process had never run these (measured: handshake
   * to first touch ~10-12 ms without, in-process warm sessions ~3 ms).
   */
  rehearse(): Promise<void>;
}

/** How long a session waits for the rehearsal engine to give the warm threads back (rehearse()). */
const REHEARSAL_WAIT_MS = 2000;

export class SessionError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'SessionError';
    this.code = code;
  }
}

const UFFD_FEATURE_INITIALIZED = 1n << 31n;

/**
 * Checks that fd is a userfaultfd that went through UFFDIO_API and returns its negotiated
 * features (from /proc/self/fdinfo) and whether it is non-blocking.
 */
export function inspectUffd(fd: number): { features: bigint; nonBlocking: boolean } {
  let link: string;
  try {
    link = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch (e) {
    throw new SessionError('not-uffd', `cannot inspect the fd the peer sent: ${(e as Error).message}`);
  }
  if (link !== 'anon_inode:[userfaultfd]') throw new SessionError('not-uffd', `the fd the peer sent is not a userfaultfd (it is ${link})`);
  const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const flags = /^flags:\s*([0-7]+)/m.exec(info);
  const api = /^API:\s*([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)/m.exec(info);
  if (!api) throw new SessionError('not-uffd', 'the userfaultfd the peer sent shows no API line in fdinfo');
  const features = BigInt('0x' + api[2]);
  if (!(features & UFFD_FEATURE_INITIALIZED)) {
    throw new SessionError('uffd-uninitialised', 'the userfaultfd the peer sent was never initialised with UFFDIO_API');
  }
  return { features: features & ~UFFD_FEATURE_INITIALIZED, nonBlocking: flags?.[1] !== undefined ? (parseInt(flags[1], 8) & O_NONBLOCK) !== 0 : false };
}

/** Reads (and drops) whatever is queued on a non-blocking uffd. */
function drainUffd(fd: number): void {
  try {
    const u = Userfaultfd.fromFd(fd);
    const buf = new MessageBuffer(64);
    for (let i = 0; i < 1000 && u.read(buf) > 0; i++) { /* drop */ }
  } catch {
    // nothing to drain
  }
}

/** Builds the ServeConnection (and its bookkeeping) that serves each VM with its own engine. */
export function engineSessions(opts: EngineSessionOptions = {}): EngineSessions {
  const workers = opts.workers ?? 2;
  const record = opts.record ? (opts.record === true ? {} : opts.record) : undefined;
  let prefetch: PrefetchMode = opts.prefetch ?? (record ? 'off' : opts.workingSet ? 'hot-first' : 'on');
  if (opts.workingSet && prefetch === 'on') prefetch = 'hot-first';
  if (record && prefetch !== 'off') {
    throw new ConfigError(`recording a working set serves demand faults only: use prefetch 'off' (got '${prefetch}')`);
  }
  if (record && opts.workingSet) throw new ConfigError('record a working set or preload one, not both in the same session');
  if (prefetch === 'hot-first' && !opts.workingSet) throw new ConfigError("prefetch 'hot-first' needs a working set (record one with --record-ws first)");
  if (opts.workingSet && prefetch === 'off') throw new ConfigError("a preloaded working set is populated by background population: use prefetch 'hot-first', not 'off'");
  if (record && opts.readAhead) throw new ConfigError('recording a working set needs read-ahead off (pages filled around a fault were not needed)');
  const background = prefetch !== 'off';
  const readAhead = opts.readAhead ?? (background ? 1024 * 1024 : 0);
  const detach = opts.detachWhenPopulated ?? true;
  const stopTimeoutMs = opts.stopTimeoutMs ?? 60_000;
  const live = new Map<number, LiveSession>();
  const summaries: SessionSummary[] = [];
  const running = new Set<Promise<unknown>>();
  let closing: 'complete' | 'abandon' | undefined;
  const shutdownWaiters = new Set<() => void>();
  const pool = opts.warm ? new WarmPool({ workers, once: opts.warm === 'once' }) : undefined;
  /** The rehearsal engine on the warm threads (rehearse()): a session takes them once it is done. */
  let rehearsal: Promise<void> | null = null;
  const emitEvent = (e: SessionEvent): void => {
    try { opts.onEvent?.(e); } catch { /* a logger must not break a session */ }
  };

  /**
   * One session. `rehearsing`: the rehearsal session of rehearse() on these warm threads:
   * it says nothing (no events, no summary) and leaves the pool and the live sessions alone.
   */
  const serveOne = async (handshake: Handshake, uffdFd: number, memFile: MemoryFile, ctx: SessionContext,
    rehearsing?: EngineThreads): Promise<SessionSummary> => {
    const t0 = performance.now();
    const emit = rehearsing ? (): void => undefined : emitEvent;
    // The engine threads stamp their first fault served with Date.now(): the session's start
    // on the same clock, read now (timeOrigin + t0 is the wall clock of the process's start
    // plus monotonic time, which drifts from Date.now() as the system clock is adjusted).
    const wall0 = Date.now();
    const since = (): number => performance.now() - t0;
    const summary = newSummary(handshake, ctx, prefetch, workers);
    const { warnings, totalPages } = summary;
    const maps: { addr: number; len: number }[] = [];
    let engine: Engine | undefined;
    let timer: NodeJS.Timeout | undefined;
    let sampler: PageSampler | undefined;
    try {
      const uf = inspectUffd(uffdFd);
      summary.features = '0x' + uf.features.toString(16);
      if (!uf.nonBlocking) {
        setNonBlocking(uffdFd, true);
        warnings.push('the peer sent a blocking userfaultfd; made it non-blocking');
      }
      if (!(uf.features & 0x8n)) warnings.push('the peer did not negotiate UFFD_FEATURE_EVENT_REMOVE: a balloon would drop pages without telling us');
      let order: number[] | undefined;
      if (opts.workingSet && !rehearsing) {
        if (opts.workingSet.memFile.size !== memFile.size) {
          throw new SessionError('working-set', `the working set was recorded for a ${opts.workingSet.memFile.size}-byte memory file; this one has ${memFile.size} bytes`);
        }
        const o = toEngineOrder(opts.workingSet, handshake);
        order = o.order;
        summary.preloaded = { pages: o.order.length, outside: o.outside };
        if (o.outside) warnings.push(`${o.outside} working-set pages lie outside this VM's regions and were skipped`);
      }
      const pageSource = rehearsing ? undefined : opts.pageSource; // a remote memory file opens with its VM
      for (const r of pageSource ? [] : handshake.regions) {
        const populate = opts.populateSource === 'always' || ((opts.populateSource ?? 'auto') === 'auto' && r.pageSize > PAGE_SIZE);
        const addr = mmap(r.size, PROT_READ, MAP_PRIVATE | (populate ? MAP_POPULATE : 0), memFile.fd, r.offset);
        maps.push({ addr, len: r.size });
      }
      // The peer already hung up: nothing to serve. (During a shutdown the engine still
      // starts: the session then ends at once with the shutdown's stop mode, so a VM that
      // got in at the last moment is filled rather than left waiting.)
      if (ctx.signal.aborted && !closing) {
        summary.endReason = 'hangup';
        return summary;
      }
      // Recording: the sampler thread starts first and attaches to the page-state table
      // before any engine thread runs, so it sees the very first fault.
      sampler = record && !rehearsing ? await startPageSampler(record.intervalMs ?? 0.2) : undefined;
      const smp = sampler;
      // The rehearsal holds the warm threads for a few ms; one that takes longer than
      // REHEARSAL_WAIT_MS (a stuck machine) leaves them to it: the VM gets new threads.
      // (The rehearsal session itself runs on the threads it was given.)
      const threads = rehearsing ?? (!rehearsal || await Promise.race([rehearsal.then(() => true), delay(REHEARSAL_WAIT_MS, false, { ref: false })])
        ? pool?.take() : EngineThreads.start(workers));
      summary.warm = threads?.isReady ?? false;
      const starting = Engine.start({
        threads,
        beforeLaunch: rehearsing ? undefined : async (e) => {
          await opts.beforeServe?.(e, handshake, ctx);
          if (smp) await smp.attach(e.pageStateBuffer, e.totalPages);
        },
        uffd: Userfaultfd.fromFd(uffdFd, uf.features),
        ownsUffd: false,
        peerPid: ctx.peer.pid, // a page a balloon REMOVE raced with is zeroed again through /proc/PID/mem
        regions: handshake.regions.map((r, i) => ({
          start: r.baseHostVirtAddr, size: r.size, pageSize: r.pageSize, type: r.pageSize > PAGE_SIZE ? 'hugetlbfs' as const : 'anon' as const,
          source: pageSource ? pageSource(r) : sources.address((maps[i] as { addr: number }).addr, r.size),
        })),
        workers,
        prefetch: {
          readAhead, readAheadMin: Math.min(readAhead, opts.readAheadMin ?? 16 * 1024), background, order,
          chunk: opts.chunk ?? 1024 * 1024,
        },
        ...opts.engine,
      });
      try {
        engine = await starting;
      } catch (e) {
        await threads?.destroy(); // not taken by an engine that failed before launching
        throw e;
      }
      const eng = engine;
      summary.engineStartMs = Math.round(since() * 10) / 10;
      const d = eng.dispatcherPriority;
      emit({
        type: 'engine-started', id: ctx.id, ms: summary.engineStartMs, regions: handshake.regions.length, totalBytes: handshake.totalSize,
        dispatcherNice: d.nice, ...(d.niceRefused ? { niceRefused: d.niceRefused } : {}),
      });
      eng.on('incident', (inc: { message: string }) => {
        if (summary.incidents.length < 20) summary.incidents.push(inc.message);
        emit({ type: 'incident', id: ctx.id, message: inc.message });
      });
      eng.on('remove', () => { summary.removes++; });
      let lastFaults = 0;
      const progress = (): SessionProgress => {
        const st = eng.stats();
        const sec = since() / 1000;
        return {
          id: ctx.id, peerPid: ctx.peer.pid, elapsedSec: sec, totalPages, pagesDemand: st.pages.demand,
          pagesPrefetch: st.pages.readahead + st.pages.background, bytes: st.bytes, faults: st.faults.total,
          gibPerSec: sec > 0 ? st.bytes / 2 ** 30 / sec : 0,
        };
      };
      if (!rehearsing) live.set(ctx.id, { id: ctx.id, handshake, peer: summary.peer, engine: eng, startedAt: Date.now() - since(), progress });

      // Wait for the end of the session.
      const reason = await new Promise<EndReason>((resolve) => {
        let settled = false;
        const end = (r: EndReason): void => {
          if (settled) return;
          settled = true;
          shutdownWaiters.delete(onShutdown);
          resolve(r);
        };
        const onShutdown = (): void => end('shutdown');
        shutdownWaiters.add(onShutdown);
        if (closing) end('shutdown');
        void ctx.hangup.then(() => end(closing ? 'shutdown' : 'hangup'));
        timer = setInterval(() => {
          const f = eng.stats().faults.missing;
          if (f !== lastFaults) {
            lastFaults = f;
            summary.lastDemandFaultMs = Math.round(since() * 10) / 10;
          }
          if (eng.peerGone) end('peer-gone');
          else if (background && summary.populatedMs === null && eng.populated) {
            summary.populatedMs = Math.round(since() * 10) / 10;
            emit({ type: 'populated', id: ctx.id, ms: summary.populatedMs });
            if (detach) end('populated');
          }
        }, 10);
      });
      clearInterval(timer);
      timer = undefined;
      summary.endReason = reason;
      // Stop recording before the engine stops: a 'complete' stop fills pages nobody needed.
      if (sampler) {
        const recorded = await sampler.stop();
        sampler = undefined;
        const ws: WorkingSet = {
          format: WS_FORMAT, version: WS_VERSION, pageSize: WS_PAGE_SIZE, memFile: { size: memFile.size, path: memFile.path },
          recorded: new Date().toISOString(), sampleIntervalMs: record?.intervalMs ?? 0.2, pages: toFilePages(recorded, handshake),
        };
        summary.recorded = ws.pages.length;
        emit({ type: 'recorded', id: ctx.id, workingSet: ws });
      }
      const mode = reason === 'populated' ? 'complete' : reason === 'shutdown' ? (closing ?? 'complete') : 'abandon';
      summary.stopMode = mode;
      const stats = await eng.stop({ mode, timeoutMs: stopTimeoutMs });
      engine = undefined;
      drainUffd(uffdFd);
      if (mode === 'complete' && summary.populatedMs === null && stats.incidents === 0) summary.populatedMs = Math.round(since() * 10) / 10;
      fillFromStats(summary, stats, wall0);
      // The counter is exact; an event message may still be on its way to this thread.
      summary.removes = Math.max(summary.removes, stats.removes);
      // Faults counted since the last tick happened before now, and before the moment
      // everything was present (later ones found their page there).
      if (stats.faults.missing !== lastFaults) summary.lastDemandFaultMs = summary.populatedMs ?? Math.round(since() * 10) / 10;
      return summary;
    } catch (e) {
      summary.endReason = 'error';
      summary.error = e instanceof Error ? e.message : String(e);
      throw Object.assign(e instanceof Error ? e : new Error(String(e)), { summary });
    } finally {
      if (timer) clearInterval(timer);
      if (sampler) await sampler.stop().catch(() => undefined);
      if (engine) {
        const st = await engine.stop({ mode: 'abandon' }).catch(() => undefined);
        drainUffd(uffdFd);
        if (st) fillFromStats(summary, st, wall0);
      }
      for (const m of maps) munmap(m.addr, m.len);
      if (!rehearsing) {
        live.delete(ctx.id);
        pool?.refill();
      }
      summary.durationMs = Math.round(since() * 10) / 10;
      const basis = summary.populatedMs ?? summary.lastDemandFaultMs ?? summary.durationMs;
      summary.gibPerSec = basis > 0 ? summary.bytes / 2 ** 30 / (basis / 1000) : 0;
      if (!rehearsing) summaries.push(summary);
      emit({ type: 'summary', summary });
    }
  };

  /**
   * A whole session, quietly, over a region of this process (its own userfaultfd, a memfd
   * for memory file, a hang-up 20 ms later): the path a VM takes — fdinfo, mmap, engine
   * start, population, stop — has run once before the first VM needs it.
   */
  const rehearseSession = async (threads: EngineThreads): Promise<void> => {
    const size = 64 * PAGE_SIZE;
    const region = memoryType('anon').create({ size });
    const memFd = memfdCreate('uffd-engine-rehearsal');
    let uffd: Userfaultfd | undefined;
    try {
      ftruncate(memFd, size);
      uffd = Userfaultfd.create({ optionalFeatures: ['EVENT_REMOVE'] });
      uffd.register(region.addr, size, ['missing']);
      const handshake = validateHandshake(encodeHandshake([{ baseHostVirtAddr: region.addr, size, offset: 0, pageSize: PAGE_SIZE }]), 1,
        { memFileSize: size });
      const ac = new AbortController();
      const hangup = delay(20, undefined, { ref: false }).then(() => ac.abort());
      await serveOne(handshake, uffd.fd, { path: '(rehearsal)', fd: memFd, size },
        { id: 0, conn: -1, peer: { pid: getpid(), uid: getuid(), gid: 0 }, hangup, signal: ac.signal, extraFds: [] }, threads);
    } finally {
      uffd?.close();
      close(memFd);
      region.close();
    }
  };

  const serve: ServeConnection = (handshake, uffdFd, memFile, ctx) => {
    const p = serveOne(handshake, uffdFd, memFile, ctx);
    running.add(p);
    const done = (): void => { running.delete(p); };
    p.then(done, done);
    return p;
  };

  return {
    serve,
    live,
    summaries,
    async shutdown(mode = 'complete') {
      closing = mode;
      for (const w of [...shutdownWaiters]) w();
      await Promise.allSettled([...running]);
      await pool?.close();
    },
    ready: async () => { await pool?.ready(); },
    rehearse: () => {
      rehearsal ??= (pool?.rehearse(rehearseSession) ?? Promise.resolve()).catch((e: Error) => emitEvent({ type: 'incident', id: 0, message: `rehearsal engine failed (the VM is served all the same): ${e.message}` }));
      return rehearsal;
    },
  };
}

/** The summary of a session before anything was served (its end reason 'error' until known). */
export function newSummary(handshake: Handshake, ctx: Pick<SessionContext, 'id' | 'peer'>, prefetch: PrefetchMode, workers: number): SessionSummary {
  return {
    id: ctx.id, peer: { pid: ctx.peer.pid, uid: ctx.peer.uid },
    regions: handshake.regions.map((r) => ({ offset: r.offset, size: r.size, pageSize: r.pageSize })),
    totalBytes: handshake.totalSize, totalPages: handshake.regions.reduce((n, r) => n + r.size / r.pageSize, 0),
    prefetch, workers, endReason: 'error', firstFaultMs: null, warm: false, lastDemandFaultMs: null, populatedMs: null, durationMs: 0, faults: 0,
    pages: { demand: 0, readahead: 0, background: 0, prefetch: 0, total: 0, zeroFilled: 0, rezeroed: 0 }, bytes: 0, gibPerSec: 0,
    latencyUs: { p50: 0, p90: 0, p99: 0, max: 0 }, retries: 0, eexist: 0, errors: 0, removes: 0, ioctls: 0, incidents: [],
    warnings: [...handshake.warnings],
  };
}

function fillFromStats(s: SessionSummary, st: EngineStats, startedAtMs: number): void {
  s.faults = st.faults.total;
  // Both Date.now() ms: the session's start and an engine thread's first fault served.
  if (st.firstFaultAt > 0) s.firstFaultMs = Math.max(0, st.firstFaultAt - startedAtMs);
  s.pages = {
    demand: st.pages.demand, readahead: st.pages.readahead, background: st.pages.background,
    prefetch: st.pages.readahead + st.pages.background, total: st.pages.total, zeroFilled: st.pages.zeroFilled,
    rezeroed: st.rezeroed,
  };
  s.bytes = st.bytes;
  s.latencyUs = { p50: st.latencyUs.p50, p90: st.latencyUs.p90, p99: st.latencyUs.p99, max: st.latencyUs.max };
  s.retries = st.retries;
  s.eexist = st.eexist;
  s.errors = st.errors;
  s.ioctls = st.ioctls;
}

/** Human-readable lines for a session summary. */
export function formatSummary(s: SessionSummary): string[] {
  const gib = (b: number): string => (b / 2 ** 30 >= 1 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
  const ms = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : `${v.toFixed(1)} ms`);
  const lines = [
    `session ${s.id} (pid ${s.peer.pid}, uid ${s.peer.uid}): ${s.regions.length} region(s), ${gib(s.totalBytes)}, ` +
      `page size ${[...new Set(s.regions.map((r) => r.pageSize))].join('/')}; prefetch ${s.prefetch}, ${s.workers} workers`,
    `  ended: ${s.endReason}${s.stopMode ? ` (engine stopped: ${s.stopMode})` : ''}${s.error ? ` - ${s.error}` : ''}; ` +
      `engine up ${ms(s.engineStartMs)}${s.warm ? ' (warm)' : ''}, first fault served ${ms(s.firstFaultMs)}, last demand fault ${ms(s.lastDemandFaultMs)}, fully populated ${ms(s.populatedMs)}, session ${ms(s.durationMs)}`,
    `  pages: ${s.pages.demand} demand + ${s.pages.prefetch} prefetch (${s.pages.readahead} read-ahead, ${s.pages.background} background)` +
      ` of ${s.totalPages}; ${s.faults} faults; ${gib(s.bytes)} filled, ${s.gibPerSec.toFixed(2)} GiB/s`,
    `  engine fault latency: p50 ${s.latencyUs.p50} µs, p90 ${s.latencyUs.p90} µs, p99 ${s.latencyUs.p99} µs, max ${s.latencyUs.max} µs` +
      `; EAGAIN retries ${s.retries}, REMOVE events ${s.removes}, zero-filled ${s.pages.zeroFilled}, errors ${s.errors}`,
  ];
  if (s.preloaded) lines.push(`  hot-first: ${s.preloaded.pages} working-set pages first${s.preloaded.outside ? ` (${s.preloaded.outside} outside the regions)` : ''}`);
  if (s.recorded !== undefined) lines.push(`  recorded working set: ${s.recorded} pages`);
  if (s.engineRestarts) lines.push(`  engine process restarts: ${s.engineRestarts} (the session was handed over; counts include the dead engines' last reports)`);
  for (const w of s.warnings) lines.push(`  warning: ${w}`);
  for (const i of s.incidents) lines.push(`  incident: ${i}`);
  return lines;
}
