// Working-set tracking on the running kernel: known access patterns (pages written, pages
// only read, untouched) reported exactly by every method this kernel supports, the hot/cold
// classification, the evict-and-serve-back loop (byte-exact, also with a guest running and
// pages evicted under it), a sparse 1 TiB region, and RWP: the encoding of each RWP struct and
// ioctl against the documented layout, the clear refusal here, and real RWP runs where the
// kernel advertises UFFD_FEATURE_RWP.
//
// The tests touch tracked memory from the main thread: every method that raises fault
// messages is served by the engine's threads, so the main thread can block on a fault.
import * as assert from 'node:assert/strict';
import * as C from '../src/kernel/constants.js';
import { ConfigError, UffdError, UnsupportedError } from '../src/kernel/errors.js';
import { bytesAt, mapAnonymous, munmap } from '../src/kernel/memory.js';
import { decodeMessage } from '../src/kernel/messages.js';
import { Scanner } from '../src/kernel/pagemap.js';
import { featureMask, Userfaultfd } from '../src/kernel/userfaultfd.js';
import { memoryType } from '../src/memory-types/index.js';
import type { Region } from '../src/memory-types/types.js';
import { heatmapSvg } from '../src/wss/heatmap.js';
import { chooseMethods, kernelHasRwp, AccessMethod } from '../src/wss/methods.js';
import { softDirtyProbe } from '../src/wss/soft-dirty.js';
import { COPY_EVICTED, COPY_HELD, COPY_NONE, PageCopies, SparseBytes } from '../src/wss/pages.js';
import { Range, TrackerOptions, WssTracker } from '../src/wss/tracker.js';
import { Workload } from '../src/wss/workload.js';
import { reserveHugePages } from './helpers/hugetlb.js';

const P4K = C.PAGE_SIZE;

/** Byte at offset `o` of page `p` before tracking starts (a pattern, never zero). */
const initial = (p: number, o: number) => ((p * 31 + o * 7) % 251) + 1;

function fill(region: Region, pages: number): void {
  const b = bytesAt(region.addr, pages * region.pageSize);
  for (let p = 0; p < pages; p++) for (let o = 0; o < region.pageSize; o += 512) b[p * region.pageSize + o] = initial(p, o);
}

function pagesOf(ranges: Range[], base: number, P: number): number[] {
  const out: number[] = [];
  for (const r of ranges) for (let a = r.start; a < r.end; a += P) out.push((a - base) / P);
  return out;
}

interface Pattern { writes: number[]; reads: number[] }

/** Touches from the main thread: one store per written page, one load per read page. */
function touch(region: Region, pat: Pattern, value: number): void {
  const P = region.pageSize;
  const b = bytesAt(region.addr, region.size);
  for (const p of pat.writes) b[p * P + 8] = value;
  let sum = 0;
  for (const p of pat.reads) sum += b[p * P] ?? 0;
  assert.ok(sum >= 0);
}

