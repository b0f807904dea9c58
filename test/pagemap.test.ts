// PAGEMAP_SCAN through Scanner, against page-table states this test sets up itself on the
// running kernel: present, zero-page (read of a never-written anon page), written, untouched,
// write-protect markers on a memfd, the walk_end continuation when the region vector fills,
// max_pages, and the atomic scan-and-re-arm of PM_SCAN_WP_MATCHING on a WP_ASYNC range.
import * as assert from 'node:assert/strict';
import * as C from '../src/kernel/constants.js';
import { ConfigError, UffdError } from '../src/kernel/errors.js';
import {
  bytesAt, close, ftruncate, madvise, mapAnonymous, memfdCreate, mmap, munmap,
} from '../src/kernel/memory.js';
import { CATEGORY_NAMES, Scanner, categoryNames, encodeScanArg } from '../src/kernel/pagemap.js';
import { Userfaultfd } from '../src/kernel/userfaultfd.js';

const P = C.PAGE_SIZE;
// Every category this kernel knows (PAGE_IS_ACCESSED needs RWP) except SOFT_DIRTY, which
// depends on the kernel's config (CONFIG_MEM_SOFT_DIRTY): 7.3's Debian kernel reports it on
// every page touched since the last clear, 6.18 here does not.
const ALL = 0x1ff & ~C.PAGE_IS_SOFT_DIRTY;

/** Regions as "[first,last) NAME|NAME" in page numbers relative to base, for readable asserts. */
function regionsOf(s: Scanner, base: number, pages: number, o = { categoryAnyof: ALL, returnMask: ALL }): string[] {
  return s.collect(base, base + pages * P, o).map((r) =>
    `[${(r.start - base) / P},${(r.end - base) / P}) ${categoryNames(r.categories).join('|')}`);
}

