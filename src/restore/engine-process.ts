// An engine process of `uffd-engine serve`: started by the supervisor (supervisor.ts) with
// one end of a socketpair as fd 3, it waits for one session — the VM's handshake, and
// over SCM_RIGHTS its userfaultfd, the memory file and the VM's connection — and serves it
// with engineSessions() (the same session code as an in-process server), then exits.
//
// Hand-over: when the session comes from an engine process that died, the VM already has
// some pages and the dead process's page-state table is gone. Before the new engine's
// threads start, the pages the VM has (PAGEMAP_SCAN of its process: present or swapped)
// and the ranges a balloon removed (the supervisor's journal of this session's REMOVE
// events: a memfd that comes with the session, to which the engine thread that reads a
// REMOVE appends it before applying it) are marked resident (DROPPED: never filled again; a fault there is a hole and
// gets zeros). Anything else the engine finds already there answers EEXIST and counts as
// present. Faults the dead process had read but not resolved were woken by the supervisor
// (UFFDIO_WAKE over every region) as soon as it saw the death: those threads fault again
// and the new engine reads their faults like any other.
//
// The supervisor going away (EOF on fd 3) is not the VM going away. What happens to a live
// session then is `onSupervisorDeath`:
// - 'complete' (default): it is ended with shutdown 'complete' — every page left is filled,
//   the regions are unregistered — so the VM keeps running with every byte right;
// - 'fail': no more pages are served. Every page the VM does not have yet is poisoned
//   (UFFDIO_POISON: a thread that touches it gets SIGBUS, never zeros, never a hang), then
//   the regions are unregistered (the poison stays in the page tables), so nothing of the
//   VM waits on a handler that is no longer supervised.
// Then this process exits.
import { Engine, EngineStats } from '../engine/engine.js';
import { PAGE_IS_PRESENT, PAGE_IS_SWAPPED } from '../kernel/constants.js';
import { getpid } from '../kernel/memory.js';
import { setProcessIdle } from '../kernel/sched.js';
import { Scanner } from '../kernel/pagemap.js';
import { closeFds, socketPair } from '../kernel/socket.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { Channel, ChannelMessage } from './channel.js';
import { engineSessions, PrefetchMode, SessionSummary } from './engine-session.js';
import type { Handshake } from './handshake.js';
import type { SessionContext } from './server.js';
import { loadWorkingSet } from './working-set.js';
import { RemoteConfig, RemoteMemory } from '../remote/remote-memory.js';
import { formatRemoteStats } from '../remote/remote-memory.js';

/** What every engine process of one supervisor is started with (argv[2], JSON). */
export interface EngineProcessConfig {
  workers: number;
  prefetch?: PrefetchMode;
  readAhead?: number;
  chunk?: number;
  /** A working-set file to preload (validated by the supervisor against memFileSize). */
  preloadWs?: string;
  memFileSize: number;
  record: boolean;
  detachWhenPopulated: boolean;
  /** Keep the engine threads started and their fault path compiled before the VM arrives. */
  warm?: boolean;
  stopTimeoutMs?: number;
  /** How often live statistics are reported (ms). */
  statsIntervalMs: number;
  /**
   * The memory file is in object storage (serve --mem-url): no memory-file descriptor comes
   * with a session; this process opens its own chunk cache when its VM arrives (a spare
   * fetches nothing), working set first, then the rest with background prefetch.
   */
  remote?: RemoteConfig;
  /** What a live session does when the supervisor dies (see the top of this file; default 'complete'). */
  onSupervisorDeath?: 'complete' | 'fail';
  /**
   * A spare (SupervisorOptions.idleSpares): start up and rehearse on SCHED_IDLE, every
   * thread, and go back to SCHED_OTHER once warm (then say 'warm') or when a session comes.
   * Only if this process may come back (kernel/sched.ts mayLeaveIdle).
   */
  idleWhileSpare?: boolean;
}

