// The native reference benchmark (src/bench/native/uffd-bench.c through src/bench/native.ts):
// builds it and runs small configurations. Correctness only: every run must verify every
// byte (mismatches === 0) and report well-formed figures; timings are never asserted.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  buildNative, HandlerCounters, NativeResult, PhaseResult, runMemcpy, runNative, runPlainFaults, startExternal,
  startServe, writeSource,
} from '../src/bench/native.js';
import * as C from '../src/kernel/constants.js';
import { ERRNO } from '../src/kernel/libc.js';
import { close as closeFd, mmap, munmap, openFile, Poller } from '../src/kernel/memory.js';
import { msgEvent, msgFaultAddress } from '../src/kernel/messages.js';
import { acceptAsync, closeFds, closeSocket, listenUnix, recvWithFds, whenReadable } from '../src/kernel/socket.js';
import { MessageBuffer, RangeResult, Userfaultfd } from '../src/kernel/userfaultfd.js';
import { useHugePages } from './helpers/hugetlb.js';
import { limit } from './helpers/limits.js';
import { at } from './helpers/at.js';

const MiB = 1024 * 1024;
const RUN = { timeoutMs: limit(60_000) };

function assertPhase(p: PhaseResult, pages: number, what: string): void {
  assert.equal(p.pagesTouched, pages, `${what}: pages touched`);
  assert.ok(p.elapsedSec > 0, `${what}: elapsedSec > 0`);
  for (const k of ['faultsPerSec', 'pagesPerSec', 'mbPerSec', 'faultingCpuSec', 'processCpuSec'] as const) {
    assert.ok(Number.isFinite(p[k]) && p[k] >= 0, `${what}: ${k} = ${p[k]}`);
  }
  const l = p.latencyUs;
  assert.equal(l.count, pages, `${what}: one latency sample per touched page`);
  assert.ok(l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, `${what}: percentiles ordered ${JSON.stringify(l)}`);
  assert.ok(l.mean >= l.min && l.mean <= l.max, `${what}: mean within [min, max]`);
  assert.equal(p.histogram.reduce((s, b) => s + b.count, 0), pages, `${what}: histogram holds every sample`);
  p.histogram.forEach((b, i) => {
    assert.equal(b.loUs, i === 0 ? 0 : 2 ** i, `${what}: bucket ${i} low bound`);
    assert.equal(b.hiUs, 2 ** (i + 1), `${what}: bucket ${i} high bound`);
  });
}

function assertHandled(h: HandlerCounters | null, faults: number, what: string): void {
  assert.ok(h, `${what}: handler counters present`);
  assert.equal(h.faults, faults, `${what}: faults served (${JSON.stringify(h)})`);
  assert.ok(h.reads > 0, `${what}: reads > 0`);
}

function assertRun(r: NativeResult, what: string): void {
  assert.equal(r.mismatches, 0, `${what}: ${r.mismatches} mismatching pages (first at ${r.firstMismatchOffset})`);
  assert.equal(r.mismatchBytes, 0, `${what}: mismatching bytes`);
  assert.equal(r.verifiedBytes, r.size, `${what}: every byte verified`);
  assert.equal(r.pages * r.pageSize, r.size, `${what}: pages x pageSize = size`);
  assertPhase(r, r.pages, what);
}

