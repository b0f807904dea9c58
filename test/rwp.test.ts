// The RWP series' own test list (tools/testing/selftests/mm/uffd-unit-tests.c, v7), declared
// as a table and run for real on every memory target the selftests use: anon, shmem,
// shmem-private, hugetlb and hugetlb-private (2 MiB pages reserved for the suite). Sync
// faults are served by the project's Engine, never by a test-only handler. Each test checks
// the bytes the faulting side sees, page by page, and the exact PAGEMAP_SCAN state.
// Everything skips, saying why, on a kernel without UFFD_FEATURE_RWP (RWP shipped in Linux 7.3).
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import * as C from '../src/kernel/constants.js';
import { ConfigError, UffdError } from '../src/kernel/errors.js';
import {
  close as closeFd, endChild, forkIntoFrozenCgroup, ftruncate, pinLongterm, madvise, mapAnonymous, memcmp, memfdCreate, memset, mmap, mprotect, munmap,
} from '../src/kernel/memory.js';
import { Scanner } from '../src/kernel/pagemap.js';
import { MessageBuffer, Userfaultfd } from '../src/kernel/userfaultfd.js';
import type { FeatureName } from '../src/kernel/constants.js';
import type { MemoryTypeName } from '../src/memory-types/types.js';
import { Engine } from '../src/engine/engine.js';
import { sources } from '../src/sources/index.js';
import { PagePins } from '../src/wss/pins.js';
import { reserveHugePages } from './helpers/hugetlb.js';
import { within } from './helpers/within.js';
import type { CompareJob } from './helpers/threads/rwp-compare.js';

const KINDS = ['anon', 'shmem', 'shmem-private', 'hugetlb', 'hugetlb-private'] as const;
type Kind = typeof KINDS[number];
const PAGES = 8;
const COMPARE_WORKER = path.resolve(__dirname, 'helpers/threads/rwp-compare.js');
// Under emulation (QEMU TCG) a worker thread takes seconds to start: waits are generous
// upper bounds on conditions, never sleeps.
const WAIT_MS = 300_000;

/** One test memory: PAGES pages, page p filled with p % 255 + 1 (as the selftests do). */
interface Mem {
  kind: Kind;
  addr: number;
  size: number;
  P: number;
  type: MemoryTypeName;
  /** The expected bytes, page by page, in a mapping nobody registers. */
  expected: number;
  close(): void;
}

function makeMem(kind: Kind): Mem {
  const huge = kind.startsWith('hugetlb');
  const P = huge ? C.HUGE_PAGE_2M : C.PAGE_SIZE;
  const size = PAGES * P;
  let fd = -1;
  if (kind !== 'anon') {
    fd = memfdCreate(`rwp-${kind}`, C.MFD_CLOEXEC | (huge ? C.MFD_HUGETLB | C.MFD_HUGE_2MB : 0));
    ftruncate(fd, size);
  }
  const flags = kind === 'anon' ? C.MAP_PRIVATE | C.MAP_ANONYMOUS : kind.endsWith('private') ? C.MAP_PRIVATE : C.MAP_SHARED;
  const addr = mmap(size, C.PROT_READ | C.PROT_WRITE, flags, fd, 0);
  // As the selftests' main(): a THP would be tracked (and, for files, lose its marks) as a whole.
  if (!huge) madvise(addr, size, C.MADV_NOHUGEPAGE);
  const expected = mapAnonymous(size);
  for (let p = 0; p < PAGES; p++) {
    memset(addr + p * P, (p % 255) + 1, P);
    memset(expected + p * P, (p % 255) + 1, P);
  }
  const type: MemoryTypeName = huge ? 'hugetlbfs' : kind === 'shmem' ? 'shmem' : 'anon';
  return {
    kind, addr, size, P, type, expected,
    close() {
      munmap(addr, size);
      munmap(expected, size);
      if (fd >= 0) closeFd(fd);
    },
  };
}

/** Pages of [first, last) whose bytes differ from the expected ones (read from this thread). */
function badPages(m: Mem, first = 0, last = PAGES): number[] {
  const bad: number[] = [];
  for (let p = first; p < last; p++) if (memcmp(m.addr + p * m.P, m.expected + p * m.P, m.P) !== 0) bad.push(p);
  return bad;
}

