// The restore server end to end: our Firecracker-style client (a child process) maps and
// registers its memory, sends the handshake and the uffd, and checks every byte it
// reads against the memory file; the server validates and hands the session to a simple
// single-threaded handler. Plus hostile peers, which must be refused without leaking fds.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { closeSocket, connectUnix, sendWithFds } from '../src/kernel/socket.js';
import { memfdCreate, close } from '../src/kernel/memory.js';
import { Userfaultfd } from '../src/kernel/userfaultfd.js';
import { spawnFcClient, FcClientOptions, FcClientRun } from '../src/restore/fc-client.js';
import { RestoreServer, RestoreServerOptions, ServerEvent, kernelPageSizes } from '../src/restore/server.js';
import { openFdCount, simpleServe, withHugePages, writeSnapshot } from './helpers/restore-fixtures.js';
import { limit } from './helpers/limits.js';
import { at } from './helpers/at.js';

const MiB = 1 << 20;

describe('restore server with the Firecracker-style client', function () {
  this.timeout(limit(60000));
  let dir: string;
  let memPath: string;
  let sockPath: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-restore-'));
    memPath = path.join(dir, 'snapshot.mem');
    sockPath = path.join(dir, 'handler.sock');
    writeSnapshot(memPath, 12 * MiB);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function restore(client: Omit<FcClientOptions, 'socket' | 'memFile'>, serveOpts = {},
    serverOpts: Partial<RestoreServerOptions> = {}) {
    const s = simpleServe(serveOpts);
    const events: ServerEvent[] = [];
    const server = RestoreServer.listen({
      socketPath: sockPath, memFilePath: memPath, serveConnection: s.serve, onEvent: (e) => events.push(e), ...serverOpts,
    });
    try {
      const { done } = spawnFcClient({ socket: sockPath, memFile: memPath, timeoutMs: limit(20000), ...client });
      const accepted = await server.acceptOne(limit(10000));
      assert.ok(accepted, 'the client connected');
      const run: FcClientRun = await done;
      const o = await accepted.outcome;
      return { run, outcome: o, stats: s.sessions, events };
    } finally {
      await server.close();
    }
  }

  for (const variant of ['v1.1', 'v1.7', 'v1.12', 'page_size_only'] as const) {
    it(`restores 2 regions at a file offset, page-size fields ${variant}: every page served once, every byte checked`, async () => {
      const { run, outcome, stats, events } = await restore({ regions: 2, regionSize: 2 * MiB, fileOffset: MiB, pageSizeField: variant });
      assert.equal(run.code, 0, run.stderr + run.stdout);
      assert.equal(outcome.accepted, true);
      assert.ok(run.result?.ok);
      assert.equal(run.result!.pagesChecked, 1024);
      assert.equal(run.result!.bytesChecked, 4 * MiB);
      assert.equal(stats.length, 1);
      assert.deepEqual(at(stats, 0).errors, []);
      assert.equal(at(stats, 0).copies, 1024, 'one UFFDIO_COPY per 4 KiB page');
      assert.equal(at(stats, 0).faults, 1024);
      const start = events.find((e) => e.type === 'session-start');
      assert.ok(start && start.type === 'session-start');
      assert.equal(start.handshake.variant, variant === 'page_size_only' ? 'v1.12' : variant);
      assert.deepEqual(start.handshake.regions.map((r) => [r.offset, r.size, r.pageSize]), [[MiB, 2 * MiB, 4096], [3 * MiB, 2 * MiB, 4096]]);
      assert.ok(events.some((e) => e.type === 'session-end' && !e.error));
    });
  }

  for (const onRemove of ['unregister', 'zero'] as const) {
    it(`3 reader threads and a balloon madvise(DONTNEED) mid-restore (handler ${onRemove}s the range): it reads zeros after`, async () => {
      const { run, stats } = await restore({ regions: 3, regionSize: 4 * MiB, threads: 3, remove: `1:1M:512K` }, { onRemove });
      assert.equal(run.code, 0, run.stderr + run.stdout);
      assert.equal(run.result!.pagesChecked, 3072 + 128, 'all pages, plus the removed range read twice');
      assert.deepEqual(at(stats, 0).errors, []);
      assert.ok(at(stats, 0).removes >= 1, 'the handler saw UFFD_EVENT_REMOVE');
      assert.equal(at(stats, 0).copies, 3072);
      if (onRemove === 'zero') assert.equal(at(stats, 0).zeroes, 128);
      else assert.equal(at(stats, 0).zeroes, 0, 'after unregistering, the kernel fills zero pages itself');
    });
  }

  it('detects a handler that ignores REMOVE and refills the range from the file (exit 1)', async () => {
    const { run } = await restore({ regions: 1, regionSize: 2 * MiB, remove: '0:0:64K' }, { onRemove: 'ignore' });
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /mismatch in region 0 at offset 0x0 .*must read zeros/);
    assert.equal(run.result?.ok, false);
  });

  it('detects one corrupted byte and reports where (exit 1)', async () => {
    // corruptAt is a host address in the client: take it from the handshake the server received.
    let corruptAt = 0;
    const server = RestoreServer.listen({
      socketPath: sockPath, memFilePath: memPath,
      serveConnection: (h, fd, mem, ctx) => {
        corruptAt = at(h.regions, 1).baseHostVirtAddr + 0x12345;
        return simpleServe({ corruptAt }).serve(h, fd, mem, ctx);
      },
    });
    try {
      const { done } = spawnFcClient({ socket: sockPath, memFile: memPath, regions: 2, regionSize: MiB, timeoutMs: limit(20000) });
      const accepted = await server.acceptOne(limit(10000));
      const run = await done;
      await accepted!.outcome;
      assert.equal(run.code, 1, run.stderr);
      assert.match(run.stderr, /mismatch in region 1 at offset 0x12345 \(file offset 0x112345\)/);
      assert.deepEqual(run.result?.mismatch?.region, 1);
      assert.equal(run.result?.mismatch?.got, run.result!.mismatch!.expected ^ 0x5a);
    } finally {
      await server.close();
    }
  });

  it('2 MiB hugetlb regions (page_size 2097152), reserved for the test and given back', async function () {
    if (!kernelPageSizes().includes(2 * MiB)) this.skip();
    const r = await withHugePages(4, async () => restore({ regions: 2, regionSize: 4 * MiB, hugetlb: true, threads: 2 }));
    if (r.skipped) {
      console.log(`      (skipped: ${r.skipped})`);
      this.skip();
    }
    const { run, stats, events } = r.value!;
    assert.equal(run.code, 0, run.stderr + run.stdout);
    assert.equal(run.result!.pageSize, 2 * MiB);
    assert.equal(run.result!.pagesChecked, 4);
    assert.equal(at(stats, 0).copies, 4, 'one 2 MiB UFFDIO_COPY per huge page');
    const start = events.find((e) => e.type === 'session-start');
    assert.ok(start && start.type === 'session-start' && start.handshake.regions.every((x) => x.pageSize === 2 * MiB));
  });

  it('refuses a client that is out of the memory file, and the client hangs then times out (exit 2)', async () => {
    // The client asks for more than the file has only if we lie about the size: use a second, smaller file.
    const small = path.join(dir, 'small.mem');
    writeSnapshot(small, MiB);
    const server = RestoreServer.listen({ socketPath: sockPath, memFilePath: small, serveConnection: async () => undefined });
    try {
      const { done } = spawnFcClient({ socket: sockPath, memFile: memPath, regions: 1, regionSize: 2 * MiB, timeoutMs: limit(1500) });
      const outcome = await (await server.acceptOne(limit(10000)))!.outcome;
      assert.equal(outcome.accepted, false);
      assert.equal(outcome.code, 'out-of-file');
      const run = await done;
      assert.equal(run.code, 2);
      assert.match(run.stderr, /timed out/);
    } finally {
      await server.close();
    }
  });
});

