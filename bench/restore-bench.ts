// Snapshot-restore benchmark: a 1 GiB guest region restored over the Firecracker handshake
// and touched at random by several faulting threads (the C workload of bench/native in
// --handler external mode, which checks every byte), served by
//   - our restore server with the engine behind it (prefetch on: read-ahead + background
//     population, the session detaching once everything is present),
//   - our server with prefetch off (pure demand faults, parallel engine),
//   - Firecracker's example handler reproduced in C (uffd-bench --serve --handler fc: one
//     thread, one UFFDIO_COPY of one page per fault) — the reference,
//   - the native C handler with 2 threads (uffd-bench --serve --handler native),
// all in the same run, rounds interleaved; plus background fill: a client that touches
// nothing while the engine populates the whole region (then it checks every byte).
//
//   node dist/bench/restore-bench.js [--size 1G] [--threads 4] [--workers 2] [--rounds 3]
//        [--chunk 1M] [--no-demand] [--no-native] [--json]
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs, OptionSpec } from '../src/cli/args.js';
import { engineSessions, EngineSessionOptions, SessionSummary } from '../src/restore/engine-session.js';
import { RestoreServer } from '../src/restore/server.js';
import { NativeResult, nativeBinary, startExternal, startServe, writeSource } from '../src/bench/native.js';

const SPEC: OptionSpec = {
  size: { type: 'size', default: '1G', help: 'guest region' },
  threads: { type: 'number', default: 4, help: 'faulting threads (random order, every page once)' },
  workers: { type: 'number', default: 2, help: 'engine workers per VM' },
  rounds: { type: 'number', default: 3, help: 'runs of each configuration (median reported)' },
  chunk: { type: 'size', default: '1M', help: 'engine background step' },
  demand: { type: 'boolean', default: true, help: 'also run the engine with prefetch off (--no-demand: skip)' },
  touch: { type: 'boolean', default: true, help: 'run the touching workloads (--no-touch: only the background fill)' },
  populateSource: { type: 'string', default: 'auto', help: 'MAP_POPULATE the source mapping: auto (hugetlb only), always, never' },
  native: { type: 'boolean', default: true, help: 'also run the native 2-thread C handler (--no-native: skip)' },
  warm: { type: 'boolean', default: true, help: 'engine threads warm before the handshake, as `serve` keeps them (--no-warm: started per VM)' },
  json: { type: 'boolean', default: false, help: 'print the results as JSON' },
};

interface Opts {
  size: number; threads: number; workers: number; rounds: number; chunk: number; demand: boolean; touch: boolean; native: boolean; warm: boolean;
  populateSource: 'auto' | 'always' | 'never'; json: boolean;
}

export interface RestoreRun {
  config: string;
  /** Wall time of the faulting workload (first thread start to last thread end), s. */
  elapsedSec: number;
  gibPerSec: number;
  faultLatencyUs: { p50: number; p99: number };
  /** The client's clock: from sending the handshake to its first touch served (the VM's first fault), ms. */
  firstTouchMs: number | null;
  mismatches: number;
  session?: Pick<SessionSummary, 'engineStartMs' | 'firstFaultMs' | 'warm' | 'lastDemandFaultMs' | 'populatedMs' | 'faults' | 'pages' | 'endReason' | 'latencyUs'>;
  handlerCpuSec?: number;
}

export interface FillRun {
  engineStartMs: number;
  populatedMs: number;
  /** size / (populated - engine up): the fill itself. */
  fillGiBPerSec: number;
  /** size / populated: from the handshake, engine start included. */
  totalGiBPerSec: number;
  /** Fill ioctls for the whole region. */
  ioctls: number;
  verifiedPages: number;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? NaN;
};

function fromNative(config: string, r: NativeResult, size: number): RestoreRun {
  return {
    config, elapsedSec: r.elapsedSec, gibPerSec: size / 2 ** 30 / r.elapsedSec,
    faultLatencyUs: { p50: r.latencyUs.p50, p99: r.latencyUs.p99 }, mismatches: r.mismatches,
    firstTouchMs: r.handshakeToFirstTouchNs !== undefined ? r.handshakeToFirstTouchNs / 1e6 : null,
  };
}