/** Compares pages [first, last) from a worker thread (it may block on sync faults); resolves with the bad pages. */
function badPagesFromThread(m: Mem, first: number, last: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const workerData: CompareJob = { addr: m.addr, expected: m.expected, P: m.P, first, last };
    const w = new Worker(COMPARE_WORKER, { workerData });
    w.once('message', resolve);
    w.once('error', reject);
  });
}


async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached after ${WAIT_MS} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface Ctx {
  m: Mem;
  scan: Scanner;
  /** A userfaultfd with the test's features, the memory registered MODE_RWP (and closed after). */
  uffd(features: FeatureName[], modes?: ('rwp' | 'missing')[]): Userfaultfd;
  /** The project's Engine serving that uffd's faults (stopped after the test). */
  engine(u: Userfaultfd): Promise<Engine>;
}

/** PAGEMAP_SCAN regions of the memory, relative page ranges. */
function regionsOf(c: Ctx, o: { categoryMask?: number; categoryInverted?: number; returnMask?: number }): [number, number][] {
  const { m } = c;
  return c.scan.collect(m.addr, m.addr + m.size, o).map((r) => [(r.start - m.addr) / m.P, (r.end - m.addr) / m.P]);
}

function readPagemapEntry(pid: number, addr: number): bigint {
  const fd = fs.openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    const b = Buffer.alloc(8);
    fs.readSync(fd, b, 0, 8, (addr / C.PAGE_SIZE) * 8);
    return b.readBigUInt64LE(0);
  } finally {
    fs.closeSync(fd);
  }
}
/** Where a cgroup2 hierarchy is mounted, or null. */
function cgroup2Mount(): string | null {
  const line = fs.readFileSync('/proc/mounts', 'utf8').split('\n').find((l) => l.split(' ')[2] === 'cgroup2');
  return line?.split(' ')[1] ?? null;
}
const NO_CGROUP2 = 'needs a cgroup2 mount: the forked child waits in a frozen cgroup (a copy of this multi-threaded process ' +
  'must not run), and /proc/mounts lists none';

/**
 * Forks this process into a frozen cgroup (the child never runs), waits until the engine has
 * read the FORK event, runs check(child pid), then kills and reaps the child.
 */
async function withFrozenChild(e: Engine, check: (pid: number) => void): Promise<void> {
  let child: Userfaultfd | undefined;
  e.on('fork', (ev: { uffd: Userfaultfd }) => { child = ev.uffd; });
  const cg = path.join(cgroup2Mount()!, `uffd-engine-rwp-fork-${process.pid}`);
  fs.mkdirSync(cg);
  let pid = 0;
  const cgFd = fs.openSync(cg, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.writeFileSync(path.join(cg, 'cgroup.freeze'), '1');
    pid = forkIntoFrozenCgroup(cgFd);
    await until(() => child !== undefined, 'the FORK event');
    check(pid);
  } finally {
    if (pid > 0) endChild(pid);
    fs.closeSync(cgFd);
    fs.rmdirSync(cg);
    child?.close();
  }
}

/** Why no long-term pin can be taken here (io_uring fixed buffers), or null. */
function pinProbe(): string | null {
  const a = mapAnonymous(C.PAGE_SIZE);
  try {
    pinLongterm(a, C.PAGE_SIZE)();
    return null;
  } catch (e) {
    return `needs a long-term pin (an io_uring fixed buffer; the selftest uses gup_test): ${(e as Error).message}`;
  } finally {
    munmap(a, C.PAGE_SIZE);
  }
}
const PM_UFFD = 1n << 57n; // pagemap bit 57: "pte is tracked by userfaultfd" (RWP-protected in an RWP VMA)

interface RwpCase {
  name: string;
  features: FeatureName[];
  kinds?: readonly Kind[];
  /** Why it cannot run here, or null. */
  needs?: () => string | null;
  run(c: Ctx): Promise<void> | void;
}

