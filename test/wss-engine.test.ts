// The working-set tracker's memory manager served by the parallel engine: the engine's hand-over
// API (initially 'resident', hold, forget, markResident, populate) on a region someone else
// registered; pages evicted and served back through the engine byte-exact on anon, memfd and
// hugetlbfs while guest threads read and write them; what the engine's statistics say came
// back; write tracking of served-back pages by comparison with the store copy; and
// `uffd-engine wss --evict`.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import * as C from '../src/kernel/constants.js';
import { ConfigError } from '../src/kernel/errors.js';
import { bytesAt, madvise, mapAnonymous, munmap } from '../src/kernel/memory.js';
import { Userfaultfd } from '../src/kernel/userfaultfd.js';
import { Engine } from '../src/engine/engine.js';
import { PAGE_DROPPED, PAGE_FILLING, PAGE_MISSING } from '../src/engine/shared.js';
import { memoryType } from '../src/memory-types/index.js';
import type { Region } from '../src/memory-types/types.js';
import { sources } from '../src/sources/index.js';
import { PagePins } from '../src/wss/pins.js';
import { kernelHasRwp } from '../src/wss/methods.js';
import { softDirtyProbe } from '../src/wss/soft-dirty.js';
import { WssTracker } from '../src/wss/tracker.js';
import { Workload } from '../src/wss/workload.js';
import type { BytesJob } from './helpers/threads/wss-bytes.js';
import { reserveHugePages } from './helpers/hugetlb.js';
import { limit } from './helpers/limits.js';

const P4K = C.PAGE_SIZE;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const BYTES_WORKER = path.resolve(__dirname, 'helpers/threads/wss-bytes.js');

/** Reads (or writes) one byte at each address from a worker thread, in order: the main thread never blocks on a fault. */
function bytesFromThread(job: BytesJob): Worker {
  return new Worker(BYTES_WORKER, { workerData: job });
}

/** Reads (or writes) one byte of native memory from a worker thread; `answered` says whether it came back yet. */
function touchFromThread(addr: number, write?: number): { done: Promise<number>; answered: () => boolean } {
  let answered = false;
  const w = bytesFromThread({ addrs: [addr], write });
  const done = new Promise<number>((resolve, reject) => {
    w.once('message', (v: number[]) => { answered = true; resolve(v[0] ?? -1); });
    w.once('error', reject);
  });
  return { done, answered: () => answered };
}

/** Reads one byte at each address from one worker thread, in order. */
function readFromThread(addrs: number[]): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const w = bytesFromThread({ addrs });
    w.once('message', resolve);
    w.once('error', reject);
  });
}

const initial = (p: number, o: number) => ((p * 37 + o * 11) % 251) + 1;

function fill(region: Region, pages: number): void {
  const b = bytesAt(region.addr, pages * region.pageSize);
  for (let p = 0; p < pages; p++) for (let o = 0; o < region.pageSize; o += 512) b[p * region.pageSize + o] = initial(p, o);
}

