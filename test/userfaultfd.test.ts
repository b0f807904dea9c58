// Every userfaultfd ioctl, for real, on anon and memfd (shmem) memory, and on 2 MiB
// hugetlbfs pages when they can be reserved. Every page served is compared byte by byte.
// A registered page that is still missing must never be touched from the main thread (the
// thread would sleep in the kernel forever): faults are taken by worker threads or children.
import { useCleanups } from './helpers/cleanups.js';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import * as C from '../src/kernel/constants.js';
import { ConfigError, UffdError, UnsupportedError } from '../src/kernel/errors.js';
import { addressOf } from '../src/kernel/libc.js';
import { decodeMessage } from '../src/kernel/messages.js';
import { Poller, bytesAt, mapAnonymous, munmap } from '../src/kernel/memory.js';
import { MessageBuffer, RangeResult, RegisterMode, Userfaultfd, ioctlNames } from '../src/kernel/userfaultfd.js';
import { checkResolve, featuresFor, registerChecked } from '../src/memory-types/check.js';
import { memoryType } from '../src/memory-types/index.js';
import type { Region } from '../src/memory-types/types.js';
import { assertBytes, assertFilled, pattern } from './helpers/bytes.js';
import { useHugePages } from './helpers/hugetlb.js';
import { within } from './helpers/within.js';
import { limit } from './helpers/limits.js';

const P = C.PAGE_SIZE;

/** A fresh userfaultfd with the features `modes` need on this region's type. */
function uffdFor(region: Region, modes: RegisterMode[], extra: C.FeatureName[] = []): Userfaultfd {
  return Userfaultfd.create({ features: [...featuresFor(memoryType(region.type), modes), ...extra] });
}

/** Waits up to timeoutMs for one message on the userfaultfd and decodes it. */
function readOne(uffd: Userfaultfd, timeoutMs = limit(5000)) {
  const poller = new Poller([uffd.fd]);
  const buf = new MessageBuffer(4);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error('no userfaultfd message arrived');
    poller.wait(Math.min(left, 200));
    const n = uffd.read(buf);
    if (n > 0) {
      assert.equal(n, 1, 'exactly one message');
      return decodeMessage(buf.view, 0);
    }
  }
}

interface Toucher {
  worker: Worker;
  started: Promise<void>;
  done: Promise<{ bytes?: Uint8Array }>;
  finished: () => boolean;
}
/** Starts a worker thread that writes `value` over [addr, +len) or reads it back. */
function touch(addr: number, len: number, op: 'write' | 'read', value?: number): Toucher {
  const worker = new Worker(path.join(__dirname, 'helpers', 'toucher.js'), { workerData: { addr, len, op, value } });
  let isDone = false;
  let onStart!: () => void;
  const started = new Promise<void>((r) => { onStart = r; });
  const done = new Promise<{ bytes?: Uint8Array }>((resolve, reject) => {
    worker.on('message', (m: { type: string; bytes?: Uint8Array }) => {
      if (m.type === 'start') onStart();
      if (m.type === 'done') {
        isDone = true;
        resolve(m);
      }
    });
    worker.on('error', reject);
    worker.on('exit', (code) => { if (!isDone) reject(new Error(`toucher exited (${code}) before finishing`)); });
  });
  return { worker, started, done, finished: () => isDone };
}


/** A JS-heap source buffer (stable address) with a pattern. */
function source(len: number, seed: number, pageSize = P): { bytes: Uint8Array; addr: number } {
  const bytes = pattern(len, seed, pageSize);
  return { bytes, addr: addressOf(bytes) };
}

/** Runs a script in a child node process (for accesses that kill the process). */
function child(script: string, env: Record<string, string> = {}) {
  const dist = path.join(__dirname, '..', 'src');
  return spawnSync(process.execPath, ['-e', script], {
    env: { ...process.env, UFFD_DIST: dist, ...env }, encoding: 'utf8', timeout: limit(20000),
  });
}