/** Engine counters a supervisor aggregates (a subset of EngineStats). */
export interface StatsReport {
  faults: { missing: number; minor: number; wp: number; rwp: number };
  pages: { demand: number; readahead: number; background: number; zeroFilled: number };
  bytes: number;
  eexist: number;
  retries: number;
  errors: number;
  removes: number;
  /** Engine-side fault latency, log2 µs buckets (bucket i: below 2^(i+1) µs). */
  histogram: number[];
}

export function statsReport(s: EngineStats): StatsReport {
  return {
    faults: { missing: s.faults.missing, minor: s.faults.minor, wp: s.faults.wp, rwp: s.faults.rwp },
    pages: { demand: s.pages.demand, readahead: s.pages.readahead, background: s.pages.background, zeroFilled: s.pages.zeroFilled },
    bytes: s.bytes, eexist: s.eexist, retries: s.retries, errors: s.errors, removes: s.removes, histogram: s.latencyUs.histogram,
  };
}

export interface SessionMessage {
  type: 'session';
  id: number;
  handshake: Handshake;
  peer: { pid: number; uid: number; gid: number };
  memFile: { path: string; size: number };
  /** Set when an earlier engine process served this session and died. */
  handover: { generation: number; removed: [number, number][] } | null;
  /** The supervisor is draining: end the session at once with this stop mode. */
  shutdown?: 'complete' | 'abandon';
}

/** Marks what the VM already has as resident; returns the pages marked. */
function rediscover(engine: Engine, h: Handshake, peerPid: number, removed: [number, number][]): { resident: number; removed: number; scan: string } {
  let resident = 0;
  let gone = 0;
  const mark = (start: number, end: number, ps: number): number => {
    const s = Math.floor(start / ps) * ps;
    const e = Math.ceil(end / ps) * ps;
    if (e > s) engine.markResident(s, e - s);
    return (e - s) / ps;
  };
  for (const [start, end] of removed) {
    for (const r of h.regions) {
      const s = Math.max(start, r.baseHostVirtAddr);
      const e = Math.min(end, r.baseHostVirtAddr + r.size);
      if (e > s) gone += mark(s, e, r.pageSize);
    }
  }
  let scan = 'pagemap';
  let scanner: Scanner | undefined;
  try {
    scanner = new Scanner({ pid: peerPid });
    for (const r of h.regions) {
      scanner.scan(r.baseHostVirtAddr, r.baseHostVirtAddr + r.size, { categoryAnyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED },
        (s, e) => { resident += mark(s, e, r.pageSize); });
    }
  } catch (e) {
    // No PAGEMAP_SCAN (before 6.7) or no access to the VM's page tables: the engine finds
    // each present page on its first copy instead (EEXIST).
    scan = `none (${(e as Error).message}); present pages are found by EEXIST`;
  } finally {
    scanner?.close();
  }
  return { resident, removed: gone, scan };
}

/**
 * Poisons every page of the VM's regions that it does not have (not present, not swapped):
 * its threads get SIGBUS there. A page filled meanwhile answers EEXIST and is stepped over.
 * Returns the pages poisoned.
 */
function poisonMissing(uffdFd: number, h: Handshake, peerPid: number): number {
  const uffd = Userfaultfd.fromFd(uffdFd);
  let poisoned = 0;
  const poisonRange = (start: number, end: number, ps: number): void => {
    for (let a = start; a < end;) {
      let done = 0;
      try {
        done = uffd.poison(a, end - a);
      } catch {
        return; // the range is gone (the VM exited or unmapped it)
      }
      poisoned += done / ps;
      a += done > 0 ? done : ps; // 0: the page at `a` is there (EEXIST)
    }
  };
  for (const r of h.regions) {
    const end = r.baseHostVirtAddr + r.size;
    let scanner: Scanner | undefined;
    try {
      scanner = new Scanner({ pid: peerPid });
      let at = r.baseHostVirtAddr;
      const present: [number, number][] = [];
      scanner.scan(r.baseHostVirtAddr, end, { categoryAnyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED }, (s, e) => { present.push([s, e]); });
      for (const [s, e] of present) {
        if (s > at) poisonRange(at, s, r.pageSize);
        at = Math.max(at, e);
      }
      if (at < end) poisonRange(at, end, r.pageSize);
    } catch {
      poisonRange(r.baseHostVirtAddr, end, r.pageSize); // no PAGEMAP_SCAN: EEXIST steps over present pages
    } finally {
      scanner?.close();
    }
  }
  return poisoned;
}