describe('engine: serving memory that is already resident (hold, forget, markResident, populate)', () => {
  it('starts DROPPED everywhere, holds pages off, serves forgotten pages from the source, fills them with populate()', async () => {
    const pages = 64;
    const size = pages * P4K;
    const region = mapAnonymous(size);
    const store = mapAnonymous(size, C.MAP_NORESERVE);
    const r = bytesAt(region, size);
    for (let p = 0; p < 32; p++) r[p * P4K + 7] = p + 1; // half populated, half holes
    const uffd = Userfaultfd.create({ features: ['MOVE'] });
    let engine: Engine | undefined;
    try {
      uffd.register(region, size, ['missing']);
      uffd.register(store, size, ['wp']); // UFFDIO_MOVE needs its destination registered with the same uffd
      await assert.rejects(Engine.start({
        regions: [{ start: region, size, type: 'anon', source: sources.address(store, size) }], uffd, ownsUffd: false,
        initially: 'bogus' as 'resident',
      }), ConfigError);
      engine = await Engine.start({
        regions: [{ start: region, size, type: 'anon', source: sources.address(store, size) }], uffd, ownsUffd: false,
        initially: 'resident',
      });
      assert.equal(engine.pagesMissing(), 0);
      for (const g of [0, 31, 32, 63]) assert.equal(engine.pageState(g), PAGE_DROPPED);
      // a hole is a hole: zeros, as the kernel would give
      assert.equal(await touchFromThread(region + 40 * P4K + 7).done, 0);
      // hold pages 0..7, move them into the store: a touch waits until they are forgotten
      assert.equal(engine.hold(region, 8 * P4K), 8 * P4K);
      assert.equal(engine.pageState(3), PAGE_FILLING);
      assert.equal(uffd.move(store, region, 8 * P4K, C.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES), 8 * P4K);
      const waiting = touchFromThread(region + 3 * P4K + 7);
      await sleep(100);
      assert.equal(waiting.answered(), false, 'a touch of a held page waits');
      const before = engine.stats().pages.total;
      engine.forget(region, 8 * P4K);
      assert.equal(await waiting.done, 4, 'served from the store once forgotten');
      assert.equal(engine.pageState(0), PAGE_MISSING);
      // the filling thread records the fill just after the ioctl that woke the toucher
      for (let i = 0; i < 500 && engine.pagesMissing() !== 7; i++) await sleep(2);
      assert.equal(engine.pagesMissing(), 7);
      // hold stops at a page the engine is filling (here: one held already)
      assert.equal(engine.hold(region + 20 * P4K, P4K), P4K);
      assert.equal(engine.hold(region + 18 * P4K, 4 * P4K), 2 * P4K);
      engine.markResident(region + 18 * P4K, 3 * P4K); // a move that did not happen: the memory has them
      assert.equal(r[19 * P4K + 7], 20);
      // populate() fills every forgotten page now, and only those
      assert.equal(await engine.populate(), 0);
      for (let p = 0; p < 8; p++) assert.equal(r[p * P4K + 7], p + 1);
      const st = engine.stats();
      assert.equal(st.pages.total - before, 8);
      assert.equal(st.pages.zeroFilled, 1);
      assert.throws(() => engine!.hold(store, P4K), ConfigError);
      // stop('complete') has nothing left to fill
      const t0 = performance.now();
      const end = await engine.stop();
      engine = undefined;
      assert.equal(end.pages.total, st.pages.total);
      assert.ok(performance.now() - t0 < limit(5000));
    } finally {
      if (engine) await engine.stop({ mode: 'abandon' });
      uffd.close();
      munmap(region, size);
      munmap(store, size);
    }
  });

  it("a sparse 64 GiB region: 'resident' costs one table write, stop('complete') fills only what was forgotten", async () => {
    const size = 64 * 2 ** 30;
    const region = mapAnonymous(size, C.MAP_NORESERVE);
    const store = mapAnonymous(size, C.MAP_NORESERVE);
    const uffd = Userfaultfd.create({});
    try {
      uffd.register(region, size, ['missing']);
      const engine = await Engine.start({
        regions: [{ start: region, size, type: 'anon', source: sources.address(store, size) }], uffd, ownsUffd: false, initially: 'resident',
      });
      const far = 48 * 2 ** 30;
      bytesAt(store + far, P4K)[9] = 0x99;
      engine.forget(region + far, P4K);
      const t0 = performance.now();
      const st = await engine.stop();
      assert.equal(st.pages.total, 1);
      assert.equal(bytesAt(region + far, P4K)[9], 0x99);
      console.log(`      stop('complete') of a 64 GiB resident region with 1 forgotten page: ${(performance.now() - t0).toFixed(0)} ms`);
    } finally {
      uffd.close();
      munmap(region, size);
      munmap(store, size);
    }
  });
});