/** One restore served by our server + engine. */
async function runEngine(config: string, o: Opts, file: string, sock: string, session: EngineSessionOptions): Promise<RestoreRun> {
  const sessions = engineSessions({ workers: o.workers, chunk: o.chunk, warm: o.warm, populateSource: o.populateSource, ...session });
  const server = RestoreServer.listen({ socketPath: sock, memFilePath: file, serveConnection: sessions.serve });
  try {
    await sessions.ready(); // as `serve` is: up and warm before the VM connects
    const accepted = server.acceptOne(30_000);
    const p = await startExternal({ socket: sock, size: o.size, sourceFile: file, seed: 7, threads: o.threads, access: 'random', eventRemove: true },
      { timeoutMs: 180_000 });
    const a = await accepted;
    if (!a) throw new Error('the workload did not connect');
    let r: NativeResult;
    try {
      r = await p.result;
    } catch (e) {
      // What the engine saw, for the report.
      for (const l of sessions.live.values()) {
        const st = l.engine.stats();
        console.error(`restore-bench: live session ${l.id}: ${l.engine.pagesMissing()} pages missing, faults ${JSON.stringify(st.faults)}, ` +
          `pages ${JSON.stringify(st.pages)}, errors ${st.errors}, retries ${st.retries}, incidents ${JSON.stringify(l.engine.incidents)}`);
      }
      console.error(`restore-bench: finished sessions: ${JSON.stringify(sessions.summaries)}`);
      throw e;
    }
    await a.outcome;
    const s = sessions.summaries[0];
    if (!s || s.error) throw new Error(`session failed: ${s?.error ?? 'no summary'}`);
    return {
      ...fromNative(config, r, o.size),
      session: {
        engineStartMs: s.engineStartMs, firstFaultMs: s.firstFaultMs, warm: s.warm, lastDemandFaultMs: s.lastDemandFaultMs, populatedMs: s.populatedMs, faults: s.faults,
        pages: s.pages, endReason: s.endReason, latencyUs: s.latencyUs,
      },
    };
  } finally {
    await sessions.shutdown('abandon');
    await server.close();
  }
}

/** One restore served by the C program as the external handler (fc or native). */
async function runC(config: string, o: Opts, file: string, sock: string, handler: 'fc' | 'native', handlers: number): Promise<RestoreRun> {
  const serve = await startServe({ socket: sock, handler, handlers, sourceFile: file }, { timeoutMs: 180_000 });
  await serve.listening;
  const p = await startExternal({ socket: sock, size: o.size, sourceFile: file, seed: 7, threads: o.threads, access: 'random', eventRemove: true },
    { timeoutMs: 180_000 });
  const [r, s] = await Promise.all([p.result, serve.result]);
  return { ...fromNative(config, r, o.size), handlerCpuSec: s.handlerCpuSec };
}

