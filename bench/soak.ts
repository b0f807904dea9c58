// The soak: the bounce workload of the benchmark (the C program zaps its region and
// re-faults it, round after round) served by the engine for ~10^8 faults, while a timer
// kills a random engine worker every second or so (a throw in the middle of a fill, or its
// thread terminated). Each run ends with the C program checking every byte of its region;
// the process's resident memory is sampled between runs and must stay flat.
//
//   node --expose-gc --max-semi-space-size=1 dist/bench/soak.js [--faults 1e8] [--size 32M] [--rounds 120] [--kill-ms 1000]
//        [--kill both|throw|terminate|none] [--fresh-threads] [--max-minutes 60] [--json]
//
// Threads: every run is a new engine, but all of them serve on one reusable set of engine
// threads (EngineThreads, reusable), as a long-lived user should; --fresh-threads gives each
// run a set of its own (the old way, to compare). Kills: 'throw' makes a worker throw in the
// middle of a fill (its thread lives on and runs the shard again); 'terminate' ends its
// thread and piscina starts a new one. A new thread leaves resident memory behind when it
// ends (Node's own, and koffi's per-thread load, bench/thread-churn.ts), which no engine can
// give back: the soak measures that price here first (--churn threads loading the kernel
// layer, one after the other) and judges memory after taking it out.
//
// The verdicts (printed). With --kill split (the default) the soak runs in two phases and
// judges each on its own: (1) --faults faults with throw kills only (no thread ends): memory
// is flat when the least-squares slope of RSS over the cumulative faults, over the second
// half of the runs, is below --flat-kib KiB per million faults — nothing to take out; (2)
// terminate kills until --deaths worker threads have ended: the RSS and mappings each death
// leaves behind (slope over the deaths) must not exceed what a bare engine worker thread
// leaves when it ends (--churn, measured in this process first) by more than --death-slack
// KiB: a death costs no more than the thread itself. With --kill both|throw|terminate one
// phase runs and the rule is (1), after subtracting the measured price of every thread
// started meanwhile.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Engine } from '../src/engine/engine.js';
import { EngineThreads } from '../src/engine/threads.js';
import { mallocTrim } from '../src/kernel/memory.js';
import { helpText, OptionSpec, parseArgs } from '../src/cli/args.js';
import { DEFAULT_CONFIG, MiB, resolveBinary, runEngineSide, sourceFileFor, BenchConfig } from '../src/bench/engine-bench.js';
import { churn, ChurnResult, mappingCount, slope } from './thread-churn.js';

interface SoakOptions {
  faults: number; size: number; rounds: number; threads: number; workers: number; killMs: number;
  maxMinutes: number; json: boolean; help: boolean; kill: string; freshThreads: boolean; churn: number; flatKib: number;
  deaths: number; deathKillMs: number; deathSlack: number;
  rejudge?: string; threadKib?: number;
}

/** The process after one run (and a GC). */
export interface SoakSample {
  /** Engine faults served so far. */
  faults: number;
  /** Seconds since the soak began. */
  sec: number;
  rssMiB: number;
  /** RssAnon (/proc/self/status) after malloc_trim(0): private memory, where anything the process keeps lives. */
  anonMiB?: number;
  /** RssAnon before malloc_trim(0): with the free memory the C allocator held on to. */
  untrimmedAnonMiB?: number;
  /** RssFile: pages of mapped files (Node's binary and libraries) paged in; the kernel may drop them. */
  fileMiB?: number;
  heapMiB: number;
  externalMiB: number;
  /** Threads of the process now (/proc/self/status). */
  threads: number;
  /** Open fds now (/proc/self/fd). */
  fds: number;
  /** Memory mappings now (/proc/self/maps): an ended thread that used koffi leaves ~3 (docs/performance.md). */
  maps: number;
  /** Engine threads started so far (sets started, and replacements of terminated workers). */
  threadsStarted: number;
  /** Which phase of a split soak the run belonged to ('faults': throw kills; 'deaths': terminate kills). */
  phase?: 'faults' | 'deaths';
}

/** Phase 2 of a split soak: what each ended worker thread left behind, against a bare thread's price. */
export interface DeathVerdict {
  deaths: number;
  /** RSS slope over the deaths (KiB per ended thread), over every run of the phase. */
  kiBPerDeath: number;
  /** Mappings gained per ended thread, first run of the phase to last. */
  mapsPerDeath: number;
  /** What a bare engine worker thread leaves when it ends, measured in this process (--churn). */
  threadKiB: number;
  threadMaps: number;
  slackKiB: number;
  withinPrice: boolean;
  rule: string;
}

