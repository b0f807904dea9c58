// The engine side without the C program: for machines with no C compiler. The region is
// made in this process, the engine registers it, and JavaScript faulting threads
// (src/workload/threads/toucher.ts) touch it in the same pattern and verify every byte. Same figures,
// different faulting side (JS threads in the engine's own process): not comparable with the
// C workload's numbers, and reported as such.
import { Engine } from '../engine/engine.js';
import { memoryType } from '../memory-types/index.js';
import { sources } from '../sources/index.js';
import { makeSnapshot } from '../workload/snapshot.js';
import { assignPages, runTouchers } from '../workload/threads.js';
import type { BenchConfig, PhaseFigures, SideRun } from './engine-bench.js';
import type { HistogramBucket } from './native.js';

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
}

/** Why the JS workload cannot run this configuration, or null. */
export function jsWorkloadProblem(cfg: BenchConfig): string | null {
  if (cfg.kind !== 'missing') return 'the JavaScript fallback workload only does --kind missing';
  if (cfg.type === 'hugetlbfs') return 'the JavaScript fallback workload does not do hugetlbfs';
  if (cfg.bounce > 0) return 'the JavaScript fallback workload does not do --bounce';
  if (cfg.pattern === 'hot-set') return 'the JavaScript fallback workload does not do hot-set';
  return null;
}

export async function runEngineJsSide(cfg: BenchConfig, rep: number): Promise<SideRun> {
  const problem = jsWorkloadProblem(cfg);
  if (problem) throw new Error(problem);
  const type = memoryType(cfg.type === 'memfd' ? 'shmem' : 'anon');
  const region = type.create({ size: cfg.size });
  const snapshot = cfg.source === 'zero' ? null : makeSnapshot(cfg.size, cfg.seed);
  const t0 = performance.now();
  let engine: Engine | null = null;
  try {
    engine = await Engine.start({
      regions: [{ region, source: snapshot ? sources.buffer(snapshot) : sources.zero() }],
      workers: cfg.workers, stripe: cfg.stripe, prefetch: cfg.prefetch, readers: cfg.readers, inline: cfg.inline, inlineBatch: cfg.inlineBatch, wakeBatch: cfg.wakeBatch,
      spinMicros: cfg.spinMicros, dispatcherSpinMicros: cfg.dispatcherSpinMicros,
    });
    const pages = cfg.size / cfg.pageSize;
    const shares = assignPages(pages, cfg.threads, cfg.pattern === 'hot-set' ? 'random' : cfg.pattern, cfg.seed, cfg.stride ?? 16);
    const { addressOf } = await import('../kernel/libc.js');
    const expectAddr = snapshot ? addressOf(snapshot) : 0;
    const cpu0 = process.cpuUsage();
    const results = await runTouchers(shares.map((p) => ({ addr: region.addr, pageSize: cfg.pageSize, pages: p, expectAddr, write: false })));
    const cpu = process.cpuUsage(cpu0);
    const stats = await engine.stop({ mode: 'abandon' });
    engine = null;
    const elapsedSec = Math.max(...results.map((r) => r.elapsedMs)) / 1000;
    const touched = results.reduce((s, r) => s + r.touched, 0);
    const lat = results.flatMap((r) => r.latencies).sort((a, b) => a - b);
    const hist: HistogramBucket[] = [];
    const h = new Array<number>(32).fill(0);
    for (const r of results) r.histogram.forEach((v, i) => { h[i] = (h[i] ?? 0) + v; });
    let last = 0;
    h.forEach((v, i) => { if (v) last = i; });
    for (let i = 0; i <= last; i++) hist.push({ loUs: i === 0 ? 0 : 2 ** i, hiUs: 2 ** (i + 1), count: h[i] ?? 0 });
    const engineCpu = stats.dispatcher.cpuSec + stats.workers.reduce((s, w) => s + w.cpuSec, 0);
    const initial: PhaseFigures = {
      elapsedSec, pages: touched, faultsPerSec: touched / elapsedSec, pagesPerSec: touched / elapsedSec,
      mbPerSec: (touched * cfg.pageSize) / elapsedSec / (1024 * 1024),
      latencyUs: {
        p50: percentile(lat, 0.5), p90: percentile(lat, 0.9), p99: percentile(lat, 0.99), max: lat[lat.length - 1] ?? 0,
        mean: lat.reduce((s, v) => s + v, 0) / Math.max(1, lat.length), min: lat[0] ?? 0,
      },
      histogram: hist, handlerCpuSec: engineCpu, cpuPerFaultUs: touched ? (engineCpu / touched) * 1e6 : null,
      faultingCpuSec: (cpu.user + cpu.system) / 1e6 - engineCpu, handlerFaults: stats.faults.total,
    };
    const wall = (performance.now() - t0) / 1000;
    return {
      side: 'engine', handler: `engine (${cfg.workers} workers; JavaScript faulting threads, no C compiler)`, rep, initial, steady: null,
      mismatches: results.reduce((s, r) => s + r.mismatches, 0), mismatchBytes: 0, verifiedBytes: touched * cfg.pageSize,
      setupSec: 0, verifySec: 0, wallSec: wall, samples: [], phaseWindow: { start: 0, end: elapsedSec },
      features: '0x0', pid: process.pid,
    };
  } finally {
    if (engine) await engine.stop({ mode: 'abandon' }).catch(() => undefined);
    region.close();
  }
}
