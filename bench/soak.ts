// The soak: the bounce workload of the benchmark (the C program zaps its region and
// re-faults it, round after round) served by the engine for ~10^8 faults, while a timer
// kills a random engine worker every second or so (a throw in the middle of a fill, or its
// thread terminated). Each run ends with the C program checking every byte of its region;
// the process's resident memory is sampled between runs and must stay flat.
//
//   node --expose-gc dist/bench/soak.js [--faults 1e8] [--size 32M] [--rounds 120] [--kill-ms 1000]
//        [--kill both|throw|terminate|none] [--json]
//
// Kills: 'throw' makes a worker throw in the middle of a fill (its thread lives on and runs
// the shard again); 'terminate' ends its thread (the engine starts a new one). Every new
// thread costs resident memory that is never given back — Node's own ~15 KiB, and ~40 KiB
// more for loading koffi (bench/thread-churn.ts measures it) — so RSS grows with
// 'terminate' kills (and by a few threads per run: each run starts a fresh engine), and
// stays flat with 'throw' kills.
//
// Runs until --faults engine faults were served (or --max-minutes passed) and prints one
// summary: faults, rate, kills, mismatching pages (must be 0), RSS first/last/max.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Engine } from '../src/engine/engine.js';
import { helpText, OptionSpec, parseArgs } from '../src/cli/args.js';
import { DEFAULT_CONFIG, MiB, resolveBinary, runEngineSide, sourceFileFor, BenchConfig } from '../src/bench/engine-bench.js';

interface SoakOptions {
  faults: number; size: number; rounds: number; threads: number; workers: number; killMs: number;
  maxMinutes: number; json: boolean; help: boolean; kill: string;
}

export interface SoakResult {
  faults: number;
  runs: number;
  seconds: number;
  faultsPerSec: number;
  kills: { throw: number; terminate: number };
  incidents: number;
  mismatches: number;
  rssMiB: { first: number; last: number; max: number; samples: number[] };
  loadavg: number[];
}

export async function soak(o: SoakOptions, log: (s: string) => void = () => undefined): Promise<SoakResult> {
  const { binary, skipped } = await resolveBinary();
  if (!binary) throw new Error(`the soak needs the C workload: ${skipped}`);
  const cfg: BenchConfig = {
    ...DEFAULT_CONFIG, name: 'soak', size: o.size, threads: o.threads, workers: o.workers, pattern: 'random',
    prefetch: false, bounce: o.rounds, repeat: 1, reference: null,
  };
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-soak-'));
  const res: SoakResult = {
    faults: 0, runs: 0, seconds: 0, faultsPerSec: 0, kills: { throw: 0, terminate: 0 }, incidents: 0, mismatches: 0,
    rssMiB: { first: 0, last: 0, max: 0, samples: [] }, loadavg: [],
  };
  const t0 = Date.now();
  const deadline = t0 + o.maxMinutes * 60_000;
  try {
    const sourceFile = await sourceFileFor(cfg, tmpDir, binary);
    const env = { binary, tmpDir, sourceFile };
    while (res.faults < o.faults && Date.now() < deadline) {
      let engine: Engine | null = null;
      let timer: NodeJS.Timeout | null = null;
      const arm = (): void => {
        timer = setTimeout(() => {
          const e = engine;
          if (!e) return;
          const how = o.kill === 'throw' || o.kill === 'terminate' ? o.kill : Math.random() < 0.5 ? 'throw' as const : 'terminate' as const;
          e.killWorker(Math.floor(Math.random() * e.workers), how).then(() => { res.kills[how]++; }, () => undefined);
          arm();
        }, o.killMs * (0.5 + Math.random()));
      };
      let run;
      try {
        run = await runEngineSide(cfg, env, ++res.runs, {
          onEngine: (e) => {
            engine = e;
            e.on('incident', () => { res.incidents++; });
            if (o.kill !== 'none') arm();
          },
        });
      } finally {
        engine = null;
        if (timer) clearTimeout(timer);
      }
      res.faults += run.engine?.faults.total ?? 0;
      res.mismatches += run.mismatches;
      // With --expose-gc, collect first: the figure is then what is really kept.
      (globalThis as { gc?: () => void }).gc?.();
      const rss = process.memoryUsage().rss / MiB;
      res.rssMiB.samples.push(Math.round(rss * 10) / 10);
      res.seconds = (Date.now() - t0) / 1000;
      log(`run ${res.runs}: ${(res.faults / 1e6).toFixed(1)} M faults, ${Math.round(res.faults / res.seconds)} faults/s, ` +
        `kills ${res.kills.throw + res.kills.terminate}, mismatching pages ${res.mismatches}, rss ${rss.toFixed(1)} MiB, load ${(os.loadavg()[0] ?? 0).toFixed(1)}`);
    }
  } finally {
    fs.rmSync(tmpDir, { recursive: true, force: true });
  }
  const s = res.rssMiB.samples;
  res.rssMiB.first = s[0] ?? 0;
  res.rssMiB.last = s[s.length - 1] ?? 0;
  res.rssMiB.max = Math.max(0, ...s);
  res.faultsPerSec = res.seconds > 0 ? res.faults / res.seconds : 0;
  res.loadavg = os.loadavg().map((v) => Math.round(v * 100) / 100);
  return res;
}