function main(): void {
  const config = JSON.parse(process.argv[2] ?? '{}') as EngineProcessConfig;
  // Again for every thread (the supervisor set it as it spawned us; threads Node started
  // before that did not inherit it), before the warm threads start: they inherit it.
  let idle = config.idleWhileSpare === true; // the supervisor checked we may come back (mayLeaveIdle)
  if (idle) setProcessIdle(getpid(), true);
  /** Back on SCHED_OTHER; whether this call did it. */
  const leaveIdle = (): boolean => {
    if (!idle) return false;
    idle = false;
    setProcessIdle(getpid(), false);
    return true;
  };
  let ch: Channel;
  let session: { id: number; hangup: () => void; engine?: Engine; uffd: number; handshake: Handshake; peerPid: number } | null = null;
  let serving: Promise<unknown> | null = null;
  const send = (m: ChannelMessage, fds?: number[]): boolean => ch.send(m, fds);
  // Set when the session arrives (the session's REMOVE journal); read by Engine.start.
  const engineTuning: { removeJournalFd?: number } = {};
  const workingSet = config.preloadWs ? loadWorkingSet(config.preloadWs, config.memFileSize) : undefined;
  let remote: RemoteMemory | undefined;
  const sessions = engineSessions({
    workers: config.workers, prefetch: config.prefetch, readAhead: config.readAhead, chunk: config.chunk, workingSet,
    pageSource: config.remote ? (r) => (remote as RemoteMemory).source(r.offset) : undefined,
    record: config.record, detachWhenPopulated: config.detachWhenPopulated, warm: config.warm ? 'once' : false, stopTimeoutMs: config.stopTimeoutMs,
    engine: engineTuning,
    onEvent: (event) => { send({ type: 'event', event }); },
    beforeServe: (engine, h, ctx) => {
      if (session) session.engine = engine;
      // The journal already has every REMOVE (written by the thread that read it); this
      // message only feeds the supervisor's log and metrics.
      engine.on('remove', (e: { start: number; end: number }) => { send({ type: 'removed', id: ctx.id, start: e.start, end: e.end }); });
      const ho = pending?.handover;
      if (ho) {
        const t0 = performance.now();
        const r = rediscover(engine, h, ctx.peer.pid, ho.removed);
        send({ type: 'handover', id: ctx.id, generation: ho.generation, ...r, ms: Math.round((performance.now() - t0) * 10) / 10 });
      }
    },
  });
  let pending: SessionMessage | null = null;

  // Log lines on stderr reach the supervisor's log (engine-log events).
  const openRemote = async (c: RemoteConfig): Promise<RemoteMemory> => {
    const cacheFile = c.options.cacheFile ? `${c.options.cacheFile}.${getpid()}` : undefined; // one cache per process
    const mem = await RemoteMemory.open(c.location, {
      ...c.options, cacheFile, prefetch: { workingSet: workingSet?.pages, background: config.prefetch !== 'off' },
    });
    mem.on('chunk-failed', (f: { chunk: number; offset: number; message: string }) => process.stderr.write(
      `remote: chunk ${f.chunk} (offset ${f.offset}) cannot be had: ${f.message}; its pages are poisoned (a VM that touches them gets SIGBUS)\n`));
    return mem;
  };

  const start = async (m: SessionMessage, fds: number[]): Promise<void> => {
    leaveIdle(); // a VM: nothing of this process waits for idle CPU time any more
    if (session || fds.length !== (config.remote ? 3 : 4)) {
      closeFds(fds);
      return;
    }
    const [uffd = -1, memFd = -1, conn = -1, journal = -1] = config.remote ? [fds[0], -1, fds[1], fds[2]] : fds;
    engineTuning.removeJournalFd = journal;
    if (config.remote) {
      try {
        remote = await openRemote(config.remote);
      } catch (e) {
        send({ type: 'ended', id: m.id, summary: undefined, error: `cannot open the remote memory file: ${(e as Error).message}` });
        closeFds(fds);
        process.exit(0);
      }
    }
    pending = m;
    let hangup!: () => void;
    const hung = new Promise<void>((r) => { hangup = r; });
    const ac = new AbortController();
    void hung.then(() => ac.abort());
    session = { id: m.id, hangup, uffd, handshake: m.handshake, peerPid: m.peer.pid };
    const ctx: SessionContext = { id: m.id, conn, peer: m.peer, hangup: hung, signal: ac.signal, extraFds: [] };
    const timer = setInterval(() => {
      if (session?.engine) send({ type: 'stats', id: m.id, stats: statsReport(session.engine.stats()) });
    }, config.statsIntervalMs);
    if (m.shutdown) void sessions.shutdown(m.shutdown);
    serving = sessions.serve(m.handshake, uffd, { path: m.memFile.path, fd: memFd, size: m.memFile.size }, ctx)
      .then((summary) => ({ summary: summary as SessionSummary, error: undefined as string | undefined }),
        (e: Error & { summary?: SessionSummary }) => ({ summary: e.summary, error: e.message }))
      .then(({ summary, error }) => {
        clearInterval(timer);
        if (session?.engine) send({ type: 'stats', id: m.id, stats: statsReport(session.engine.stats()), final: true });
        if (remote) process.stderr.write(`${formatRemoteStats(remote.remoteStats())}\n`);
        send({ type: 'ended', id: m.id, summary, error });
        closeFds(config.remote ? [uffd, conn, journal] : [uffd, memFd, conn, journal]);
        process.exit(0);
      });
  };

  ch = new Channel(3, (m, fds) => {
    if (m.type === 'session') void start(m as unknown as SessionMessage, fds);
    else {
      closeFds(fds);
      if (m.type === 'hangup') session?.hangup();
      else if (m.type === 'shutdown') void sessions.shutdown(m.mode === 'abandon' ? 'abandon' : 'complete');
    }
  }, () => {
    // The supervisor is gone. A VM being served is completed (nobody could restart us if we
    // died now, and nobody will tell us of its hang-up) or, with 'fail', made to fail
    // loudly; otherwise there is nothing to do.
    if (!serving || !session) process.exit(0);
    if (config.onSupervisorDeath === 'fail') {
      // (Not logged: stderr went to the supervisor, and writing to it now fails with EPIPE.)
      poisonMissing(session.uffd, session.handshake, session.peerPid);
      void sessions.shutdown('abandon');
    } else void sessions.shutdown('complete');
  });
  send({ type: 'ready', pid: getpid() });
  // Node loads some globals' code when they are first used (performance: ~0.9 ms here,
  // setInterval ~0.5 ms, AbortController ~0.2 ms): use them now, not in the VM's first
  // milliseconds.
  performance.now();
  new AbortController().abort();
  clearInterval(setInterval(() => undefined, 2 ** 30));
  // Before any VM: a message through a channel of its own, and a whole session on the warm
  // threads over memory of this process, so that the path of the VM's session message is
  // compiled (a session that arrives meanwhile waits for the rehearsal: tens of ms after
  // the process started). Without: ~2 ms more from the supervisor's message to the VM's
  // first fault served.
  // Warm (the threads up, both rehearsals done): back on SCHED_OTHER, so that the session
  // message, whenever it comes, is read at once.
  void Promise.all([rehearseChannel(), sessions.rehearse(), sessions.ready()]).finally(() => {
    if (leaveIdle()) send({ type: 'warm' });
  });
}

/** Sends this process a message with an fd through a socketpair, as the session message comes. */
async function rehearseChannel(): Promise<void> {
  const [a, b] = socketPair();
  let rx: Channel | undefined;
  const tx = new Channel(b, () => undefined, () => undefined);
  await new Promise<void>((resolve) => {
    rx = new Channel(a, (_m, fds) => { closeFds(fds); resolve(); }, resolve);
    tx.send({ type: 'rehearsal', handshake: { regions: [{ baseHostVirtAddr: 0, size: 4096, offset: 0, pageSize: 4096 }] } }, [b]);
  });
  rx?.close();
  tx.close();
}

if (require.main === module) main();