const cleanups = useCleanups();
function region(type: string, size: number, pageSize?: number): Region {
  const r = memoryType(type).create({ size, pageSize });
  cleanups.push(() => r.close());
  return r;
}
function uffdCleanup(u: Userfaultfd): Userfaultfd {
  cleanups.push(() => u.close());
  return u;
}

for (const typeName of ['anon', 'shmem']) {
  describe(`userfaultfd on ${typeName === 'shmem' ? 'memfd (shmem)' : 'anon'} memory`, () => {
    it('UFFDIO_API: the features asked for are the features granted', () => {
      const t = memoryType(typeName);
      const want = featuresFor(t, ['missing', 'wp']);
      const u = uffdCleanup(Userfaultfd.create({ features: want }));
      assert.deepEqual(u.featureNames, want.slice().sort((a, b) => C.FEATURE_BITS[a] - C.FEATURE_BITS[b]));
      assert.ok(Userfaultfd.offered().features & C.featureBit('MISSING_SHMEM'));
    });

    it('UFFDIO_COPY fills missing pages with exactly the source bytes', () => {
      const r = region(typeName, 4 * P);
      const u = uffdCleanup(uffdFor(r, ['missing']));
      const io = registerChecked(u, r, ['missing']);
      checkResolve(memoryType(typeName), 'copy', io);
      const src = source(4 * P, 1);
      const res = new RangeResult();
      assert.equal(u.copy(r.addr, src.addr, 4 * P, 0, res), 4 * P);
      assert.deepEqual({ ...res }, { bytes: 4 * P, errno: 0 });
      assertBytes(bytesAt(r.addr, 4 * P), src.bytes, 'registered mapping after copy');
      if (r.aliasAddr) assertBytes(bytesAt(r.aliasAddr, 4 * P), src.bytes, 'alias mapping (page cache) after copy');
    });

    it('UFFDIO_COPY serves a real missing fault taken by another thread', async () => {
      const r = region(typeName, 2 * P);
      const u = uffdCleanup(uffdFor(r, ['missing']));
      registerChecked(u, r, ['missing']);
      const w = touch(r.addr + P, P, 'read');
      cleanups.push(() => void w.worker.terminate());
      const m = readOne(u);
      assert.equal(m.type, 'pagefault');
      if (m.type !== 'pagefault') return;
      assert.equal(m.kind, 'missing');
      assert.equal(m.write, false);
      assert.equal(m.address, r.addr + P);
      const src = source(P, 2);
      assert.equal(u.copy(m.address, src.addr, P), P);
      const got = await within(w.done, 5000, 'faulting reader');
      assertBytes(new Uint8Array(got.bytes!), src.bytes, 'bytes the faulting thread read');
      assertBytes(bytesAt(r.addr + P, P), src.bytes, 'served page');
    });

    it('UFFDIO_ZEROPAGE maps zero pages', () => {
      const r = region(typeName, 3 * P);
      const u = uffdCleanup(uffdFor(r, ['missing']));
      const io = registerChecked(u, r, ['missing']);
      checkResolve(memoryType(typeName), 'zeropage', io);
      assert.equal(u.zeropage(r.addr, 3 * P), 3 * P);
      assertFilled(bytesAt(r.addr, 3 * P), 0, 'zeropage');
    });

    it('UFFDIO_WAKE on a registered range with no waiter succeeds; UNREGISTER makes the range unknown (ENOENT)', () => {
      const r = region(typeName, 2 * P);
      const u = uffdCleanup(uffdFor(r, ['missing']));
      registerChecked(u, r, ['missing']);
      u.wake(r.addr, 2 * P);
      u.unregister(r.addr, 2 * P);
      const src = source(P, 3);
      assert.throws(() => u.copy(r.addr, src.addr, P), (e: unknown) => e instanceof UffdError && e.code === 'ENOENT');
    });

    it('write-protect: a write from another thread blocks with a WP fault until un-protected', async () => {
      const r = region(typeName, 2 * P);
      const modes: RegisterMode[] = ['missing', 'wp'];
      const u = uffdCleanup(uffdFor(r, modes));
      const io = registerChecked(u, r, modes);
      checkResolve(memoryType(typeName), 'writeprotect', io);
      const src = source(2 * P, 4);
      assert.equal(u.copy(r.addr, src.addr, 2 * P), 2 * P);
      u.writeprotect(r.addr, P, true);

      const w = touch(r.addr, P, 'write', 0xab);
      cleanups.push(() => void w.worker.terminate());
      const m = readOne(u);
      assert.equal(m.type, 'pagefault');
      if (m.type !== 'pagefault') return;
      assert.equal(m.kind, 'wp');
      assert.equal(m.write, true);
      assert.equal(m.address, r.addr);
      await sleep(100);
      assert.equal(w.finished(), false, 'the writer must still be blocked');
      assertBytes(bytesAt(r.addr, P), src.bytes.subarray(0, P), 'protected page before un-protect');

      u.writeprotect(r.addr, P, false); // wakes the writer
      await within(w.done, 5000, 'blocked writer');
      assertFilled(bytesAt(r.addr, P), 0xab, 'page written after un-protect');
      assertBytes(bytesAt(r.addr + P, P), src.bytes.subarray(P), 'the other page');
    });

    it('UFFDIO_COPY with MODE_WP installs write-protected pages', async () => {
      const r = region(typeName, P);
      const modes: RegisterMode[] = ['missing', 'wp'];
      const u = uffdCleanup(uffdFor(r, modes));
      registerChecked(u, r, modes);
      const src = source(P, 5);
      assert.equal(u.copy(r.addr, src.addr, P, C.UFFDIO_COPY_MODE_WP), P);
      assertBytes(bytesAt(r.addr, P), src.bytes, 'copied page (read does not fault)');
      const w = touch(r.addr, P, 'write', 0x5a);
      cleanups.push(() => void w.worker.terminate());
      const m = readOne(u);
      assert.equal(m.type === 'pagefault' && m.kind, 'wp');
      u.writeprotect(r.addr, P, false);
      await within(w.done, 5000, 'writer');
      assertFilled(bytesAt(r.addr, P), 0x5a, 'written page');
    });

    it('poison: an access to a poisoned page kills the process with SIGBUS (in a child)', () => {
      const t = memoryType(typeName);
      const script = `
        const D = process.env.UFFD_DIST;
        const { Userfaultfd } = require(D + '/kernel/userfaultfd.js');
        const { memoryType } = require(D + '/memory-types/index.js');
        const { registerChecked, checkResolve, featuresFor } = require(D + '/memory-types/check.js');
        const { bytesAt } = require(D + '/kernel/memory.js');
        const t = memoryType(process.env.TYPE);
        const r = t.create({ size: 8192 });
        const u = Userfaultfd.create({ features: featuresFor(t, ['missing']) });
        const io = registerChecked(u, r, ['missing']);
        checkResolve(t, 'poison', io);
        u.zeropage(r.addr, 4096);
        const n = u.poison(r.addr + 4096, 4096);
        process.stdout.write('poisoned ' + n + ' neighbour ' + bytesAt(r.addr, 4096).every((b) => b === 0) + '\\n');
        const v = bytesAt(r.addr + 4096, 4096)[0];
        process.stdout.write('survived ' + v + '\\n');
      `;
      const res = child(script, { TYPE: t.name });
      assert.equal(res.error, undefined);
      assert.match(res.stdout, /poisoned 4096 neighbour true/, `child stderr: ${res.stderr}`);
      assert.doesNotMatch(res.stdout, /survived/);
      assert.equal(res.signal, 'SIGBUS', `child ended with status ${res.status} signal ${res.signal}: ${res.stderr}`);
    });

    it('partial progress: COPY over a range with a page already present returns bytes done + EAGAIN, then EEXIST with 0', () => {
      const r = region(typeName, 4 * P);
      const u = uffdCleanup(uffdFor(r, ['missing']));
      registerChecked(u, r, ['missing']);
      const first = source(P, 6);
      assert.equal(u.copy(r.addr + 2 * P, first.addr, P), P); // the page in the middle
      const src = source(4 * P, 7);
      const res = new RangeResult();
      assert.equal(u.copy(r.addr, src.addr, 4 * P, 0, res), 2 * P, 'stops at the present page');
      assert.deepEqual({ ...res }, { bytes: 2 * P, errno: 11 /* EAGAIN */ });
      assert.equal(u.copy(r.addr + 2 * P, src.addr + 2 * P, 2 * P, 0, res), 0, 'no progress on the present page');
      assert.deepEqual({ ...res }, { bytes: 0, errno: 17 /* EEXIST */ });
      assert.equal(u.copy(r.addr + 3 * P, src.addr + 3 * P, P, 0, res), P);
      assert.deepEqual({ ...res }, { bytes: P, errno: 0 });
      const expected = src.bytes.slice();
      expected.set(first.bytes, 2 * P);
      assertBytes(bytesAt(r.addr, 4 * P), expected, 'pages after partial copies');
    });

    it('bad input: unaligned start or length, zero length, an unregistered range: typed errors', () => {
      const r = region(typeName, 2 * P);
      const u = uffdCleanup(uffdFor(r, ['missing']));
      const isEinval = (e: unknown) => e instanceof UffdError && e.code === 'EINVAL';
      assert.throws(() => u.register(r.addr + 1, P, ['missing']), (e: unknown) => isEinval(e) && /aligned/.test((e as Error).message));
      assert.throws(() => u.register(r.addr, P + 1, ['missing']), isEinval);
      assert.throws(() => u.register(r.addr, 0, ['missing']), isEinval);
      assert.throws(() => registerChecked(u, r, ['missing'], { start: r.addr + 8, len: P }), isEinval);
      const src = source(P, 8);
      // Never registered: the kernel answers ENOENT.
      assert.throws(() => u.copy(r.addr, src.addr, P), (e: unknown) => e instanceof UffdError && e.code === 'ENOENT' && e.op === 'copy');
      assert.throws(() => u.zeropage(r.addr, P), (e: unknown) => e instanceof UffdError && e.code === 'ENOENT');
      registerChecked(u, r, ['missing']);
      // The kernel's own answers to unaligned and empty resolve ranges.
      assert.throws(() => u.copy(r.addr + 1, src.addr, P), isEinval);
      assert.throws(() => u.copy(r.addr, src.addr, 100), isEinval);
      assert.throws(() => u.copy(r.addr, src.addr, 0), isEinval);
      assert.throws(() => u.register(r.addr, P, ['bogus' as RegisterMode]), ConfigError);
    });

    it('check.ts refuses what the type or kernel lacks before the kernel is asked', () => {
      const t = memoryType(typeName);
      const r = region(typeName, P);
      const u = uffdCleanup(uffdFor(r, ['missing']));
      if (typeName === 'anon') {
        assert.throws(() => registerChecked(u, r, ['minor']),
          (e: unknown) => e instanceof UnsupportedError && /anon cannot be registered for minor faults \(it has no page cache\); use shmem or hugetlbfs/.test((e as Error).message));
      }
      // wp and rwp together
      assert.throws(() => registerChecked(u, r, ['wp', 'rwp']), UnsupportedError);
      // A type's mode with a userfaultfd lacking the needed feature
      if (typeName === 'shmem') {
        const bare = uffdCleanup(Userfaultfd.create({}));
        assert.throws(() => registerChecked(bare, r, ['minor']),
          (e: unknown) => e instanceof UnsupportedError && /MINOR_SHMEM/.test((e as Error).message));
      }
      // Nothing was registered by the refused attempts: registering now works.
      const io = registerChecked(u, r, ['missing']);
      assert.throws(() => checkResolve(t, 'continue', io), UnsupportedError);
    });
  });
}