/** Background fill: a client that registers the region and touches nothing until the engine has populated it. */
async function runFill(o: Opts, file: string, sock: string): Promise<FillRun> {
  const sessions = engineSessions({ workers: o.workers, chunk: o.chunk, prefetch: 'on', warm: o.warm, populateSource: o.populateSource });
  const server = RestoreServer.listen({ socketPath: sock, memFilePath: file, serveConnection: sessions.serve });
  const client = path.resolve(__dirname, '../src/cli/touch-client.js');
  try {
    await sessions.ready();
    const accepted = server.acceptOne(30_000);
    const child = spawn(process.execPath, [client, '--socket', sock, '--mem-file', file, '--region-size', String(o.size), '--wait-stdin', '--verify-all', '--prewarm',
      '--timeout-ms', '120000'], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    const exited = new Promise<number | null>((r) => child.on('close', r));
    const a = await accepted;
    if (!a) throw new Error('the fill client did not connect');
    await a.outcome; // the session ends when everything is present (it detaches)
    child.stdin!.end('go\n');
    const code = await exited;
    const res = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { ok?: boolean; verified?: number };
    if (code !== 0 || !res.ok) throw new Error(`fill client failed (exit ${code}): ${out}`);
    const s = sessions.summaries[0];
    if (!s || s.populatedMs === null || s.engineStartMs === undefined) throw new Error(`fill session did not populate: ${JSON.stringify(s)}`);
    return {
      engineStartMs: s.engineStartMs, populatedMs: s.populatedMs,
      fillGiBPerSec: o.size / 2 ** 30 / ((s.populatedMs - s.engineStartMs) / 1000),
      totalGiBPerSec: o.size / 2 ** 30 / (s.populatedMs / 1000), verifiedPages: res.verified ?? 0, ioctls: s.ioctls,
    };
  } finally {
    await sessions.shutdown('abandon');
    await server.close();
  }
}

export async function main(argv: string[]): Promise<number> {
  const o = parseArgs<Opts & Record<string, unknown>>(argv, SPEC);
  await nativeBinary();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-restore-bench-'));
  const file = path.join(dir, 'snapshot.mem');
  const sock = path.join(dir, 'h.sock');
  const log = (s: string): void => { if (!o.json) console.error(s); };
  try {
    await writeSource(file, o.size, 7, { timeoutMs: 120_000 });
    log(`restore bench: ${o.size / 2 ** 20} MiB region, ${o.threads} faulting threads (random, every byte checked), ` +
      `engine ${o.workers} workers, chunk ${o.chunk / 1024} KiB, ${o.rounds} rounds, ${os.cpus().length} CPUs`);
    const runs: Record<string, RestoreRun[]> = {};
    const fills: FillRun[] = [];
    const add = (r: RestoreRun): void => {
      (runs[r.config] ??= []).push(r);
      log(`  ${r.config.padEnd(22)} ${r.elapsedSec.toFixed(3)} s  ${r.gibPerSec.toFixed(2)} GiB/s  mismatches ${r.mismatches}` +
        `  first touch ${r.firstTouchMs === null ? '-' : r.firstTouchMs.toFixed(2)} ms after the handshake` +
        (r.session ? `  (engine up ${r.session.engineStartMs} ms${r.session.warm ? ' warm' : ''}, last demand fault ${r.session.lastDemandFaultMs} ms, populated ${r.session.populatedMs ?? '-'} ms, ` +
          `${r.session.pages.demand} demand / ${r.session.pages.prefetch} prefetch pages, ${r.session.faults} faults)` : '') +
        (r.handlerCpuSec !== undefined ? `  (handler CPU ${r.handlerCpuSec.toFixed(2)} s)` : ''));
    };
    for (let round = 1; round <= o.rounds; round++) {
      log(`round ${round}`);
      if (o.touch) {
        add(await runEngine('engine prefetch on', o, file, sock, { prefetch: 'on' }));
        add(await runC('firecracker handler', o, file, sock, 'fc', 1));
        if (o.demand) add(await runEngine('engine prefetch off', o, file, sock, { prefetch: 'off' }));
        if (o.native) add(await runC('native C, 2 handlers', o, file, sock, 'native', 2));
      }
      const f = await runFill(o, file, sock);
      fills.push(f);
      log(`  ${'background fill'.padEnd(22)} engine up ${f.engineStartMs} ms, populated at ${f.populatedMs} ms: ` +
        `fill ${f.fillGiBPerSec.toFixed(2)} GiB/s, ${f.totalGiBPerSec.toFixed(2)} GiB/s from the handshake; ${f.ioctls} ioctls; ${f.verifiedPages} pages verified`);
    }
    const med = Object.fromEntries(Object.entries(runs).map(([k, rs]) => [k, {
      gibPerSec: median(rs.map((r) => r.gibPerSec)), elapsedSec: median(rs.map((r) => r.elapsedSec)),
      all: rs.map((r) => Math.round(r.gibPerSec * 100) / 100), mismatches: rs.reduce((n, r) => n + r.mismatches, 0),
    }]));
    const firstFault = Object.fromEntries(Object.entries(runs).map(([k, rs]) => [k, median(rs.map((r) => r.firstTouchMs ?? NaN))]));
    const ours = med['engine prefetch on']?.gibPerSec ?? NaN;
    const ref = med['firecracker handler']?.gibPerSec ?? NaN;
    const fillRate = median(fills.map((f) => f.fillGiBPerSec));
    const ff = firstFault['engine prefetch on'] ?? NaN;
    const summary = {
      size: o.size, threads: o.threads, workers: o.workers, rounds: o.rounds, chunk: o.chunk, populateSource: o.populateSource, warm: o.warm,
      cpus: os.cpus().length, loadavg: os.loadavg(),
      medians: med,
      /** The client's handshake to its first touch served, ms (median per configuration). */
      firstFaultMs: firstFault,
      fill: {
        fillGiBPerSec: fillRate, totalGiBPerSec: median(fills.map((f) => f.totalGiBPerSec)),
        engineStartMs: median(fills.map((f) => f.engineStartMs)), ioctls: median(fills.map((f) => f.ioctls)),
        all: fills.map((f) => Math.round(f.fillGiBPerSec * 100) / 100),
      },
      /** Medians over medians, same run: the stable keys to compare runs by. */
      ratios: {
        vsFirecracker: ours / ref,
        vsNative: ours / (med['native C, 2 handlers']?.gibPerSec ?? NaN),
        demandVsFirecracker: (med['engine prefetch off']?.gibPerSec ?? NaN) / ref,
      },
      speedup: ours / ref,
      targets: { restoreGiBPerSec: ours >= 2.5, speedup6x: ours / ref >= 6, firstFault5ms: ff <= 5, fillGiBPerSec: fillRate >= 2 },
      runs, fills,
    };
    if (o.json) console.log(JSON.stringify(summary, null, 2));
    else {
      console.log('');
      console.log(`median of ${o.rounds} (GiB/s of the ${o.size / 2 ** 20} MiB region, faulting workload wall time):`);
      for (const [k, v] of Object.entries(med)) console.log(`  ${k.padEnd(22)} ${v.gibPerSec.toFixed(2)} GiB/s  (${v.all.join(', ')})  mismatches ${v.mismatches}`);
      console.log(`  ${'background fill'.padEnd(22)} ${summary.fill.fillGiBPerSec.toFixed(2)} GiB/s after the engine is up (${summary.fill.all.join(', ')}); ` +
        `${summary.fill.totalGiBPerSec.toFixed(2)} GiB/s from the handshake (engine start ${summary.fill.engineStartMs} ms; ${summary.fill.ioctls} ioctls)`);
      if (o.touch) console.log(`  engine / firecracker handler: ${summary.speedup.toFixed(1)}x`);
      for (const [k, v] of Object.entries(firstFault)) console.log(`  ${k.padEnd(22)} handshake to first touch served ${v.toFixed(2)} ms (median)`);
      if (o.touch) {
        console.log(`targets: restore >= 2.5 GiB/s ${summary.targets.restoreGiBPerSec ? 'met' : 'MISSED'}; >= 6x the fc handler ${summary.targets.speedup6x ? 'met' : 'MISSED'}; ` +
          `handshake to first fault <= 5 ms ${summary.targets.firstFault5ms ? 'met' : 'MISSED'}; background fill >= 2 GiB/s ${summary.targets.fillGiBPerSec ? 'met' : 'MISSED'}`);
      }
    }
    const bad = Object.values(med).some((v) => v.mismatches > 0);
    return bad ? 1 : 0;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: Error) => {
    console.error(`restore-bench: ${e.message}`);
    process.exitCode = 1;
  });
}
