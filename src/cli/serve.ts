// `uffd-engine serve`: a Firecracker-compatible snapshot restore handler. Listens on a Unix
// socket; each VM that connects (Firecracker's `Uffd` memory backend) is served by its own
// parallel engine, in an engine process this supervisor restarts (and hands the VM over to)
// if it dies. Progress on stderr (on a terminal), a summary per session on stdout, metrics
// on request, clean shutdown on SIGINT/SIGTERM.
import * as fs from 'node:fs';
import { getuid } from '../kernel/memory.js';
import { formatSummary, PrefetchMode, SessionSummary } from '../restore/engine-session.js';
import { ConnectionCounts, MetricsAddress, parseMetricsAddress, renderPrometheus, serveMetrics } from '../restore/metrics.js';
import { RestoreServer, ServerEvent } from '../restore/server.js';
import { Supervisor, SupervisorEvent } from '../restore/supervisor.js';
import { loadWorkingSet, saveWorkingSet, WorkingSet } from '../restore/working-set.js';
import { helpText, OptionSpec, parseArgs } from './args.js';
import { formatBytes } from './format.js';
import { checkRemoteArgs, openRemote, remoteConfig, REMOTE_SPEC, RemoteArgs } from './remote.js';

const SPEC: OptionSpec = {
  socket: { type: 'string', help: 'Unix socket to listen on (Firecracker mem_backend.backend_path)' },
  memFile: { type: 'string', help: 'snapshot memory file (regions are served from their "offset" in it)' },
  ...REMOTE_SPEC,
  workers: { type: 'number', default: 2, help: 'engine worker threads per VM' },
  prefetch: { type: 'string', help: 'off (demand faults only) | on (read-ahead + background population) | hot-first (on, recorded working set first); default on, hot-first with --preload-ws, off with --record-ws' },
  readAhead: { type: 'size', help: 'largest read-ahead window around a fault (default 1M with prefetch, 0 without)' },
  chunk: { type: 'size', help: 'bytes per background population step (default 1M)' },
  recordWs: { type: 'string', help: 'record the order pages are first needed (demand faults) to this file' },
  preloadWs: { type: 'string', help: 'populate the pages of this recorded working set first (hot-first)' },
  allowUid: { type: 'string', help: 'peer uid allowed to connect (repeat or comma-separate; "any": every uid that can reach the socket; default: our own uid)' },
  once: { type: 'boolean', default: false, help: 'exit after serving one VM' },
  warm: { type: 'boolean', default: true, help: 'keep engine threads warm for the next VM, started before its handshake (--no-warm: start them per VM)' },
  stayAttached: { type: 'boolean', default: false, help: 'keep serving a VM after it is fully populated, until it exits' },
  socketMode: { type: 'string', default: '0600', help: 'mode of the socket file (octal)' },
  recvTimeoutMs: { type: 'number', default: 5000, help: 'time a peer has to send its handshake' },
  maxSessions: { type: 'number', default: 64, help: 'VMs served at once (more wait in the backlog)' },
  shutdown: { type: 'string', default: 'complete', help: 'what SIGINT/SIGTERM does to running VMs: complete (fill what is left, then detach) | abandon (detach now)' },
  json: { type: 'boolean', default: false, help: 'print each session summary as one JSON line' },
  metrics: { type: 'string', help: 'serve Prometheus metrics over HTTP on this Unix socket path or 127.0.0.1:PORT' },
  logFormat: { type: 'string', default: 'text', help: 'event log on stderr: text | json (one object per line)' },
  spares: { type: 'number', default: 1, help: 'idle engine processes kept started for new VMs and hand-overs' },
  maxRestarts: { type: 'number', default: 10, help: 'engine process deaths one VM survives before its session is given up' },
  onSupervisorDeath: { type: 'string', default: 'complete', help: "if this supervisor dies: 'complete' (the engine fills the VM, then detaches) or 'fail' (pages not yet served are poisoned: the VM gets SIGBUS there, never a hang)" },
  quiet: { type: 'boolean', default: false, help: 'no event log on stderr' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

interface ServeOptions {
  socket?: string; memFile?: string; workers: number; prefetch?: string; readAhead?: number; chunk?: number;
  recordWs?: string; preloadWs?: string; once: boolean; warm: boolean; stayAttached: boolean; socketMode: string;
  recvTimeoutMs: number; maxSessions: number; shutdown: string; json: boolean; quiet: boolean; help: boolean;
  metrics?: string; logFormat: string; spares: number; maxRestarts: number; onSupervisorDeath: string;
}
type Options = ServeOptions & RemoteArgs;

class UsageError extends Error {}

/** Takes every --allow-uid value out of args (the parser keeps only the last of a repeated option). */
function extractUids(args: string[]): { rest: string[]; uids?: number[] } {
  const rest: string[] = [];
  let uids: number[] | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? '';
    let v: string | undefined;
    if (a === '--allow-uid') {
      v = args[++i];
      if (v === undefined) throw new UsageError('option --allow-uid needs a value');
    } else if (a.startsWith('--allow-uid=')) v = a.slice('--allow-uid='.length);
    else {
      rest.push(a);
      continue;
    }
    uids ??= [];
    for (const part of v.split(',').map((s) => s.trim()).filter(Boolean)) {
      if (part === 'any') { uids.push(-1); continue; }
      if (!/^\d+$/.test(part)) throw new UsageError(`--allow-uid wants a numeric uid or "any", got "${part}"`);
      uids.push(Number(part));
    }
  }
  return { rest, uids };
}

export async function run(args: string[]): Promise<number> {
  let o: Options & { _: string[] };
  let allowed: number[] | undefined;
  let preload: WorkingSet | undefined;
  let memSize: number;
  let metricsAt: MetricsAddress | undefined;
  try {
    const x = extractUids(args);
    o = parseArgs<Options & Record<string, unknown>>(x.rest, SPEC);
    if (o.help) {
      console.log(helpText('serve', 'Firecracker-compatible snapshot restore handler: serves each VM that connects with the parallel engine.', {
        ...SPEC, allowUid: { ...SPEC.allowUid, help: SPEC.allowUid?.help ?? '', type: 'string' },
      }));
      return 0;
    }
    if (o._.length) throw new UsageError(`unexpected argument "${o._[0]}"`);
    if (o.memFile && o.memUrl) throw new UsageError('give --mem-file or --mem-url, not both');
    if (!o.socket || !(o.memFile || o.memUrl)) throw new UsageError('--socket and --mem-file are required (or --mem-url instead of --mem-file)');
    checkRemoteArgs(o);
    memSize = -1;
    if (o.memFile) {
      try {
        const st = fs.statSync(o.memFile);
        if (!st.isFile()) throw new UsageError(`--mem-file ${o.memFile} is not a regular file`);
        memSize = st.size;
      } catch (e) {
        if (e instanceof UsageError) throw e;
        throw new UsageError(`--mem-file ${o.memFile}: ${(e as Error).message}`);
      }
    }
    if (!Number.isInteger(o.workers) || o.workers < 1 || o.workers > 64) throw new UsageError(`--workers must be 1 to 64 (got ${o.workers})`);
    if (o.prefetch !== undefined && !['off', 'on', 'hot-first'].includes(o.prefetch)) throw new UsageError(`--prefetch must be off, on or hot-first (got "${o.prefetch}")`);
    if (!['complete', 'abandon'].includes(o.shutdown)) throw new UsageError(`--shutdown must be complete or abandon (got "${o.shutdown}")`);
    if (!/^0?[0-7]{3}$/.test(o.socketMode)) throw new UsageError(`--socket-mode must be an octal mode like 0600 (got "${o.socketMode}")`);
    if (o.recordWs && o.preloadWs) throw new UsageError('--record-ws and --preload-ws exclude each other (record on one restore, preload on the next)');
    if (o.recordWs && o.prefetch && o.prefetch !== 'off') throw new UsageError(`--record-ws records demand faults only; it needs --prefetch off (got ${o.prefetch})`);
    if (o.recordWs && o.readAhead) throw new UsageError('--record-ws needs read-ahead off (pages filled around a fault were not needed)');
    if (o.prefetch === 'hot-first' && !o.preloadWs) throw new UsageError('--prefetch hot-first needs --preload-ws FILE (record one with --record-ws)');
    if (o.preloadWs && o.prefetch === 'off') throw new UsageError('--preload-ws needs background population: use --prefetch hot-first (or leave --prefetch out)');
    // A remote memory file's size is known once it is open (below).
    if (o.preloadWs) preload = loadWorkingSet(o.preloadWs, o.memFile ? memSize : undefined);
    if (!['text', 'json'].includes(o.logFormat)) throw new UsageError(`--log-format must be text or json (got "${o.logFormat}")`);
    if (!Number.isInteger(o.spares) || o.spares < 0 || o.spares > 16) throw new UsageError(`--spares must be 0 to 16 (got ${o.spares})`);
    if (!Number.isInteger(o.maxRestarts) || o.maxRestarts < 0) throw new UsageError(`--max-restarts must be 0 or more (got ${o.maxRestarts})`);
    if (o.onSupervisorDeath !== 'complete' && o.onSupervisorDeath !== 'fail') {
      throw new UsageError(`--on-supervisor-death must be 'complete' or 'fail' (got ${o.onSupervisorDeath})`);
    }
    if (o.metrics !== undefined) {
      try {
        metricsAt = parseMetricsAddress(o.metrics);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    }
    if (x.uids) allowed = x.uids.includes(-1) ? [] : x.uids;
  } catch (e) {
    console.error(`uffd-engine serve: ${(e as Error).message}`);
    return 2;
  }

  const jsonLog = o.logFormat === 'json';
  // One line per event: the text, or (--log-format json) an object with the event's fields.
  const log = (s: string, fields: Record<string, unknown> = {}): void => {
    if (o.quiet) return;
    if (jsonLog) process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), msg: s, ...fields })}\n`);
    else process.stderr.write(`${clearLine()}${s}\n`);
  };
  const tty = process.stderr.isTTY === true && !o.quiet && !jsonLog;
  const clearLine = (): string => (tty ? '\r\x1b[K' : '');
  const prefetch: PrefetchMode = (o.prefetch as PrefetchMode | undefined) ?? (o.recordWs ? 'off' : preload ? 'hot-first' : 'on');
  // A memory file in object storage: opened here once to check it (size, manifest) before
  // listening; each engine process opens its own chunk cache when its VM arrives (a cache
  // lives in the process that serves from it), fetching the working set's chunks first.
  let remoteInfo = '';
  if (o.memUrl) {
    try {
      const remote = await openRemote({ ...o, memUrl: o.memUrl }, { background: false });
      memSize = remote.size;
      remoteInfo = `, chunks of ${formatBytes(remote.chunkSize)}, ${remote.manifest ? 'verified against its manifest' : 'no manifest: not verified'}`;
      await remote.close();
      if (preload && preload.memFile.size !== memSize) {
        throw new Error(`working set ${o.preloadWs} was recorded for a ${preload.memFile.size}-byte memory file; ${o.memUrl} has ${memSize} bytes`);
      }
    } catch (e) {
      console.error(`uffd-engine serve: ${(e as Error).message}`);
      return 2;
    }
  }
  const sessions = new Supervisor({
    engine: {
      workers: o.workers, prefetch, readAhead: o.readAhead, chunk: o.chunk, preloadWs: o.preloadWs, memFileSize: memSize,
      record: !!o.recordWs, detachWhenPopulated: !o.stayAttached, warm: o.warm, onSupervisorDeath: o.onSupervisorDeath as 'complete' | 'fail',
      remote: o.memUrl ? remoteConfig({ ...o, memUrl: o.memUrl }) : undefined,
    },
    spares: o.spares, maxRestarts: o.maxRestarts,
    onEvent: (e: SupervisorEvent) => {
      const f = { event: e.type, ...e };
      if (e.type === 'engine-started') {
        log(`session ${e.id}: engine serving ${e.regions} region(s), ${formatBytes(e.totalBytes)} (up in ${e.ms.toFixed(1)} ms; ` +
          `dispatcher at nice ${e.dispatcherNice}${e.niceRefused ? `: ${e.niceRefused}` : ''})`, f);
      }
      else if (e.type === 'incident') log(`session ${e.id}: incident: ${e.message}`, f);
      else if (e.type === 'populated') log(`session ${e.id}: fully populated after ${e.ms.toFixed(0)} ms`, f);
      else if (e.type === 'recorded' && o.recordWs) {
        try {
          saveWorkingSet(o.recordWs, e.workingSet);
          log(`session ${e.id}: recorded ${e.workingSet.pages.length} pages (first-needed order) to ${o.recordWs}`, { event: 'recorded', id: e.id, pages: e.workingSet.pages.length });
        } catch (err) {
          log(`session ${e.id}: cannot write working set ${o.recordWs}: ${(err as Error).message}`, { event: 'record-failed', id: e.id });
        }
      } else if (e.type === 'summary') printSummary(e.summary);
      else if (e.type === 'engine-died') {
        log(e.id === undefined ? `engine process ${e.pid} (spare) died (${e.signal ?? `exit ${e.code}`})`
          : `session ${e.id}: engine process ${e.pid} died (${e.signal ?? `exit ${e.code}`}); handing the VM over (restart ${e.restarts})`, f);
      } else if (e.type === 'handover') {
        log(`session ${e.id}: engine process ${e.pid} took over (generation ${e.generation}): ${e.resident} page(s) already present, ` +
          `${e.removed} removed by the balloon, found in ${e.ms} ms (scan: ${e.scan})`, f);
      } else if (e.type === 'engine-unresponsive') log(`session ${e.id}: engine process ${e.pid} silent for ${e.silentMs} ms: killed`, f);
      else if (e.type === 'gave-up') log(`session ${e.id}: engine processes died ${e.restarts} times: giving the session up`, f);
      else if (e.type === 'engine-log') log(`engine process ${e.pid}: ${e.line}`, f);
      else if (e.type === 'engine-assigned' && jsonLog) log(`session ${e.id}: engine process ${e.pid} (generation ${e.generation})`, f);
    },
  });
  const printSummary = (s: SessionSummary): void => {
    if (tty) process.stderr.write(clearLine());
    if (o.json) console.log(JSON.stringify(s));
    else for (const l of formatSummary(s)) console.log(l);
  };
  const conns: ConnectionCounts = { accepted: 0, rejected: {} };
  const onServerEvent = (e: ServerEvent): void => {
    if (e.type === 'accepted') log(`connection ${e.id}: pid ${e.peer.pid}, uid ${e.peer.uid}`, { event: e.type, id: e.id, peer: e.peer });
    else if (e.type === 'rejected') {
      conns.rejected[e.code] = (conns.rejected[e.code] ?? 0) + 1;
      log(`connection ${e.id}: refused (${e.code}): ${e.reason}`, { event: e.type, id: e.id, code: e.code, reason: e.reason });
    } else if (e.type === 'session-start') {
      conns.accepted++;
      const h = e.handshake;
      log(`session ${e.id}: handshake ${h.variant}, ${h.regions.length} region(s), ${formatBytes(h.totalSize)}` +
        `${h.warnings.length ? ` (warnings: ${h.warnings.join('; ')})` : ''}`,
      { event: e.type, id: e.id, variant: h.variant, regions: h.regions.length, bytes: h.totalSize, warnings: h.warnings });
    } else if (e.type === 'session-end' && e.error) log(`session ${e.id}: ended with an error: ${e.error}`, { event: e.type, id: e.id, error: e.error });
  };

  let server: RestoreServer;
  try {
    server = RestoreServer.listen({
      socketPath: o.socket, memFilePath: o.memFile ?? o.memUrl as string, remoteMemory: o.memUrl ? { url: o.memUrl, size: memSize } : undefined,
      serveConnection: sessions.serve, allowedUids: allowed,
      socketMode: parseInt(o.socketMode, 8), recvTimeoutMs: o.recvTimeoutMs, maxSessions: o.maxSessions, onEvent: onServerEvent,
    });
  } catch (e) {
    console.error(`uffd-engine serve: ${(e as Error).message}`);
    await sessions.close();
    return 1;
  }
  const startedAt = Date.now();
  let metrics: Awaited<ReturnType<typeof serveMetrics>> | undefined;
  if (metricsAt) {
    try {
      metrics = await serveMetrics(metricsAt, () => renderPrometheus(sessions.snapshot(), conns, startedAt));
      log(`metrics on ${metrics.where}`, { event: 'metrics', where: metrics.where });
    } catch (e) {
      console.error(`uffd-engine serve: cannot serve metrics on ${o.metrics}: ${(e as Error).message}`);
      await server.close();
      await sessions.close();
      return 1;
    }
  }
  log(`listening on ${o.socket}: memory file ${o.memFile ?? o.memUrl} (${formatBytes(memSize)}${remoteInfo}), ${o.workers} workers per VM, prefetch ${prefetch}` +
    `${preload ? ` (${preload.pages.length} working-set pages from ${o.preloadWs})` : ''}${o.recordWs ? `, recording the working set to ${o.recordWs}` : ''}; ` +
    `allowed uids: ${allowed === undefined ? `${getuid()} (ours)` : allowed.length ? allowed.join(', ') : 'any'}`,
  { event: 'listening', socket: o.socket, memFile: o.memFile, workers: o.workers, prefetch });

  // Progress on a terminal: one line, every session's pages by demand vs prefetch and GiB/s.
  const ticker = tty ? setInterval(() => {
    const parts = [...sessions.live.values()].map((s) => {
      const p = s.progress();
      const done = p.pagesDemand + p.pagesPrefetch;
      return `#${p.id} pid ${p.peerPid}: ${done}/${p.totalPages} pages (${Math.min(100, (100 * done) / p.totalPages).toFixed(0)}%), ` +
        `demand ${p.pagesDemand}, prefetch ${p.pagesPrefetch}, ${p.gibPerSec.toFixed(2)} GiB/s`;
    });
    process.stderr.write(`${clearLine()}${parts.length ? parts.join(' | ') : `listening on ${o.socket}, ${sessions.summaries.length} VM(s) served`}`);
  }, 200) : undefined;

  // SIGINT/SIGTERM: stop accepting and end the sessions with --shutdown's mode; a second
  // signal abandons at once.
  let signals = 0;
  let stopRequested!: () => void;
  const stopped = new Promise<void>((r) => { stopRequested = r; });
  const onSignal = (sig: string): void => {
    signals++;
    if (signals === 1) {
      const n = sessions.live.size;
      log(`${sig}: shutting down${n ? `; ${o.shutdown === 'complete' ? 'filling what is left of' : 'detaching from'} ${n} VM(s)` +
        `${o.shutdown === 'complete' ? ` (${sig} again to abandon)` : ''}` : ''}`, { event: 'signal', signal: sig, mode: o.shutdown, sessions: n });
      void sessions.shutdown(o.shutdown as 'complete' | 'abandon');
      stopRequested();
    } else {
      log(`${sig} again: abandoning the remaining VM(s)`, { event: 'signal', signal: sig, mode: 'abandon' });
      void sessions.shutdown('abandon');
    }
  };
  const sigint = (): void => onSignal('SIGINT');
  const sigterm = (): void => onSignal('SIGTERM');
  process.on('SIGINT', sigint);
  process.on('SIGTERM', sigterm);

  let exit = 0;
  try {
    if (o.once) {
      let interrupted = false;
      void stopped.then(() => { interrupted = true; });
      while (!interrupted) {
        const a = await server.acceptOne(250);
        if (!a) continue;
        const outcome = await a.outcome;
        if (outcome.accepted) {
          if (outcome.reason) exit = 1;
          break;
        }
      }
    } else {
      const running = server.run();
      await stopped;
      await Promise.all([sessions.shutdown(o.shutdown as 'complete' | 'abandon'), server.close()]);
      await running;
    }
  } finally {
    await sessions.shutdown(o.shutdown as 'complete' | 'abandon');
    await server.close();
    await sessions.close();
    await metrics?.close();
    if (ticker) clearInterval(ticker);
    if (tty) process.stderr.write(clearLine());
    process.off('SIGINT', sigint);
    process.off('SIGTERM', sigterm);
  }
  if (!o.once && sessions.summaries.length) log(`served ${sessions.summaries.length} VM(s)`, { event: 'exit', sessions: sessions.summaries.length });
  return exit;
}