export interface SoakVerdict {
  /** RSS per new thread, measured in this process before the soak (KiB). */
  threadKiB: number;
  /** RSS slope over faults, second half of the runs, as measured (KiB per million faults). */
  rawKiBPerMFaults: number;
  /** The same after subtracting threadKiB for each thread started in that half. */
  kiBPerMFaults: number;
  /** The slope of the whole RSS (private + file pages), for comparison (KiB per million faults). */
  rssKiBPerMFaults?: number;
  /** Threads started in the second half. */
  threadsStarted: number;
  /** Memory mappings gained in the second half per thread started there (koffi leaves ~3 per ended thread); null without samples of them. */
  mapsPerThread: number | null;
  limitKiBPerMFaults: number;
  flat: boolean;
  rule: string;
}

export interface SoakResult {
  faults: number;
  runs: number;
  seconds: number;
  faultsPerSec: number;
  threadsPerRun: 'reuse' | 'fresh';
  kills: { throw: number; terminate: number };
  incidents: number;
  mismatches: number;
  rssMiB: { first: number; last: number; max: number };
  samples: SoakSample[];
  verdict: SoakVerdict;
  /** Split soaks: the death phase's verdict. */
  deathVerdict: DeathVerdict | null;
  loadavg: number[];
}

const round1 = (v: number): number => Math.round(v * 10) / 10;

/** RssAnon and RssFile (KiB) and the thread count of this process (/proc/self/status). */
function procStatus(): { anon: number; file: number; threads: number } {
  const text = fs.readFileSync('/proc/self/status', 'utf8');
  const field = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? NaN);
  return { anon: field('RssAnon'), file: field('RssFile'), threads: field('Threads') };
}

/**
 * The memory phase 1 is judged on: private memory (RssAnon) when sampled. RSS also counts
 * file pages (Node's own code paged in as new paths run, dropped again under pressure): they
 * move RSS by megabytes over a soak but are nothing the process keeps. Older JSON: RSS.
 */
const keptKiB = (s: SoakSample): number => (s.anonMiB ?? s.rssMiB) * 1024;

function sample(faults: number, sec: number, threadsStarted: number): SoakSample {
  // With --expose-gc, collect first: the figures are then what is really kept.
  (globalThis as { gc?: () => void }).gc?.();
  const held = procStatus().anon;
  mallocTrim(); // free memory the C allocator holds is not kept: judge what is live
  const m = process.memoryUsage();
  const st = procStatus();
  return {
    faults, sec: Math.round(sec), rssMiB: round1(m.rss / MiB), anonMiB: round1(st.anon / 1024), untrimmedAnonMiB: round1(held / 1024), fileMiB: round1(st.file / 1024), heapMiB: round1(m.heapUsed / MiB), externalMiB: round1(m.external / MiB),
    threads: st.threads, fds: fs.readdirSync('/proc/self/fd').length,
    maps: mappingCount(), threadsStarted,
  };
}

/** KiB per thread over the second half of a churn (the first threads also warm up what is allocated once). */
function threadPrice(c: ChurnResult): number {
  const n = c.rssMiB.length;
  const from = Math.floor(n / 2);
  const step = Math.max(1, Math.floor(c.threads / 10)); // as churn() samples
  const xs = c.rssMiB.slice(from).map((_, i) => (from + i) * step);
  return slope(xs, c.rssMiB.slice(from).map((v) => v * 1024));
}

/** Phase 2's rule: RSS and mappings per ended thread within a bare thread's price (+ slack). */
export function judgeDeaths(samples: SoakSample[], threadKiB: number, threadMaps: number, slackKiB: number): DeathVerdict {
  const first = samples[0];
  const last = samples[samples.length - 1];
  const deaths = first && last ? last.threadsStarted - first.threadsStarted : 0;
  const kib = samples.length >= 3 && deaths > 0 ? slope(samples.map((x) => x.threadsStarted), samples.map((x) => x.rssMiB * 1024)) : NaN;
  const maps = first && last && deaths > 0 ? (last.maps - first.maps) / deaths : NaN;
  const within = kib <= threadKiB + slackKiB && maps <= threadMaps + 0.5;
  return {
    deaths, kiBPerDeath: round1(kib), mapsPerDeath: Math.round(maps * 100) / 100, threadKiB: round1(threadKiB),
    threadMaps: Math.round(threadMaps * 100) / 100, slackKiB, withinPrice: within,
    rule: samples.length < 3 || deaths === 0 ? 'too few runs or deaths to judge' : `within the price when the least-squares slope of RSS over ended worker threads ` +
      `(${samples.length} runs, ${deaths} deaths) is at most ${round1(threadKiB)} + ${slackKiB} KiB and each death leaves at most ` +
      `${Math.round(threadMaps * 100) / 100} + 0.5 mappings (a bare engine worker thread's, measured in this process)`,
  };
}

