// Working-set tracking benchmark (node dist/bench/wss-bench.js [--json] [options]):
//
//  1. Scan speed at scale: a 1 TiB sparse anon region (MAP_NORESERVE) with a working set of
//     --ws bytes in 2 MiB clusters spread over it. PAGEMAP_SCAN of PAGE_IS_PRESENT over the
//     whole TiB; a write-tracking interval (WP_ASYNC, scan + atomic re-arm) after the working
//     set is partly rewritten; tracker state and process RSS / page-table growth. Where the
//     kernel offers RWP (Linux 7.3), the same with access tracking (RWP_ASYNC: SET_MODE sync,
//     scan of PAGE_IS_ACCESSED, UFFDIO_RWPROTECT re-arm, SET_MODE async) after reads, once
//     without and once with the engine started for eviction (its page-state table spans the region).
//  2. Scan cost on a dense region: the tracker's filtered scan (generic kernel path) against the
//     PAGE_IS_WRITTEN-only fast path and against reading /proc/self/pagemap (8 bytes per page).
//  3. Overhead on a running workload: guest threads touching a known hot set, measured with
//     and without tracking in the same run (alternating phases), for each method this kernel
//     has; the ratio is tracked / untracked guest throughput.
//  4. Eviction: a region written once and left cold is evicted whole, read back by guest
//     threads through the engine (every first touch a fault), evicted again and restored
//     with restoreAll(), for each memory type.
import * as fs from 'node:fs';
import { helpText, OptionSpec, parseArgs } from '../src/cli/args.js';
import * as C from '../src/kernel/constants.js';
import { bytesAt, close, kernelRelease, madvise, memset, munmap, openFile, preadTo, mapAnonymous } from '../src/kernel/memory.js';
import { Scanner } from '../src/kernel/pagemap.js';
import { memoryType } from '../src/memory-types/index.js';
import { AccessMethod, chooseMethods, kernelHasRwp } from '../src/wss/methods.js';
import { WssTracker } from '../src/wss/tracker.js';
import { Workload } from '../src/wss/workload.js';
import { readBack } from '../src/wss/read-back.js';

const SPEC: OptionSpec = {
  region: { type: 'size', default: 2 ** 40, help: 'sparse region size for the scale test' },
  ws: { type: 'size', default: 1024 * 1024 * 1024, help: 'working set populated in the sparse region' },
  dense: { type: 'size', default: 1024 * 1024 * 1024, help: 'dense region for the scan-path comparison' },
  workload: { type: 'size', default: 256 * 1024 * 1024, help: 'region of the running-workload overhead test' },
  threads: { type: 'number', default: 1, help: 'guest threads in the overhead test' },
  interval: { type: 'number', default: 200, help: 'tracking interval in the overhead test, ms' },
  phase: { type: 'number', default: 1500, help: 'length of each measured phase, ms' },
  rounds: { type: 'number', default: 2, help: 'untracked/tracked phase pairs per method' },
  methods: { type: 'string', default: 'all', help: 'overhead methods: all or a list like anon:none,shmem:zap,anon:move (type:access)' },
  skip: { type: 'string', default: '', help: 'parts to skip: scale,rwp-scale,rwp-engine-scale,dense,overhead,evict' },
  evictSize: { type: 'size', default: 256 * 1024 * 1024, help: 'region of the eviction test' },
  readers: { type: 'number', default: 2, help: 'guest threads reading evicted pages back in the eviction test' },
  workers: { type: 'number', default: 2, help: 'engine worker threads in the eviction test' },
  json: { type: 'boolean', default: false, help: 'print JSON' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

type Opts = {
  region: number; ws: number; dense: number; workload: number; threads: number; interval: number; phase: number;
  rounds: number; methods: string; skip: string; json: boolean; evictSize: number; readers: number; workers: number; help: boolean; _: string[];
};

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const P = C.PAGE_SIZE;

function status(): { rss: number; pte: number } {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0) * 1024;
  return { rss: kb('VmRSS'), pte: kb('VmPTE') };
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (a: number[]): number => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] ?? NaN; };

