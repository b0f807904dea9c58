// The scaling sweep: the throughput case (anon missing 4 KiB, random, no prefetch) at several
// faulting-thread counts and engine worker counts, each engine run beside the native
// reference with as many handler threads, in the same run. One row per (threads, workers).
import { BenchConfig, CaseResult, DEFAULT_CONFIG, formatNum, formatRate, Hooks, MiB, runCase } from './engine-bench.js';

export const SWEEP_THREADS = [1, 2, 4, 8, 16, 64];
export const SWEEP_WORKERS = [1, 2, 4];

export interface SweepOptions {
  threads?: number[];
  workers?: number[];
  /** Region per run (default 64 MiB). */
  size?: number;
  repeat?: number;
  noNative?: boolean;
  hooks?: Hooks;
  engine?: Partial<BenchConfig>;
}

export interface SweepRow {
  threads: number;
  workers: number;
  engineFaultsPerSec: number | null;
  nativeFaultsPerSec: number | null;
  /** The case's ratios (engine / native, medians): faultsPerSec, p50, cpuPerFaultUs. */
  ratios: CaseResult['ratios'];
  mismatches: number;
}

export function sweepConfig(threads: number, workers: number, o: SweepOptions = {}): BenchConfig {
  return {
    ...DEFAULT_CONFIG, ...o.engine, name: `sweep ${threads}t/${workers}w`, size: o.size ?? 64 * MiB, threads, workers,
    pattern: 'random', prefetch: false, reference: 'native', repeat: o.repeat ?? 3,
  };
}

export async function runSweep(o: SweepOptions = {}): Promise<SweepRow[]> {
  const rows: SweepRow[] = [];
  for (const workers of o.workers ?? SWEEP_WORKERS) {
    for (const threads of o.threads ?? SWEEP_THREADS) {
      const c = await runCase(sweepConfig(threads, workers, o), { noNative: o.noNative, hooks: o.hooks });
      rows.push({
        threads, workers, engineFaultsPerSec: c.engine?.initial.faultsPerSec.median ?? null,
        nativeFaultsPerSec: c.native?.initial.faultsPerSec.median ?? null, ratios: c.ratios,
        mismatches: c.runs.reduce((n, r) => n + r.mismatches, 0),
      });
    }
  }
  return rows;
}

/** A markdown table (docs/performance.md quotes it). */
export function formatSweep(rows: SweepRow[]): string {
  const r2 = (v: number | null) => (v === null ? '–' : `${v.toFixed(2)}x`);
  const lines = [
    '| faulting threads | workers / native handlers | native faults/s | engine faults/s | faults/s ratio | p50 ratio | CPU/fault ratio |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    lines.push(`| ${r.threads} | ${r.workers} | ${r.nativeFaultsPerSec === null ? '–' : formatRate(r.nativeFaultsPerSec)} | ` +
      `${r.engineFaultsPerSec === null ? '–' : formatRate(r.engineFaultsPerSec)} | ${r2(r.ratios.faultsPerSec)} | ${r2(r.ratios.p50)} | ${r2(r.ratios.cpuPerFaultUs)} |`);
  }
  const bad = rows.reduce((n, r) => n + r.mismatches, 0);
  lines.push('', `(median of each side's runs; ${bad} mismatching pages over all runs; geometric mean of the faults/s ratios ` +
    `${formatNum(geomean(rows.map((r) => r.ratios.faultsPerSec).filter((v): v is number => v !== null)), 2)}x)`);
  return lines.join('\n');
}

function geomean(xs: number[]): number {
  return xs.length ? Math.exp(xs.reduce((s, x) => s + Math.log(x), 0) / xs.length) : NaN;
}