describe('wss served by the engine', () => {
  it('pages pinned by vmsplice survive a hole punch with the writes made up to it (probe)', () => {
    assert.deepEqual(PagePins.probe(), { ok: true });
  });

  /**
   * Evicts all but a hot page, then page 10 is read, page 11 written with new bytes and page 12
   * written with the bytes it had, each from a thread: all three come back through the engine,
   * and only page 11 counts as written (the engine installs pages writable, or dirty: written
   * means changed since the store copy). Then a page written in place is written.
   */
  async function evictedComeBack(type: string, access: 'zap' | 'minor' | 'rwp'): Promise<void> {
    const pages = 64;
    const region = memoryType(type).create({ size: pages * P4K });
    try {
      fill(region, pages);
      const t = await WssTracker.create(region, { evict: true, access });
      try {
        // minor: the engine maps minor faults without MODE_WP, so writes are not tracked with it
        const writes = access === 'zap' || (access === 'rwp' && softDirtyProbe().ok);
        const expectWrite = access === 'zap' ? 'wp-async' : writes ? 'soft-dirty' : 'none';
        assert.deepEqual([t.access, t.server, t.write], [access, 'engine', expectWrite], t.describe());
        t.arm();
        for (let i = 0; i < 4; i++) {
          const filled = t.engineStats()!.pages.total;
          bytesAt(region.addr, P4K)[100] = i; // page 0 hot
          // minor: page 0 was zapped at the last sample, and the engine records its CONTINUE
          // just after the ioctl that woke this thread: let it, so it counts in this interval.
          if (access === 'minor' && i > 0) for (let k = 0; k < 1000 && t.engineStats()!.pages.total === filled; k++) await sleep(2);
          t.sample();
        }
        const ev = t.evictCold();
        assert.equal(ev.pages, pages - 1);
        assert.equal(t.sample().evicted, pages - 1);
        const base = t.engineStats()!.pages.total;
        const r10 = touchFromThread(region.addr + 10 * P4K + 512);
        const w11 = touchFromThread(region.addr + 11 * P4K + 8, 0x77);
        const w12 = touchFromThread(region.addr + 12 * P4K + 512, initial(12, 512));
        assert.equal(await r10.done, initial(10, 512));
        assert.equal(await w11.done, 0x77);
        await w12.done;
        // the engine records a fill just after the ioctl that woke the toucher
        for (let i = 0; i < 1000 && t.engineStats()!.pages.total < base + 3; i++) await sleep(2);
        const st = t.sample();
        assert.equal(st.servedBack, 3, 'three pages came back through the engine');
        assert.equal(st.faults, 3);
        const pagesOf = (rs: { start: number; end: number }[]) => rs.flatMap((x) => {
          const out: number[] = [];
          for (let a = x.start; a < x.end; a += P4K) out.push((a - region.addr) / P4K);
          return out;
        });
        assert.deepEqual(pagesOf(t.ranges('accessed')), [10, 11, 12]);
        if (writes) assert.deepEqual(pagesOf(t.ranges('written')), [11], 'a read, and a store of the same bytes, are not writes');
        assert.equal(st.evicted, pages - 4);
        bytesAt(region.addr, P4K)[200] = 9; // in place, no copy involved
        const st2 = t.sample();
        assert.deepEqual(pagesOf(t.ranges('accessed')), [0]);
        if (writes) assert.equal(st2.written, 1);
        assert.equal(t.engineStats()!.errors, 0);
      } finally {
        await t.close();
      }
      const b = bytesAt(region.addr, region.size);
      for (let p = 1; p < pages; p++) for (let o = 0; o < P4K; o += 512) assert.equal(b[p * P4K + o], initial(p, o), `page ${p} offset ${o}`);
      assert.equal(b[11 * P4K + 8], 0x77);
      assert.deepEqual([b[100], b[200]], [3, 9]);
    } finally {
      region.close();
    }
  }

  it('memfd, zap: evicted pages come back through the engine; written means changed since the store copy', () => evictedComeBack('shmem', 'zap'));
  it('memfd, minor: minor faults are CONTINUEd and evicted pages copied back, both by the engine', () => evictedComeBack('shmem', 'minor'));
  for (const type of ['anon', 'shmem']) {
    it(`${type}, rwp (Linux 7.3): evicted pages come back through the engine; soft-dirty tells writes, a read back is not one`, function () {
      if (!kernelHasRwp()) {
        console.log('      skipped: this kernel lacks UFFD_FEATURE_RWP/RWP_ASYNC (Linux 7.3)');
        this.skip();
      }
      return evictedComeBack(type, 'rwp');
    });
  }

  it("anon: a guest's madvise(DONTNEED) reaches the engine (REMOVE): the page reads zeros, held or served back", async () => {
    const pages = 16;
    const region = memoryType('anon').create({ size: pages * P4K });
    try {
      fill(region, pages);
      const t = await WssTracker.create(region, { access: 'move', write: true });
      try {
        assert.equal(t.server, 'engine');
        t.arm(); // every page moved into the store
        madvise(region.addr + 2 * P4K, P4K, C.MADV_DONTNEED); // held in the store
        assert.equal(await touchFromThread(region.addr + 2 * P4K + 512).done, 0);
        assert.equal(await touchFromThread(region.addr + 3 * P4K + 512).done, initial(3, 512)); // served back
        await sleep(20);
        madvise(region.addr + 3 * P4K, P4K, C.MADV_DONTNEED); // present, came back through the engine
        assert.equal(await touchFromThread(region.addr + 3 * P4K + 512).done, 0);
        t.sample();
        assert.equal(t.engineStats()!.events >= 2, true);
      } finally {
        await t.close();
      }
      const b = bytesAt(region.addr, region.size);
      for (let p = 0; p < pages; p++) assert.equal(b[p * P4K + 512], p === 2 || p === 3 ? 0 : initial(p, 512), `page ${p}`);
    } finally {
      region.close();
    }
  });

  /**
   * Guest threads write one part of the region and read another over and over while the
   * tracker samples and evicts every page idle for one interval; then every byte is checked.
   */
  async function guestRun(type: string, pageSize: number, pages: number, o: { threads: number; workers: number; intervalMs: number; intervals: number; restoreMidway?: boolean }): Promise<void> {
    const region = memoryType(type).create({ size: pages * pageSize, pageSize });
    let wl: Workload | undefined;
    let t: WssTracker | undefined;
    try {
      fill(region, pages);
      t = await WssTracker.create(region, { evict: true, workers: o.workers });
      assert.equal(t.server, 'engine');
      wl = await Workload.start({ addr: region.addr, size: region.size, pageSize, writeFrac: 0.4, writeAt: 0.1, readFrac: 0.3, readAt: 0.6, threads: o.threads });
      t.arm();
      let evicted = 0;
      let served = 0;
      let faults = 0;
      for (let i = 0; i < o.intervals; i++) {
        await sleep(o.intervalMs);
        const st = t.sample();
        served += st.servedBack;
        faults += st.faults;
        evicted += t.evictCold({ how: 'store', minIdle: 1 }).pages;
        if (o.restoreMidway && i === o.intervals >> 1) await t.restoreAll();
      }
      await wl.stop();
      const passes = wl.progress().perThread;
      const slices = wl.slices;
      wl = undefined;
      // Touch every page from a thread: each page still evicted (or held) comes back through the engine.
      const last = t.sample();
      served += last.servedBack;
      const base = t.engineStats()!.pages.total;
      const out = await readFromThread(Array.from({ length: pages }, (_, p) => region.addr + p * pageSize + 512));
      for (let p = 0; p < pages; p++) assert.equal(out[p], initial(p, 512), `page ${p} read back`);
      for (let i = 0; i < 1000 && t.engineStats()!.pages.total < base + last.evicted; i++) await sleep(2);
      const back = t.sample();
      assert.ok(back.servedBack >= last.evicted, `${back.servedBack} pages came back through the engine, ${last.evicted} were evicted`);
      served += back.servedBack;
      faults += last.faults + back.faults;
      const es = t.engineStats()!;
      assert.ok(evicted > 0, 'something was evicted');
      assert.ok(served > 0 && es.pages.total >= served, `the engine served pages back (${served} in samples, ${es.pages.total} in all)`);
      assert.equal(es.errors, 0);
      assert.equal(es.incidents, 0);
      await t.close();
      const end = t.engineStats()!;
      t = undefined;
      console.log(`      ${type}: ${evicted} pages evicted under ${o.threads} guest threads, ${served} served back during the run ` +
        `(${faults} faults), ${end.pages.total - es.pages.total} restored on close; engine p50 ${end.latencyUs.p50} µs p99 ${end.latencyUs.p99} µs`);
      const b = bytesAt(region.addr, region.size);
      for (let p = 0; p < pages; p++) {
        const a = region.addr + p * pageSize;
        const th = slices.findIndex((s) => a >= s.write[0] && a < s.write[1]);
        for (let o2 = 0; o2 < pageSize; o2 += o2 < 512 ? 8 : 4096) {
          const guest = th >= 0 && o2 < 512 ? Workload.expectedByte(passes[th] ?? 0, o2 / 8) : undefined;
          const want = guest ?? (o2 % 512 === 0 ? initial(p, o2) : 0);
          if (b[p * pageSize + o2] !== want) assert.fail(`${type}: page ${p} offset ${o2}: ${b[p * pageSize + o2]} != ${want} (passes ${passes})`);
        }
      }
    } finally {
      if (wl) await wl.stop();
      if (t) await t.close();
      region.close();
    }
  }

  it('hugetlbfs: nothing is lost while guest threads write and pages are evicted under them (2 MiB pages, reserved)', async function () {
    const r = reserveHugePages(16);
    if (!r.ok) {
      console.log(`      skipped: ${r.reason}`);
      this.skip();
    }
    try {
      await guestRun('hugetlbfs', C.HUGE_PAGE_2M, 16, { threads: 2, workers: 2, intervalMs: 25, intervals: 16 });
    } finally {
      r.release();
    }
  });

  for (const type of ['anon', 'shmem']) {
    it(`${type}: 3 guest threads, 3 engine workers, 10 ms intervals, restoreAll() midway: every byte survives`, async () => {
      await guestRun(type, P4K, 4096, { threads: 3, workers: 3, intervalMs: 10, intervals: 30, restoreMidway: true });
    });
  }
});

