// Memory overhead of the engine for a large sparse region: map a MAP_NORESERVE anonymous
// region (1 TiB by default), register it and start an engine over it, and read this
// process's resident set (VmRSS, /proc/self/status) before and after; then fault a few
// sparse pages and stop. Runs in a fresh process (node dist/bench/rss.js --size 1T) so
// nothing else the benchmark did is in the figure.
//
// What the figure contains: the page-state table (2 bits per page and a 1-bit drop mark:
// 96 MiB of address space for 1 TiB, resident only where touched), the counters and rings, and the engine's
// threads (a dispatcher and `workers` piscina workers, each a V8 isolate). The same
// measurement on a small region (1 GiB) separates what grows with the region from what
// every engine costs.
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import { Engine } from '../engine/engine.js';
import { PageStates } from '../engine/shared.js';
import { bytesAt } from '../kernel/memory.js';
import { memoryType } from '../memory-types/index.js';
import { sources } from '../sources/index.js';

export interface RssMeasurement {
  regionSize: number;
  workers: number;
  /** VmRSS before anything (node + modules), MiB. */
  baseMiB: number;
  /** After mmap(MAP_NORESERVE) of the region. */
  mappedMiB: number;
  /** After Engine.start (region registered, threads running). */
  startedMiB: number;
  /** After faulting `touched` pages spread over the region. */
  touchedMiB: number;
  touched: number;
  /** After engine.stop(). */
  stoppedMiB: number;
  /** startedMiB - mappedMiB: what starting an engine over the region cost. */
  overheadMiB: number;
  /** touchedMiB - mappedMiB, minus the touched pages themselves. */
  overheadTouchedMiB: number;
  /** Address space of the page-state table (2 bits per page and a 1-bit drop mark), MiB. */
  pageStateTableMiB: number;
  /** VmRSS split as the kernel reports it at the 'started' point, MiB. */
  startedSplit: { anon: number; file: number; shmem: number };
}

function status(): { rss: number; anon: number; file: number; shmem: number } {
  const text = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number((new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text) ?? [0, 0])[1]) / 1024;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile'), shmem: kb('RssShmem') };
}

function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 200));
}

/** Measures in this process. Call in a fresh process (see measureRss). */
export async function measureRssHere(size: number, workers = 2, touch = 1024): Promise<RssMeasurement> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  await settle();
  const base = status();
  const region = memoryType('anon').create({ size, noReserve: true });
  try {
    const mapped = status();
    const engine = await Engine.start({ regions: [{ region, source: sources.zero() }], workers });
    await settle();
    gc?.();
    const started = status();
    // Fault `touch` pages spread over the region (this thread blocks in each fault until
    // the dispatcher has served it).
    const pages = size / 4096;
    const n = Math.min(touch, pages);
    let sink = 0;
    for (let i = 0; i < n; i++) {
      const page = Math.floor((i * pages) / n);
      sink += bytesAt(region.addr + page * 4096, 1)[0] ?? 0;
    }
    await settle();
    const touched = status();
    await engine.stop({ mode: 'abandon' });
    await settle();
    const stopped = status();
    void sink;
    return {
      regionSize: size, workers,
      baseMiB: base.rss, mappedMiB: mapped.rss, startedMiB: started.rss, touchedMiB: touched.rss, touched: n,
      stoppedMiB: stopped.rss,
      overheadMiB: started.rss - mapped.rss,
      // Zero-page faults map the shared zero page (read touches): no RSS of their own.
      overheadTouchedMiB: touched.rss - mapped.rss,
      pageStateTableMiB: PageStates.allocate(size / 4096).byteLength / (1024 * 1024),
      startedSplit: { anon: started.anon, file: started.file, shmem: started.shmem },
    };
  } finally {
    region.close();
  }
}

/** Runs measureRssHere in a fresh node process and returns its result. */
export function measureRss(size: number, workers = 2, timeoutMs = 120_000): Promise<RssMeasurement> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--size', String(size), '--workers', String(workers)], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'], execArgv: ['--expose-gc'],
    });
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = out.trim().split('\n').pop() ?? '';
      if (code !== 0) {
        reject(new Error(`rss measurement (${size} bytes) exited with ${code ?? signal}: ${err.trim() || line}`));
        return;
      }
      try {
        resolve(JSON.parse(line) as RssMeasurement);
      } catch (e) {
        reject(new Error(`rss measurement printed no result: ${(e as Error).message}: ${line.slice(0, 200)} ${err.trim()}`));
      }
    });
  });
}

/** The command line: --size BYTES --workers N --touch PAGES; prints one JSON line. */
export async function rssMain(argv: string[]): Promise<number> {
  const get = (name: string, def: number): number => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : def;
  };
  const r = await measureRssHere(get('--size', 2 ** 40), get('--workers', 2), get('--touch', 1024));
  console.log(JSON.stringify(r));
  return 0;
}

// measureRss() forks this module: the child measures and prints its result.
if (require.main === module) {
  rssMain(process.argv.slice(2)).then(() => process.exit(0), (e: Error) => {
    console.error(e.message);
    process.exit(1);
  });
}