const CASES: RwpCase[] = [
  {
    name: 'rwp-async', features: ['RWP', 'RWP_ASYNC'],
    run(c) {
      const u = c.uffd(['RWP', 'RWP_ASYNC']);
      u.rwprotect(c.m.addr, c.m.size, true);
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }), [], 'nothing accessed after protecting');
      // Async: reading resolves in the kernel, no message, no block; the content is intact.
      assert.deepEqual(badPages(c.m), []);
      assert.equal(u.read(new MessageBuffer(4)), 0, 'no fault message');
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }), [[0, PAGES]]);
    },
  },
  {
    name: 'rwp-sync (the engine resolves)', features: ['RWP'],
    async run(c) {
      const u = c.uffd(['RWP']);
      const e = await c.engine(u);
      u.rwprotect(c.m.addr, c.m.size, true);
      assert.deepEqual(await within(badPagesFromThread(c.m, 0, PAGES), WAIT_MS, 'reading the protected pages'), []);
      const st = e.stats();
      assert.ok(st.faults.rwp > 0, `RWP faults served: ${st.faults.rwp}`);
      assert.equal(st.faults.missing + st.faults.minor + st.faults.wp, 0);
      assert.equal(st.errors, 0);
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }), [[0, PAGES]]);
    },
  },
  {
    name: 'rwp-pagemap', features: ['RWP', 'RWP_ASYNC'],
    run(c) {
      const u = c.uffd(['RWP', 'RWP_ASYNC']);
      u.rwprotect(c.m.addr, c.m.size, true);
      assert.deepEqual(badPages(c.m, 0, PAGES / 2), []);
      // The hot scan: exactly the first half.
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }), [[0, PAGES / 2]]);
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, categoryInverted: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }),
        [[PAGES / 2, PAGES]]);
      // pagemap bit 57 on the protected half only
      for (let p = 0; p < PAGES; p++) assert.equal((readPagemapEntry(process.pid, c.m.addr + p * c.m.P) & PM_UFFD) !== 0n, p >= PAGES / 2, `page ${p} bit 57`);
    },
  },
  {
    name: 'rwp-mprotect', features: ['RWP', 'RWP_ASYNC'],
    run(c) {
      const u = c.uffd(['RWP', 'RWP_ASYNC']);
      u.rwprotect(c.m.addr, c.m.size, true);
      mprotect(c.m.addr, c.m.size, C.PROT_NONE);
      mprotect(c.m.addr, c.m.size, C.PROT_READ | C.PROT_WRITE);
      // The markers survived the round trip: still nothing accessed ...
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }), []);
      // ... and touching every page resolves each (the inverted scan finds none left).
      assert.deepEqual(badPages(c.m), []);
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, categoryInverted: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }), []);
    },
  },
  {
    name: 'rwp-gup', features: ['RWP', 'RWP_ASYNC'],
    needs: () => (PagePins.probe().ok ? null : `vmsplice cannot be used here: ${PagePins.probe().reason}`),
    run(c) {
      const u = c.uffd(['RWP', 'RWP_ASYNC']);
      memset(c.m.addr, 0xcd, c.m.P);
      u.rwprotect(c.m.addr, c.m.size, true);
      // vmsplice takes the page through GUP, which faults through the protection (async: resolved).
      const pins = new PagePins(Math.max(c.m.P, 1 << 20));
      const out = mapAnonymous(c.m.P);
      try {
        const n = Math.min(c.m.P, 1 << 20);
        pins.pin(c.m.addr, n);
        pins.drainTo(out, n);
        const ref = mapAnonymous(n);
        memset(ref, 0xcd, n);
        assert.equal(memcmp(out, ref, n), 0, 'the bytes read through the pipe');
        munmap(ref, n);
      } finally {
        pins.close();
        munmap(out, c.m.P);
      }
      assert.deepEqual(regionsOf(c, { categoryMask: C.PAGE_IS_ACCESSED, returnMask: C.PAGE_IS_ACCESSED }), [[0, 1]]);
    },
  },
  {
    name: 'rwp-async-toggle (SET_MODE both ways, faults in flight, the engine resolves)', features: ['RWP', 'RWP_ASYNC'],
    async run(c) {
      const { m } = c;
      const u = c.uffd(['RWP', 'RWP_ASYNC']);
      const e = await c.engine(u);
      const half = PAGES / 2;
      u.rwprotect(m.addr, m.size, true);
      assert.deepEqual(badPages(m, 0, half), []); // async: no message
      assert.equal(e.stats().faults.rwp, 0);
      u.setMode([], ['RWP_ASYNC']);
      assert.deepEqual(await within(badPagesFromThread(m, half, PAGES), WAIT_MS, 'sync faults on the second half'), []);
      const sync = e.stats().faults.rwp;
      assert.ok(sync > 0 && sync <= half, `sync faults ${sync}`);
      // A fault in flight across the switch back: the engine holds it (an RWP window), async
      // comes back, the window closes and wakes it; it resolves in the kernel without a message.
      u.rwprotect(m.addr, m.size, true);
      e.holdRwp(true);
      const pending = badPagesFromThread(m, 0, 1);
      await until(() => e.stats().faults.rwp > sync, 'the held fault reached the engine');
      u.setMode(['RWP_ASYNC'], []);
      e.holdRwp(false);
      assert.deepEqual(await within(pending, WAIT_MS, 'the held fault after the switch to async'), []);
      assert.equal(e.stats().faults.rwp, sync + 1);
      // Async again: re-protect and touch everything, nothing reaches the engine.
      u.rwprotect(m.addr, m.size, true);
      assert.deepEqual(badPages(m), []);
      assert.equal(e.stats().faults.rwp, sync + 1);
      assert.equal(e.stats().errors, 0);
    },
  },
  {
    name: 'rwp-close', features: ['RWP'],
    run(c) {
      const u = c.uffd(['RWP']);
      u.rwprotect(c.m.addr, c.m.size, true);
      u.close(); // restores every protected PTE (sync mode: a touch would otherwise wait)
      assert.deepEqual(badPages(c.m), []);
      for (let p = 0; p < PAGES; p++) assert.equal(readPagemapEntry(process.pid, c.m.addr + p * c.m.P) & PM_UFFD, 0n, `page ${p} bit 57`);
    },
  },
  {
    name: 'rwp-fork', features: ['RWP', 'EVENT_FORK'],
    needs: () => (cgroup2Mount() ? null : NO_CGROUP2),
    async run(c) {
      const u = c.uffd(['RWP', 'EVENT_FORK']);
      const e = await c.engine(u); // reads the FORK event (fork() waits for it)
      u.rwprotect(c.m.addr, c.m.P, true);
      assert.notEqual(readPagemapEntry(process.pid, c.m.addr) & PM_UFFD, 0n, 'bit 57 in the parent');
      await withFrozenChild(e, (pid) => {
        assert.notEqual(readPagemapEntry(pid, c.m.addr) & PM_UFFD, 0n, "bit 57 in the child's pagemap");
        assert.equal(readPagemapEntry(pid, c.m.addr + c.m.P) & PM_UFFD, 0n, 'an unprotected page has no bit 57 in the child');
      });
      assert.deepEqual(badPages(c.m, 1, PAGES), []);
    },
  },
  {
    name: 'rwp-fork-pin', features: ['RWP', 'RWP_ASYNC', 'EVENT_FORK'], kinds: ['anon'],
    needs: () => (cgroup2Mount() ? pinProbe() : NO_CGROUP2),
    async run(c) {
      const u = c.uffd(['RWP', 'RWP_ASYNC', 'EVENT_FORK']);
      const e = await c.engine(u);
      // A long-term pin (io_uring fixed buffer; the selftest uses gup_test's RO-longterm pin)
      // makes fork copy the page for the child (copy_present_page) instead of sharing it. Pin
      // first: pinning goes through GUP, which resolves a protected page (async).
      const unpin = pinLongterm(c.m.addr, c.m.P);
      try {
        u.rwprotect(c.m.addr, c.m.P, true);
        assert.notEqual(readPagemapEntry(process.pid, c.m.addr) & PM_UFFD, 0n, 'bit 57 in the parent');
        await withFrozenChild(e, (pid) => {
          assert.notEqual(readPagemapEntry(pid, c.m.addr) & PM_UFFD, 0n, "bit 57 on the child's copied page");
          // A read of the child's page (through /proc/PID/mem: GUP in the child's mm) auto-resolves it.
          const mem = fs.openSync(`/proc/${pid}/mem`, 'r');
          const one = Buffer.alloc(1);
          try {
            fs.readSync(mem, one, 0, 1, c.m.addr + 7);
          } finally {
            fs.closeSync(mem);
          }
          assert.equal(one[0], 1, "the child's copy holds the page's bytes");
          assert.equal(readPagemapEntry(pid, c.m.addr) & PM_UFFD, 0n, "the child's read resolved the protection");
          assert.notEqual(readPagemapEntry(process.pid, c.m.addr) & PM_UFFD, 0n, 'the parent page stays protected');
        });
      } finally {
        unpin();
      }
      assert.deepEqual(badPages(c.m), []);
    },
  },
  {
    name: 'rwp-wp-exclusive', features: ['RWP', 'PAGEFAULT_FLAG_WP'],
    needs: () => (Userfaultfd.hasFeature('WP_HUGETLBFS_SHMEM') ? null : 'needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM'),
    run(c) {
      const u = c.uffd(['RWP', 'PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM'], []);
      assert.throws(() => u.register(c.m.addr, c.m.size, ['wp', 'rwp'], c.m.P), ConfigError);
      assert.throws(() => u.registerUnchecked(c.m.addr, c.m.size, C.UFFDIO_REGISTER_MODE_WP | C.UFFDIO_REGISTER_MODE_RWP),
        (err: unknown) => err instanceof UffdError && err.code === 'EINVAL');
      assert.deepEqual(badPages(c.m), []);
    },
  },
];

