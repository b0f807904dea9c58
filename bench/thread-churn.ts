// What a worker thread leaves behind when it ends, by what it loaded: N threads, one after
// the other, each started, made to load something, and ended (terminate() or a normal
// return); the process's resident set is sampled after a GC every N/10 threads. One child
// process per case, so no case sees another's memory.
//
//   node --expose-gc dist/bench/thread-churn.js [--threads 400] [--cases nothing,koffi,...] [--json]
//
// Cases: 'nothing' (an empty worker), 'koffi' (require('koffi') only), 'libc' (the
// project's kernel layer, src/kernel/libc.js: koffi.load + its function declarations),
// 'libc-call' (the same, plus one call through it), 'shard-worker' (an engine worker thread
// as a warm set starts it, and as piscina replaces a terminated one: the engine's modules
// loaded and the fault path warmed up on a private uffd). The slope (KiB per thread, least
// squares over the samples) is what an engine pays per replaced worker thread. Two more
// count engines instead of threads (--threads of them): 'engine-fresh' starts and stops an
// engine (1 MiB anonymous region, 2 workers) on threads of its own each time, as the soak
// did before; 'engine-reused' does the same on one reusable set of engine threads.
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { helpText, OptionSpec, parseArgs } from '../src/cli/args.js';
import { Engine } from '../src/engine/engine.js';
import { EngineThreads, SHARD_WORKER } from '../src/engine/threads.js';
import type { WarmData } from '../src/engine/warm-up.js';
import { memoryType } from '../src/memory-types/index.js';
import { sources } from '../src/sources/index.js';

const CASES = ['nothing', 'koffi', 'libc', 'libc-call', 'shard-worker', 'engine-fresh', 'engine-reused'] as const;
type Case = typeof CASES[number];

const LIBC = path.resolve(__dirname, '../src/kernel/libc.js');
const WORKER_CODE = `
const { workerData, parentPort } = require('node:worker_threads');
if (workerData.what === 'koffi') require('koffi');
if (workerData.what === 'libc' || workerData.what === 'libc-call') {
  const { libc } = require(workerData.libc);
  if (workerData.what === 'libc-call') libc.getpid();
}
parentPort.postMessage('loaded');
`;

export interface ChurnResult {
  what: Case; threads: number; rssMiB: number[]; kibPerThread: number;
  /** Memory mappings (VMAs, /proc/self/maps) and virtual size (VmSize, KiB) left per thread, first sample to last. */
  mapsPerThread: number; vmKibPerThread: number;
}

/** Memory mappings (VMAs) of this process now. */
export function mappingCount(): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').length - 1;
}

/** [mappings, VmSize KiB] of this process now. */
function vmNow(): [number, number] {
  const maps = mappingCount();
  const vm = Number(/^VmSize:\s+(\d+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0);
  return [maps, vm];
}

function rssMiB(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return Math.round((process.memoryUsage().rss / 2 ** 20) * 10) / 10;
}

/** Least-squares slope of y over x. */
export function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += ((xs[i] ?? 0) - mx) * ((ys[i] ?? 0) - my);
    den += ((xs[i] ?? 0) - mx) ** 2;
  }
  return den > 0 ? num / den : 0;
}

/** One engine started and stopped (on `threads`, or on fresh threads of its own). */
async function oneEngine(threads: EngineThreads | undefined): Promise<void> {
  const region = memoryType('anon').create({ size: 2 ** 20 });
  try {
    const engine = await Engine.start({ regions: [{ region, source: sources.zero() }], workers: 2, threads });
    await engine.stop({ mode: 'abandon' });
  } finally {
    region.close();
  }
}

