// `uffd-engine bench --suite`: the cases the issue sets targets for, with small defaults,
// and one table of engine vs native with the target each is held to.
//
//   throughput  anon missing 4 KiB, random, 8 faulting threads, 2 workers / 2 native handlers, no prefetch
//   serial      the round trip: 1 faulting thread, 1 worker / 1 native handler, random, pinned
//               to different CPUs (--pin split)
//   restore     a sequential restore (1 thread) with prefetch on, vs Firecracker's page-at-a-time
//               handler (fc), plus memcpy bandwidth measured in the same run
//   bounce      steady state: 5 rounds of zap + re-fault after the initial population
//   sweep       the throughput case at 1/2/4/8/16/64 faulting threads x 1/2/4 workers (src/bench/sweep.ts)
//   memory      RSS overhead of an engine over a 1 TiB sparse registered region (fresh process)
import { BenchConfig, CaseResult, DEFAULT_CONFIG, formatBytes, formatCase, formatNum, formatRate, GiB, Hooks, MiB, runCase } from './engine-bench.js';
import type { TargetRow } from './report.js';
import { measureRss, RssMeasurement } from './rss.js';
import { formatSweep, runSweep, SweepRow } from './sweep.js';

export interface SuiteOptions {
  repeat?: number;
  /** Size of the sequential restore (default 256 MiB; the figure is 2 GiB: --restore-size 2G). */
  restoreSize?: number;
  /** Region of the memory case (default 1 TiB). */
  rssSize?: number;
  noNative?: boolean;
  workload?: 'c' | 'js';
  hooks?: Hooks;
  /** Only these cases (names). */
  only?: string[];
  /** Overrides applied to every case (e.g. spinMicros, inline) for tuning experiments. */
  engine?: Partial<Pick<BenchConfig, 'readers' | 'inline' | 'inlineBatch' | 'wakeBatch' | 'spinMicros' | 'dispatcherSpinMicros' | 'dispatcherNice' | 'warmUp' | 'stripe'>>;
  /** The sweep case: thread and worker counts (default SWEEP_THREADS x SWEEP_WORKERS), region per run (default 32 MiB). */
  sweep?: { threads?: number[]; workers?: number[]; size?: number };
}

export interface SuiteResult {
  cases: CaseResult[];
  rss: { big: RssMeasurement; small: RssMeasurement } | null;
  /** The scaling sweep (engine/native at each thread and worker count). */
  sweep: SweepRow[] | null;
  targets: TargetRow[];
}

export const SUITE_CASES = ['throughput', 'serial', 'restore', 'bounce', 'sweep', 'memory'] as const;

/** The case configurations of the suite (and of `bench --mode NAME`). */
export function suiteConfig(name: string, o: SuiteOptions = {}): BenchConfig {
  const repeat = o.repeat ?? 3;
  const engine = Object.fromEntries(Object.entries(o.engine ?? {}).filter(([, v]) => v !== undefined));
  const base: BenchConfig = { ...DEFAULT_CONFIG, repeat, ...engine };
  switch (name) {
    case 'throughput':
      return { ...base, name, size: 256 * MiB, threads: 8, workers: 2, pattern: 'random', prefetch: false, reference: 'native' };
    case 'serial':
      // Pinned split (the faulting thread on CPU 0, every handler thread on the last CPU), as a
      // vCPU and its handler usually are: unpinned, 2 vCPUs make the round trip a lottery
      // between ~9 µs (both on one CPU) and ~60-90 µs (a cross-CPU wake-up of a halted vCPU).
      return { ...base, name, size: 32 * MiB, threads: 1, workers: 1, pattern: 'random', prefetch: false, reference: 'native', pin: 'split' };
    case 'restore': {
      const size = o.restoreSize ?? 256 * MiB;
      return {
        ...base, name, size, threads: 1, workers: 2, pattern: 'sequential', prefetch: true, reference: 'fc',
        memcpy: Math.min(size, 2 * GiB), plainFaults: true,
      };
    }
    case 'bounce':
      return { ...base, name, size: 64 * MiB, threads: 8, workers: 2, pattern: 'random', prefetch: false, bounce: 5, reference: 'native' };
    default:
      throw new Error(`unknown case "${name}"; cases: ${SUITE_CASES.join(', ')}`);
  }
}

function fmtRatio(v: number | null): string {
  return v === null ? '–' : `${v.toFixed(2)}x`;
}