/** The rule: RSS slope over the second half of the samples, net of the threads started there. */
export function judge(samples: SoakSample[], threadKiB: number, limit: number): SoakVerdict {
  const half = samples.slice(Math.floor(samples.length / 2));
  const xs = half.map((s) => s.faults / 1e6);
  const raw = half.length >= 3 ? slope(xs, half.map(keptKiB)) : NaN;
  const net = half.length >= 3 ? slope(xs, half.map((s) => keptKiB(s) - s.threadsStarted * threadKiB)) : NaN;
  const rss = half.length >= 3 ? slope(xs, half.map((s) => s.rssMiB * 1024)) : NaN;
  const onAnon = half.length > 0 && half.every((s) => s.anonMiB !== undefined);
  const first = half[0];
  const last = half[half.length - 1];
  const started = first && last ? last.threadsStarted - first.threadsStarted : 0;
  const mapsPerThread = first?.maps !== undefined && last?.maps !== undefined && started > 0
    ? Math.round(((last.maps - first.maps) / started) * 100) / 100 : null;
  return {
    threadKiB: round1(threadKiB), rawKiBPerMFaults: round1(raw), kiBPerMFaults: round1(net), rssKiBPerMFaults: round1(rss), threadsStarted: started, mapsPerThread,
    limitKiBPerMFaults: limit, flat: net < limit,
    rule: half.length < 3 ? 'too few runs to judge (at least 6)' : `flat when the least-squares slope of ${onAnon ? 'private memory (RssAnon)' : 'RSS'} over faults in the second half of the runs (${half.length} samples), ` +
      `less ${round1(threadKiB)} KiB per thread started there (${started}), is below ${limit} KiB per million faults`,
  };
}