const hasRwp = Userfaultfd.hasFeature('RWP') && Userfaultfd.hasFeature('RWP_ASYNC');

describe('rwp: the RWP series test list on anon, shmem, shmem-private, hugetlb, hugetlb-private', function () {
  this.timeout(WAIT_MS * 2);
  before(function () {
    if (!hasRwp) {
      console.log(`      this kernel (${os.release()}) lacks UFFD_FEATURE_RWP/RWP_ASYNC (offered 0x${Userfaultfd.offered().features.toString(16)}; ` +
        'RWP shipped in Linux 7.3): the RWP test list is skipped');
      this.skip();
    }
  });
  for (const kind of KINDS) {
    describe(kind, function () {
      let release: (() => void) | undefined;
      before(function () {
        if (!kind.startsWith('hugetlb') || !hasRwp) return;
        // PAGES for the mapping, as many again for private copies-on-write, two spare.
        const r = reserveHugePages(2 * PAGES + 2);
        if (!r.ok) {
          console.log(`      ${kind} skipped: ${r.reason}`);
          this.skip();
        }
        release = r.release;
      });
      after(() => release?.());
      for (const tc of CASES) {
        if (tc.kinds && !tc.kinds.includes(kind)) continue;
        it(tc.name, async function () {
          const missing = tc.features.filter((f) => !Userfaultfd.hasFeature(f));
          const why = missing.length ? `this kernel lacks ${missing.join(', ')}` : tc.needs?.() ?? null;
          if (why) {
            console.log(`      skipped: ${why}`);
            this.skip();
          }
          const m = makeMem(kind);
          const scan = new Scanner();
          const uffds: Userfaultfd[] = [];
          const engines: Engine[] = [];
          const ctx: Ctx = {
            m, scan,
            uffd(features, modes = ['rwp']) {
              const u = Userfaultfd.create({ features });
              uffds.push(u);
              if (modes.length) u.register(m.addr, m.size, modes, m.P);
              return u;
            },
            async engine(u) {
              const e = await Engine.start({
                regions: [{ start: m.addr, size: m.size, pageSize: m.P, type: m.type, source: sources.zero() }],
                uffd: u, ownsUffd: false, workers: 1, initially: 'resident',
              });
              engines.push(e);
              return e;
            },
          };
          try {
            await tc.run(ctx);
          } finally {
            for (const e of engines) await e.stop({ mode: 'abandon' });
            for (const u of uffds) u.close(); // a second close is a no-op
            scan.close();
            m.close();
          }
        });
      }
    });
  }
});