/** tracking 'write': WP_ASYNC, a page in ten rewritten per interval; 'rwp': RWP_ASYNC, a page in ten read. */
async function scale(o: Opts, log: (s: string) => void, tracking: 'write' | 'rwp' | 'rwp-engine' = 'write') {
  const region = memoryType('anon').create({ size: o.region, noReserve: true });
  try {
    const clusters = Math.max(1, Math.round(o.ws / (2 * MiB)));
    const stride = Math.floor(o.region / clusters / (2 * MiB)) * 2 * MiB;
    const s0 = status();
    for (let c = 0; c < clusters; c++) memset(region.addr + c * stride, 1, 2 * MiB);
    const s1 = status();
    const scanner = new Scanner();
    const present: number[] = [];
    let bytes = 0;
    for (let i = 0; i < 5; i++) {
      const t0 = process.hrtime.bigint();
      bytes = scanner.countBytes(region.addr, region.addr + region.size, { categoryMask: C.PAGE_IS_PRESENT });
      present.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    scanner.close();
    const presentMs = median(present);
    // 'rwp-engine': prepared for eviction, so the engine runs (its page-state table covers the whole region).
    const t = await WssTracker.create(region, tracking === 'write' ? { access: 'none', write: true }
      : { access: 'rwp', write: false, evict: tracking === 'rwp-engine' });
    const s2 = status();
    const a0 = performance.now();
    t.arm();
    const armMs = performance.now() - a0;
    const s3 = status();
    const hugeAfterArm = t.hugeMappedBytes(); // accesses to a page still huge-mapped count 512 pages
    // rewrite (or read) one page in ten of the working set, then one interval
    const samples: { ms: number; written: number; rearm: number; wall: number }[] = [];
    let sink = 0;
    for (let i = 0; i < 3; i++) {
      for (let c = 0; c < clusters; c++) {
        const v = bytesAt(region.addr + c * stride, 2 * MiB);
        if (tracking === 'write') for (let p = 0; p < 512; p += 10) v[p * P] = i + 2;
        else for (let p = 0; p < 512; p += 10) sink += v[p * P] ?? 0;
      }
      const w0 = performance.now();
      const st = t.sample();
      samples.push({ ms: st.scanMs, written: (tracking === 'write' ? st.written : st.accessed) ?? 0, rearm: st.rearmMs, wall: performance.now() - w0 });
    }
    if (sink < 0) log('');
    const s4 = status();
    const footprint = t.footprint();
    await t.close();
    const wsPages = clusters * 512;
    const res = {
      regionBytes: o.region, workingSetBytes: clusters * 2 * MiB, clusters,
      presentScan: { ms: presentMs, bytesFound: bytes, regionPagesPerSec: (o.region / P) / (presentMs / 1000),
        msPerGiBRegion: presentMs / (o.region / GiB), msPerGiBResident: presentMs / (clusters * 2 * MiB / GiB) },
      tracking, armMs, hugeMappedAfterArm: hugeAfterArm, perInterval: samples.map((x) => x.written),
      writeInterval: { scanMs: median(samples.map((s) => s.ms)), rearmMs: median(samples.map((s) => s.rearm)),
        sampleMs: median(samples.map((s) => s.wall)), written: samples[samples.length - 1]?.written ?? 0,
        expectedWritten: clusters * Math.ceil(512 / 10),
        residentPagesPerSec: wsPages / (median(samples.map((s) => s.ms)) / 1000),
        msPerGiBResident: median(samples.map((s) => s.ms)) / (clusters * 2 * MiB / GiB) },
      trackerStateBytes: footprint,
      rss: { workingSet: s1.rss - s0.rss, trackerCreateAndArm: s3.rss - s1.rss, afterIntervals: s4.rss - s1.rss,
        pageTablesWs: s1.pte - s0.pte, pageTablesTracking: s4.pte - s1.pte, createOnly: s2.rss - s1.rss },
    };
    log(`${tracking === 'write' ? 'scale' : `\n${tracking}-scale`}: ${(o.region / GiB).toFixed(0)} GiB sparse anon region, working set ${(res.workingSetBytes / MiB).toFixed(0)} MiB in ${clusters} clusters of 2 MiB` +
      (tracking === 'rwp-engine' ? `; the engine started for eviction (${t.engine ? 'up' : 'absent'})` : ''));
    log(`  PAGEMAP_SCAN PRESENT over the region: ${presentMs.toFixed(2)} ms = ${(res.presentScan.regionPagesPerSec / 1e9).toFixed(1)} G region pages/s, ` +
      `${res.presentScan.msPerGiBRegion.toFixed(4)} ms per GiB of region, ${res.presentScan.msPerGiBResident.toFixed(2)} ms per resident GiB`);
    const what = tracking === 'write' ? 'write-tracking interval (scan + atomic re-arm)' : 'RWP access-tracking interval (sync, scan, RWPROTECT re-arm, async)';
    log(`  ${what}: first arm ${armMs.toFixed(2)} ms; ${res.writeInterval.scanMs.toFixed(2)} ms scanning, ${res.writeInterval.rearmMs.toFixed(2)} ms re-arming, ` +
      `${res.writeInterval.sampleMs.toFixed(2)} ms for the whole sample(), ${tracking === 'write' ? 'written' : 'accessed'} ${res.writeInterval.written} ` +
      `(expected ${res.writeInterval.expectedWritten}; per interval ${res.perInterval.join(', ')}; still huge-mapped after arm: ${hugeAfterArm / 1024} KiB), ${(res.writeInterval.residentPagesPerSec / 1e6).toFixed(1)} M resident pages/s, ` +
      `${res.writeInterval.msPerGiBResident.toFixed(2)} ms per resident GiB`);
    log(`  tracker state ${(footprint / MiB).toFixed(2)} MiB; create() +${(res.rss.createOnly / MiB).toFixed(1)} MiB RSS, arm() +${((res.rss.trackerCreateAndArm - res.rss.createOnly) / MiB).toFixed(1)} MiB; process RSS +${(res.rss.afterIntervals / MiB).toFixed(1)} MiB over the working set ` +
      `(${(res.rss.workingSet / MiB).toFixed(0)} MiB); page tables ${(res.rss.pageTablesWs / MiB).toFixed(2)} MiB for the working set, ` +
      `+${(res.rss.pageTablesTracking / MiB).toFixed(2)} MiB while tracking`);
    return res;
  } finally {
    region.close();
  }
}

function dense(o: Opts, log: (s: string) => void) {
  const region = memoryType('anon').create({ size: o.dense });
  const scanner = new Scanner();
  const { Userfaultfd } = require('../src/kernel/userfaultfd.js') as typeof import('../src/kernel/userfaultfd.js');
  const uffd = Userfaultfd.create({ features: ['WP_ASYNC', 'WP_UNPOPULATED'] });
  try {
    madvise(region.addr, region.size, C.MADV_NOHUGEPAGE);
    memset(region.addr, 1, region.size);
    uffd.register(region.addr, region.size, ['wp']);
    const end = region.addr + region.size;
    const filtered = { flags: C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC, categoryMask: C.PAGE_IS_WRITTEN | C.PAGE_IS_PFNZERO,
      categoryInverted: C.PAGE_IS_PFNZERO, categoryAnyof: C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED, returnMask: C.PAGE_IS_WRITTEN };
    const fast = { flags: C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC, categoryMask: C.PAGE_IS_WRITTEN, returnMask: C.PAGE_IS_WRITTEN };
    const tracker = { flags: C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC, categoryAnyof: C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED,
      returnMask: C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED | C.PAGE_IS_WRITTEN | C.PAGE_IS_PFNZERO };
    scanner.scan(region.addr, end, filtered); // arm
    const b = bytesAt(region.addr, region.size);
    const dirty = (k: number) => { for (let off = 0; off < region.size; off += 10 * P) b[off] = k; };
    const time = (f: () => void) => { const t0 = process.hrtime.bigint(); f(); return Number(process.hrtime.bigint() - t0) / 1e6; };
    const r: Record<string, number> = {};
    const rows: [string, object][] = [['filteredWritten', filtered], ['fastPathWritten', fast], ['trackerScan', tracker]];
    for (const [name, opts] of rows) {
      const ms: number[] = [];
      for (let i = 0; i < 5; i++) { dirty(i + 2); ms.push(time(() => scanner.scan(region.addr, end, opts))); }
      r[name] = median(ms);
    }
    // reading /proc/self/pagemap: 8 bytes per page, in 2 MiB chunks
    const fd = openFile('/proc/self/pagemap', C.O_RDONLY);
    const buf = mapAnonymous(2 * MiB);
    const readMs: number[] = [];
    for (let i = 0; i < 3; i++) {
      readMs.push(time(() => {
        const pages = region.size / P;
        const view = new BigUint64Array(bytesAt(buf, 2 * MiB).buffer);
        let present = 0;
        for (let first = 0; first < pages; first += 262144) {
          const n = Math.min(262144, pages - first);
          preadTo(fd, buf, n * 8, (region.addr / P + first) * 8);
          for (let k = 0; k < n; k++) if ((view[k] ?? 0n) >> 63n) present++;
        }
        if (present !== pages) throw new Error(`pagemap read saw ${present} of ${pages} pages present`);
      }));
    }
    close(fd);
    munmap(buf, 2 * MiB);
    r.pagemapRead = median(readMs);
    const gib = region.size / GiB;
    const res = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, { ms: v, msPerGiB: v / gib, pagesPerSec: (region.size / P) / (v / 1000) }]));
    log(`\ndense: ${(region.size / MiB).toFixed(0)} MiB anon, all resident, 1 page in 10 rewritten per round (median of 5)`);
    for (const [k, v] of Object.entries(res)) {
      log(`  ${k.padEnd(16)} ${v.ms.toFixed(2).padStart(8)} ms  ${v.msPerGiB.toFixed(2).padStart(8)} ms/GiB  ${(v.pagesPerSec / 1e6).toFixed(1).padStart(7)} M pages/s`);
    }
    return res;
  } finally {
    uffd.close();
    scanner.close();
    region.close();
  }
}