/** The targets of the issue, checked against a suite's results. */
export function suiteTargets(cases: CaseResult[], rss: SuiteResult['rss']): TargetRow[] {
  const rows: TargetRow[] = [];
  const find = (n: string) => cases.find((c) => c.config.name === n);
  const t = find('throughput');
  if (t) {
    const r = t.ratios.faultsPerSec;
    rows.push({ name: 'throughput (8 threads, 2 workers, anon random)', target: 'engine >= 0.8x native faults/s', measured: fmtRatio(r), met: r === null ? null : r >= 0.8 });
  }
  const s = find('serial');
  if (s) {
    const r = s.ratios.p50;
    rows.push({ name: 'serial round trip (1 thread)', target: 'engine p50 <= 1.3x native', measured: fmtRatio(r), met: r === null ? null : r <= 1.3 });
  }
  const re = find('restore');
  if (re) {
    const r = re.ratios.pagesPerSec;
    rows.push({
      name: `sequential restore ${formatBytes(re.config.size)} with prefetch`, target: '>= 2x the fc handler pages/s',
      measured: fmtRatio(r), met: r === null ? null : r >= 2,
    });
    const m = re.ratios.memcpy;
    rows.push({
      name: `sequential restore ${formatBytes(re.config.size)} vs memcpy`, target: 'within 50% of memcpy (>= 0.5)',
      measured: m === null ? '–' : `${m.toFixed(2)} (${formatNum(re.engine?.initial.mbPerSec.median ?? NaN, 0)} MiB/s vs ${formatNum(re.memcpy?.mbPerSec ?? NaN, 0)} MiB/s)`,
      met: m === null ? null : m >= 0.5,
    });
  }
  const b = find('bounce');
  if (b) {
    const r = b.ratios.faultsPerSec;
    rows.push({ name: 'bounce steady state (8 threads, 2 workers)', target: '(no target) engine/native faults/s', measured: fmtRatio(r), met: null });
  }
  if (rss) {
    rows.push({
      name: `memory: ${formatBytes(rss.big.regionSize)} sparse registered region`, target: '< 64 MiB RSS overhead',
      measured: `${rss.big.overheadMiB.toFixed(1)} MiB (${rss.big.overheadTouchedMiB.toFixed(1)} MiB after ${rss.big.touched} sparse faults)`,
      met: rss.big.overheadMiB < 64 && rss.big.overheadTouchedMiB < 64,
    });
  }
  return rows;
}

export async function runSuite(o: SuiteOptions = {}): Promise<SuiteResult> {
  const names = o.only?.length ? o.only : [...SUITE_CASES];
  for (const n of names) if (!(SUITE_CASES as readonly string[]).includes(n)) throw new Error(`unknown case "${n}"; cases: ${SUITE_CASES.join(', ')}`);
  const cases: CaseResult[] = [];
  for (const name of names) {
    if (name === 'memory' || name === 'sweep') continue;
    cases.push(await runCase(suiteConfig(name, o), { noNative: o.noNative, hooks: o.hooks, workload: o.workload }));
  }
  let rss: SuiteResult['rss'] = null;
  if (names.includes('memory')) {
    o.hooks?.onRunStart?.(`memory: engine over a ${formatBytes(o.rssSize ?? 2 ** 40)} sparse region (fresh process)`, 1, 2);
    const big = await measureRss(o.rssSize ?? 2 ** 40);
    o.hooks?.onRunStart?.('memory: the same over 1 GiB (fixed cost of an engine)', 2, 2);
    const small = await measureRss(GiB);
    rss = { big, small };
  }
  let sweep: SweepRow[] | null = null;
  if (names.includes('sweep')) {
    const engine = Object.fromEntries(Object.entries(o.engine ?? {}).filter(([, v]) => v !== undefined));
    sweep = await runSweep({
      threads: o.sweep?.threads, workers: o.sweep?.workers, size: o.sweep?.size ?? 32 * MiB, repeat: o.repeat,
      noNative: o.noNative, hooks: o.hooks, engine,
    });
  }
  return { cases, rss, sweep, targets: suiteTargets(cases, rss) };
}

export function rssLines(rss: NonNullable<SuiteResult['rss']>): string[] {
  const { big, small } = rss;
  return [
    `engine over a ${formatBytes(big.regionSize)} MAP_NORESERVE anon region (registered, ${big.workers} workers): ` +
      `RSS ${big.mappedMiB.toFixed(1)} -> ${big.startedMiB.toFixed(1)} MiB when started (+${big.overheadMiB.toFixed(1)} MiB), ` +
      `+${big.overheadTouchedMiB.toFixed(1)} MiB after ${big.touched} faults spread over the region; page-state table ${big.pageStateTableMiB} MiB of address space`,
    `the same over ${formatBytes(small.regionSize)}: +${small.overheadMiB.toFixed(1)} MiB started, +${small.overheadTouchedMiB.toFixed(1)} MiB after ${small.touched} faults ` +
      `=> what grows with the region: ${(big.overheadMiB - small.overheadMiB).toFixed(1)} MiB started, ${(big.overheadTouchedMiB - small.overheadTouchedMiB).toFixed(1)} MiB after the faults`,
  ];
}