export async function churn(what: Case, threads: number): Promise<ChurnResult> {
  const step = Math.max(1, Math.floor(threads / 10));
  const shared = what === 'engine-reused' ? EngineThreads.start(2, { reusable: true }) : undefined;
  await shared?.ready;
  const xs: number[] = [];
  const rss: number[] = [];
  let vm0: [number, number] = [0, 0];
  for (let i = 0; i <= threads; i++) {
    if (i === step) vm0 = vmNow(); // after the first threads, as the slope
    if (i % step === 0) {
      await new Promise((r) => setTimeout(r, 20));
      xs.push(i);
      rss.push(rssMiB());
    }
    if (i === threads) break;
    if (what === 'engine-fresh' || what === 'engine-reused') {
      await oneEngine(shared);
      continue;
    }
    if (what === 'shard-worker') {
      const data: WarmData = { warm: true, signal: new SharedArrayBuffer(8) };
      const w = new Worker(SHARD_WORKER, { workerData: data });
      const done = new Int32Array(data.signal);
      await new Promise<void>((resolve, reject) => {
        w.once('error', reject);
        const poll = (): void => { if (Atomics.load(done, 1) > 0) resolve(); else setTimeout(poll, 1); };
        poll();
      });
      await w.terminate();
      continue;
    }
    const w = new Worker(WORKER_CODE, { eval: true, workerData: { what, libc: LIBC } });
    await new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    });
    await w.terminate(); // as the engine ends a killed worker
  }
  await shared?.destroy();
  // The first sample is before any thread: the first threads also warm up shared state.
  const vm1 = vmNow();
  const n = Math.max(1, threads - step);
  return {
    what, threads, rssMiB: rss, kibPerThread: Math.round(slope(xs.slice(1), rss.slice(1)) * 1024 * 10) / 10,
    mapsPerThread: Math.round(((vm1[0] - vm0[0]) / n) * 100) / 100, vmKibPerThread: Math.round((vm1[1] - vm0[1]) / n),
  };
}

async function main(): Promise<void> {
  const spec: OptionSpec = {
    threads: { type: 'number', default: 400, help: 'threads per case, one after the other' },
    case: { type: 'string', help: 'run one case in this process (used by the parent run)' },
    cases: { type: 'string', default: CASES.filter((c) => c !== 'shard-worker').join(','), help: `cases to run, of ${CASES.join(', ')}` },
    json: { type: 'boolean', default: false, help: 'print the results as JSON' },
    help: { type: 'boolean', default: false, help: 'show this help' },
  };
  const o = parseArgs<{ threads: number; case?: string; cases: string; json: boolean; help: boolean }>(process.argv.slice(2), spec);
  if (o.help) {
    console.log(helpText('thread-churn (node --expose-gc dist/bench/thread-churn.js)', 'Resident memory a worker thread leaves behind, by what it loaded.', spec));
    return;
  }
  if (o.case) {
    if (!(CASES as readonly string[]).includes(o.case)) throw new Error(`--case must be one of ${CASES.join(', ')}`);
    process.send?.(await churn(o.case as Case, o.threads));
    return;
  }
  const results: ChurnResult[] = [];
  const cases = o.cases.split(',');
  for (const c of cases) if (!(CASES as readonly string[]).includes(c)) throw new Error(`--cases: ${c} is not one of ${CASES.join(', ')}`);
  for (const what of cases) {
    const child = fork(__filename, ['--case', what, '--threads', String(o.threads)], { execArgv: ['--expose-gc'] });
    results.push(await new Promise<ChurnResult>((resolve, reject) => {
      child.once('message', (m) => resolve(m as ChurnResult));
      child.once('exit', (code) => { if (code) reject(new Error(`case ${what}: exit ${code}`)); });
    }));
  }
  if (o.json) console.log(JSON.stringify(results));
  else {
    for (const r of results) {
      const unit = r.what.startsWith('engine') ? 'engine' : 'thread';
      console.log(`${r.what.padEnd(13)} ${r.threads} ${unit}s: RSS ${r.rssMiB[0]} -> ${r.rssMiB[r.rssMiB.length - 1]} MiB, ${r.kibPerThread} KiB per ${unit}; ${r.mapsPerThread} mappings and ${r.vmKibPerThread} KiB virtual per ${unit}`);
    }
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(`thread-churn: ${(e as Error).message}`);
    process.exit(2);
  });
}