async function overhead(o: Opts, log: (s: string) => void) {
  const all: [string, AccessMethod][] = [['anon', 'none'], ['shmem', 'none'], ['shmem', 'zap'], ['shmem', 'minor'], ['anon', 'move']];
  const wanted = o.methods === 'all' ? all : o.methods.split(',').map((m): [string, AccessMethod] => {
    const [type, access] = m.split(':');
    if (!type || !access) throw new Error(`--methods takes type:access pairs like shmem:zap (got '${m}')`);
    return [type, access as AccessMethod];
  });
  const out: Record<string, unknown>[] = [];
  log(`\noverhead: ${(o.workload / MiB).toFixed(0)} MiB region, ${o.threads} guest thread(s) writing 10% and reading 10% in a loop, ` +
    `${o.interval} ms intervals, ${o.rounds} × (${o.phase} ms untracked, ${o.phase} ms tracked) per method`);
  log('  type    method                    untracked Mpg/s   tracked Mpg/s   ratio   faults/s   scan ms   re-arm ms');
  for (const [type, access] of wanted) {
    // minor tracks accesses only (the engine maps minor faults without MODE_WP).
    const write = access !== 'minor';
    const label = ((write ? 'wp-async+' : '') + access).padEnd(24);
    try {
      chooseMethods(type, { access, write });
    } catch (e) {
      log(`  ${type.padEnd(7)} ${label} skipped: ${(e as Error).message}`);
      continue;
    }
    const region = memoryType(type).create({ size: o.workload });
    let wl: Workload | undefined;
    try {
      memset(region.addr, 0x5a, region.size);
      wl = await Workload.start({ addr: region.addr, size: region.size, pageSize: region.pageSize, threads: o.threads });
      const base: number[] = [];
      const tracked: number[] = [];
      const scans: number[] = [];
      const rearms: number[] = [];
      let faults = 0;
      let trackedMs = 0;
      const rate = async (ms: number, during?: () => void) => {
        const a = wl!.progress().touches;
        const t0 = performance.now();
        while (performance.now() - t0 < ms) { await sleep(Math.min(o.interval, ms)); during?.(); }
        return (wl!.progress().touches - a) / ((performance.now() - t0) / 1000);
      };
      await rate(200); // warm up the guest's JIT
      for (let r = 0; r < o.rounds; r++) {
        base.push(await rate(o.phase));
        const t = await WssTracker.create(region, { access, write });
        try {
          t.arm();
          const t0 = performance.now();
          tracked.push(await rate(o.phase, () => { const st = t.sample(); scans.push(st.scanMs); rearms.push(st.rearmMs); faults += st.faults; }));
          trackedMs += performance.now() - t0;
        } finally {
          await t.close();
        }
      }
      const row = {
        type, access, write: write ? 'wp-async' : 'none', untracked: median(base), tracked: median(tracked), ratio: median(tracked) / median(base),
        faultsPerSec: faults / (trackedMs / 1000), scanMs: median(scans), rearmMs: median(rearms),
      };
      out.push(row);
      log(`  ${type.padEnd(7)} ${label} ${(row.untracked / 1e6).toFixed(1).padStart(15)} ${(row.tracked / 1e6).toFixed(1).padStart(15)} ` +
        `${row.ratio.toFixed(3).padStart(7)} ${row.faultsPerSec.toFixed(0).padStart(10)} ${row.scanMs.toFixed(2).padStart(9)} ${row.rearmMs.toFixed(2).padStart(11)}`);
    } finally {
      if (wl) await wl.stop();
      region.close();
    }
  }
  return out;
}