async function main(): Promise<void> {
  const spec: OptionSpec = {
    faults: { type: 'number', default: 1e8, help: 'engine faults to serve' },
    size: { type: 'size', default: 32 * MiB, help: 'region of each run (the C program re-faults all of it each round)' },
    rounds: { type: 'number', default: 120, help: 'bounce rounds per run (each run ends with every byte checked)' },
    threads: { type: 'number', default: 8, help: 'faulting threads' },
    workers: { type: 'number', default: 2, help: 'engine workers' },
    killMs: { type: 'number', default: 1000, help: 'mean time between worker kills (uniform 0.5x-1.5x)' },
    kill: { type: 'string', default: 'both', help: "how workers are killed: 'throw' (mid-fill; the thread lives on), 'terminate' (the thread ends), 'both' (half each), 'none'" },
    maxMinutes: { type: 'number', default: 60, help: 'stop after this long even if --faults is not reached' },
    json: { type: 'boolean', default: false, help: 'print the summary as JSON' },
    help: { type: 'boolean', default: false, help: 'show this help' },
  };
  const o = parseArgs<SoakOptions & Record<string, unknown>>(process.argv.slice(2), spec);
  if (!['both', 'throw', 'terminate', 'none'].includes(o.kill)) {
    console.error(`soak: --kill must be both, throw, terminate or none (got ${o.kill})`);
    process.exit(2);
  }
  if (o.help) {
    console.log(helpText('soak (node dist/bench/soak.js)', 'The bounce workload served by the engine for --faults faults, with random worker kills; every byte checked.', spec));
    return;
  }
  const r = await soak(o, (s) => process.stderr.write(`${s}\n`));
  const rss = r.rssMiB.samples;
  if (o.json) console.log(JSON.stringify(r));
  else {
    console.log(`soak: ${r.faults} faults in ${r.runs} runs, ${r.seconds.toFixed(0)} s (${Math.round(r.faultsPerSec)} faults/s); ` +
      `worker kills ${r.kills.throw} throw + ${r.kills.terminate} terminate (${r.incidents} incidents); mismatching pages ${r.mismatches}; ` +
      `RSS first ${r.rssMiB.first} MiB, last ${r.rssMiB.last} MiB, max ${r.rssMiB.max} MiB over ${rss.length} runs; load ${r.loadavg.join(' ')}`);
  }
  process.exitCode = r.mismatches ? 1 : 0;
}

if (require.main === module) {
  main().catch((e) => {
    console.error(`soak: ${(e as Error).message}`);
    process.exit(2);
  });
}