/** Runs two intervals of known patterns through a tracker and checks what it reports. */
async function checkPatterns(region: Region, opts: TrackerOptions, expectReads: boolean, expectWrites = true): Promise<void> {
  const P = region.pageSize;
  const pages = region.size / P;
  const populated = pages / 2;
  fill(region, populated);
  const t = await WssTracker.create(region, opts);
  const sorted = (a: number[]) => [...new Set(a)].sort((x, y) => x - y);
  try {
    t.arm();
    // interval 1: writes to present and to never-populated pages; reads of present and of
    // never-populated pages; everything else untouched
    const i1: Pattern = { writes: [1, 2, populated + 3], reads: [4, 5, populated + 4] };
    touch(region, i1, 0xee);
    let st = t.sample();
    if (expectWrites) {
      assert.deepEqual(pagesOf(t.ranges('written'), region.addr, P), sorted(i1.writes), `${t.describe()}: written`);
      assert.equal(st.written, i1.writes.length);
    } else {
      assert.equal(st.written, null);
    }
    if (expectReads) {
      assert.deepEqual(pagesOf(t.ranges('accessed'), region.addr, P), sorted([...i1.writes, ...i1.reads]), `${t.describe()}: accessed`);
      assert.equal(st.accessed, 6);
      assert.equal(st.wssBytes, 6 * P);
    } else {
      assert.equal(st.accessed, null);
    }
    // interval 2: read a page written before, write a page read before, read a cold one
    const i2: Pattern = { writes: [4], reads: [1, 7] };
    touch(region, i2, 0xdd);
    st = t.sample();
    if (expectWrites) assert.deepEqual(pagesOf(t.ranges('written'), region.addr, P), [4], `${t.describe()}: written (2)`);
    if (expectReads) assert.deepEqual(pagesOf(t.ranges('accessed'), region.addr, P), [1, 4, 7], `${t.describe()}: accessed (2)`);
    // interval 3: nothing
    st = t.sample();
    assert.equal(st.written, expectWrites ? 0 : null);
    if (expectReads) assert.equal(st.accessed, 0);
    assert.equal(t.engineStats()?.errors ?? 0, 0);
  } finally {
    await t.close();
  }
  // every byte as expected after close (held pages moved back)
  const b = bytesAt(region.addr, region.size);
  for (let p = 0; p < pages; p++) {
    for (let o = 0; o < P; o += 512) {
      const want = p < populated ? initial(p, o) : 0;
      assert.equal(b[p * P + o], want, `page ${p} offset ${o}`);
    }
    const w8 = p === 4 ? 0xdd : [1, 2, populated + 3].includes(p) ? 0xee : 0;
    assert.equal(b[p * P + 8], w8, `page ${p} offset 8`);
  }
}

describe('wss: method choice', () => {
  it('chooses per memory type and kernel, and refuses what cannot work with the reason', () => {
    const pick = (c: { access: string; server: string }) => [c.access, c.server];
    const anon = chooseMethods('anon', {});
    const shmem = chooseMethods('shmem', {});
    if (kernelHasRwp()) {
      assert.equal(anon.access, 'rwp');
      // MODE_WP excludes MODE_RWP: writes come from soft-dirty bits where the kernel keeps them
      assert.equal(anon.write, softDirtyProbe().ok ? 'soft-dirty' : 'none');
      assert.deepEqual(pick(anon), ['rwp', 'none']);
      assert.deepEqual(pick(chooseMethods('anon', { evict: true })), ['rwp', 'engine']);
      assert.deepEqual(pick(chooseMethods('shmem', { evict: true })), ['rwp', 'engine']);
    } else {
      assert.deepEqual([anon.write, anon.access], ['wp-async', 'move']);
      assert.deepEqual([shmem.write, shmem.access], ['wp-async', 'zap']);
      assert.deepEqual(pick(chooseMethods('shmem', { evict: true })), ['zap', 'engine']);
      assert.equal(chooseMethods('hugetlbfs', {}).access, 'zap');
      assert.deepEqual(pick(anon), ['move', 'engine']);
      assert.equal(shmem.server, 'none');
    }
    // minor is served by the engine, which maps minor faults without MODE_WP: accesses only
    const minor = chooseMethods('shmem', { access: 'minor' });
    assert.deepEqual([minor.access, minor.server, minor.write], ['minor', 'engine', 'none']);
    assert.ok(minor.notes.some((n) => /CONTINUE/.test(n)), minor.notes.join('; '));
    assert.throws(() => chooseMethods('shmem', { access: 'minor', write: true }), (e: unknown) =>
      e instanceof UnsupportedError && /CONTINUE/.test(e.message) && /'zap'/.test(e.message));
    assert.throws(() => chooseMethods('anon', { access: 'zap' }), (e: unknown) => e instanceof UnsupportedError && /move/.test(e.message));
    assert.throws(() => chooseMethods('shmem', { access: 'move' }), (e: unknown) => e instanceof UnsupportedError && /anon/.test(e.message));
    assert.throws(() => chooseMethods('guest_memfd', {}), UnsupportedError);
    assert.throws(() => chooseMethods('anon', { access: 'bogus' as AccessMethod }), ConfigError);
  });

  it("refuses the removed 'server' option, naming why", async () => {
    const region = memoryType('shmem').create({ size: 16 * P4K });
    try {
      await assert.rejects(WssTracker.create(region, { access: 'zap', server: 'trap' } as TrackerOptions), (e: unknown) =>
        e instanceof ConfigError && /engine serves every fault/.test(e.message));
    } finally {
      region.close();
    }
  });

  it('requesting RWP on a kernel without it is a clear error naming the fallback', async function () {
    if (kernelHasRwp()) {
      console.log('      skipped: this kernel offers RWP (nothing to refuse)');
      this.skip();
    }
    for (const [type, fallback] of [['anon', "'move'"], ['shmem', "'zap'"]] as const) {
      assert.throws(() => chooseMethods(type, { access: 'rwp' }), (e: unknown) =>
        e instanceof UnsupportedError && /UFFD_FEATURE_RWP/.test(e.message) && /7\.3/.test(e.message) && e.message.includes(fallback));
    }
    const region = memoryType('anon').create({ size: 16 * P4K });
    try {
      await assert.rejects(WssTracker.create(region, { access: 'rwp' }), (e: unknown) =>
        e instanceof UnsupportedError && /fallback for anon is 'move'/.test(e.message));
    } finally {
      region.close();
    }
    // The kernel layer refuses too, before any ioctl.
    assert.throws(() => Userfaultfd.create({ features: ['RWP'] }), (e: unknown) => e instanceof UnsupportedError && /RWP/.test(e.message));
  });
});