export async function soak(o: SoakOptions, log: (s: string) => void = () => undefined): Promise<SoakResult> {
  const { binary, skipped } = await resolveBinary();
  if (!binary) throw new Error(`the soak needs the C workload: ${skipped}`);
  const cfg: BenchConfig = {
    ...DEFAULT_CONFIG, name: 'soak', size: o.size, threads: o.threads, workers: o.workers, pattern: 'random',
    prefetch: false, bounce: o.rounds, repeat: 1, reference: null,
  };
  // The price of a new thread in this process (also warms up what the first threads allocate once).
  const priced = o.churn > 0 ? await churn('shard-worker', o.churn) : null;
  const threadKiB = priced ? threadPrice(priced) : 0;
  const threadMaps = priced?.mapsPerThread ?? 0;
  log(`a new engine worker thread leaves ${round1(threadKiB)} KiB and ${threadMaps} mappings behind (${o.churn} threads started and ended)`);
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-soak-'));
  const res: SoakResult = {
    faults: 0, runs: 0, seconds: 0, faultsPerSec: 0, threadsPerRun: o.freshThreads ? 'fresh' : 'reuse',
    kills: { throw: 0, terminate: 0 }, incidents: 0, mismatches: 0,
    rssMiB: { first: 0, last: 0, max: 0 }, samples: [], verdict: judge([], 0, o.flatKib), deathVerdict: null, loadavg: [],
  };
  const split = o.kill === 'split';
  const t0 = Date.now();
  const deadline = t0 + o.maxMinutes * 60_000;
  let shared: EngineThreads | null = null;
  let threadsStarted = 0;
  try {
    if (!o.freshThreads) {
      shared = EngineThreads.start(o.workers, { reusable: true });
      await shared.ready;
      threadsStarted += o.workers + 1;
    }
    const sourceFile = await sourceFileFor(cfg, tmpDir, binary);
    const env = { binary, tmpDir, sourceFile };
    // Phase 1 ('faults'): until --faults faults; phase 2 of a split soak ('deaths'): until --deaths worker threads ended.
    let phase: 'faults' | 'deaths' = 'faults';
    let deathsFrom = 0;
    for (;;) {
      if (phase === 'faults' && res.faults >= o.faults) {
        if (!split || o.deaths <= 0) break;
        phase = 'deaths';
        deathsFrom = res.kills.terminate;
        log(`phase 2: terminate kills until ${o.deaths} worker threads have ended`);
      }
      if (phase === 'deaths' && res.kills.terminate - deathsFrom >= o.deaths) break;
      if (Date.now() >= deadline) break;
      const kill = split ? (phase === 'faults' ? 'throw' : 'terminate') : o.kill;
      const killMs = phase === 'deaths' ? o.deathKillMs : o.killMs;
      let engine: Engine | null = null;
      let timer: NodeJS.Timeout | null = null;
      const arm = (): void => {
        timer = setTimeout(() => {
          const e = engine;
          if (!e) return;
          const how = kill === 'throw' || kill === 'terminate' ? kill : Math.random() < 0.5 ? 'throw' as const : 'terminate' as const;
          e.killWorker(Math.floor(Math.random() * e.workers), how).then(() => {
            res.kills[how]++;
            if (how === 'terminate') threadsStarted++; // piscina starts a thread in its place
          }, () => undefined);
          arm();
        }, killMs * (0.5 + Math.random()));
      };
      if (o.freshThreads) threadsStarted += o.workers + 1;
      let run;
      try {
        run = await runEngineSide(cfg, env, ++res.runs, {
          threads: shared ?? undefined,
          onEngine: (e) => {
            engine = e;
            e.on('incident', () => { res.incidents++; });
            if (kill !== 'none') arm();
          },
        });
      } finally {
        engine = null;
        if (timer) clearTimeout(timer);
      }
      res.faults += run.engine?.faults.total ?? 0;
      res.mismatches += run.mismatches;
      res.seconds = (Date.now() - t0) / 1000;
      const s = sample(res.faults, res.seconds, threadsStarted);
      if (split) s.phase = phase;
      res.samples.push(s);
      log(`run ${res.runs}${split ? ` (${phase})` : ''}: ${(res.faults / 1e6).toFixed(1)} M faults, ${Math.round(res.faults / res.seconds)} faults/s, ` +
        `kills ${res.kills.throw} throw + ${res.kills.terminate} terminate, mismatching pages ${res.mismatches}, ` +
        `rss ${s.rssMiB} MiB (private ${s.anonMiB} trimmed from ${s.untrimmedAnonMiB}, file ${s.fileMiB}; heap ${s.heapMiB}, external ${s.externalMiB}), threads ${s.threads}, fds ${s.fds}, mappings ${s.maps}, load ${(os.loadavg()[0] ?? 0).toFixed(1)}`);
    }
  } finally {
    await shared?.destroy();
    fs.rmSync(tmpDir, { recursive: true, force: true });
  }
  const rss = res.samples.map((s) => s.rssMiB);
  res.rssMiB = { first: rss[0] ?? 0, last: rss[rss.length - 1] ?? 0, max: Math.max(0, ...rss) };
  res.faultsPerSec = res.seconds > 0 ? res.faults / res.seconds : 0;
  if (split) {
    // Phase 1 started no threads: nothing to take out. Phase 2 is judged per death.
    res.verdict = judge(res.samples.filter((x) => x.phase === 'faults'), 0, o.flatKib);
    // Phase 2 counts from the last run of phase 1 (no thread had ended yet).
    const from = res.samples.findIndex((x) => x.phase === 'deaths');
    if (o.deaths > 0 && from >= 0) res.deathVerdict = judgeDeaths(res.samples.slice(Math.max(0, from - 1)), threadKiB, threadMaps, o.deathSlack);
  } else {
    res.verdict = judge(res.samples, threadKiB, o.flatKib);
  }
  res.loadavg = os.loadavg().map((v) => Math.round(v * 100) / 100);
  return res;
}

function deathLine(d: DeathVerdict): string {
  return `worker deaths ${d.withinPrice ? 'within' : 'BEYOND'} a bare thread's price: ${d.kiBPerDeath} KiB and ${d.mapsPerDeath} mappings ` +
    `per ended thread (a bare engine worker thread: ${d.threadKiB} KiB, ${d.threadMaps} mappings); ${d.rule}`;
}

function verdictLine(v: SoakVerdict): string {
  return `memory ${v.flat ? 'flat' : 'NOT flat'}: ${v.kiBPerMFaults} KiB per million faults (${v.rawKiBPerMFaults} before taking out ` +
    `${v.threadsStarted} new threads at ${v.threadKiB} KiB each${v.mapsPerThread === null ? '' : `, which left ${v.mapsPerThread} mappings each`}` +
    `${v.rssKiBPerMFaults === undefined || Number.isNaN(v.rssKiBPerMFaults) ? '' : `; whole RSS ${v.rssKiBPerMFaults}`}); ${v.rule}`;
}