describe('userfaultfd on anon memory: MOVE', () => {
  it('UFFDIO_MOVE moves pages into a registered range and leaves the source empty', () => {
    const r = region('anon', 3 * P);
    const u = uffdCleanup(uffdFor(r, ['missing'], ['MOVE']));
    const io = registerChecked(u, r, ['missing']);
    checkResolve(memoryType('anon'), 'move', io);
    const srcLen = 3 * P;
    const srcAddr = mapAnonymous(srcLen);
    cleanups.push(() => munmap(srcAddr, srcLen));
    const data = pattern(srcLen, 9);
    bytesAt(srcAddr, srcLen).set(data);
    assert.equal(u.move(r.addr, srcAddr, srcLen), srcLen);
    assertBytes(bytesAt(r.addr, srcLen), data, 'moved pages');
    assertFilled(bytesAt(srcAddr, srcLen), 0, 'source after move (its pages left)');
  });

  it('UFFDIO_MOVE is not a shmem operation: check.ts refuses it', () => {
    const r = region('shmem', P);
    const u = uffdCleanup(uffdFor(r, ['missing']));
    const io = registerChecked(u, r, ['missing']);
    assert.ok(ioctlNames(io).includes('move'), 'this kernel advertises move on shmem too');
    assert.throws(() => checkResolve(memoryType('shmem'), 'move', io), UnsupportedError);
  });
});

