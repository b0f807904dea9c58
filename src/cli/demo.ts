// `uffd-engine demo`: a region of a few GiB served lazily from a generated snapshot to
// several faulting threads, with a progress bar and a summary; every byte is verified.
import * as fs from 'node:fs';
import { Engine } from '../engine/engine.js';
import { histogramPercentile } from '../engine/shared.js';
import { MAP_NORESERVE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../kernel/constants.js';
import { bytesAt, close, ftruncate, memcmp, memfdCreate, mmap, munmap } from '../kernel/memory.js';
import { memoryType } from '../memory-types/index.js';
import { sources } from '../sources/index.js';
import { fillPattern } from '../workload/snapshot.js';
import { assignPages, runTouchers } from '../workload/threads.js';
import { helpText, OptionSpec, parseArgs } from './args.js';
import { formatBytes, progressBar } from './format.js';

const SPEC: OptionSpec = {
  size: { type: 'size', default: '2G', help: 'region size' },
  threads: { type: 'number', default: 4, help: 'faulting threads' },
  workers: { type: 'number', default: 2, help: 'engine worker threads' },
  pattern: { type: 'string', default: 'random', help: 'access pattern: random, sequential, strided, interleaved' },
  prefetch: { type: 'boolean', default: true, help: 'read-ahead around faults and background population (--no-prefetch: pure on-demand)' },
  snapshot: { type: 'string', help: 'serve this file instead of a generated snapshot (must be at least --size bytes)' },
  json: { type: 'boolean', default: false, help: 'print the summary as JSON' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

type DemoOptions = {
  size: number; threads: number; workers: number; pattern: string; prefetch: boolean;
  snapshot?: string; json: boolean; help: boolean;
};

export async function run(args: string[]): Promise<number> {
  const o = parseArgs<DemoOptions>(args, SPEC);
  if (o.help) {
    console.log(helpText('demo', 'Serves a generated snapshot lazily to faulting threads and verifies every byte.', SPEC));
    return 0;
  }
  const sizeBytes = o.size;
  if (sizeBytes % 4096 || sizeBytes <= 0) throw new Error(`--size must be a positive multiple of 4096 (got ${sizeBytes})`);
  if (!['random', 'sequential', 'strided', 'interleaved'].includes(o.pattern)) throw new Error(`--pattern must be random, sequential, strided or interleaved (got ${o.pattern})`);
  const log = (s: string) => { if (!o.json) console.log(s); };
  const tty = process.stderr.isTTY;

  // The snapshot: a file the user names, or a generated one in a memfd (no disk needed).
  let snapAddr: number;
  let releaseSnap: () => void;
  let source;
  const tGen = Date.now();
  if (o.snapshot) {
    const st = fs.statSync(o.snapshot);
    if (st.size < sizeBytes) throw new Error(`snapshot ${o.snapshot} has ${st.size} bytes; --size ${sizeBytes} needs at least that many`);
    source = sources.file(o.snapshot);
    const fd = fs.openSync(o.snapshot, 'r');
    snapAddr = mmap(sizeBytes, PROT_READ, MAP_SHARED, fd, 0);
    fs.closeSync(fd);
    releaseSnap = () => munmap(snapAddr, sizeBytes);
    log(`snapshot: ${o.snapshot} (${formatBytes(sizeBytes)})`);
  } else {
    const fd = memfdCreate('uffd-engine-demo-snapshot');
    ftruncate(fd, sizeBytes);
    snapAddr = mmap(sizeBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    close(fd);
    const chunk = 64 * 1024 * 1024;
    for (let off = 0; off < sizeBytes; off += chunk) {
      fillPattern(bytesAt(snapAddr + off, Math.min(chunk, sizeBytes - off)), 42, off);
      if (tty && !o.json) process.stderr.write(`\rgenerating snapshot ${progressBar(off + chunk, sizeBytes)}`);
    }
    if (tty && !o.json) process.stderr.write('\r\x1b[K');
    source = sources.address(snapAddr, sizeBytes);
    releaseSnap = () => munmap(snapAddr, sizeBytes);
    log(`snapshot: generated ${formatBytes(sizeBytes)} in memory (${((Date.now() - tGen) / 1000).toFixed(1)} s)`);
  }

  const region = memoryType('anon').create({ size: sizeBytes, noReserve: true });
  const engine = await Engine.start({
    regions: [{ region, source }],
    workers: o.workers,
    prefetch: o.prefetch ? { readAhead: 1024 * 1024, background: true } : false,
  });
  const pages = sizeBytes / 4096;
  log(`serving ${formatBytes(sizeBytes)} (${pages} pages) at 0x${region.addr.toString(16)} with ${o.workers} workers, ` +
    `${o.threads} faulting threads, ${o.pattern} access, prefetch ${o.prefetch ? 'on' : 'off'}`);
  const progress = new SharedArrayBuffer(4);
  const prog = new Int32Array(progress);
  const jobs = assignPages(pages, o.threads, o.pattern as 'random').map((p) => ({
    addr: region.addr, pageSize: 4096, pages: p, expectAddr: snapAddr, write: false, progress,
  }));
  const t0 = Date.now();
  const ticker = setInterval(() => {
    if (o.json) return;
    const st = engine.stats();
    const done = Atomics.load(prog, 0);
    const sec = (Date.now() - t0) / 1000;
    const line = `${progressBar(done, pages)} touched ${done}/${pages}  filled ${formatBytes(st.bytes)}  ` +
      `(demand ${st.pages.demand}, read-ahead ${st.pages.readahead}, background ${st.pages.background})  ${formatBytes(st.bytes / Math.max(sec, 1e-3))}/s`;
    if (tty) process.stderr.write(`\r\x1b[K${line}`);
  }, 100);
  let results;
  try {
    results = await runTouchers(jobs, 600_000);
  } finally {
    clearInterval(ticker);
    if (tty && !o.json) process.stderr.write('\r\x1b[K');
  }
  const touchSec = (Date.now() - t0) / 1000;
  const lastDemand = engine.stats();
  const stats = await engine.stop(); // 'complete': whatever was not touched is filled before unregistering
  const totalSec = (Date.now() - t0) / 1000;
  const tVerify = Date.now();
  const wholeOk = memcmp(region.addr, snapAddr, sizeBytes) === 0;
  const verifySec = (Date.now() - tVerify) / 1000;
  const mismatches = results.reduce((n, r) => n + r.mismatches, 0);
  const hist = new Array<number>(results[0]?.histogram.length ?? 0).fill(0);
  for (const r of results) r.histogram.forEach((v, i) => { hist[i] = (hist[i] ?? 0) + v; });
  const lat = results.flatMap((r) => r.latencies).sort((a, b) => a - b);
  const pct = (q: number): number => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))] ?? 0;
  const summary = {
    size: sizeBytes, pages, threads: o.threads, workers: o.workers, pattern: o.pattern, prefetch: o.prefetch,
    touchSec, totalSec,
    faultsPerSec: stats.faults.total / touchSec,
    touchedPagesPerSec: pages / touchSec,
    gibPerSec: sizeBytes / 1024 ** 3 / totalSec,
    pagesDemand: stats.pages.demand, pagesReadahead: stats.pages.readahead, pagesBackground: stats.pages.background,
    faults: stats.faults.total, faultsAtLastTouch: lastDemand.faults.total,
    latencyUs: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: lat[lat.length - 1] ?? 0, histP99UpperEdge: histogramPercentile(hist, 0.99) },
    engineLatencyUs: { p50: stats.latencyUs.p50, p99: stats.latencyUs.p99 },
    cpuSec: { dispatcher: stats.dispatcher.cpuSec, workers: stats.workers.map((w) => w.cpuSec) },
    incidents: stats.incidents,
    verified: { pagesChecked: pages, mismatches, wholeRegionEqual: wholeOk, verifySec },
  };
  region.close();
  releaseSnap();
  const ok = mismatches === 0 && wholeOk && stats.errors === 0;
  if (o.json) {
    console.log(JSON.stringify(summary, null, 2));
  } else {
    log('');
    log(`touched every page in ${touchSec.toFixed(2)} s; fully populated in ${totalSec.toFixed(2)} s (${summary.gibPerSec.toFixed(2)} GiB/s)`);
    log(`faults served: ${stats.faults.total} (${Math.round(summary.faultsPerSec)}/s); pages filled: demand ${stats.pages.demand}, ` +
      `read-ahead ${stats.pages.readahead}, background ${stats.pages.background}`);
    log(`fault latency seen by the faulting threads: p50 ${summary.latencyUs.p50.toFixed(1)} µs, p90 ${summary.latencyUs.p90.toFixed(1)} µs, ` +
      `p99 ${summary.latencyUs.p99.toFixed(1)} µs, max ${summary.latencyUs.max.toFixed(0)} µs`);
    log(`engine CPU: dispatcher ${stats.dispatcher.cpuSec.toFixed(2)} s, workers ${stats.workers.map((w) => w.cpuSec.toFixed(2)).join(' + ')} s`);
    log(`verified: ${pages} pages byte by byte in the faulting threads (${mismatches} mismatches); whole region equals the snapshot: ${wholeOk ? 'yes' : 'NO'}`);
    log(ok ? 'OK' : 'FAILED');
  }
  return ok ? 0 : 1;
}