async function evict(o: Opts, log: (s: string) => void) {
  const out: Record<string, unknown>[] = [];
  log(`\neviction: ${(o.evictSize / MiB).toFixed(0)} MiB written once and left cold, evicted whole, read back by ${o.readers} guest threads ` +
    `(one byte per page), evicted again and restored with restoreAll(); engine: ${o.workers} workers`);
  log('  type    access  evict ms   MiB/s   read back ms  k pages/s  engine p50/p99 µs   restore ms');
  const cases: [string, AccessMethod | 'auto'][] = [['anon', 'auto'], ['shmem', 'auto'], ['shmem', 'minor']];
  const hp = memoryType('hugetlbfs').available?.(C.HUGE_PAGE_2M);
  if (hp?.ok) cases.push(['hugetlbfs', 'auto'], ['hugetlbfs', 'minor']);
  for (const [type, access] of cases) {
    const pageSize = type === 'hugetlbfs' ? C.HUGE_PAGE_2M : P;
    let region;
    try {
      region = memoryType(type).create({ size: o.evictSize, pageSize });
    } catch (e) {
      log(`  ${type.padEnd(7)} ${access.padEnd(6)} skipped: ${(e as Error).message}`);
      continue;
    }
    try {
      memset(region.addr, 0x5a, region.size);
      const t = await WssTracker.create(region, { evict: true, access, write: access === 'minor' ? false : 'auto', workers: o.workers });
      try {
        t.arm();
        t.sample();
        let t0 = performance.now();
        const ev = t.evictCold({ how: 'store', minIdle: 1 });
        const evictMs = performance.now() - t0;
        const e0 = t.engineStats();
        t0 = performance.now();
        const { bad } = await readBack([{ start: region.addr, end: region.addr + region.size }], { threads: o.readers, pageSize, byte: 0x5a, check: 'first' });
        const readMs = performance.now() - t0;
        const e1 = t.engineStats();
        let lat = '-';
        if (e0 && e1) {
          // latency of the read-back faults alone: the histogram difference
          const h = e1.latencyUs.histogram.map((v, i) => v - (e0.latencyUs.histogram[i] ?? 0));
          const pct = (q: number) => { const n = h.reduce((a, b) => a + b, 0); let acc = 0; for (let i = 0; i < h.length; i++) { acc += h[i] ?? 0; if (acc >= q * n) return 2 ** (i + 1); } return 0; };
          lat = `${pct(0.5)}/${pct(0.99)}`;
        }
        t.sample();
        t.sample();
        t.evictCold({ how: 'store', minIdle: 1 });
        t0 = performance.now();
        await t.restoreAll();
        const restoreMs = performance.now() - t0;
        const row = { type, access: t.access, pages: ev.pages, evictMs, readMs, pagesPerSec: ev.pages / (readMs / 1000), bad, latencyUs: lat, restoreMs };
        out.push(row);
        log(`  ${type.padEnd(7)} ${t.access.padEnd(6)} ${evictMs.toFixed(0).padStart(9)} ${(o.evictSize / MiB / (evictMs / 1000)).toFixed(0).padStart(7)} ` +
          `${readMs.toFixed(0).padStart(14)} ${(row.pagesPerSec / 1000).toFixed(1).padStart(10)}  ${lat.padStart(17)} ${restoreMs.toFixed(0).padStart(12)}` +
          (bad ? `  ${bad} pages WRONG` : ''));
      } finally {
        await t.close();
      }
    } finally {
      region.close();
    }
  }
  return out;
}