describe('userfaultfd on memfd (shmem) memory: minor faults and CONTINUE', () => {
  it('CONTINUE maps pages whose page cache was filled through the alias', () => {
    const r = region('shmem', 4 * P);
    const u = uffdCleanup(uffdFor(r, ['minor']));
    const io = registerChecked(u, r, ['minor']);
    checkResolve(memoryType('shmem'), 'continue', io);
    const data = pattern(4 * P, 10);
    bytesAt(r.aliasAddr, 4 * P).set(data); // fills the page cache; the registered mapping has no PTEs yet
    assert.equal(u.continue(r.addr, 4 * P), 4 * P);
    assertBytes(bytesAt(r.addr, 4 * P), data, 'registered mapping after CONTINUE');
    const res = new RangeResult();
    assert.equal(u.continue(r.addr, P, 0, res), 0, 'already mapped');
    assert.equal(res.errno, 17 /* EEXIST */);
  });

  it('a real minor fault from another thread, resolved with CONTINUE', async () => {
    const r = region('shmem', 2 * P);
    const u = uffdCleanup(uffdFor(r, ['minor']));
    registerChecked(u, r, ['minor']);
    const data = pattern(P, 11);
    bytesAt(r.aliasAddr + P, P).set(data);
    const w = touch(r.addr + P, P, 'read');
    cleanups.push(() => void w.worker.terminate());
    const m = readOne(u);
    assert.equal(m.type, 'pagefault');
    if (m.type !== 'pagefault') return;
    assert.equal(m.kind, 'minor');
    assert.equal(m.address, r.addr + P);
    assert.equal(u.continue(m.address, P), P);
    const got = await within(w.done, 5000, 'faulting reader');
    assertBytes(new Uint8Array(got.bytes!), data, 'bytes read through the registered mapping');
  });

  it('CONTINUE where the page cache is empty fails with a typed error', () => {
    const r = region('shmem', P);
    const u = uffdCleanup(uffdFor(r, ['minor']));
    registerChecked(u, r, ['minor']);
    assert.throws(() => u.continue(r.addr, P), (e: unknown) => e instanceof UffdError && e.op === 'continue' && e.code === 'EFAULT');
  });
});