async function main(): Promise<void> {
  const spec: OptionSpec = {
    faults: { type: 'number', default: 1e8, help: 'engine faults to serve' },
    size: { type: 'size', default: 32 * MiB, help: 'region of each run (the C program re-faults all of it each round)' },
    rounds: { type: 'number', default: 120, help: 'bounce rounds per run (each run ends with every byte checked)' },
    threads: { type: 'number', default: 8, help: 'faulting threads' },
    workers: { type: 'number', default: 2, help: 'engine workers' },
    killMs: { type: 'number', default: 1000, help: 'mean time between worker kills (uniform 0.5x-1.5x)' },
    kill: { type: 'string', default: 'split', help: "how workers are killed: 'split' (throw kills for --faults faults, then terminate kills for --deaths deaths, each phase judged on its own), 'throw' (mid-fill; the thread lives on), 'terminate' (the thread ends), 'both' (half each), 'none'" },
    deaths: { type: 'number', default: 300, help: "--kill split: worker threads to end (terminate kills) in phase 2" },
    deathKillMs: { type: 'number', default: 250, help: '--kill split: mean time between terminate kills in phase 2' },
    deathSlack: { type: 'number', default: 16, help: "--kill split: KiB per death allowed above a bare thread's price (the noise of RSS sampling)" },
    freshThreads: { type: 'boolean', default: false, help: 'give each run fresh engine threads instead of one reusable set' },
    churn: { type: 'number', default: 200, help: 'engine worker threads started and ended before the soak to measure what a new thread costs (0: count nothing)' },
    rejudge: { type: 'string', help: 'print the verdict of a soak saved with --json (FILE) again, with --thread-kib, and exit' },
    threadKib: { type: 'number', help: 'with --rejudge: KiB per new thread to take out (default: the price that soak measured)' },
    flatKib: { type: 'number', default: 32, help: 'the verdict: memory is flat below this many KiB per million faults' },
    maxMinutes: { type: 'number', default: 60, help: 'stop after this long even if --faults is not reached' },
    json: { type: 'boolean', default: false, help: 'print the summary as JSON' },
    help: { type: 'boolean', default: false, help: 'show this help' },
  };
  const o = parseArgs<SoakOptions & Record<string, unknown>>(process.argv.slice(2), spec);
  if (!['split', 'both', 'throw', 'terminate', 'none'].includes(o.kill)) {
    console.error(`soak: --kill must be split, both, throw, terminate or none (got ${o.kill})`);
    process.exit(2);
  }
  if (o.help) {
    console.log(helpText('soak (node --expose-gc --max-semi-space-size=1 dist/bench/soak.js)', 'The bounce workload served by the engine for --faults faults, with random worker kills; every byte checked, memory judged.', spec));
    return;
  }
  if (o.rejudge) {
    const saved = JSON.parse(fs.readFileSync(o.rejudge, 'utf8')) as SoakResult;
    const v = judge(saved.samples, o.threadKib ?? saved.verdict.threadKiB, o.flatKib);
    console.log(o.json ? JSON.stringify(v) : verdictLine(v));
    process.exitCode = v.flat ? 0 : 1;
    return;
  }
  if (!(globalThis as { gc?: () => void }).gc) process.stderr.write('soak: run node with --expose-gc, or RSS samples include garbage not yet collected\n');
  if (!process.execArgv.some((a) => a.startsWith('--max-semi-space-size'))) {
    // V8 doubles an isolate's semi-spaces when many objects survive and keeps them (up to 16 MiB each, 4 isolates here).
    process.stderr.write("soak: run node with --max-semi-space-size=1, or V8's young generations growing during the run read as a slope (docs/performance.md)\n");
  }
  const r = await soak(o, (s) => process.stderr.write(`${s}\n`));
  const v = r.verdict;
  if (o.json) console.log(JSON.stringify(r));
  else {
    console.log(`soak: ${r.faults} faults in ${r.runs} runs (${r.threadsPerRun} threads), ${r.seconds.toFixed(0)} s (${Math.round(r.faultsPerSec)} faults/s); ` +
      `worker kills ${r.kills.throw} throw + ${r.kills.terminate} terminate (${r.incidents} incidents); mismatching pages ${r.mismatches}; ` +
      `RSS first ${r.rssMiB.first} MiB, last ${r.rssMiB.last} MiB, max ${r.rssMiB.max} MiB over ${r.samples.length} runs; load ${r.loadavg.join(' ')}`);
    console.log(verdictLine(v));
    if (r.deathVerdict) console.log(deathLine(r.deathVerdict));
  }
  process.exitCode = r.mismatches || !v.flat || (r.deathVerdict && !r.deathVerdict.withinPrice) ? 1 : 0;
}

if (require.main === module) {
  main().catch((e) => {
    console.error(`soak: ${(e as Error).message}`);
    process.exit(2);
  });
}
