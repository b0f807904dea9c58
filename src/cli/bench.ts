// uffd-engine bench: the load benchmark. One faulting workload (the C program
// src/bench/native/uffd-bench.c: its threads fault, time every first touch and verify every
// byte), served by the engine (the program sends its userfaultfd to our socket, Firecracker
// style) and by the native C handler, side by side in the same run. See src/bench/engine-bench.ts
// and docs/performance.md.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { helpText, OptionSpec, parseArgs } from './args.js';
import {
  BenchConfig, BenchPattern, BenchType, CaseResult, checkConfig, DEFAULT_CONFIG, formatBytes, formatCase, GiB, Hooks, MiB,
  ReferenceHandler, runCase,
} from '../bench/engine-bench.js';
import { Progress } from '../bench/progress.js';
import { renderHtml, renderSvg, ReportDoc } from '../bench/report.js';
import { formatSuiteDetails, rssLines, runSuite, SUITE_CASES, suiteConfig, SuiteResult } from '../bench/suite.js';
import type { FaultKind } from '../bench/native.js';
import { formatSweep, runSweep, SweepRow } from '../bench/sweep.js';

const SPEC: OptionSpec = {
  mode: { type: 'string', help: 'start from a preset: throughput, serial, restore or bounce (the suite\'s cases; options given override it), or memory (RSS of an engine over a --size sparse region, default 1T)' },
  type: { type: 'string', help: 'memory: anon, memfd or hugetlbfs (default anon)' },
  kind: { type: 'string', help: 'fault kind: missing, minor (memfd/hugetlbfs) or wp (default missing)' },
  size: { type: 'size', help: 'region size, e.g. 64M, 2G (default 256M)' },
  pages: { type: 'number', help: 'region size in pages (instead of --size)' },
  duration: { type: 'number', help: 'size the region so that a run takes about SEC seconds (calibrated with a short engine run)' },
  pageSize: { type: 'size', help: 'hugetlbfs page size: 2M or 1G (default 2M; 4K otherwise)' },
  threads: { type: 'number', help: 'faulting threads (default 8)' },
  workers: { type: 'number', help: 'engine workers, and native handler threads (default 2)' },
  stripe: { type: 'size', help: 'engine shard stripe (default: the engine\'s, 64K)' },
  pattern: { type: 'string', help: 'access pattern: sequential, random, strided or hot-set (default random)' },
  stride: { type: 'number', help: 'pages between touches with --pattern strided (default 16)' },
  hot: { type: 'number', help: 'hot fraction with --pattern hot-set; bounce rounds re-fault only it (default 0.1)' },
  source: { type: 'string', help: 'page contents: file (a snapshot file both sides serve) or zero (default file)' },
  prefetch: { type: 'string', help: 'engine prefetch on|off: read-ahead up to 1 MiB + background population (default off)' },
  repeat: { type: 'number', help: 'runs per side; figures are median [min-max] (default 3)' },
  bounce: { type: 'number', help: 'after population, R rounds of zap + re-fault: steady state (default 0)' },
  nativeHandler: { type: 'string', help: 'the reference: native (N threads, batched) or fc (Firecracker\'s page-at-a-time handler) (default native)' },
  native: { type: 'boolean', default: true, help: 'run the native reference (--no-native: engine only)' },
  memcpy: { type: 'boolean', help: 'also measure memcpy bandwidth over the region size (max 2G) and compare' },
  plainFaults: { type: 'boolean', help: 'also run the region with plain kernel write faults (no userfaultfd): the kernel\'s own fill rate' },
  readers: { type: 'string', help: 'engine: who reads the uffd: all (workers read it themselves, the dispatcher while they are busy) or dispatcher (it hands faults to the workers) (default dispatcher; all is experimental)' },
  warmUp: { type: 'boolean', help: 'engine: compile the fault path on a scratch region before serving, as warm `serve` threads do (default on; --no-warm-up: a cold engine, its JIT compiling in the measured phase)' },
  dispatcherNice: { type: 'number', help: 'engine: the dispatcher thread\'s nice value while it serves (default: the engine\'s, -10; 0: the process\'s priority)' },
  inline: { type: 'string', help: 'engine: auto (the dispatcher resolves small batches itself while workers sleep), never or always (default: the engine\'s)' },
  inlineBatch: { type: 'number', help: 'engine, inline auto: the largest batch the dispatcher resolves itself (default: the engine\'s)' },
  wakeBatch: { type: 'number', help: 'engine: the largest batch read whose threads the dispatcher wakes with one UFFDIO_WAKE (1: each fill wakes; default: the engine\'s)' },
  spinUs: { type: 'number', help: 'engine: how long an idle worker spins before sleeping, µs (default: the engine\'s)' },
  dispatcherSpinUs: { type: 'number', help: 'engine: how long the dispatcher keeps reading an empty uffd before poll, µs (default: the engine\'s)' },
  seed: { type: 'number', help: 'pattern and shuffle seed (default 1)' },
  pin: { type: 'string', help: 'CPU pinning: none, same (everything on CPU 0) or split (faulting threads on 0..n-2, handler/engine threads on n-1) (default none)' },
  workload: { type: 'string', default: 'c', help: 'faulting side: c (the C program) or js (JavaScript threads, engine only; automatic without a C compiler)' },
  suite: { type: 'boolean', default: false, help: `run the suite (${SUITE_CASES.join(', ')}) and print one table` },
  only: { type: 'string', help: 'with --suite: a comma-separated subset of the cases' },
  sweep: { type: 'boolean', default: false, help: 'the scaling sweep: the throughput case at each --sweep-threads x --sweep-workers, engine beside native (also a --suite case)' },
  sweepThreads: { type: 'string', help: 'with --sweep: faulting thread counts (default 1,2,4,8,16,64)' },
  sweepWorkers: { type: 'string', help: 'with --sweep: worker / native handler counts (default 1,2,4)' },
  restoreSize: { type: 'size', help: 'with --suite: size of the sequential restore (default 256M; the issue\'s figure: 2G)' },
  micro: { type: 'boolean', default: false, help: 'run the micro-benchmarks (ns/op) instead' },
  microTime: { type: 'number', default: 300, help: 'with --micro: ms per micro-benchmark' },
  timeout: { type: 'number', help: 'per run, seconds (default from the size)' },
  json: { type: 'boolean', default: false, help: 'print the results as JSON' },
  report: { type: 'string', help: 'write a report to FILE.html or FILE.svg (latency histogram, throughput over time)' },
  progress: { type: 'boolean', help: 'progress bar on stderr (default: when stderr is a terminal)' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

type Opts = {
  mode?: string; type?: string; kind?: string; size?: number; pages?: number; duration?: number; pageSize?: number;
  threads?: number; workers?: number; stripe?: number; pattern?: string; stride?: number; hot?: number; source?: string;
  prefetch?: string; repeat?: number; bounce?: number; nativeHandler?: string; native: boolean; memcpy?: boolean; plainFaults?: boolean;
  readers?: string; warmUp?: boolean; dispatcherNice?: number; sweep: boolean; sweepThreads?: string; sweepWorkers?: string; inline?: string; inlineBatch?: number; wakeBatch?: number; spinUs?: number; dispatcherSpinUs?: number; seed?: number; pin?: string; workload: string; suite: boolean; only?: string; restoreSize?: number;
  micro: boolean; microTime: number; timeout?: number; json: boolean; report?: string; progress?: boolean; help: boolean;
  _: string[];
};

function onOff(v: string, what: string): boolean {
  const s = v.toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(s)) return true;
  if (['off', 'false', 'no', '0'].includes(s)) return false;
  throw new Error(`${what} takes on or off (got ${v})`);
}

/** "1,2,4" -> [1, 2, 4] (positive integers), or undefined. */
function counts(v: string | undefined, what: string): number[] | undefined {
  if (v === undefined) return undefined;
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (!xs.length || xs.some((x) => !Number.isInteger(x) || x < 1)) throw new Error(`${what} takes a comma-separated list of positive integers (got ${v})`);
  return xs;
}

function oneOf<T extends string>(v: string, allowed: readonly T[], what: string): T {
  if (!(allowed as readonly string[]).includes(v)) throw new Error(`${what} must be one of ${allowed.join(', ')} (got ${v})`);
  return v as T;
}

/** The configuration of a single bench run from the options (a --mode preset, then the options given). */
export function configFromOptions(o: Opts): BenchConfig {
  const base: BenchConfig = o.mode ? suiteConfig(oneOf(o.mode, ['throughput', 'serial', 'restore', 'bounce'] as const, '--mode'))
    : { ...DEFAULT_CONFIG };
  const cfg: BenchConfig = { ...base };
  if (o.mode) cfg.name = o.mode;
  if (o.type !== undefined) cfg.type = oneOf(o.type === 'hugetlb' ? 'hugetlbfs' : o.type, ['anon', 'memfd', 'hugetlbfs'] as const, '--type') as BenchType;
  if (o.kind !== undefined) cfg.kind = oneOf(o.kind, ['missing', 'minor', 'wp'] as const, '--kind') as FaultKind;
  cfg.pageSize = cfg.type === 'hugetlbfs' ? (o.pageSize ?? 2 * MiB) : (o.pageSize ?? 4096);
  if (o.pages !== undefined && o.size !== undefined) throw new Error('give --size or --pages, not both');
  if (o.size !== undefined) cfg.size = o.size;
  if (o.pages !== undefined) {
    if (!Number.isInteger(o.pages) || o.pages < 1) throw new Error('--pages must be a positive integer');
    cfg.size = o.pages * cfg.pageSize;
  }
  if (cfg.type === 'hugetlbfs' && o.size === undefined && o.pages === undefined) cfg.size = 64 * cfg.pageSize;
  if (o.threads !== undefined) cfg.threads = o.threads;
  if (o.workers !== undefined) cfg.workers = o.workers;
  if (o.stripe !== undefined) cfg.stripe = o.stripe;
  if (o.pattern !== undefined) cfg.pattern = oneOf(o.pattern === 'hotset' ? 'hot-set' : o.pattern, ['sequential', 'random', 'strided', 'hot-set'] as const, '--pattern') as BenchPattern;
  if (o.stride !== undefined) cfg.stride = o.stride;
  if (o.hot !== undefined) cfg.hot = o.hot;
  if (o.source !== undefined) cfg.source = oneOf(o.source, ['file', 'zero'] as const, '--source');
  if (o.prefetch !== undefined) cfg.prefetch = onOff(o.prefetch, '--prefetch');
  if (o.repeat !== undefined) cfg.repeat = o.repeat;
  if (o.bounce !== undefined) cfg.bounce = o.bounce;
  if (o.nativeHandler !== undefined) cfg.reference = oneOf(o.nativeHandler, ['native', 'fc'] as const, '--native-handler') as ReferenceHandler;
  if (o.memcpy !== undefined) cfg.memcpy = o.memcpy ? Math.min(cfg.size, 2 * GiB) : 0;
  else if (cfg.memcpy) cfg.memcpy = Math.min(cfg.size, 2 * GiB);
  if (o.plainFaults !== undefined) cfg.plainFaults = o.plainFaults;
  if (o.readers !== undefined) cfg.readers = oneOf(o.readers, ['all', 'dispatcher'] as const, '--readers');
  if (o.warmUp !== undefined) cfg.warmUp = o.warmUp;
  if (o.dispatcherNice !== undefined) cfg.dispatcherNice = o.dispatcherNice;
  if (o.inline !== undefined) cfg.inline = oneOf(o.inline, ['auto', 'never', 'always'] as const, '--inline');
  if (o.inlineBatch !== undefined) cfg.inlineBatch = o.inlineBatch;
  if (o.wakeBatch !== undefined) cfg.wakeBatch = o.wakeBatch;
  if (o.spinUs !== undefined) cfg.spinMicros = o.spinUs;
  if (o.dispatcherSpinUs !== undefined) cfg.dispatcherSpinMicros = o.dispatcherSpinUs;
  if (o.seed !== undefined) cfg.seed = o.seed;
  if (o.pin !== undefined) cfg.pin = oneOf(o.pin, ['none', 'same', 'split'] as const, '--pin');
  if (o.timeout !== undefined) cfg.timeoutMs = o.timeout * 1000;
  const problem = checkConfig(cfg);
  if (problem) throw new Error(problem);
  return cfg;
}

export function machineLine(): string {
  const cpus = os.cpus();
  const load = os.loadavg().map((v) => v.toFixed(2)).join(' ');
  return `${cpus.length} CPUs (${cpus[0]?.model ?? 'unknown'}), Linux ${os.release()}, node ${process.version}, ` +
    `${(os.totalmem() / GiB).toFixed(0)} GiB RAM, load average ${load}`;
}

function machineJson() {
  return { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? null, kernel: os.release(), node: process.version, loadavg: os.loadavg(), totalMemBytes: os.totalmem() };
}

function writeReport(file: string, doc: ReportDoc): void {
  const ext = path.extname(file).toLowerCase();
  if (ext !== '.html' && ext !== '.htm' && ext !== '.svg') throw new Error(`--report: the file must end in .html or .svg (got ${file})`);
  fs.writeFileSync(file, ext === '.svg' ? renderSvg(doc) : renderHtml(doc));
}

function hooksFor(p: Progress): Hooks {
  return {
    onRunStart: (label, i, total) => p.start(label, i, total),
    onRunProgress: (f) => p.update(f),
    onNote: (n) => p.log(`note: ${n}`),
  };
}

async function calibrate(cfg: BenchConfig, seconds: number, o: Opts, hooks: Hooks): Promise<BenchConfig> {
  if (!(seconds > 0)) throw new Error('--duration needs a positive number of seconds');
  const probePages = Math.max(256, Math.min(cfg.size / cfg.pageSize, (32 * MiB) / cfg.pageSize));
  const probe: BenchConfig = { ...cfg, name: 'calibration', size: probePages * cfg.pageSize, repeat: 1, bounce: 0, memcpy: 0 };
  const r = await runCase(probe, { noNative: true, hooks, workload: o.workload === 'js' ? 'js' : 'c' });
  const rate = r.engine?.initial.pagesPerSec.median ?? 0;
  if (!(rate > 0)) throw new Error('--duration: the calibration run measured no throughput');
  const maxBytes = Math.min(16 * GiB, Math.floor(os.totalmem() / 4));
  const pages = Math.max(256, Math.min(Math.floor(maxBytes / cfg.pageSize), Math.round(rate * seconds)));
  return { ...cfg, size: pages * cfg.pageSize };
}

export async function run(args: string[]): Promise<number> {
  const o = parseArgs<Opts>(args, SPEC);
  if (o.help) {
    console.log(helpText('bench', 'Load benchmark: the C workload (src/bench/native/uffd-bench.c) faults a region with N threads, ' +
      'timing every first touch and verifying every byte; the engine serves it (the uffd arrives over a Unix socket, ' +
      'Firecracker style), then the native C handler serves the same workload. Prints both side by side, median over ' +
      '--repeat runs, and the ratio engine/native.\n\nexamples:\n  uffd-engine bench                                  # throughput: 256M, 8 threads, 2 workers, random\n' +
      '  uffd-engine bench --mode serial                    # 1 thread: the round trip\n' +
      '  uffd-engine bench --mode restore --size 2G         # sequential restore, prefetch on, vs the fc handler and memcpy\n' +
      '  uffd-engine bench --suite --report bench.html      # everything, one table, a report\n' +
      '  uffd-engine bench --micro                          # ns/op of the per-fault building blocks', SPEC));
    return 0;
  }
  if (o._.length) throw new Error(`bench takes no arguments (got ${o._.join(' ')}); see --help`);
  const workload = oneOf(o.workload, ['c', 'js'] as const, '--workload');
  if (o.report && !/\.(html?|svg)$/i.test(o.report)) throw new Error(`--report: the file must end in .html or .svg (got ${o.report})`);
  const command = `uffd-engine bench ${args.join(' ')}`.trim();
  const progress = new Progress(o.progress ?? !!process.stderr.isTTY);
  const hooks = hooksFor(progress);

  if (o.micro) {
    const { runMicro, formatMicro } = await import('../bench/micro.js');
    const results = await runMicro({ timeMs: o.microTime });
    if (o.json) console.log(JSON.stringify({ command, machine: machineJson(), micro: results }, null, 2));
    else console.log(formatMicro(results));
    if (o.report) writeReport(o.report, { title: 'uffd-engine micro-benchmarks', command, when: new Date().toISOString(), machine: machineLine(), cases: [], micro: results });
    return 0;
  }

  if (o.suite) {
    const only = o.only ? o.only.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
    let result: SuiteResult;
    try {
      result = await runSuite({
        repeat: o.repeat, restoreSize: o.restoreSize, noNative: !o.native, hooks, only, workload,
        sweep: { threads: counts(o.sweepThreads, '--sweep-threads'), workers: counts(o.sweepWorkers, '--sweep-workers') },
        engine: {
          readers: o.readers as BenchConfig['readers'], inline: o.inline as BenchConfig['inline'], inlineBatch: o.inlineBatch, wakeBatch: o.wakeBatch, spinMicros: o.spinUs,
          dispatcherSpinMicros: o.dispatcherSpinUs, dispatcherNice: o.dispatcherNice, warmUp: o.warmUp, stripe: o.stripe,
        },
      });
    } finally {
      progress.end();
    }
    if (o.json) console.log(JSON.stringify({ command, machine: machineJson(), suite: result }, null, 2));
    else console.log(formatSuiteDetails(result));
    if (o.report) {
      writeReport(o.report, {
        title: 'uffd-engine bench --suite', command, when: new Date().toISOString(), machine: machineLine(),
        cases: result.cases, targets: result.targets, rss: result.rss ? { lines: rssLines(result.rss) } : undefined,
      });
      if (!o.json) console.log(`\nreport: ${o.report}`);
    }
    return result.cases.some((c) => c.runs.some((r) => r.mismatches > 0)) ? 3 : 0;
  }

  if (o.sweep) {
    const engine = {
      readers: o.readers ? oneOf(o.readers, ['all', 'dispatcher'] as const, '--readers') : undefined, warmUp: o.warmUp,
      dispatcherNice: o.dispatcherNice,
    };
    let rows: SweepRow[];
    try {
      rows = await runSweep({
        threads: counts(o.sweepThreads, '--sweep-threads'), workers: counts(o.sweepWorkers, '--sweep-workers'),
        size: o.size, repeat: o.repeat, noNative: !o.native, hooks,
        engine: Object.fromEntries(Object.entries(engine).filter(([, v]) => v !== undefined)),
      });
    } finally {
      progress.end();
    }
    if (o.json) console.log(JSON.stringify({ command, machine: machineJson(), sweep: rows }, null, 2));
    else console.log(formatSweep(rows));
    return rows.some((r) => r.mismatches > 0) ? 3 : 0;
  }

  if (o.mode === 'memory') {
    const { measureRss } = await import('../bench/rss.js');
    const big = await measureRss(o.size ?? 2 ** 40, o.workers ?? 2);
    const small = await measureRss(GiB, o.workers ?? 2);
    if (o.json) console.log(JSON.stringify({ command, machine: machineJson(), rss: { big, small } }, null, 2));
    else console.log(rssLines({ big, small }).join('\n'));
    return 0;
  }
  let cfg = configFromOptions(o);
  const notes: string[] = [];
  let result: CaseResult;
  try {
    if (o.duration !== undefined) {
      if (o.size !== undefined || o.pages !== undefined) throw new Error('give --duration or a size (--size/--pages), not both');
      cfg = await calibrate(cfg, o.duration, o, hooks);
      notes.push(`--duration ${o.duration}: calibrated to ${formatBytes(cfg.size)} (${cfg.size / cfg.pageSize} pages) from a short engine run`);
      progress.log(`note: ${notes[notes.length - 1]}`);
    }
    result = await runCase(cfg, { noNative: !o.native, hooks, workload });
  } finally {
    progress.end();
  }
  result.notes.unshift(...notes);
  if (o.json) console.log(JSON.stringify({ command, machine: machineJson(), ...result }, null, 2));
  else console.log(formatCase(result));
  if (o.report) {
    writeReport(o.report, { title: `uffd-engine bench: ${cfg.name}`, command, when: new Date().toISOString(), machine: machineLine(), cases: [result] });
    if (!o.json) console.log(`report: ${o.report}`);
  }
  return result.runs.some((r) => r.mismatches > 0) ? 3 : 0;
}