describe('userfaultfd: ioctls this kernel may lack (RWP, Linux 7.3)', () => {
  it('rwprotect and setMode are UnsupportedError naming RWP and 7.3', function () {
    if (Userfaultfd.hasFeature('RWP')) {
      console.log('      (this kernel offers RWP: nothing to refuse)');
      this.skip();
    }
    const r = region('anon', P);
    const u = uffdCleanup(uffdFor(r, ['missing']));
    const io = registerChecked(u, r, ['missing']);
    const names = (e: unknown) => e instanceof UnsupportedError && /RWP/.test((e as Error).message) && /7\.3/.test((e as Error).message);
    assert.throws(() => u.rwprotect(r.addr, P, true), names);
    assert.throws(() => u.setMode(['RWP_ASYNC'], []), names);
    assert.throws(() => checkResolve(memoryType('anon'), 'rwprotect', io), names);
    assert.throws(() => registerChecked(u, r, ['rwp']), names);
    assert.throws(() => Userfaultfd.create({ features: ['RWP'] }), names);
  });
});

describe('userfaultfd on hugetlbfs (2 MiB pages)', () => {
  const H = 2 * 1024 * 1024;
  const huge = useHugePages(4);
  beforeEach(function () {
    if (!huge.ok) {
      console.log(`      skipped: ${huge.reason}`);
      this.skip();
    }
  });

  it('COPY fills a whole huge page', () => {
    const r = region('hugetlbfs', 2 * H, H);
    const u = uffdCleanup(uffdFor(r, ['missing']));
    const io = registerChecked(u, r, ['missing']);
    checkResolve(memoryType('hugetlbfs'), 'copy', io);
    const src = source(H, 12, H);
    assert.equal(u.copy(r.addr + H, src.addr, H), H);
    assertBytes(bytesAt(r.addr + H, H), src.bytes, 'huge page via the registered mapping');
    assertBytes(bytesAt(r.aliasAddr + H, H), src.bytes, 'huge page via the alias');
  });

  it('a real missing fault on a huge page is reported at the huge page start', async () => {
    const r = region('hugetlbfs', H, H);
    const u = uffdCleanup(uffdFor(r, ['missing']));
    registerChecked(u, r, ['missing']);
    const w = touch(r.addr + 5 * P, P, 'read');
    cleanups.push(() => void w.worker.terminate());
    const m = readOne(u);
    assert.equal(m.type === 'pagefault' && m.kind, 'missing');
    assert.equal(m.type === 'pagefault' && m.address, r.addr, 'aligned to the huge page');
    const src = source(H, 13, H);
    assert.equal(u.copy(r.addr, src.addr, H), H);
    const got = await within(w.done, 5000, 'faulting reader');
    assertBytes(new Uint8Array(got.bytes!), src.bytes.subarray(5 * P, 6 * P), 'bytes the reader saw');
  });

  it('CONTINUE maps a huge page filled through the alias', () => {
    const r = region('hugetlbfs', 2 * H, H);
    const u = uffdCleanup(uffdFor(r, ['minor']));
    const io = registerChecked(u, r, ['minor']);
    checkResolve(memoryType('hugetlbfs'), 'continue', io);
    const data = pattern(H, 14, H);
    bytesAt(r.aliasAddr, H).set(data);
    assert.equal(u.continue(r.addr, H), H);
    assertBytes(bytesAt(r.addr, H), data, 'huge page after CONTINUE');
  });

  it('no ZEROPAGE on hugetlbfs; ranges must be huge-page aligned', () => {
    const r = region('hugetlbfs', H, H);
    const u = uffdCleanup(uffdFor(r, ['missing', 'wp', 'minor']));
    const io = registerChecked(u, r, ['missing', 'wp', 'minor']);
    assert.equal(io, 0x1ccn, `advertised ${ioctlNames(io).join(',')}`);
    assert.throws(() => checkResolve(memoryType('hugetlbfs'), 'zeropage', io),
      (e: unknown) => e instanceof UnsupportedError && /zeropage/.test((e as Error).message));
    const src = source(P, 15);
    assert.throws(() => u.copy(r.addr, src.addr, P), (e: unknown) => e instanceof UffdError && e.code === 'EINVAL');
    const u2 = uffdCleanup(uffdFor(r, ['missing']));
    assert.throws(() => registerChecked(u2, r, ['missing'], { start: r.addr, len: P }),
      (e: unknown) => e instanceof UffdError && e.code === 'EINVAL');
    assert.throws(() => u2.register(r.addr + P, H - P, ['missing'], H), (e: unknown) => e instanceof UffdError && e.code === 'EINVAL');
  });
});