describe('wss: known access patterns, every method this kernel supports', function () {
  // [type, access, sees reads, tracks writes]; minor tracks accesses only (served by the engine, see methods.ts)
  const cases: [string, AccessMethod, boolean, boolean][] = [
    ['anon', 'none', false, true], ['anon', 'move', true, true],
    ['shmem', 'none', false, true], ['shmem', 'zap', true, true], ['shmem', 'minor', true, false],
  ];
  for (const [type, access, reads, writes] of cases) {
    it(`${type}: write=${writes ? 'wp-async' : 'none'} access=${access}${access === 'move' || access === 'minor' ? ' (served by the engine)' : ''}`, async () => {
      const region = memoryType(type).create({ size: 64 * P4K });
      try {
        await checkPatterns(region, { access, write: writes }, reads, writes);
      } finally {
        region.close();
      }
    });
  }
  it('zap and move report reads without write tracking too', async () => {
    for (const [type, access] of [['shmem', 'zap'], ['anon', 'move']] as const) {
      const region = memoryType(type).create({ size: 32 * P4K });
      try {
        fill(region, 16);
        const t = await WssTracker.create(region, { access, write: false });
        try {
          t.arm();
          touch(region, { writes: [3], reads: [5, 6] }, 1);
          const st = t.sample();
          assert.equal(st.written, null);
          assert.deepEqual(pagesOf(t.ranges('accessed'), region.addr, P4K), [3, 5, 6]);
        } finally {
          await t.close();
        }
      } finally {
        region.close();
      }
    }
  });

  describe('hugetlbfs (2 MiB pages, reserved for this suite)', function () {
    let release: (() => void) | undefined;
    before(function () {
      const r = reserveHugePages(16);
      if (!r.ok) {
        console.log(`      hugetlbfs cases skipped: ${r.reason}`);
        this.skip();
      }
      release = r.release;
    });
    after(() => release?.());
    for (const [access, reads, writes] of [['none', false, true], ['zap', true, true], ['minor', true, false]] as const) {
      it(`hugetlbfs: write=${writes ? 'wp-async' : 'none'} access=${access}`, async () => {
        const region = memoryType('hugetlbfs').create({ size: 16 * C.HUGE_PAGE_2M, pageSize: C.HUGE_PAGE_2M });
        try {
          await checkPatterns(region, { access, write: writes }, reads, writes);
        } finally {
          region.close();
        }
      });
    }
  });
});