describe('native reference benchmark (src/bench/native)', function () {
  this.timeout(limit(120_000));
  let skipReason: string | undefined;

  before(async function () {
    const b = await buildNative();
    if (typeof b !== 'string') {
      skipReason = b.skipped;
      console.log(`      (native benchmark tests skipped: ${b.skipped})`);
    }
  });
  beforeEach(function () {
    if (skipReason) this.skip();
  });

  it('builds with the system C compiler and reuses an unchanged build', async () => {
    const a = await buildNative();
    const b = await buildNative();
    assert.equal(typeof a, 'string');
    assert.equal(a, b);
    assert.ok(fs.statSync(a as string).mode & 0o100, 'binary is executable');
  });

  it('anon, missing, random, 2 faulting threads, 2 native handlers, 16 MiB', async () => {
    const r = await runNative({ type: 'anon', kind: 'missing', size: 16 * MiB, threads: 2, handlers: 2, access: 'random' }, RUN);
    assertRun(r, 'anon missing');
    assert.equal(r.mode, 'native');
    assert.equal(r.handlers, 2);
    assert.equal(r.threads, 2);
    assert.equal(r.pages, 4096);
    assert.equal(r.resolve, 'copy');
    assert.match(r.pattern, /^splitmix64:seed=1$/);
    assertHandled(r.handled, 4096, 'anon missing');
    assert.ok(r.handlerCpuSec !== null && r.handlerCpuSec >= 0);
    assert.equal(r.steady, null);
    assert.ok(r.prewarmSec > 0, `the region's memory was touched and freed first (prewarmSec ${r.prewarmSec})`);
    const cold = await runNative({ size: 4 * MiB, threads: 1, prewarm: false }, RUN);
    assertRun(cold, 'anon missing, no pre-warm');
    assert.equal(cold.prewarmSec, 0, '--no-prewarm skips it');
  });

  it('memfd, minor faults resolved with UFFDIO_CONTINUE', async () => {
    const r = await runNative({ type: 'memfd', kind: 'minor', size: 8 * MiB, threads: 2, handlers: 2, access: 'strided', stride: 7 }, RUN);
    assertRun(r, 'memfd minor');
    assert.equal(r.resolve, 'continue');
    assertHandled(r.handled, 2048, 'memfd minor');
    assert.equal(r.handled!.minor, 2048);
  });

  it('memfd, missing faults (UFFDIO_COPY into shmem)', async () => {
    const r = await runNative({ type: 'memfd', kind: 'missing', size: 8 * MiB, threads: 2 }, RUN);
    assertRun(r, 'memfd missing');
    assertHandled(r.handled, 2048, 'memfd missing');
  });

  it('write-protect faults on anon and memfd, resolved by un-protecting', async () => {
    for (const type of ['anon', 'memfd'] as const) {
      const r = await runNative({ type, kind: 'wp', size: 8 * MiB, threads: 2, handlers: 2, access: 'random' }, RUN);
      assertRun(r, `${type} wp`);
      assert.equal(r.touch, 'write');
      assert.equal(r.resolve, 'wp-unprotect');
      assertHandled(r.handled, 2048, `${type} wp`);
      assert.equal(r.handled!.wp, 2048);
    }
  });

  it('Firecracker example handler (fc): one thread, one read and one UFFDIO_COPY per fault', async () => {
    const r = await runNative({ size: 8 * MiB, threads: 2, handler: 'fc', access: 'random' }, RUN);
    assertRun(r, 'fc');
    assert.equal(r.mode, 'fc');
    assert.equal(r.handlers, 1);
    assertHandled(r.handled, 2048, 'fc');
    // One uffd_msg per read(2): as many successful reads as faults.
    assert.equal(r.handled!.reads, 2048);
  });

  it('bounce: 2 rounds of zap + re-fault by rotated threads (anon and memfd minor)', async () => {
    const r = await runNative({ size: 8 * MiB, threads: 2, handlers: 2, access: 'random', bounce: 2 }, RUN);
    assertRun(r, 'bounce anon');
    assert.ok(r.steady, 'steady-state figures present');
    assert.equal(r.steady.rounds, 2);
    assert.equal(r.steady.pagesPerRound, 2048);
    assertPhase(r.steady, 4096, 'bounce anon steady');
    assertHandled(r.steady.handled, 4096, 'bounce anon steady');
    assertHandled(r.totalHandled, 3 * 2048, 'bounce anon total');

    const m = await runNative({ type: 'memfd', kind: 'minor', size: 4 * MiB, threads: 2, bounce: 2 }, RUN);
    assertRun(m, 'bounce memfd minor');
    assertHandled(m.steady!.handled, 2048, 'bounce memfd minor steady');
  });

  it('hot-set bounce re-faults only the hot fraction', async () => {
    const r = await runNative({ size: 8 * MiB, threads: 2, access: 'hotset', hot: 0.25, bounce: 2 }, RUN);
    assertRun(r, 'hotset');
    assert.equal(r.hotPages, 512);
    assert.equal(r.steady!.pagesPerRound, 512);
    assertHandled(r.steady!.handled, 1024, 'hotset steady');
  });

  it('zero source: UFFDIO_ZEROPAGE, pages verified as zeros', async () => {
    const r = await runNative({ size: 4 * MiB, threads: 2, source: 'zero' }, RUN);
    assertRun(r, 'zeropage');
    assert.equal(r.resolve, 'zeropage');
    assert.equal(r.pattern, 'zero');
  });

  it('plain kernel page faults without userfaultfd', async () => {
    const r = await runPlainFaults({ size: 8 * MiB, threads: 2, access: 'random' }, RUN);
    assertRun(r, 'plain');
    assert.equal(r.mode, 'none');
    assert.equal(r.handled, null);
    assert.equal(r.handlerCpuSec, null);
    assert.equal(r.touch, 'write');
  });

  it('memcpy bandwidth', async () => {
    const r = await runMemcpy(16 * MiB, RUN);
    assert.equal(r.mode, 'memcpy');
    assert.equal(r.size, 16 * MiB);
    assert.equal(r.runsSec.length, 3);
    assert.ok(r.gibPerSec > 0 && Number.isFinite(r.gibPerSec));
    assert.equal(r.bestSec, Math.min(...r.runsSec));
  });

  it('rejects a bad configuration with a clear error', async () => {
    await assert.rejects(runNative({ type: 'anon', kind: 'minor', size: MiB }, RUN), /minor needs --type memfd or hugetlb/);
    await assert.rejects(runNative({ size: 3000 }, RUN), /multiple of the page size/);
  });

  describe('hugetlb (2 MiB pages)', () => {
    const huge = useHugePages(8);
    it('missing and minor faults on 8 huge pages', async function () {
      if (!huge.ok) {
        console.log(`      (skipped: ${huge.reason})`);
        this.skip();
      }
      const miss = await runNative({ type: 'hugetlb', kind: 'missing', size: 16 * MiB, threads: 2, handlers: 2 }, RUN);
      assertRun(miss, 'hugetlb missing');
      assert.equal(miss.pageSize, 2 * MiB);
      assertHandled(miss.handled, 8, 'hugetlb missing');
      const minor = await runNative({ type: 'hugetlb', kind: 'minor', size: 16 * MiB, threads: 2, bounce: 1 }, RUN);
      assertRun(minor, 'hugetlb minor');
      assertHandled(minor.totalHandled, 16, 'hugetlb minor');
    });
  });

  describe('external mode (Firecracker handshake over a Unix socket)', () => {
    let dir: string;
    before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'native-bench-')); });
    after(() => { fs.rmSync(dir, { recursive: true, force: true }); });

    it('is served by the native --serve handler from the same source file', async () => {
      const src = path.join(dir, 'src.bin');
      const w = await writeSource(src, 8 * MiB, 5, RUN);
      assert.equal(w.size, 8 * MiB);
      assert.equal(fs.statSync(src).size, 8 * MiB);
      const sock = path.join(dir, 'serve.sock');
      const server = await startServe({ socket: sock, sourceFile: src, handlers: 2 }, RUN);
      await server.listening;
      const client = await startExternal({ socket: sock, size: 8 * MiB, sourceFile: src, threads: 2, access: 'random', bounce: 1 }, RUN);
      const [r, s] = await Promise.all([client.result, server.result]);
      assertRun(r, 'external');
      assert.equal(r.mode, 'external');
      assert.equal(r.handlers, 0);
      assert.equal(r.handled, null);
      assert.equal(r.pattern, `file:${src}`);
      assert.equal(s.mode, 'serve');
      assert.equal(s.fds, 1);
      assert.equal(s.pageSize, 4096);
      assert.equal(s.handled.faults, 2 * 2048);
      assert.equal(s.peerPid, client.child.pid);
    });

    it('sends [uffd, memfd] with sendMemfd for minor faults', async () => {
      const sock = path.join(dir, 'minor.sock');
      const server = await startServe({ socket: sock, handler: 'fc', seed: 3 }, RUN);
      await server.listening;
      const client = await startExternal({ socket: sock, type: 'memfd', kind: 'minor', sendMemfd: true, seed: 3, size: 4 * MiB }, RUN);
      const [r, s] = await Promise.all([client.result, server.result]);
      assertRun(r, 'external minor');
      assert.equal(s.fds, 2);
      assert.equal(s.handled.minor, 1024);
    });

    it('detects a handler that serves the wrong bytes', async () => {
      const sock = path.join(dir, 'wrong.sock');
      const server = await startServe({ socket: sock, seed: 99 }, RUN);
      await server.listening;
      const client = await startExternal({ socket: sock, size: 2 * MiB, seed: 1 }, RUN);
      const [r] = await Promise.all([client.result, server.result]);
      assert.equal(r.mismatches, 512, 'every page differs');
      assert.equal(r.firstMismatchOffset, 0);
    });

    it('is served by a tiny TypeScript handler built on the kernel layer', async () => {
      const size = 4 * MiB;
      const src = path.join(dir, 'ts-src.bin');
      await writeSource(src, size, 11, RUN);
      const sock = path.join(dir, 'ts.sock');
      const listenFd = listenUnix(sock);
      const srcFd = openFile(src, C.O_RDONLY);
      const srcAddr = mmap(size, C.PROT_READ, C.MAP_PRIVATE | C.MAP_POPULATE, srcFd, 0);
      let conn = -1;
      let fds: number[] = [];
      try {
        const client = await startExternal({ socket: sock, size, sourceFile: src, threads: 2, access: 'random' }, RUN);
        conn = await acceptAsync(listenFd, limit(10_000));
        assert.ok(conn >= 0, 'the C workload connected');
        assert.ok(await whenReadable(conn, limit(10_000)), 'handshake arrives');
        const msg = recvWithFds(conn, 4096, 4);
        fds = msg.fds;
        assert.equal(fds.length, 1, 'exactly one fd: the uffd');
        const regions = JSON.parse(msg.data.toString('utf8')) as Array<{ base_host_virt_addr: number; size: number; offset: number; page_size: number; page_size_kib: number }>;
        assert.equal(regions.length, 1);
        const { base_host_virt_addr: base, size: rsize, offset, page_size: ps, page_size_kib: psKib } = at(regions, 0);
        assert.deepEqual([rsize, offset, ps, psKib], [size, 0, 4096, 4096]);

        // Serve: poll the uffd and the connection; COPY each faulting page from the file;
        // stop when the workload hangs up. Yield to the event loop between polls.
        const uffd = Userfaultfd.fromFd(at(fds, 0));
        const buf = new MessageBuffer(64);
        const poller = new Poller([uffd.fd, conn]);
        const copied = new RangeResult();
        let served = 0;
        const deadline = Date.now() + limit(30_000);
        for (;;) {
          assert.ok(Date.now() < deadline, 'the TypeScript handler finished in time');
          poller.wait(20);
          let n: number;
          while ((n = uffd.read(buf)) > 0) {
            for (let i = 0; i < n; i++) {
              if (msgEvent(buf.view, i) !== C.UFFD_EVENT_PAGEFAULT) continue;
              const page = msgFaultAddress(buf.view, i) - (msgFaultAddress(buf.view, i) % ps);
              for (;;) {
                uffd.copy(page, srcAddr + offset + (page - base), ps, 0, copied);
                if (copied.errno === ERRNO.EAGAIN) continue;
                if (copied.errno !== 0) uffd.wake(page, ps); // EEXIST: already there
                break;
              }
              served++;
            }
          }
          if (poller.revents(1) & (C.POLLIN | C.POLLHUP)) break; // the workload exited
        }
        const r = await client.result;
        assertRun(r, 'external (TypeScript handler)');
        assert.equal(served, size / 4096);
        assert.ok(r.peerCpuSec === null || r.peerCpuSec >= 0);
      } finally {
        closeFds(fds);
        if (conn >= 0) closeSocket(conn);
        closeSocket(listenFd);
        munmap(srcAddr, size);
        closeFd(srcFd);
      }
    });
  });
});
