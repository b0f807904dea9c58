// The supervisor of `uffd-engine serve`: the restore server's `serveConnection` that does
// not serve faults itself. Each session (one VM) is handed to an engine process
// (engine-process.ts: a child process running the parallel engine) over a socketpair,
// with the VM's userfaultfd, the memory file and the VM's connection passed by SCM_RIGHTS.
// The supervisor keeps its own copy of the userfaultfd, the regions and a journal of the
// session's REMOVE events (a memfd passed to each engine, which appends a REMOVE's range
// before it applies the event: src/engine/remove-journal.ts), so that when an engine process dies — a crash, the OOM killer,
// SIGKILL — the session goes on:
//
//  1. the death is seen (child exit: every thread of it is gone, it reads nothing more);
//  2. UFFDIO_WAKE over every region of the session: faults the dead process had read but
//     not resolved are never delivered again, and their threads would wait forever; woken,
//     they fault again and their new messages wait in the userfaultfd for the next engine;
//  3. the session goes to a new engine process (a spare one, started in advance, so no
//     Node start-up is on the path), marked as a hand-over: before its threads start, it
//     marks what the VM already has (PAGEMAP_SCAN of the VM) and the journaled REMOVE
//     ranges as resident, then serves the rest — EEXIST for anything else already there.
//     A REMOVE the dead process read is in the journal even if it died before applying it.
//
// Engine processes are started in their own process group (a Ctrl-C reaches only the
// supervisor, which drains them), report statistics every statsIntervalMs, and one that
// reports nothing for engineTimeoutMs is killed and replaced the same way.
import { ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import { readRemoveJournal } from '../engine/remove-journal.js';
import { startLimitMs } from '../engine/threads.js';
import { close, memfdCreate } from '../kernel/memory.js';
import { mayLeaveIdle, setProcessIdle } from '../kernel/sched.js';
import { closeFds, closeSocket, socketPair } from '../kernel/socket.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { Channel, ChannelMessage } from './channel.js';
import type { EngineProcessConfig, SessionMessage, StatsReport } from './engine-process.js';
import { newSummary, PrefetchMode, SessionEvent, SessionProgress, SessionSummary } from './engine-session.js';
import type { Handshake } from './handshake.js';
import type { MemoryFile, ServeConnection, SessionContext } from './server.js';

const ENGINE_SCRIPT = path.resolve(__dirname, 'engine-process.js');

export interface SupervisorOptions {
  engine: Omit<EngineProcessConfig, 'statsIntervalMs'> & { statsIntervalMs?: number };
  /** Idle engine processes kept started (default 1): a new VM or a hand-over does not wait for Node to start. */
  spares?: number;
  /**
   * After a VM takes a spare, start its replacement this much later (default 100 ms), and
   * not while a VM is being populated (background population on, not finished), up to
   * spareMaxDelayMs. A spare's start-up takes ~0.6 s of CPU (Node, three isolates, the
   * rehearsals); beside a VM's restore on a small machine it cost a third of the restore
   * rate (1 GiB through `serve`: 1.6–1.8 GiB/s, 2.6–2.8 with this). A VM that finds no
   * spare gets a new process at once.
   */
  spareDelayMs?: number;
  /** The longest a replacement spare waits for a VM's population to finish (default 5000 ms). */
  spareMaxDelayMs?: number;
  /**
   * A spare engine process starts up and rehearses on SCHED_IDLE (default true): it takes
   * only CPU time no VM wants, and is put back on SCHED_OTHER when it is warm or a session
   * comes to it. Needs CAP_SYS_NICE (or RLIMIT_NICE >= 20) to come back: without, spares
   * start at normal priority.
   */
  idleSpares?: boolean;
  /** Engine deaths a session survives; one more ends it (default 10). */
  maxRestarts?: number;
  /** An engine process silent this long is killed and replaced (default 15000 ms, or UFFD_ENGINE_SILENCE_MS). */
  engineTimeoutMs?: number;
  /** Extra environment for the engine processes (tests set a failpoint with it). */
  engineEnv?: Record<string, string>;
  onEvent?: (e: SupervisorEvent) => void;
}

export type SupervisorEvent =
  | SessionEvent
  | { type: 'engine-spawned'; pid: number }
  | { type: 'engine-assigned'; id: number; pid: number; generation: number }
  | { type: 'engine-died'; id?: number; pid: number; code: number | null; signal: string | null; restarts?: number }
  | { type: 'engine-unresponsive'; id: number; pid: number; silentMs: number }
  | { type: 'handover'; id: number; pid: number; generation: number; resident: number; removed: number; scan: string; ms: number }
  | { type: 'engine-log'; pid: number; line: string }
  | { type: 'removed'; id: number; start: number; end: number }
  | { type: 'gave-up'; id: number; restarts: number };

interface EngineProc {
  pid: number;
  child: ChildProcess;
  ch: Channel;
  session: Supervised | null;
  lastHeard: number;
  /** It said 'ready' (its modules loaded). */
  ready: boolean;
  /** Its engine serves the session it was given (it sent 'engine-started'). */
  serving: boolean;
  /** Started on SCHED_IDLE (a spare) and not yet back on SCHED_OTHER ('warm' not received). */
  idle: boolean;
  exited: boolean;
}

interface Supervised {
  id: number;
  handshake: Handshake;
  uffdFd: number;
  memFile: MemoryFile;
  ctx: SessionContext;
  startedAt: number;
  totalPages: number;
  proc: EngineProc | null;
  generation: number;
  restarts: number;
  /** The REMOVE journal (a memfd): every engine of the session appends to it before applying a REMOVE. */
  journalFd: number;
  /** Its engine said every page is present ('populated'). */
  populated: boolean;
  /** Sum of the last reports of the engines that died. */
  carried: StatsReport;
  current: StatsReport | null;
  summary: SessionSummary | null;
  finish: (r: { summary?: SessionSummary; error?: string }) => void;
  done: boolean;
}

export const emptyReport = (): StatsReport => ({
  faults: { missing: 0, minor: 0, wp: 0, rwp: 0 }, pages: { demand: 0, readahead: 0, background: 0, zeroFilled: 0 },
  bytes: 0, eexist: 0, retries: 0, errors: 0, removes: 0, histogram: [],
});

/** a += b, field by field (histograms bucket by bucket). */
export function addReport(a: StatsReport, b: StatsReport): StatsReport {
  for (const k of ['missing', 'minor', 'wp', 'rwp'] as const) a.faults[k] += b.faults[k];
  for (const k of ['demand', 'readahead', 'background', 'zeroFilled'] as const) a.pages[k] += b.pages[k];
  a.bytes += b.bytes; a.eexist += b.eexist; a.retries += b.retries; a.errors += b.errors; a.removes += b.removes;
  b.histogram.forEach((v, i) => { a.histogram[i] = (a.histogram[i] ?? 0) + v; });
  return a;
}

/** What the metrics endpoint shows (metrics.ts renders it). */
export interface SupervisorSnapshot {
  sessionsActive: number;
  sessionsStarted: number;
  sessionsEnded: Record<string, number>;
  engineProcesses: number;
  spares: number;
  restarts: number;
  handovers: number;
  gaveUp: number;
  /** Every engine's counters: finished sessions, dead engines' last reports, live engines' latest. */
  totals: StatsReport;
  live: { id: number; peerPid: number; totalPages: number; pagesServed: number; generation: number; restarts: number }[];
}

export class Supervisor {
  readonly live = new Map<number, { progress(): SessionProgress }>();
  readonly summaries: SessionSummary[] = [];
  private readonly sessions = new Map<number, Supervised>();
  private readonly spares: EngineProc[] = [];
  private refillTimer: NodeJS.Timeout | null = null;
  private readonly procs = new Set<EngineProc>();
  private readonly config: EngineProcessConfig;
  private readonly finished = emptyReport();
  private closing: 'complete' | 'abandon' | undefined;
  private closed = false;
  private readonly health: NodeJS.Timeout;
  private quickDeaths = 0;
  private counts = { started: 0, ended: {} as Record<string, number>, restarts: 0, handovers: 0, gaveUp: 0 };
  /** Silence after which a serving engine process is killed (UFFD_ENGINE_SILENCE_MS raises the default on slow machines). */
  private readonly silenceMs: number;
  /**
   * The same before it serves: starting an engine (its threads, a hand-over's scan) sends
   * nothing and may take up to the engine's own start limit, so that much more.
   */
  private readonly startingSilenceMs: number;

  constructor(private readonly opts: SupervisorOptions) {
    this.config = { statsIntervalMs: 250, ...opts.engine };
    this.silenceMs = opts.engineTimeoutMs ?? (Number(process.env.UFFD_ENGINE_SILENCE_MS) || 15_000);
    this.startingSilenceMs = this.silenceMs + startLimitMs();
    this.health = setInterval(() => this.checkHealth(), 1000);
    this.health.unref();
    this.ensureSpares();
  }

  private emit(e: SupervisorEvent): void {
    try { this.opts.onEvent?.(e); } catch { /* a logger must not break the supervisor */ }
  }

  /** Pids of the engine processes now (serving or spare). */
  get enginePids(): number[] {
    return [...this.procs].filter((p) => !p.exited).map((p) => p.pid);
  }

  /** The pid of the engine process serving session id now, if any. */
  enginePid(id: number): number | undefined {
    return this.sessions.get(id)?.proc?.pid;
  }

  /** Starts an engine process; `spare`: one kept for a later VM (see SupervisorOptions.idleSpares). */
  private spawnEngine(spare: boolean): EngineProc {
    const idle = spare && this.opts.idleSpares !== false && mayLeaveIdle();
    const [mine, theirs] = socketPair();
    let child: ChildProcess;
    try {
      // V8 gives a function its inline caches only after a few calls by default; an engine
      // process runs its session path twice (rehearsal, then the VM), so the VM would run it
      // without them. Allocated at the first call, the rehearsal leaves them filled (measured
      // with serve-first-touch: ~0.4 ms less from handshake to first touch).
      const config: EngineProcessConfig = { ...this.config, idleWhileSpare: idle };
      child = spawn(process.execPath, ['--no-lazy-feedback-allocation', ENGINE_SCRIPT, JSON.stringify(config)], {
        stdio: ['ignore', 'ignore', 'pipe', theirs], detached: true, env: { ...process.env, ...this.opts.engineEnv },
      });
    } finally {
      closeSocket(theirs);
    }
    // At once, from here: Node's start-up (its threads, loading the modules: ~100 ms of CPU)
    // comes before the process can do it itself, and the threads it starts inherit it.
    if (idle && child.pid) setProcessIdle(child.pid, true);
    const p = {
      pid: child.pid ?? -1, child, session: null, lastHeard: Date.now(), ready: false, serving: false, exited: false, idle,
    } as unknown as EngineProc;
    p.ch = new Channel(mine, (m, fds) => this.onMessage(p, m, fds), () => undefined);
    this.procs.add(p);
    let partial = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) this.emit({ type: 'engine-log', pid: p.pid, line });
    });
    child.on('error', (e) => this.emit({ type: 'engine-log', pid: p.pid, line: `cannot start an engine process: ${e.message}` }));
    child.on('exit', (code, signal) => this.onExit(p, code, signal));
    this.emit({ type: 'engine-spawned', pid: p.pid });
    return p;
  }

  private ensureSpares(): void {
    // Engines that die before they are ready, again and again (a broken install), are not
    // respawned in a loop: spares wait until a session needs one.
    if (this.closed || this.closing || this.quickDeaths >= 3) return;
    while (this.spares.length < (this.opts.spares ?? 1)) this.spares.push(this.spawnEngine(true));
  }

  /** ensureSpares() a moment from now, once no VM is being populated (SupervisorOptions.spareDelayMs, spareMaxDelayMs). */
  private refillSoon(): void {
    if (this.refillTimer) return;
    const since = Date.now();
    const check = (): void => {
      this.refillTimer = null;
      if (this.populating() && Date.now() - since < (this.opts.spareMaxDelayMs ?? 5000)) {
        this.refillTimer = setTimeout(check, 25);
        return;
      }
      this.ensureSpares();
    };
    this.refillTimer = setTimeout(check, this.opts.spareDelayMs ?? 100);
  }

  /** A VM's engine is populating it in the background (prefetch on, not every page present yet). */
  private populating(): boolean {
    if (this.config.prefetch === 'off') return false;
    for (const s of this.sessions.values()) if (!s.done && !s.populated) return true;
    return false;
  }

  private takeEngine(): EngineProc {
    for (;;) {
      const p = this.spares.shift();
      if (!p) break;
      if (!p.exited && p.ch.isOpen) {
        // Still warming up on SCHED_IDLE: back to normal before the session message, which
        // an idle main thread would otherwise read late on a busy machine (best effort:
        // the process leaves SCHED_IDLE itself when the message comes).
        if (p.idle) {
          p.idle = false;
          setProcessIdle(p.pid, false);
        }
        this.refillSoon();
        return p;
      }
    }
    const p = this.spawnEngine(false);
    this.ensureSpares();
    return p;
  }

  private onMessage(p: EngineProc, m: ChannelMessage, fds: number[]): void {
    closeFds(fds);
    p.lastHeard = Date.now();
    const s = p.session;
    if (m.type === 'ready') {
      p.ready = true;
      this.quickDeaths = 0;
      return;
    }
    if (m.type === 'warm') {
      p.idle = false; // it left SCHED_IDLE itself
      return;
    }
    if (!s || s.proc !== p) return;
    if (m.type === 'stats') s.current = m.stats as StatsReport;
    else if (m.type === 'removed') {
      this.emit({ type: 'removed', id: s.id, start: m.start as number, end: m.end as number });
    }
    else if (m.type === 'handover') {
      this.emit({ type: 'handover', id: s.id, pid: p.pid, generation: m.generation as number, resident: m.resident as number,
        removed: m.removed as number, scan: m.scan as string, ms: m.ms as number });
    } else if (m.type === 'event') {
      const e = m.event as SessionEvent;
      if (e.type === 'engine-started') p.serving = true;
      if (e.type === 'populated') s.populated = true;
      if (e.type === 'summary') s.summary = e.summary;
      else this.emit(e);
    } else if (m.type === 'ended') {
      this.end(s, (m.summary as SessionSummary | undefined) ?? s.summary ?? undefined, m.error as string | undefined);
    }
  }

  private onExit(p: EngineProc, code: number | null, signal: string | null): void {
    p.exited = true;
    this.procs.delete(p);
    // The exit can be seen before the process's last messages are read (they sit in the
    // socket): take them first, or an engine that ended its session and exited would count
    // as a death and the session would be handed over for nothing.
    p.ch.drain();
    p.ch.close();
    const spare = this.spares.indexOf(p);
    if (spare >= 0) this.spares.splice(spare, 1);
    if (!p.ready) this.quickDeaths++; // died before loading: a broken install, not a kill
    const s = p.session;
    if (!s || s.done || s.proc !== p) {
      if (spare >= 0) this.emit({ type: 'engine-died', pid: p.pid, code, signal });
      this.ensureSpares();
      return;
    }
    s.proc = null;
    if (s.current) addReport(s.carried, s.current);
    s.current = null;
    s.restarts++;
    this.counts.restarts++;
    this.emit({ type: 'engine-died', id: s.id, pid: p.pid, code, signal, restarts: s.restarts });
    // Threads whose faults the dead process read are asleep in the kernel until someone
    // wakes their address: wake every region, so they fault again for the next engine.
    const uffd = Userfaultfd.fromFd(s.uffdFd);
    for (const r of s.handshake.regions) {
      try { uffd.wake(r.baseHostVirtAddr, r.size); } catch { /* the VM is gone */ }
    }
    if (s.ctx.signal.aborted) {
      this.end(s, undefined, undefined, 'hangup');
      return;
    }
    if (s.restarts > (this.opts.maxRestarts ?? 10)) {
      this.counts.gaveUp++;
      this.emit({ type: 'gave-up', id: s.id, restarts: s.restarts });
      this.end(s, undefined, `gave up after ${s.restarts} engine process deaths`);
      return;
    }
    // Back off when engines die right after the hand-over, again and again.
    const delay = s.restarts > 2 ? Math.min(1000, 25 * 2 ** s.restarts) : 0;
    setTimeout(() => { if (!s.done) this.assign(s); }, delay);
  }

  private assign(s: Supervised): void {
    const p = this.takeEngine();
    p.session = s;
    p.lastHeard = Date.now();
    s.proc = p;
    s.generation++;
    if (s.generation > 1) this.counts.handovers++;
    const msg: SessionMessage = {
      type: 'session', id: s.id, handshake: s.handshake, peer: s.ctx.peer, memFile: { path: s.memFile.path, size: s.memFile.size },
      handover: s.generation > 1 ? { generation: s.generation, removed: readRemoveJournal(s.journalFd) } : null, shutdown: this.closing,
    };
    this.emit({ type: 'engine-assigned', id: s.id, pid: p.pid, generation: s.generation });
    // If the process died meanwhile, its exit (then or soon) hands the session on.
    // A memory file in object storage has no descriptor: the engine process fetches it itself.
    p.ch.send(msg as unknown as ChannelMessage,
      s.memFile.fd >= 0 ? [s.uffdFd, s.memFile.fd, s.ctx.conn, s.journalFd] : [s.uffdFd, s.ctx.conn, s.journalFd]);
  }

  private end(s: Supervised, summary: SessionSummary | undefined, error: string | undefined, reason?: 'hangup'): void {
    if (s.done) return;
    s.done = true;
    close(s.journalFd);
    const sum = summary ?? newSummary(s.handshake, s.ctx, this.config.prefetch ?? 'on', this.config.workers);
    if (!summary) {
      sum.endReason = reason ?? 'error';
      if (error) sum.error = error;
      sum.durationMs = Date.now() - s.startedAt;
    }
    // Counts of engines that died before the last one are added to its summary.
    const c = s.carried;
    sum.faults += c.faults.missing + c.faults.minor + c.faults.wp + c.faults.rwp;
    sum.pages.demand += c.pages.demand;
    sum.pages.readahead += c.pages.readahead;
    sum.pages.background += c.pages.background;
    sum.pages.prefetch += c.pages.readahead + c.pages.background;
    sum.pages.total += c.pages.demand + c.pages.readahead + c.pages.background;
    sum.pages.zeroFilled += c.pages.zeroFilled;
    sum.bytes += c.bytes;
    sum.eexist += c.eexist;
    sum.retries += c.retries;
    sum.errors += c.errors;
    sum.engineRestarts = s.restarts;
    addReport(this.finished, s.carried);
    if (s.current) addReport(this.finished, s.current);
    s.current = null;
    this.counts.ended[sum.endReason] = (this.counts.ended[sum.endReason] ?? 0) + 1;
    this.sessions.delete(s.id);
    this.live.delete(s.id);
    this.summaries.push(sum);
    this.emit({ type: 'summary', summary: sum });
    s.finish({ summary: sum, error });
  }

  private checkHealth(): void {
    const { silenceMs, startingSilenceMs } = this;
    for (const s of this.sessions.values()) {
      const p = s.proc;
      if (!p || p.exited) continue;
      const silent = Date.now() - p.lastHeard;
      if (silent > (p.serving ? silenceMs : startingSilenceMs)) {
        this.emit({ type: 'engine-unresponsive', id: s.id, pid: p.pid, silentMs: silent });
        try { process.kill(p.pid, 'SIGKILL'); } catch { /* already gone */ }
        p.lastHeard = Date.now();
      }
    }
  }

  /** The restore server's serveConnection: hands the session to an engine process and keeps it served. */
  readonly serve: ServeConnection = (handshake, uffdFd, memFile, ctx) => new Promise((resolve, reject) => {
    const s: Supervised = {
      id: ctx.id, handshake, uffdFd, memFile, ctx, startedAt: Date.now(),
      totalPages: handshake.regions.reduce((n, r) => n + r.size / r.pageSize, 0), proc: null, generation: 0, restarts: 0,
      journalFd: memfdCreate(`uffd-engine-remove-journal-${ctx.id}`), populated: false, carried: emptyReport(), current: null, summary: null, done: false,
      finish: ({ summary, error }) => {
        if (error) reject(Object.assign(new Error(error), { summary }));
        else resolve(summary);
      },
    };
    this.counts.started++;
    this.sessions.set(s.id, s);
    this.live.set(s.id, { progress: () => this.progress(s) });
    void ctx.hangup.then(() => {
      if (s.done) return;
      if (s.proc) s.proc.ch.send({ type: 'hangup' });
      else this.end(s, undefined, undefined, 'hangup');
    });
    this.assign(s);
  });

  private progress(s: Supervised): SessionProgress {
    const r = addReport(addReport(emptyReport(), s.carried), s.current ?? emptyReport());
    const sec = (Date.now() - s.startedAt) / 1000;
    return {
      id: s.id, peerPid: s.ctx.peer.pid, elapsedSec: sec, totalPages: s.totalPages, pagesDemand: r.pages.demand,
      pagesPrefetch: r.pages.readahead + r.pages.background, bytes: r.bytes,
      faults: r.faults.missing + r.faults.minor + r.faults.wp + r.faults.rwp, gibPerSec: sec > 0 ? r.bytes / 2 ** 30 / sec : 0,
    };
  }

  snapshot(): SupervisorSnapshot {
    const totals = addReport(emptyReport(), this.finished);
    const live: SupervisorSnapshot['live'] = [];
    for (const s of this.sessions.values()) {
      addReport(totals, s.carried);
      if (s.current) addReport(totals, s.current);
      const p = this.progress(s);
      live.push({ id: s.id, peerPid: s.ctx.peer.pid, totalPages: s.totalPages, pagesServed: p.pagesDemand + p.pagesPrefetch,
        generation: s.generation, restarts: s.restarts });
    }
    return {
      sessionsActive: this.sessions.size, sessionsStarted: this.counts.started, sessionsEnded: { ...this.counts.ended },
      engineProcesses: [...this.procs].filter((p) => !p.exited).length, spares: this.spares.length,
      restarts: this.counts.restarts, handovers: this.counts.handovers, gaveUp: this.counts.gaveUp, totals, live,
    };
  }

  /**
   * Ends every session with the given stop mode ('complete': fill what is left, then
   * detach; 'abandon': detach now) — sessions that start or are handed over later too —
   * and resolves when they have ended.
   */
  async shutdown(mode: 'complete' | 'abandon' = 'complete'): Promise<void> {
    this.closing = mode;
    for (const p of this.spares.splice(0)) this.kill(p);
    const waits: Promise<unknown>[] = [];
    for (const s of this.sessions.values()) {
      s.proc?.ch.send({ type: 'shutdown', mode });
      waits.push(new Promise<void>((r) => {
        const f = s.finish;
        s.finish = (x) => { f(x); r(); };
      }));
    }
    await Promise.all(waits);
  }

  private kill(p: EngineProc): void {
    if (!p.exited) try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
  }

  /** Stops the spare engines (call after the sessions ended); resolves when every engine process has exited. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.health);
    if (this.refillTimer) clearTimeout(this.refillTimer);
    this.refillTimer = null;
    for (const p of this.spares.splice(0)) this.kill(p);
    await Promise.all([...this.procs].map((p) => new Promise<void>((r) => {
      if (p.exited) r();
      else p.child.once('exit', () => r());
    })));
  }
}

export type { PrefetchMode };