describe('wss: hot and cold over several intervals', () => {
  it('classifies a repeatedly touched set hot and the rest cold, with cold ranges', async () => {
    const region = memoryType('shmem').create({ size: 128 * P4K });
    try {
      fill(region, 128);
      const t = await WssTracker.create(region, { access: 'zap', hotMin: 2, hotWindow: 4, coldAfter: 3 });
      try {
        t.arm();
        const hot: Pattern = { writes: [10, 11], reads: [20, 21, 22] };
        let st = t.sample(); // interval 1: nothing touched
        for (let i = 0; i < 3; i++) {
          touch(region, hot, i);
          st = t.sample();
        }
        assert.equal(st.hot, 5);
        assert.equal(st.known, 128);
        assert.equal(st.cold, 123);
        assert.deepEqual(pagesOf(t.ranges('hot'), region.addr, P4K), [10, 11, 20, 21, 22]);
        assert.deepEqual(t.coldRanges().map((r) => [(r.start - region.addr) / P4K, (r.end - region.addr) / P4K]),
          [[0, 10], [12, 20], [23, 128]]);
        // one more interval without page 10: still hot (3 of the last 4), one more: warm... then cold
        touch(region, { writes: [11], reads: [20, 21, 22] }, 9);
        st = t.sample();
        assert.equal(st.hot, 5);
        st = t.sample();
        st = t.sample();
        st = t.sample();
        assert.equal(st.hot, 0);
        assert.equal(st.cold, 128);
        const heat = t.heat(4);
        assert.deepEqual(Array.from(heat.accessed), [0, 0, 0, 0]);
      } finally {
        await t.close();
      }
    } finally {
      region.close();
    }
  });

  it('draws a heatmap of what it saw', () => {
    const svg = heatmapSvg([
      { interval: 1, atMs: 100, accessed: [0, 1, 0.5], written: [0, 1, 0] },
      { interval: 2, atMs: 200, accessed: [0, 0, 1], written: [0, 0, 0.5] },
    ], { title: 't', regionBytes: 3 * P4K, seesReads: true });
    assert.match(svg, /^<svg/);
    assert.match(svg, /interval 2, bucket 2: 100\.0% accessed, 50\.0% written/);
  });
});