async function main(): Promise<void> {
  const o = parseArgs<Opts>(process.argv.slice(2), SPEC);
  if (o.help) {
    console.log(helpText('wss-bench (node dist/bench/wss-bench.js)', 'Working-set tracking at scale, scan paths, overhead on a running workload, eviction served back.', SPEC));
    return;
  }
  const log = o.json ? () => {} : (s: string) => console.log(s);
  const skip = new Set(o.skip.split(',').filter(Boolean));
  log(`uffd-engine wss-bench on Linux ${kernelRelease()}, ${require('node:os').cpus().length} CPUs, node ${process.version}`);
  const result: Record<string, unknown> = { kernel: kernelRelease() };
  if (!skip.has('scale')) result.scale = await scale(o, log);
  if (!skip.has('rwp-scale')) {
    if (kernelHasRwp()) result.rwpScale = await scale(o, log, 'rwp');
    else log(`\nrwp-scale: skipped, this kernel (${kernelRelease()}) does not offer UFFD_FEATURE_RWP + RWP_ASYNC (Linux 7.3)`);
  }
  if (!skip.has('rwp-engine-scale') && kernelHasRwp()) result.rwpEngineScale = await scale(o, log, 'rwp-engine');
  if (!skip.has('dense')) result.dense = dense(o, log);
  if (!skip.has('overhead')) result.overhead = await overhead(o, log);
  if (!skip.has('evict')) result.evict = await evict(o, log);
  if (o.json) console.log(JSON.stringify(result, null, 2));
}

main().catch((e) => {
  console.error(`wss-bench: ${e instanceof Error ? e.stack : String(e)}`);
  process.exitCode = 1;
});