describe('uffd-engine wss --evict (served by the engine)', () => {
  const main = path.resolve(__dirname, '../src/cli/main.js');
  for (const type of ['shmem', 'anon']) {
    it(`${type}: evicts, reads every evicted page back through the engine, reports engine figures`, () => {
      const res = spawnSync(process.execPath, [main, 'wss', '--type', type, '--evict', '--size', '16M', '--intervals', '4', '--interval', '200', '--json'], { encoding: 'utf8', timeout: limit(120_000) });
      assert.equal(res.status, 0, res.stderr + res.stdout.slice(-2000));
      const out = JSON.parse(res.stdout) as { summary: Record<string, unknown> & { engine: { errors: number; pagesServed: number }; readBack: { pages: number; bad: number; served: number } } };
      const s = out.summary;
      assert.equal(s.server, 'engine');
      assert.equal(s.evictedRestoredIntact, true);
      assert.equal(s.readBack.bad, 0);
      assert.equal(s.readBack.pages, 4096 - 2 * Math.round(4096 / 10)); // the cold 80% of the region
      assert.ok(s.readBack.served >= s.readBack.pages, `served back ${s.readBack.served} of ${s.readBack.pages}`);
      assert.equal(s.engine.errors, 0);
      assert.ok(s.engine.pagesServed >= s.readBack.served);
    });
  }
});