describe('wss: evict cold pages and serve them back byte-exact', function () {
  async function evictLoop(type: string, pageSize: number, pages: number, access: AccessMethod): Promise<void> {
    const region = memoryType(type).create({ size: pages * pageSize, pageSize });
    try {
      fill(region, pages);
      const t = await WssTracker.create(region, { evict: true, access, write: access === 'minor' ? false : 'auto' });
      try {
        assert.equal(t.server, 'engine', t.describe());
        assert.equal(t.access, access, t.describe());
        // anon + move: every page sits in the store since the last sample (the hot ones too)
        const allHeld = type === 'anon' && access === 'move';
        t.arm();
        const hot: Pattern = { writes: [1, 2], reads: [3] };
        for (let i = 0; i < 4; i++) {
          touch(region, hot, 0x40 + i);
          t.sample();
        }
        const cold = t.coldRanges();
        const ev = t.evictCold({ how: 'store' });
        assert.equal(ev.pages, pages - 3, `evicted ${ev.pages} of ${pages}`);
        const st = t.sample();
        assert.equal(st.evicted, pages - 3);
        assert.ok(cold.length >= 1);
        // the memory is gone from the region (anon: moved into the store, an anonymous
        // holding area; files: punched out of the file, their bytes in the memfd store)
        const s = new Scanner();
        const present = s.countBytes(region.addr, region.addr + region.size, { categoryMask: C.PAGE_IS_PRESENT });
        const held = type === 'anon' ? s.countBytes(t.storeAddr, t.storeAddr + region.size, { categoryMask: C.PAGE_IS_PRESENT }) : 0;
        s.close();
        assert.ok(present <= 3 * pageSize, `present ${present}`);
        if (type === 'anon') assert.equal(held, allHeld ? region.size : (pages - 3) * pageSize, 'the store holds every page moved into it');
        const served0 = t.engineStats()?.pages.total ?? 0;
        // touching every page brings each back from the store
        const b = bytesAt(region.addr, region.size);
        for (let p = 0; p < pages; p++) {
          for (let o = 0; o < pageSize; o += 512) {
            assert.equal(b[p * pageSize + o], initial(p, o), `page ${p} offset ${o}`);
          }
          assert.equal(b[p * pageSize + 8], p === 1 || p === 2 ? 0x43 : 0, `page ${p} offset 8`);
        }
        // The engine records a fill just after the ioctl that woke the toucher: a page it has
        // not recorded yet still counts as evicted at a sample.
        // Every evicted page came back through the engine (anon + move: the 3 hot pages too,
        // they were held in the store since the last sample; minor: the 3 hot pages were zapped
        // at the last sample and come back with UFFDIO_CONTINUE).
        const want = served0 + (allHeld || access === 'minor' ? pages : pages - 3);
        for (let i = 0; i < 1000 && t.engineStats()!.pages.total < want; i++) await new Promise((r) => setTimeout(r, 2));
        const after = t.sample();
        assert.equal(after.evicted, 0);
        const es = t.engineStats()!;
        if (access === 'minor') {
          // The engine records a CONTINUE just after the ioctl that woke the toucher: the hot
          // pages of the last interval may be counted after served0 was read.
          assert.ok(es.pages.total >= want && es.pages.total <= want + 3, `${es.pages.total} pages served, expected ${want} (+3 at most)`);
        } else {
          assert.equal(es.pages.total, want);
        }
        assert.equal(es.errors, 0);
        // evict again, and let close() restore everything instead of faults
        for (let i = 0; i < 3; i++) t.sample();
        assert.ok(t.evictCold({ how: 'store' }).pages > 0);
      } finally {
        await t.close();
      }
      const b = bytesAt(region.addr, region.size);
      for (let p = 0; p < pages; p++) for (let o = 0; o < pageSize; o += 512) assert.equal(b[p * pageSize + o], initial(p, o));
    } finally {
      region.close();
    }
  }

  it('anon, move (moved into the store by the access trap, the engine copies back)', () => evictLoop('anon', P4K, 256, 'move'));
  it('shmem/memfd, zap (pinned + punched, the engine copies back)', () => evictLoop('shmem', P4K, 256, 'zap'));
  it('shmem/memfd, minor (pinned + punched, the engine copies back; minor faults CONTINUEd by the engine)', () => evictLoop('shmem', P4K, 256, 'minor'));
  // RWP (Linux 7.3): the sync window keeps RWP faults waiting while cold pages go
  const rwpCases = [
    ['anon', 'anon, rwp (cold pages moved into the store in the sync window, the engine copies back)'],
    ['shmem', 'shmem/memfd, rwp (pinned + punched in the sync window, the engine copies back)'],
  ] as const;
  for (const [type, name] of rwpCases) {
    it(name, async function () {
      if (!kernelHasRwp()) {
        console.log(`      skipped: this kernel lacks UFFD_FEATURE_RWP/RWP_ASYNC (Linux 7.3)`);
        this.skip();
      }
      await evictLoop(type, P4K, 256, 'rwp');
    });
  }

  for (const access of ['zap', 'minor', 'rwp'] as const) {
    it(`hugetlbfs, ${access} (2 MiB pages, pinned + punched, UFFDIO_COPY back through the engine)`, async function () {
      if (access === 'rwp' && !kernelHasRwp()) {
        console.log(`      skipped: this kernel lacks UFFD_FEATURE_RWP/RWP_ASYNC (Linux 7.3)`);
        this.skip();
      }
      const r = reserveHugePages(16);
      if (!r.ok) {
        console.log(`      skipped: ${r.reason}`);
        this.skip();
      }
      try {
        await evictLoop('hugetlbfs', C.HUGE_PAGE_2M, 16, access);
      } finally {
        r.release();
      }
    });
  }

  it('anon: MADV_COLD / MADV_PAGEOUT hints on cold pages keep every byte', async () => {
    const region = memoryType('anon').create({ size: 64 * P4K });
    try {
      fill(region, 64);
      const t = await WssTracker.create(region, { access: 'move' });
      try {
        t.arm();
        for (let i = 0; i < 3; i++) { touch(region, { writes: [0], reads: [] }, i + 1); t.sample(); }
        assert.equal(t.evictCold({ how: 'cold' }).pages, 63);
        assert.equal(t.evictCold({ how: 'pageout' }).pages, 63);
      } finally {
        await t.close();
      }
      const b = bytesAt(region.addr, region.size);
      for (let p = 1; p < 64; p++) assert.equal(b[p * P4K + 512], initial(p, 512));
    } finally {
      region.close();
    }
  });

  for (const [type, access] of [['anon', 'auto'], ['shmem', 'auto'], ['shmem', 'minor']] as const) {
    it(`${type}, access ${access}: nothing is lost while a guest writes and pages are evicted under it`, async function () {
      const pages = 2048;
      const region = memoryType(type).create({ size: pages * P4K });
      fill(region, pages);
      const t = await WssTracker.create(region, { evict: true, access, write: access === 'minor' ? false : 'auto' });
      let wl: Workload | undefined;
      try {
        wl = await Workload.start({ addr: region.addr, size: region.size, pageSize: P4K, writeFrac: 0.5, writeAt: 0.1, readFrac: 0.25, readAt: 0.7, threads: 2 });
        t.arm();
        let evicted = 0;
        for (let i = 0; i < 16; i++) {
          await new Promise((r) => setTimeout(r, 25));
          t.sample();
          evicted += t.evictCold({ how: 'store', minIdle: 1 }).pages;
        }
        await wl.stop();
        const passes = wl.progress().perThread;
        const slices = wl.slices;
        wl = undefined;
        assert.ok(evicted > 0, 'something was evicted');
        const errors = t.engineStats()!.errors;
        if (access === 'minor') {
          // A minor fault whose page is punched out before the engine's CONTINUE gets EFAULT:
          // the engine wakes the thread, which faults again as a missing fault and is served
          // from the store (checked byte by byte below). The engine counts each such race in errors.
          if (errors) console.log(`      ${errors} CONTINUE(s) lost the race with a punch and were served again as missing faults`);
        } else {
          assert.equal(errors, 0);
        }
        await t.close();
        // every page: the guest's last writes, or the initial bytes
        const b = bytesAt(region.addr, region.size);
        for (let p = 0; p < pages; p++) {
          const a = region.addr + p * P4K;
          const th = slices.findIndex((s) => a >= s.write[0] && a < s.write[1]);
          for (let k = 0; k < 64; k++) {
            const o = k * 8;
            const guest = th >= 0 ? Workload.expectedByte(passes[th] ?? 0, k) : undefined;
            const want = guest ?? (o % 512 === 0 ? initial(p, o) : 0);
            if (b[p * P4K + o] !== want) assert.fail(`${type}: page ${p} offset ${o}: ${b[p * P4K + o]} != ${want} (passes ${passes}, evicted ${evicted})`);
          }
        }
      } finally {
        if (wl) await wl.stop();
        await t.close();
        region.close();
      }
    });
  }
});

