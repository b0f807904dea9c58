// uffd-engine wss: working-set scanning and access tracking, demonstrated on a guest workload
// with a known hot set (worker threads writing one 10% of a region and reading another 10%),
// a live table per interval, JSON, and an address-by-time heatmap.
import { OptionSpec, helpText, parseArgs } from './args.js';
import { memset } from '../kernel/memory.js';
import { kernelRelease } from '../kernel/memory.js';
import { memoryType } from '../memory-types/index.js';
import { writeHeatmap, HeatFrame } from '../wss/heatmap.js';
import { ACCESS_METHODS, AccessMethod, chooseMethods, METHOD_INFO } from '../wss/methods.js';
import { IntervalStats, Range, WssTracker } from '../wss/tracker.js';
import { Workload } from '../wss/workload.js';
import { readBack } from '../wss/read-back.js';

const SPEC: OptionSpec = {
  type: { type: 'string', default: 'shmem', help: 'memory type: shmem (memfd), anon or hugetlbfs' },
  size: { type: 'size', default: 256 * 1024 * 1024, help: 'region size (e.g. 256M, 1G)' },
  pageSize: { type: 'size', help: 'page size (hugetlbfs: 2M or 1G)' },
  interval: { type: 'number', default: 500, help: 'interval length, ms' },
  intervals: { type: 'number', default: 12, help: 'number of intervals' },
  access: { type: 'string', default: 'auto', help: `access method: auto, ${ACCESS_METHODS.join(', ')}` },
  write: { type: 'string', default: 'auto', help: 'write tracking (wp-async): auto, on, off' },
  threads: { type: 'number', default: 2, help: 'guest threads' },
  writeFrac: { type: 'number', default: 0.1, help: 'fraction of the region the guest writes every pass' },
  readFrac: { type: 'number', default: 0.1, help: 'fraction of the region the guest reads every pass' },
  evict: { type: 'boolean', default: false, help: 'evict cold pages to a store after each interval (they come back on touch)' },
  store: { type: 'string', help: 'file for evicted bytes of shmem/hugetlbfs (default: a memfd)' },
  workers: { type: 'number', default: 2, help: 'engine worker threads (the engine serves the trap methods and evicted pages)' },
  readBack: { type: 'boolean', default: true, help: 'with --evict: after the last interval, guest threads read every evicted page back (through the engine) and check its bytes (--no-read-back: leave them to close)' },
  heatmap: { type: 'string', help: 'write an access heatmap to FILE.html or FILE.svg' },
  buckets: { type: 'number', default: 128, help: 'address buckets in the heatmap' },
  json: { type: 'boolean', default: false, help: 'print a JSON report instead of the table' },
  methods: { type: 'boolean', default: false, help: 'list the tracking methods, their cost and exactness, and exit' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

type Opts = {
  type: string; size: number; pageSize?: number; interval: number; intervals: number; access: string; write: string;
  threads: number; writeFrac: number; readFrac: number; evict: boolean; store?: string; workers: number; readBack: boolean; heatmap?: string; buckets: number;
  json: boolean; methods: boolean; help: boolean; _: string[];
};

const MiB = 1024 * 1024;
const mib = (bytes: number) => (bytes / MiB).toFixed(1);

function sameRanges(a: Range[], b: Range[]): boolean {
  return a.length === b.length && a.every((r, i) => r.start === b[i]?.start && r.end === b[i]?.end);
}

/** Pages of `expected` missing from `got`, if every one came back through the engine unchanged and nothing extra was reported; else 0. */
function lateWrites(got: Range[], expected: Range[], unchanged: Range[], P: number): number {
  const pages = (rs: Range[]) => { const s = new Set<number>(); for (const r of rs) for (let a = r.start; a < r.end; a += P) s.add(a); return s; };
  const g = pages(got);
  const e = pages(expected);
  const u = pages(unchanged);
  let late = 0;
  for (const a of g) if (!e.has(a)) return 0;
  for (const a of e) {
    if (g.has(a)) continue;
    if (!u.has(a)) return 0;
    late++;
  }
  return late;
}

function methodsReport(): string {
  const rows: string[] = [];
  for (const m of ['wp-async', 'soft-dirty', 'rwp', 'zap', 'minor', 'move'] as const) {
    const i = METHOD_INFO[m];
    rows.push(`${i.name} — sees ${i.sees}; ${i.types}; needs ${i.kernel}\n  cost: ${i.cost}\n  exactness: ${i.exactness}`);
  }
  rows.push(`\nOn this kernel (${kernelRelease()}), 'auto' chooses:`);
  for (const t of ['anon', 'shmem', 'hugetlbfs']) {
    for (const evict of [false, true]) {
      try {
        const c = chooseMethods(t, { evict });
        rows.push(`  ${t.padEnd(10)}${evict ? ' evicting' : '         '}  write=${c.write.padEnd(10)} access=${c.access.padEnd(5)} server=${c.server}`);
      } catch (e) {
        rows.push(`  ${t.padEnd(10)}${evict ? ' evicting' : '         '}  ${(e as Error).message}`);
      }
    }
  }
  return rows.join('\n');
}

export async function run(args: string[]): Promise<number> {
  const o = parseArgs<Opts>(args, SPEC);
  if (o.help) {
    console.log(helpText('wss', 'Working-set scanning and access tracking of a region while a demo guest with a known hot set ' +
      'runs: pages written and accessed per interval, working-set size, hot/warm/cold pages, optional eviction, heatmap.', SPEC));
    return 0;
  }
  if (o.methods) {
    console.log(methodsReport());
    return 0;
  }
  if (o._.length) throw new Error(`wss takes no arguments (got ${o._.join(' ')})`);
  const typeName = o.type === 'memfd' ? 'shmem' : o.type;
  const type = memoryType(typeName);
  if (!['on', 'off', 'auto'].includes(o.write)) throw new Error(`--write takes auto, on or off (got ${o.write})`);
  const write = o.write === 'auto' ? 'auto' : o.write === 'on';
  const pageSize = o.pageSize ?? type.pageSizes[0];
  const region = type.create({ size: o.size, pageSize });
  let tracker: WssTracker | undefined;
  let wl: Workload | undefined;
  const log = o.json ? () => {} : (s: string) => console.log(s);
  try {
    // Everything written once: pages outside the hot sets are the cold part of the guest.
    memset(region.addr, 0x5a, region.size);
    tracker = await WssTracker.create(region, {
      access: o.access as AccessMethod | 'auto', write, evict: o.evict, storePath: o.store, workers: o.workers,
    });
    wl = await Workload.start({
      addr: region.addr, size: region.size, pageSize: region.pageSize, writeFrac: o.writeFrac, readFrac: o.readFrac, threads: o.threads,
    });
    const sets = wl.sets;
    const P = region.pageSize;
    log(`uffd-engine wss: ${type.name} region of ${mib(region.size)} MiB (${region.size / P} pages of ${P / 1024} KiB), ` +
      `${o.intervals} intervals of ${o.interval} ms, kernel ${kernelRelease()}`);
    const described = tracker.describe();
    const serverKind = tracker.server;
    log(`methods: ${described}`);
    for (const n of tracker.methods.notes) log(`  ${n}`);
    log(`guest: ${o.threads} threads writing ${sets.writePages} pages (${mib(sets.writePages * P)} MiB at +${mib(sets.write.start - region.addr)} MiB) ` +
      `and reading ${sets.readPages} pages (${mib(sets.readPages * P)} MiB at +${mib(sets.read.start - region.addr)} MiB) every pass`);
    const expectW = tracker.write !== 'none' ? sets.writePages : null;
    const expectA = tracker.seesReads ? sets.writePages + sets.readPages : null;
    log(`expected per interval: written ${expectW ?? '-'} pages, accessed ${expectA ?? '-'} pages (WSS ${mib((expectA ?? expectW ?? 0) * P)} MiB)\n`);
    const head = ' int    ms   written  accessed  WSS MiB    hot   warm    cold  evicted  scan ms  rearm ms  faults    back  guest Mpg/s  exact';
    log(head);
    const frames: HeatFrame[] = [];
    const rows: (IntervalStats & { guestPagesPerSec: number; exact: boolean | null; lateWrites: number; evictedNow: number; evictMs: number })[] = [];
    const expectedWritten = [sets.write];
    const expectedAccessed = [sets.write, sets.read].sort((a, b) => a.start - b.start);
    const t0 = performance.now();
    tracker.arm();
    const huge = tracker.hugeMappedBytes();
    if (huge > 0) log(`note: ${mib(huge)} MiB of the region is still mapped by huge pages: accesses there are seen per huge page\n`);
    let prev = wl.progress();
    let prevThread = prev.perThread;
    for (let i = 0; i < o.intervals; i++) {
      await new Promise((r) => setTimeout(r, o.interval));
      const before = wl.progress().perThread; // passes that ended before this sample began
      const st = tracker.sample();
      const prog = wl.progress();
      const guest = (prog.touches - prev.touches) / (st.elapsedMs / 1000);
      prev = prog;
      const heat = tracker.heat(o.buckets);
      frames.push({ interval: st.interval, atMs: performance.now() - t0, accessed: Array.from(heat.accessed), written: Array.from(heat.written) });
      let wOk = tracker.write !== 'none' ? sameRanges(tracker.ranges('written'), expectedWritten) : true;
      // With the engine a page that came back is written when its bytes changed: one whose
      // bytes are what they were when it was moved aside (the guest cycles through 256 values,
      // so about 1 page in 256 per interval; or a store still in flight at the scan) is not.
      // Accept a shortfall made only of such pages, and show it.
      let late = 0;
      if (!wOk && tracker.server === 'engine') {
        late = lateWrites(tracker.ranges('written'), expectedWritten, tracker.unchangedBack(), P);
        wOk = late > 0;
      }
      const aOk = tracker.seesReads ? sameRanges(tracker.ranges('accessed'), expectedAccessed) : true;
      // The sets are fully touched in an interval only if every guest thread made a whole pass
      // between the end of the previous sample and the start of this one (two pass ends in
      // that window); otherwise there is nothing exact to compare with. (A sample can take a
      // while, and passes made during it belong partly to the next interval.)
      const fullPass = before.every((p, k) => p - (prevThread[k] ?? 0) >= 2);
      prevThread = prog.perThread;
      const exact = (tracker.write === 'none' && !tracker.seesReads) || !fullPass ? null : wOk && aOk;
      let evictedNow = 0;
      let evictMs = 0;
      if (o.evict) ({ pages: evictedNow, ms: evictMs } = tracker.evictCold({ how: 'store' }));
      rows.push({ ...st, guestPagesPerSec: guest, exact, lateWrites: late, evictedNow, evictMs });
      log(`${String(st.interval).padStart(4)} ${st.elapsedMs.toFixed(0).padStart(5)} ${String(st.written ?? '-').padStart(9)} ` +
        `${String(st.accessed ?? '-').padStart(9)} ${mib(st.wssBytes).padStart(8)} ${String(st.hot).padStart(6)} ${String(st.warm).padStart(6)} ` +
        `${String(st.cold).padStart(7)} ${String(st.evicted + evictedNow).padStart(8)} ${st.scanMs.toFixed(2).padStart(8)} ` +
        `${st.rearmMs.toFixed(2).padStart(9)} ${String(st.faults).padStart(7)} ${String(st.servedBack).padStart(7)} ${(guest / 1e6).toFixed(1).padStart(12)}  ` +
        `${exact === null ? (fullPass ? '-' : 'mid-pass') : exact ? (late ? `yes, ${late} same` : 'yes') : 'no'}`);
    }
    await wl.stop();
    wl = undefined;
    // The evicted pages (the cold part: the guest never touches it) come back on touch.
    let readBackResult: { pages: number; bad: number; ms: number; served: number } | null = null;
    if (o.evict && o.readBack) {
      const cold: Range[] = [];
      const sets2 = [sets.write, sets.read].sort((a, b) => a.start - b.start);
      let at = region.addr;
      for (const r of sets2) { if (r.start > at) cold.push({ start: at, end: r.start }); at = Math.max(at, r.end); }
      if (at < region.addr + region.size) cold.push({ start: at, end: region.addr + region.size });
      const before = tracker.sample(); // settles what came back so far
      const rb = await readBack(cold, { threads: o.threads, pageSize: P, byte: 0x5a });
      const after = tracker.sample();
      readBackResult = { ...rb, served: after.servedBack };
      log(`read back the cold part from ${o.threads} guest threads: ${rb.pages} pages (${before.evicted} evicted) in ${rb.ms.toFixed(0)} ms ` +
        `(${(rb.pages / (rb.ms / 1000)).toFixed(0)} pages/s), ${rb.bad ? `${rb.bad} pages WRONG` : 'every byte as written'}; ` +
        `served back by the ${tracker.server}: ${after.servedBack} pages on ${after.faults} faults`);
    }
    const footprint = tracker.footprint();
    const engineBefore = tracker.engineStats();
    const closeT0 = performance.now();
    await tracker.close();
    const closeMs = performance.now() - closeT0;
    const engine = tracker.engineStats();
    tracker = undefined;
    // The cold part was never touched by the guest: after close (every evicted page restored)
    // it must still hold the bytes written before tracking.
    let coldIntact = true;
    if (o.evict) {
      const { bytesAt } = await import('../kernel/memory.js');
      const all = bytesAt(region.addr, region.size);
      const inSet = (a: number) => (a >= sets.write.start && a < sets.write.end) || (a >= sets.read.start && a < sets.read.end);
      for (let off = 0; off < region.size && coldIntact; off += 64) if (!inSet(region.addr + off) && all[off] !== 0x5a) coldIntact = false;
    }
    const summary = {
      exactIntervals: rows.filter((r) => r.exact).length,
      lateWrites: rows.reduce((a, r) => a + r.lateWrites, 0),
      checkedIntervals: rows.filter((r) => r.exact !== null).length,
      intervals: rows.length,
      meanScanMs: rows.reduce((s, r) => s + r.scanMs, 0) / rows.length,
      meanRearmMs: rows.reduce((s, r) => s + r.rearmMs, 0) / rows.length,
      meanMsPerGiB: rows.reduce((s, r) => s + r.msPerGiB, 0) / rows.length,
      meanPagesPerSec: rows.reduce((s, r) => s + r.pagesPerSec, 0) / rows.length,
      trackerBytes: footprint,
      evictedRestoredIntact: o.evict ? coldIntact : null,
      readBack: readBackResult,
      server: serverKind,
      servedBack: rows.reduce((a, r) => a + r.servedBack, 0) + (readBackResult?.served ?? 0),
      engine: engine && engineBefore ? {
        faults: engine.faults.total, pagesServed: engine.pages.total, restoredOnClose: engine.pages.total - engineBefore.pages.total,
        closeMs, inline: engine.inline, handoffs: engine.handoffs, errors: engine.errors, latencyUs: { p50: engine.latencyUs.p50, p90: engine.latencyUs.p90, p99: engine.latencyUs.p99, max: engine.latencyUs.max },
        workers: engine.workers, dispatcher: engine.dispatcher,
      } : null,
    };
    if (o.heatmap) {
      writeHeatmap(o.heatmap, frames, {
        title: `uffd-engine wss: ${type.name} ${mib(region.size)} MiB, ${o.intervals} × ${o.interval} ms`,
        subtitle: [`${described}`, `guest writes +${mib(sets.write.start - region.addr)}..+${mib(sets.write.end - region.addr)} MiB, reads +${mib(sets.read.start - region.addr)}..+${mib(sets.read.end - region.addr)} MiB; kernel ${kernelRelease()}`],
        regionBytes: region.size, seesReads: rows[0]?.accessed !== null,
      });
    }
    if (o.json) {
      console.log(JSON.stringify({
        kernel: kernelRelease(), type: type.name, size: region.size, pageSize: P, intervalMs: o.interval,
        expected: { written: expectW, accessed: expectA, writeSet: sets.write, readSet: sets.read },
        intervals: rows, summary, heatmap: o.heatmap ?? null,
      }, null, 2));
    } else {
      log(`\n${summary.exactIntervals}/${summary.checkedIntervals} intervals with whole guest passes reported the known sets exactly` +
        (summary.lateWrites ? ` (${summary.lateWrites} written pages came back through the engine and held the same bytes at the scan as ` +
          'when they were moved aside: not counted as written, the engine tells writes by comparing bytes)' : '') +
        `${summary.checkedIntervals < summary.intervals ? ` (${summary.intervals - summary.checkedIntervals} intervals ended mid-pass: the guest was slower than the interval)` : ''}; ` +
        `scan ${summary.meanScanMs.toFixed(2)} ms per interval (${summary.meanMsPerGiB.toFixed(2)} ms/GiB, ` +
        `${(summary.meanPagesPerSec / 1e6).toFixed(0)} M pages/s), re-arm ${summary.meanRearmMs.toFixed(2)} ms; ` +
        `tracker state ${(footprint / 1024).toFixed(0)} KiB`);
      if (o.evict) {
        const n = rows.reduce((a, r) => a + r.evictedNow, 0);
        const ms = rows.reduce((a, r) => a + r.evictMs, 0);
        const e = summary.engine;
        log(`evicted ${n} pages (${mib(n * P)} MiB) in ${ms.toFixed(0)} ms; served back on touch by the ${summary.server}: ` +
          `${summary.servedBack} pages (held and evicted)` +
          (e ? `; restored by the engine's workers on close: ${e.restoredOnClose} pages in ${closeMs.toFixed(0)} ms` : '; the rest restored on close') +
          `; cold bytes intact after close: ${coldIntact ? 'yes' : 'NO'}`);
      }
      if (summary.engine) {
        const e = summary.engine;
        log(`engine: ${e.faults} faults, ${e.pagesServed} pages filled (${e.inline} faults resolved by the dispatcher, ${e.handoffs} by workers), ` +
          `latency p50 ${e.latencyUs.p50} µs p99 ${e.latencyUs.p99} µs, errors ${e.errors}; per worker ` +
          e.workers.map((w, i) => `#${i} ${w.faults} faults ${w.pages} pages ${w.cpuSec.toFixed(2)} s`).join(', ') +
          `; dispatcher ${e.dispatcher.faults} faults ${e.dispatcher.cpuSec.toFixed(2)} s`);
      }
      if (o.heatmap) log(`heatmap: ${o.heatmap}`);
    }
    return rows.every((r) => r.exact !== false) && coldIntact && !(readBackResult && readBackResult.bad) ? 0 : 1;
  } finally {
    if (wl) await wl.stop();
    if (tracker) await tracker.close();
    region.close();
  }
}