describe('PAGEMAP_SCAN (Scanner)', function () {
  let scanner: Scanner;
  before(function () {
    if (!Scanner.supported()) {
      console.log('      this kernel has no PAGEMAP_SCAN (Linux 6.7+)');
      this.skip();
    }
    scanner = new Scanner();
  });
  after(() => scanner?.close());

  it('encodes struct pm_scan_arg at the documented offsets (96 bytes, all u64)', () => {
    assert.equal(C.PAGEMAP_SCAN, 0xc0606610);
    assert.equal(C.SIZEOF_PM_SCAN_ARG, 96);
    assert.equal(C.SIZEOF_PAGE_REGION, 24);
    const buf = new ArrayBuffer(96);
    const dv = new DataView(buf);
    encodeScanArg(dv, {
      start: 0x7f0000001000, end: 0x7f0000009000, vec: 0x5555aaaa0000, vecLen: 4096, flags: 3, categoryInverted: 0x20, categoryMask: 0x22, categoryAnyof: 0x18, returnMask: 0x3a, maxPages: 7,
    });
    const u = (o: number) => dv.getBigUint64(o, true);
    assert.equal(u(0), 96n);
    assert.equal(u(8), 3n);
    assert.equal(u(16), 0x7f0000001000n);
    assert.equal(u(24), 0x7f0000009000n);
    assert.equal(u(32), 0n); // walk_end: written by the kernel
    assert.equal(u(40), 0x5555aaaa0000n);
    assert.equal(u(48), 4096n);
    assert.equal(u(56), 7n);
    assert.equal(u(64), 0x20n);
    assert.equal(u(72), 0x22n);
    assert.equal(u(80), 0x18n);
    assert.equal(u(88), 0x3an);
    assert.equal(CATEGORY_NAMES[C.PAGE_IS_ACCESSED], 'ACCESSED');
  });

  it('reports present, zero-page and untouched anon pages exactly', () => {
    const n = 32;
    const a = mapAnonymous(n * P);
    try {
      madvise(a, n * P, C.MADV_NOHUGEPAGE);
      const b = bytesAt(a, n * P);
      for (const p of [0, 1, 2, 10]) b[p * P] = 1; // written
      let sum = 0;
      for (const p of [5, 6]) sum += b[p * P] ?? 0; // read only: the shared zero page
      assert.equal(sum, 0);
      const present = scanner.collect(a, a + n * P, { categoryMask: C.PAGE_IS_PRESENT, returnMask: C.PAGE_IS_PRESENT | C.PAGE_IS_PFNZERO });
      assert.deepEqual(present.map((r) => [(r.start - a) / P, (r.end - a) / P, r.categories]), [
        [0, 3, C.PAGE_IS_PRESENT], [5, 7, C.PAGE_IS_PRESENT | C.PAGE_IS_PFNZERO], [10, 11, C.PAGE_IS_PRESENT],
      ]);
      assert.equal(scanner.countBytes(a, a + n * P, { categoryMask: C.PAGE_IS_PRESENT }), 6 * P);
      const holes = scanner.collect(a, a + n * P, { categoryInverted: C.PAGE_IS_PRESENT, categoryMask: C.PAGE_IS_PRESENT, returnMask: C.PAGE_IS_PRESENT });
      assert.deepEqual(holes.map((r) => [(r.start - a) / P, (r.end - a) / P]), [[3, 5], [7, 10], [11, 32]]);
      const by = scanner.countByCategory(a, a + n * P, { categoryAnyof: C.PAGE_IS_PRESENT, returnMask: C.PAGE_IS_PRESENT | C.PAGE_IS_PFNZERO });
      assert.equal(by[3], 6 * P); // PRESENT is bit 3
      assert.equal(by[5], 2 * P); // PFNZERO is bit 5
    } finally {
      munmap(a, n * P);
    }
  });

  it('continues from walk_end when the region vector fills', () => {
    const n = 64;
    const a = mapAnonymous(n * P);
    const small = new Scanner({ vecLen: 3 });
    try {
      madvise(a, n * P, C.MADV_NOHUGEPAGE);
      const b = bytesAt(a, n * P);
      for (let p = 0; p < n; p += 2) b[p * P] = 1; // 32 runs of one page
      const got: number[] = [];
      const sum = small.scan(a, a + n * P, { categoryMask: C.PAGE_IS_PRESENT }, (s, e) => got.push((s - a) / P, (e - a) / P));
      assert.equal(sum.regions, 32);
      assert.equal(sum.bytes, 32 * P);
      assert.ok(sum.calls >= 11, `expected >= 11 ioctls for 32 regions in a vector of 3, got ${sum.calls}`);
      assert.equal(sum.walkEnd, a + n * P);
      for (let i = 0; i < 32; i++) assert.deepEqual([got[2 * i], got[2 * i + 1]], [2 * i, 2 * i + 1]);
      // the generator form yields the same regions
      const gen = [...small.regions(a, a + n * P, { categoryMask: C.PAGE_IS_PRESENT })];
      assert.equal(gen.length, 32);
      const last = gen[31];
      assert.ok(last, 'a 32nd region');
      assert.deepEqual([(last.start - a) / P, (last.end - a) / P], [62, 63]);
      // maxPages stops the walk after that many matching pages
      const lim = small.scan(a, a + n * P, { categoryMask: C.PAGE_IS_PRESENT, maxPages: 5 });
      assert.equal(lim.bytes, 5 * P);
      assert.ok(lim.walkEnd < a + n * P);
    } finally {
      small.close();
      munmap(a, n * P);
    }
  });

  it('re-arms atomically with PM_SCAN_WP_MATCHING on a WP_ASYNC range (anon)', () => {
    const n = 16;
    const a = mapAnonymous(n * P);
    const uffd = Userfaultfd.create({ features: ['WP_ASYNC', 'WP_UNPOPULATED'] });
    try {
      madvise(a, n * P, C.MADV_NOHUGEPAGE);
      const b = bytesAt(a, n * P);
      for (let p = 0; p < 8; p++) b[p * P] = 1;
      uffd.register(a, n * P, ['wp']);
      const written = { flags: C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC, categoryMask: C.PAGE_IS_WRITTEN | C.PAGE_IS_PFNZERO,
        categoryInverted: C.PAGE_IS_PFNZERO, categoryAnyof: C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED, returnMask: C.PAGE_IS_WRITTEN };
      // First scan: every present page counts as written (never protected), and gets protected.
      assert.equal(scanner.countBytes(a, a + n * P, written), 8 * P);
      assert.equal(scanner.countBytes(a, a + n * P, written), 0);
      b[3 * P] = 2; // write a protected page: the async fault marks it written, no message
      b[12 * P] = 2; // write a hole: a new page, written
      const x = b[13 * P]; // read a hole: the zero page, not written
      assert.equal(x, 0);
      assert.deepEqual(scanner.collect(a, a + n * P, written).map((r) => [(r.start - a) / P, (r.end - a) / P]), [[3, 4], [12, 13]]);
      assert.equal(scanner.countBytes(a, a + n * P, written), 0);
      // What the kernel reports without the PFNZERO/present filter: holes and the zero page
      // look "written" (not write-protected) on this kernel, which is why the tracker filters.
      const raw = regionsOf(scanner, a, n);
      assert.ok(raw.some((l) => l.startsWith('[13,14)') && l.includes('PFNZERO')), raw.join('; '));
    } finally {
      uffd.close();
      munmap(a, n * P);
    }
  });

  it('sees write-protect markers (SWAPPED) and page-cache pages (FILE) on a memfd', () => {
    const n = 16;
    const fd = memfdCreate('pagemap-test');
    ftruncate(fd, n * P);
    const m = mmap(n * P, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0);
    const uffd = Userfaultfd.create({ features: ['WP_ASYNC', 'WP_UNPOPULATED', 'WP_HUGETLBFS_SHMEM'] });
    try {
      const b = bytesAt(m, n * P);
      b[0] = 1;
      uffd.register(m, n * P, ['wp']);
      uffd.writeprotect(m, n * P, true); // markers on every page, present or not
      assert.deepEqual(regionsOf(scanner, m, n), ['[0,1) WPALLOWED|FILE|PRESENT', '[1,16) WPALLOWED|SWAPPED']);
      const y = b[4 * P]; // read: the page comes in from the page cache, still protected
      b[5 * P] = 1; // write
      assert.equal(y, 0);
      assert.deepEqual(scanner.collect(m, m + n * P, { categoryMask: C.PAGE_IS_WRITTEN, categoryAnyof: C.PAGE_IS_PRESENT, returnMask: C.PAGE_IS_WRITTEN })
        .map((r) => (r.start - m) / P), [5]);
      madvise(m, n * P, C.MADV_DONTNEED); // zap: the page cache keeps the data, markers stay
      assert.equal(scanner.countBytes(m, m + n * P, { categoryMask: C.PAGE_IS_PRESENT }), 0);
      assert.equal(b[5 * P], 1);
      assert.equal(scanner.countBytes(m, m + n * P, { categoryMask: C.PAGE_IS_PRESENT }), P);
    } finally {
      uffd.close();
      munmap(m, n * P);
      close(fd);
    }
  });

  it('scans /proc/<pid>/pagemap of this process by pid too', () => {
    const byPid = new Scanner({ pid: process.pid, vecLen: 8 });
    const a = mapAnonymous(4 * P);
    try {
      bytesAt(a, 4 * P)[P] = 1;
      assert.deepEqual(byPid.collect(a, a + 4 * P, { categoryMask: C.PAGE_IS_PRESENT }).map((r) => (r.start - a) / P), [1]);
    } finally {
      byPid.close();
      munmap(a, 4 * P);
    }
  });

  it('explains its errors: unknown flags, unaligned start, CHECK_WPASYNC, PAGE_IS_ACCESSED without RWP', () => {
    const a = mapAnonymous(4 * P);
    try {
      assert.throws(() => scanner.scan(a + 1, a + P), ConfigError);
      assert.throws(() => scanner.scan(a, a + P, { flags: 4 }), ConfigError);
      assert.throws(() => scanner.scan(a, a + P, { categoryMask: 1 << 12 }), ConfigError);
      assert.throws(() => scanner.scan(a, a + 4 * P, { flags: C.PM_SCAN_CHECK_WPASYNC | C.PM_SCAN_WP_MATCHING, categoryMask: C.PAGE_IS_WRITTEN }),
        (e: unknown) => e instanceof UffdError && e.code === 'EPERM' && /WP_ASYNC/.test(e.message));
      if (!Userfaultfd.hasFeature('RWP')) {
        assert.throws(() => scanner.scan(a, a + 4 * P, { categoryMask: C.PAGE_IS_ACCESSED }),
          (e: unknown) => e instanceof UffdError && e.code === 'EINVAL' && /RWP/.test(e.message) && /zap/.test(e.message) && /move/.test(e.message));
      }
    } finally {
      munmap(a, 4 * P);
    }
  });
});