describe('wss: a sparse 1 TiB region with bounded tracker memory', () => {
  it('tracks writes to 16 MiB spread over 1 TiB; state stays proportional to the touched chunks', async () => {
    const size = 2 ** 40;
    const region = memoryType('anon').create({ size, noReserve: true });
    try {
      const t = await WssTracker.create(region, { access: 'none', write: true });
      try {
        t.arm();
        // 64 clusters of 64 pages (256 KiB), spread evenly
        const b = (off: number) => bytesAt(region.addr + off, 64 * P4K);
        const stride = size / 64;
        for (let c = 0; c < 64; c++) { const v = b(c * stride); for (let p = 0; p < 64; p++) v[p * P4K] = 1; }
        const st = t.sample();
        assert.equal(st.written, 64 * 64);
        assert.equal(t.ranges('written').length, 64);
        const st2 = t.sample();
        assert.equal(st2.written, 0);
        // a 2 MiB chunk directory per history (2 of them) + 512 B per touched chunk and history
        assert.ok(t.footprint() < 5 * 1024 * 1024, `footprint ${t.footprint()}`);
        assert.ok(st2.scanMs < 200, `scan of 1 TiB took ${st2.scanMs} ms`);
      } finally {
        await t.close();
      }
    } finally {
      region.close();
    }
  });

  it('sparse per-page bytes and store-copy states allocate only touched chunks', () => {
    const sb = new SparseBytes(2 ** 28);
    sb.forRange(1000, 1010, (idx, _p, n) => { for (let i = idx; i < idx + n; i++) sb.bytes[i] = 7; });
    assert.equal(sb.used, 1);
    assert.equal(sb.get(1005), 7);
    assert.equal(sb.get(5000), 0);
    const copies = new PageCopies(2 ** 28);
    const before = copies.footprint;
    assert.equal(copies.get(123456789), COPY_NONE);
    copies.setRange(123456789, 123456791, COPY_HELD);
    copies.setRange(123456790, 123456791, COPY_EVICTED);
    copies.setRange(5, 6, COPY_NONE); // allocates nothing
    assert.deepEqual([copies.get(123456789), copies.get(123456790), copies.get(123456791)], [COPY_HELD, COPY_EVICTED, COPY_NONE]);
    assert.deepEqual(copies.counts(), [0, 1, 1]);
    const seen: [number, number][] = [];
    copies.forEachSet((p, st) => seen.push([p, st]));
    assert.deepEqual(seen, [[123456789, COPY_HELD], [123456790, COPY_EVICTED]]);
    assert.equal(copies.footprint, before, 'one chunk fits in the initial pool');
  });
});