describe('restore server: hostile and broken peers', function () {
  this.timeout(limit(20000));
  let dir: string;
  let memPath: string;
  let sockPath: string;
  let server: RestoreServer;
  let served: number;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-hostile-'));
    memPath = path.join(dir, 'snapshot.mem');
    sockPath = path.join(dir, 'h.sock');
    writeSnapshot(memPath, MiB);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  beforeEach(() => {
    served = 0;
    server = RestoreServer.listen({
      socketPath: sockPath, memFilePath: memPath, recvTimeoutMs: limit(300),
      serveConnection: async () => { served++; },
    });
  });
  afterEach(() => server.close());

  const good = JSON.stringify([{ base_host_virt_addr: 0x7f0000000000, size: 65536, offset: 0, page_size: 4096 }]);

  async function attempt(send: (c: number) => void | Promise<void>): Promise<{ accepted: boolean; code?: string; reason?: string }> {
    const before = openFdCount();
    const accepting = server.acceptOne(limit(5000));
    const c = connectUnix(sockPath);
    await send(c);
    const outcome = await (await accepting)!.outcome;
    closeSocket(c);
    assert.equal(openFdCount(), before, 'every fd received or opened for the attempt is closed again');
    return outcome;
  }

  it('run() first rehearses the connection path on a socketpair of its own: no event, no session, no fd left', async () => {
    await server.close();
    const before = openFdCount();
    const events: ServerEvent[] = [];
    const s = RestoreServer.listen({ socketPath: sockPath, memFilePath: memPath, onEvent: (e) => events.push(e), serveConnection: async () => { served++; } });
    const running = s.run();
    await s.rehearsed;
    assert.deepEqual(events.map((e) => e.type), ['listening']);
    assert.equal(served, 0);
    assert.equal(s.activeSessions, 0);
    await s.close();
    await running;
    assert.equal(openFdCount(), before, 'the rehearsal closed its socketpair and the fds it sent itself');
  });

  it('a well-formed handshake is accepted and handed to serveConnection', async () => {
    const u = Userfaultfd.create();
    const o = await attempt((c) => { sendWithFds(c, Buffer.from(good), [u.fd]); });
    u.close();
    assert.deepEqual(o, { accepted: true, reason: undefined });
    assert.equal(served, 1);
  });

  it('two fds: refused, both closed', async () => {
    const m = memfdCreate('hostile');
    const o = await attempt((c) => { sendWithFds(c, Buffer.from(good), [m, m]); });
    close(m);
    assert.equal(o.accepted, false);
    assert.equal(o.code, 'fds');
    assert.match(o.reason!, /2 fds arrived/);
    assert.equal(served, 0);
  });

  it('three fds (secret-hiding): refused, all closed', async () => {
    const m = memfdCreate('hostile3');
    const o = await attempt((c) => { sendWithFds(c, Buffer.from(good), [m, m, m]); });
    close(m);
    assert.equal(o.code, 'unsupported');
  });

  it('a flood of fds: refused as too many, the ones that arrived closed', async () => {
    const m = memfdCreate('flood');
    const o = await attempt((c) => { sendWithFds(c, Buffer.from(good), Array(64).fill(m)); });
    close(m);
    assert.equal(o.code, 'fds');
    assert.match(o.reason!, /more file descriptors/);
  });

  it('no fd', async () => {
    const o = await attempt((c) => { sendWithFds(c, Buffer.from(good), []); });
    assert.equal(o.code, 'fds');
    assert.match(o.reason!, /no file descriptor arrived/);
  });

  it('bad JSON (complete but malformed), with an fd that is closed', async () => {
    const m = memfdCreate('badjson');
    const o = await attempt((c) => { sendWithFds(c, Buffer.from('[{"size": 4096,,}]'), [m]); });
    close(m);
    assert.equal(o.code, 'bad-json');
  });

  it('silence: times out', async () => {
    const o = await attempt(() => undefined);
    assert.equal(o.code, 'timeout');
    assert.match(o.reason!, new RegExp(`no handshake within ${limit(300)} ms`));
  });

  it('an incomplete handshake, then close: refused and the fd closed', async () => {
    const m = memfdCreate('partial');
    const before = openFdCount();
    const accepting = server.acceptOne(limit(5000));
    const c = connectUnix(sockPath);
    sendWithFds(c, Buffer.from(good.slice(0, 20)), [m]);
    closeSocket(c);
    const o = await (await accepting)!.outcome;
    close(m);
    assert.equal(o.code, 'closed');
    assert.match(o.reason!, /after 20 bytes of an incomplete handshake/);
    assert.equal(openFdCount(), before - 1);
  });

  it('a handshake split across two writes is reassembled', async () => {
    const u = Userfaultfd.create();
    const o = await attempt(async (c) => {
      sendWithFds(c, Buffer.from(good.slice(0, 30)), [u.fd]);
      await new Promise((r) => setTimeout(r, 50));
      sendWithFds(c, Buffer.from(good.slice(30)), []);
    });
    u.close();
    assert.equal(o.accepted, true);
  });

  it('a region beyond the memory file', async () => {
    const m = memfdCreate('oof');
    const o = await attempt((c) => {
      sendWithFds(c, Buffer.from(JSON.stringify([{ base_host_virt_addr: 0x7f0000000000, size: 2 * MiB, offset: 0 }])), [m]);
    });
    close(m);
    assert.equal(o.code, 'out-of-file');
    assert.match(o.reason!, /1048576-byte memory file/);
  });

  it('a peer whose uid is not allowed is refused before anything is read', async () => {
    await server.close();
    server = RestoreServer.listen({
      socketPath: sockPath, memFilePath: memPath, allowedUids: [424242], serveConnection: async () => { served++; },
    });
    const m = memfdCreate('uid');
    const o = await attempt((c) => { sendWithFds(c, Buffer.from(good), [m]); });
    close(m);
    assert.equal(o.code, 'uid');
    assert.match(o.reason!, /runs as uid 0, which is not allowed \(allowed: 424242\)/);
    assert.equal(served, 0);
  });

  it('run() serves several connections concurrently and close() ends sessions waiting on hang-up', async () => {
    await server.close();
    let started = 0;
    server = RestoreServer.listen({
      socketPath: sockPath, memFilePath: memPath,
      serveConnection: async (_h, _fd, _m, ctx) => { started++; await ctx.hangup; },
    });
    const running = server.run();
    const u = Userfaultfd.create();
    const conns = [connectUnix(sockPath), connectUnix(sockPath)];
    for (const c of conns) sendWithFds(c, Buffer.from(good), [u.fd]);
    const t0 = Date.now();
    while (started < 2 && Date.now() - t0 < limit(5000)) await new Promise((r) => setTimeout(r, 10));
    assert.equal(started, 2);
    assert.equal(server.activeSessions, 2);
    // One peer hangs up: its session ends.
    closeSocket(at(conns, 0));
    while (server.activeSessions > 1 && Date.now() - t0 < limit(5000)) await new Promise((r) => setTimeout(r, 10));
    assert.equal(server.activeSessions, 1);
    await server.close();
    await running;
    assert.equal(server.activeSessions, 0);
    assert.equal(fs.existsSync(sockPath), false, 'the socket file is removed');
    closeSocket(at(conns, 1));
    u.close();
  });
});