/** The summary table of a suite. */
export function formatSuite(r: SuiteResult): string {
  const lines: string[] = [];
  const row = (a: string, b: string, c: string, d: string, e: string, f: string) =>
    lines.push(`${a.padEnd(12)}${b.padEnd(34)}${c.padEnd(22)}${d.padEnd(22)}${e.padEnd(10)}${f}`);
  row('case', 'workload', 'native', 'engine', 'ratio', 'target');
  for (const c of r.cases) {
    const cfg = c.config;
    const phase = c.ratios.phase;
    const n = c.native?.[phase] ?? null;
    const e = c.engine?.[phase] ?? null;
    const fps = (s: typeof n) => (s ? `${formatRate(s.faultsPerSec.median)} faults/s` : '–');
    const p50 = (s: typeof n) => (s ? `p50 ${formatNum(s.p50.median)} µs` : '–');
    const target = r.targets.find((t) => t.name.startsWith(cfg.name === 'restore' ? 'sequential restore' : cfg.name === 'serial' ? 'serial' : cfg.name));
    const mark = target && target.met !== null ? (target.met ? ' ✔' : ' ✘') : '';
    if (cfg.name === 'serial') {
      row(cfg.name, `1 thread, ${cfg.workers} worker, pin ${cfg.pin ?? 'none'}`, p50(n), p50(e), fmtRatio(c.ratios.p50), `<= 1.3x${mark}`);
      row('', '', fps(n), fps(e), fmtRatio(c.ratios.faultsPerSec), '');
    } else if (cfg.name === 'restore') {
      const ref = c.runs.find((x) => x.side === 'native') ? 'fc' : 'native';
      row(cfg.name, `${formatBytes(cfg.size)} sequential, prefetch`, n ? `${ref} ${formatRate(n.pagesPerSec.median)} pages/s` : '–',
        e ? `${formatRate(e.pagesPerSec.median)} pages/s` : '–', fmtRatio(c.ratios.pagesPerSec), `>= 2x${mark}`);
      const mt = r.targets.find((t) => t.name.endsWith('vs memcpy'));
      row('', 'vs memcpy', c.memcpy ? `memcpy ${formatNum(c.memcpy.mbPerSec, 0)} MiB/s` : '–', e ? `${formatNum(e.mbPerSec.median, 0)} MiB/s` : '–',
        c.ratios.memcpy === null ? '–' : c.ratios.memcpy.toFixed(2), `>= 0.5${mt && mt.met !== null ? (mt.met ? ' ✔' : ' ✘') : ''}`);
    } else if (cfg.name === 'bounce') {
      row(cfg.name, `${formatBytes(cfg.size)} x ${cfg.bounce} rounds, steady`, fps(n), fps(e), fmtRatio(c.ratios.faultsPerSec), '');
    } else {
      row(cfg.name, `${cfg.threads} threads, ${cfg.workers} workers, ${cfg.pattern}`, fps(n), fps(e), fmtRatio(c.ratios.faultsPerSec), `>= 0.8x${mark}`);
      row('', '', p50(n), p50(e), fmtRatio(c.ratios.p50), '');
    }
  }
  if (r.rss) {
    const t = r.targets.find((x) => x.name.startsWith('memory'));
    row('memory', `${formatBytes(r.rss.big.regionSize)} sparse, registered`, '–', `+${r.rss.big.overheadMiB.toFixed(1)} MiB RSS`, '',
      `< 64 MiB${t && t.met !== null ? (t.met ? ' ✔' : ' ✘') : ''}`);
  }
  const reps = r.cases[0]?.config.repeat;
  if (reps) lines.push(`(median of ${reps} runs per side; every run verified every byte: ` +
    `${r.cases.reduce((s, c) => s + c.runs.reduce((t, x) => t + x.mismatches, 0), 0)} mismatching pages)`);
  return lines.join('\n');
}

/** The full text: the summary table, then each case's side-by-side table. */
export function formatSuiteDetails(r: SuiteResult): string {
  const parts = [formatSuite(r)];
  for (const c of r.cases) parts.push(formatCase(c));
  if (r.sweep) parts.push(`scaling sweep (anon random, no prefetch; engine workers vs as many native handler threads):\n${formatSweep(r.sweep)}`);
  if (r.rss) parts.push(rssLines(r.rss).join('\n'));
  return parts.join('\n\n');
}