describe('wss: RWP (read-write protect, Linux 7.3)', () => {
  it('ioctl numbers, struct sizes and mode bits match the documented layout', () => {
    assert.equal(C.UFFDIO_RWPROTECT, 0xc018aa09);
    assert.equal(C.UFFDIO_SET_MODE, 0x4010aa0a);
    assert.equal(C.SIZEOF_UFFDIO_RWPROTECT, 24);
    assert.equal(C.SIZEOF_UFFDIO_SET_MODE, 16);
    assert.equal(C.UFFDIO_REGISTER_MODE_RWP, 0x8);
    assert.equal(C.UFFDIO_RWPROTECT_MODE_RWP, 0x1);
    assert.equal(C.UFFDIO_RWPROTECT_MODE_DONTWAKE, 0x2);
    assert.equal(C.UFFD_PAGEFAULT_FLAG_RWP, 0x8);
    assert.equal(C.featureBit('RWP'), 0x20000n);
    assert.equal(C.featureBit('RWP_ASYNC'), 0x40000n);
    assert.equal(C.PAGE_IS_ACCESSED, 0x200);
    assert.equal(C._UFFDIO_RWPROTECT, 9);
    assert.equal(C._UFFDIO_SET_MODE, 10);
  });

  it('encodes uffdio_rwprotect {range, mode} and uffdio_set_mode {enable, disable} as the kernel reads them', function () {
    // A real userfaultfd, wrapped as if RWP had been negotiated, so that the kernel layer
    // encodes and issues the ioctls; its argument buffer is then read back byte by byte.
    const real = Userfaultfd.create({});
    const uffd = Userfaultfd.fromFd(real.fd, featureMask(['RWP', 'RWP_ASYNC']));
    const arg = (uffd as unknown as { arg: ArrayBuffer }).arg;
    const dv = new DataView(arg);
    const issue = (f: () => void): string => {
      try { f(); return 'ok'; } catch (e) { return e instanceof UffdError ? e.code : String(e); }
    };
    try {
      const start = 0x7f1234560000;
      const r1 = issue(() => uffd.rwprotect(start, 0x3000, true));
      assert.equal(dv.getBigUint64(0, true), BigInt(start));
      assert.equal(dv.getBigUint64(8, true), 0x3000n);
      assert.equal(dv.getBigUint64(16, true), BigInt(C.UFFDIO_RWPROTECT_MODE_RWP));
      issue(() => uffd.rwprotect(start, 0x1000, false, true));
      assert.equal(dv.getBigUint64(16, true), BigInt(C.UFFDIO_RWPROTECT_MODE_DONTWAKE));
      issue(() => uffd.rwprotect(start, 0x1000, false));
      assert.equal(dv.getBigUint64(16, true), 0n);
      const r2 = issue(() => uffd.setMode([], ['RWP_ASYNC']));
      assert.equal(dv.getBigUint64(0, true), 0n);
      assert.equal(dv.getBigUint64(8, true), 0x40000n);
      issue(() => uffd.setMode(['RWP_ASYNC'], []));
      assert.equal(dv.getBigUint64(0, true), 0x40000n);
      assert.equal(dv.getBigUint64(8, true), 0n);
      assert.throws(() => uffd.setMode(['RWP_ASYNC'], ['RWP_ASYNC']), ConfigError);
      if (!kernelHasRwp()) {
        // This kernel does not know the ioctls: it refuses them, it does not misread them.
        assert.notEqual(r1, 'ok');
        assert.notEqual(r2, 'ok');
        console.log(`      this kernel answers UFFDIO_RWPROTECT with ${r1} and UFFDIO_SET_MODE with ${r2}`);
      }
      // MODE_RWP in uffdio_register.mode (offset 16) and the WP exclusion before any ioctl
      const a = mapAnonymous(4 * P4K);
      try {
        const r3 = issue(() => real.register(a, 4 * P4K, ['rwp']));
        const rdv = new DataView((real as unknown as { arg: ArrayBuffer }).arg);
        assert.equal(rdv.getBigUint64(16, true), 0x8n);
        if (!kernelHasRwp()) assert.equal(r3, 'EINVAL');
        assert.throws(() => real.register(a, 4 * P4K, ['wp', 'rwp']), ConfigError);
      } finally {
        munmap(a, 4 * P4K);
      }
    } finally {
      real.close();
    }
  });

  it('decodes an RWP fault message', () => {
    const msg = new Uint8Array(32);
    const mdv = new DataView(msg.buffer);
    mdv.setUint8(0, C.UFFD_EVENT_PAGEFAULT);
    mdv.setUint32(8, C.UFFD_PAGEFAULT_FLAG_RWP | C.UFFD_PAGEFAULT_FLAG_WRITE, true);
    mdv.setBigUint64(16, 0x7f0000042000n, true);
    const ev = decodeMessage(mdv, 0);
    assert.ok(ev.type === 'pagefault' && ev.kind === 'rwp' && ev.write && ev.address === 0x7f0000042000);
  });

  describe('on a kernel that advertises UFFD_FEATURE_RWP', function () {
    before(function () {
      if (!kernelHasRwp()) {
        console.log(`      this kernel lacks UFFD_FEATURE_RWP/RWP_ASYNC (offered: 0x${Userfaultfd.offered().features.toString(16)}); RWP tests skipped`);
        this.skip();
      }
    });
    for (const type of ['anon', 'shmem']) {
      it(`${type}: rwp reports reads and writes exactly (hot scan of PAGE_IS_ACCESSED)`, async () => {
        const region = memoryType(type).create({ size: 64 * P4K });
        try {
          fill(region, 64);
          const t = await WssTracker.create(region, { access: 'rwp' });
          try {
            assert.equal(t.access, 'rwp');
            const writes = softDirtyProbe().ok;
            assert.equal(t.write, writes ? 'soft-dirty' : 'none');
            t.arm();
            touch(region, { writes: [1, 2], reads: [4, 5] }, 3);
            let st = t.sample();
            assert.deepEqual(pagesOf(t.ranges('accessed'), region.addr, P4K), [1, 2, 4, 5]);
            assert.equal(st.accessed, 4);
            if (writes) {
              assert.deepEqual(pagesOf(t.ranges('written'), region.addr, P4K), [1, 2]);
              assert.equal(st.written, 2);
            }
            touch(region, { writes: [4], reads: [9] }, 0);
            st = t.sample();
            assert.deepEqual(pagesOf(t.ranges('accessed'), region.addr, P4K), [4, 9]);
            if (writes) assert.deepEqual(pagesOf(t.ranges('written'), region.addr, P4K), [4]);
            st = t.sample();
            assert.equal(st.accessed, 0);
            if (writes) assert.equal(st.written, 0);
          } finally {
            await t.close();
          }
        } finally {
          region.close();
        }
      });
    }
    it('shmem: rwp eviction in a sync window, pages come back byte-exact', async () => {
      const region = memoryType('shmem').create({ size: 64 * P4K });
      try {
        fill(region, 64);
        const t = await WssTracker.create(region, { access: 'rwp', evict: true });
        try {
          t.arm();
          for (let i = 0; i < 4; i++) { touch(region, { writes: [1], reads: [2] }, 7); t.sample(); }
          assert.equal(t.evictCold().pages, 62);
          const b = bytesAt(region.addr, region.size);
          for (let p = 0; p < 64; p++) assert.equal(b[p * P4K + 512], initial(p, 512));
        } finally {
          await t.close();
        }
      } finally {
        region.close();
      }
    });
  });
});
