// `uffd-engine serve`: a Firecracker-compatible snapshot restore handler. Listens on a Unix
// socket; each VM that connects (Firecracker's `Uffd` memory backend) is served by its own
// parallel engine from the memory file. Progress on stderr (on a terminal), a summary per
// session on stdout, clean shutdown on SIGINT/SIGTERM.
import * as fs from 'node:fs';
import { getuid } from '../kernel/memory.js';
import { engineSessions, formatSummary, PrefetchMode, SessionSummary } from '../restore/engine-session.js';
import { RestoreServer, ServerEvent } from '../restore/server.js';
import { loadWorkingSet, saveWorkingSet, WorkingSet } from '../restore/working-set.js';
import { helpText, OptionSpec, parseArgs } from './args.js';
import { formatBytes } from './format.js';

const SPEC: OptionSpec = {
  socket: { type: 'string', help: 'Unix socket to listen on (Firecracker mem_backend.backend_path)' },
  memFile: { type: 'string', help: 'snapshot memory file (regions are served from their "offset" in it)' },
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
  quiet: { type: 'boolean', default: false, help: 'no event log on stderr' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

interface ServeOptions {
  socket?: string; memFile?: string; workers: number; prefetch?: string; readAhead?: number; chunk?: number;
  recordWs?: string; preloadWs?: string; once: boolean; warm: boolean; stayAttached: boolean; socketMode: string;
  recvTimeoutMs: number; maxSessions: number; shutdown: string; json: boolean; quiet: boolean; help: boolean;
}

class UsageError extends Error {}

/** Takes every --allow-uid value out of args (the parser keeps only the last of a repeated option). */
function extractUids(args: string[]): { rest: string[]; uids?: number[] } {
  const rest: string[] = [];
  let uids: number[] | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
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
  let o: ServeOptions & { _: string[] };
  let allowed: number[] | undefined;
  let preload: WorkingSet | undefined;
  let memSize: number;
  try {
    const x = extractUids(args);
    o = parseArgs<ServeOptions & Record<string, unknown>>(x.rest, SPEC);
    if (o.help) {
      console.log(helpText('serve', 'Firecracker-compatible snapshot restore handler: serves each VM that connects with the parallel engine.', {
        ...SPEC, allowUid: { ...SPEC.allowUid, type: 'string' },
      }));
      return 0;
    }
    if (o._.length) throw new UsageError(`unexpected argument "${o._[0]}"`);
    if (!o.socket || !o.memFile) throw new UsageError('--socket and --mem-file are required');
    try {
      const st = fs.statSync(o.memFile);
      if (!st.isFile()) throw new UsageError(`--mem-file ${o.memFile} is not a regular file`);
      memSize = st.size;
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`--mem-file ${o.memFile}: ${(e as Error).message}`);
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
    if (o.preloadWs) preload = loadWorkingSet(o.preloadWs, memSize);
    if (x.uids) allowed = x.uids.includes(-1) ? [] : x.uids;
  } catch (e) {
    console.error(`uffd-engine serve: ${(e as Error).message}`);
    return 2;
  }

  const log = (s: string): void => { if (!o.quiet) process.stderr.write(`${clearLine()}${s}\n`); };
  const tty = process.stderr.isTTY === true && !o.quiet;
  const clearLine = (): string => (tty ? '\r\x1b[K' : '');
  const prefetch: PrefetchMode = (o.prefetch as PrefetchMode | undefined) ?? (o.recordWs ? 'off' : preload ? 'hot-first' : 'on');
  const sessions = engineSessions({
    workers: o.workers, prefetch, readAhead: o.readAhead, chunk: o.chunk, workingSet: preload,
    record: !!o.recordWs, detachWhenPopulated: !o.stayAttached, warm: o.warm,
    onEvent: (e) => {
      if (e.type === 'engine-started') log(`session ${e.id}: engine serving ${e.regions} region(s), ${formatBytes(e.totalBytes)} (up in ${e.ms.toFixed(1)} ms)`);
      else if (e.type === 'incident') log(`session ${e.id}: incident: ${e.message}`);
      else if (e.type === 'populated') log(`session ${e.id}: fully populated after ${e.ms.toFixed(0)} ms`);
      else if (e.type === 'recorded' && o.recordWs) {
        try {
          saveWorkingSet(o.recordWs, e.workingSet);
          log(`session ${e.id}: recorded ${e.workingSet.pages.length} pages (first-needed order) to ${o.recordWs}`);
        } catch (err) {
          log(`session ${e.id}: cannot write working set ${o.recordWs}: ${(err as Error).message}`);
        }
      } else if (e.type === 'summary') printSummary(e.summary);
    },
  });
  const printSummary = (s: SessionSummary): void => {
    if (tty) process.stderr.write(clearLine());
    if (o.json) console.log(JSON.stringify(s));
    else for (const l of formatSummary(s)) console.log(l);
  };
  const onServerEvent = (e: ServerEvent): void => {
    if (e.type === 'accepted') log(`connection ${e.id}: pid ${e.peer.pid}, uid ${e.peer.uid}`);
    else if (e.type === 'rejected') log(`connection ${e.id}: refused (${e.code}): ${e.reason}`);
    else if (e.type === 'session-start') {
      const h = e.handshake;
      log(`session ${e.id}: handshake ${h.variant}, ${h.regions.length} region(s), ${formatBytes(h.totalSize)}` +
        `${h.warnings.length ? ` (warnings: ${h.warnings.join('; ')})` : ''}`);
    } else if (e.type === 'session-end' && e.error) log(`session ${e.id}: ended with an error: ${e.error}`);
  };

  let server: RestoreServer;
  try {
    server = RestoreServer.listen({
      socketPath: o.socket, memFilePath: o.memFile, serveConnection: sessions.serve, allowedUids: allowed,
      socketMode: parseInt(o.socketMode, 8), recvTimeoutMs: o.recvTimeoutMs, maxSessions: o.maxSessions, onEvent: onServerEvent,
    });
  } catch (e) {
    console.error(`uffd-engine serve: ${(e as Error).message}`);
    return 1;
  }
  log(`listening on ${o.socket}: memory file ${o.memFile} (${formatBytes(memSize)}), ${o.workers} workers per VM, prefetch ${prefetch}` +
    `${preload ? ` (${preload.pages.length} working-set pages from ${o.preloadWs})` : ''}${o.recordWs ? `, recording the working set to ${o.recordWs}` : ''}; ` +
    `allowed uids: ${allowed === undefined ? `${getuid()} (ours)` : allowed.length ? allowed.join(', ') : 'any'}`);

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
        `${o.shutdown === 'complete' ? ` (${sig} again to abandon)` : ''}` : ''}`);
      void sessions.shutdown(o.shutdown as 'complete' | 'abandon');
      stopRequested();
    } else {
      log(`${sig} again: abandoning the remaining VM(s)`);
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
    if (ticker) clearInterval(ticker);
    if (tty) process.stderr.write(clearLine());
    process.off('SIGINT', sigint);
    process.off('SIGTERM', sigterm);
  }
  if (!o.once && sessions.summaries.length) log(`served ${sessions.summaries.length} VM(s)`);
  return exit;
}
