// Remote page sources against real servers on 127.0.0.1: a Node HTTP server with fault
// injection, s3rver (S3-compatible) and nginx (plain HTTP Range). Every page the faulting
// side sees is compared with the snapshot; a chunk that cannot be had is an explicit
// failure (SIGBUS in the faulting process, a message naming the chunk), never zeros.
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Engine } from '../src/engine/index.js';
import { addressOf } from '../src/kernel/libc.js';
import { memcmp } from '../src/kernel/memory.js';
import { memoryType } from '../src/memory-types/index.js';
import type { Region } from '../src/memory-types/types.js';
import { computeManifest } from '../src/remote/manifest.js';
import { G_FETCHER_ALIVE } from '../src/remote/gate.js';
import { planChunks, RemoteMemory } from '../src/remote/remote-memory.js';
import { uploadSnapshot, writeManifest } from '../src/remote/upload.js';
import { sources } from '../src/sources/index.js';
import { makeSnapshot } from '../src/workload/snapshot.js';
import { assignPages, runTouchers } from '../src/workload/threads.js';
import { useHugePages } from './helpers/hugetlb.js';
import { Faults, nginxMissing, startNginx, startRangeServer, startS3 } from '../bench/remote-servers.js';
import { at } from './helpers/at.js';
import { limit } from './helpers/limits.js';

const MiB = 1024 * 1024;
const PAGE = 4096;

function manifestOf(data: Uint8Array, chunkSize: number): string {
  const file = path.join(os.tmpdir(), `uffd-engine-remote-${process.pid}-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(file, data);
  try {
    return JSON.stringify(computeManifest(file, chunkSize));
  } finally {
    fs.rmSync(file);
  }
}

/** Touches every page of the region from `threads` threads (random order) and checks each against the snapshot. */
async function touchAndVerify(region: Region, snap: Uint8Array, threads = 4, pages?: number[]): Promise<void> {
  const all = pages ?? Array.from({ length: region.size / PAGE }, (_, i) => i);
  const jobs = assignPages(all.length, threads, 'random').map((idx) => ({
    addr: region.addr, pageSize: PAGE, pages: Float64Array.from(idx, (i) => at(all, i)), expectAddr: addressOf(snap), write: false,
  }));
  const res = await runTouchers(jobs, limit(120_000));
  const bad = res.filter((r) => r.mismatches > 0);
  assert.equal(bad.length, 0, `pages with wrong bytes: first at page ${bad[0]?.firstMismatch}`);
  assert.equal(res.reduce((n, r) => n + r.touched, 0), all.length);
}

/** Every page of the region equals the snapshot (read without faulting: all must be present). */
function assertAllEqual(region: Region, snap: Uint8Array): void {
  for (let p = 0; p < region.size / PAGE; p++) {
    if (memcmp(region.addr + p * PAGE, addressOf(snap) + p * PAGE, PAGE) !== 0) assert.fail(`page ${p} differs from the snapshot`);
  }
}

/**
 * Runs a child process that serves a region from `url` with the engine and touches page
 * `page`; returns how it ended and what it printed (chunk failures are printed).
 */
function childTouch(url: string, page: number, remote: object): Promise<{ signal: NodeJS.Signals | null; code: number | null; out: string; ms: number }> {
  const root = path.resolve(__dirname, '../src');
  const script = `
    const { Engine, sources, memoryType } = require(${JSON.stringify(path.join(root, 'index.js'))});
    const { RemoteMemory } = require(${JSON.stringify(path.join(root, 'remote/remote-memory.js'))});
    const { parseMemUrl } = require(${JSON.stringify(path.join(root, 'remote/store.js'))});
    (async () => {
      const mem = await RemoteMemory.open(parseMemUrl(${JSON.stringify(url)}), ${JSON.stringify(remote)});
      mem.on('chunk-failed', (f) => console.log('chunk-failed ' + f.chunk + ': ' + f.message));
      const region = memoryType('anon').create({ size: mem.size });
      const engine = await Engine.start({ regions: [{ region, source: mem.source(0) }], workers: 1 });
      const { Worker } = require('node:worker_threads');
      console.log('touching');
      new Worker('const k=require(' + JSON.stringify(${JSON.stringify(path.join(root, 'kernel/memory.js'))}) + '); k.bytesAt(' + (region.addr + ${page} * 4096) + ', 4096)[0]; console.log("read ok");', { eval: true })
        .on('exit', async () => { await engine.stop({ mode: 'abandon' }); await mem.close(); process.exit(0); });
    })().catch((e) => { console.log('error: ' + e.message); process.exit(3); });`;
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => { out += String(b); });
    child.stderr.on('data', (b) => { out += String(b); });
    const timer = setTimeout(() => child.kill('SIGKILL'), limit(60_000));
    child.on('exit', (code, signal) => { clearTimeout(timer); resolve({ signal, code, out, ms: Date.now() - t0 }); });
  });
}

describe('remote sources: chunked cache over HTTP Range (Node test server)', function () {
  this.timeout(limit(120_000));
  const size = 16 * MiB;
  const chunkSize = 1 * MiB;
  let snap: Uint8Array;
  let manifest: string;
  before(() => {
    snap = makeSnapshot(size, 21);
    manifest = manifestOf(snap, chunkSize);
  });

  it('serves every page byte-exact to 4 faulting threads; each chunk fetched once, verified against the manifest', async () => {
    const srv = await startRangeServer(snap, { manifest });
    const region = memoryType('anon').create({ size });
    try {
      const engine = await Engine.start({ regions: [{ region, source: sources.http(srv.url, { prefetch: { background: false } }) }], workers: 2 });
      try {
        await touchAndVerify(region, snap, 4);
      } finally {
        const st = await engine.stop();
        assert.equal(st.errors, 0);
      }
      const offsets = srv.gets.map((g) => g.offset);
      assert.equal(new Set(offsets).size, offsets.length, `a chunk was fetched twice: ${offsets.join(',')}`);
      assert.equal(offsets.length, size / chunkSize, 'every chunk fetched exactly once');
      assert.ok(srv.gets.every((g) => g.len === chunkSize), 'whole chunks');
    } finally {
      region.close();
      await srv.close();
    }
  });

  it('open() resolves with the fetch thread counted alive: a fault that comes at once waits for its chunk, it is not failed', async () => {
    // A demand fault fails its chunk (SIGBUS) when the gate says no fetch thread runs. The
    // fetch thread used to say so itself when it took its start message, a moment after
    // open() resolved: a VM faulting in that moment (a loaded machine) got SIGBUS.
    const srv = await startRangeServer(snap, { manifest, faults: { delayMs: () => 50 } });
    try {
      for (let k = 0; k < 5; k++) {
        const mem = await RemoteMemory.open({ kind: 'http', url: srv.url }, { prefetch: { background: false } });
        try {
          assert.equal(Atomics.load(new Int32Array(mem.gate.control), G_FETCHER_ALIVE), 1, `open ${k}: the gate does not count the fetch thread alive yet`);
        } finally {
          await mem.close();
        }
      }
    } finally {
      await srv.close();
    }
  });

  it('concurrent faults on one chunk share one fetch (slow chunk, 8 threads on its pages)', async () => {
    const srv = await startRangeServer(snap, { manifest, faults: { delayMs: (off) => (off === 3 * chunkSize ? 300 : 0) } });
    const mem = await RemoteMemory.open({ kind: 'http', url: srv.url }, { prefetch: { background: false } });
    const region = memoryType('anon').create({ size });
    try {
      const engine = await Engine.start({ regions: [{ region, source: mem.source(0) }], workers: 2, inline: 'never' });
      try {
        const pages = Array.from({ length: chunkSize / PAGE }, (_, i) => 3 * (chunkSize / PAGE) + i);
        await touchAndVerify(region, snap, 8, pages);
      } finally {
        await engine.stop({ mode: 'abandon' });
      }
      assert.deepEqual(srv.gets.map((g) => g.offset), [3 * chunkSize], 'one request for the chunk');
      const st = mem.remoteStats();
      assert.equal(st.requests, 1);
      assert.equal(st.demandChunks, 1);
      assert.equal(st.bytesFetched, chunkSize);
      assert.equal(st.verified, true);
    } finally {
      region.close();
      await mem.close();
      await srv.close();
    }
  });

  it('background prefetch fills every page with no fault at all; the engine reports populated', async () => {
    const srv = await startRangeServer(snap, { manifest });
    const region = memoryType('anon').create({ size });
    try {
      const engine = await Engine.start({ regions: [{ region, source: sources.http(srv.url) }], workers: 2, prefetch: { background: true } });
      try {
        const deadline = Date.now() + limit(60_000);
        while (!engine.populated && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
        assert.equal(engine.populated, true, `not populated: ${engine.pagesMissing()} pages missing`);
        assert.equal(engine.stats().faults.total, 0);
        assertAllEqual(region, snap);
      } finally {
        await engine.stop();
      }
    } finally {
      region.close();
      await srv.close();
    }
  });

  it("stop('complete') fetches and fills whatever is left (no background prefetch)", async () => {
    const srv = await startRangeServer(snap, { manifest });
    const region = memoryType('anon').create({ size });
    try {
      const engine = await Engine.start({ regions: [{ region, source: sources.http(srv.url, { prefetch: { background: false } }) }], workers: 2 });
      await touchAndVerify(region, snap, 2, [5, 700, 3000]);
      const st = await engine.stop({ mode: 'complete' });
      assert.equal(st.pages.total, size / PAGE);
      assertAllEqual(region, snap);
    } finally {
      region.close();
      await srv.close();
    }
  });

  it('a file as the chunk cache (cacheFile): pages served from it, the file removed on close', async () => {
    const srv = await startRangeServer(snap, { manifest });
    const cacheFile = path.join(os.tmpdir(), `uffd-engine-cache-${process.pid}.bin`);
    const mem = await RemoteMemory.open({ kind: 'http', url: srv.url }, { cacheFile });
    const region = memoryType('anon').create({ size });
    try {
      assert.equal(fs.statSync(cacheFile).size, size);
      const engine = await Engine.start({ regions: [{ region, source: mem.source(0) }], workers: 2 });
      try {
        await touchAndVerify(region, snap, 2);
      } finally {
        await engine.stop();
      }
      assertAllEqual(region, snap);
    } finally {
      region.close();
      await mem.close();
      await srv.close();
    }
    assert.equal(fs.existsSync(cacheFile), false, 'the cache file is removed');
  });

  it('fault injection: slow chunks, dropped connections, 503s and corrupted bytes are retried; every page exact', async () => {
    const faults: Faults = {
      delayMs: (off, a) => (a === 0 && off % (4 * chunkSize) === 0 ? 200 : 0),
      status: (off, a) => (a === 0 && off % (3 * chunkSize) === chunkSize ? 503 : 0),
      dropAfter: (off, a) => (a === 0 && off % (5 * chunkSize) === 2 * chunkSize ? 100_000 : undefined),
      corrupt: (off, a) => a === 0 && off === 8 * chunkSize,
    };
    const srv = await startRangeServer(snap, { manifest, faults });
    const mem = await RemoteMemory.open({ kind: 'http', url: srv.url }, { backoffMs: 10, maxInFlight: 4 });
    const region = memoryType('anon').create({ size });
    try {
      const engine = await Engine.start({ regions: [{ region, source: mem.source(0) }], workers: 2 });
      try {
        await touchAndVerify(region, snap, 4);
      } finally {
        const st = await engine.stop();
        assert.equal(st.errors, 0);
      }
      assertAllEqual(region, snap);
      const rs = mem.remoteStats();
      assert.equal(rs.failed, 0);
      assert.ok(rs.retries >= 4, `retries: ${rs.retries}`);
      assert.equal(rs.checksumMismatches, 1);
    } finally {
      region.close();
      await mem.close();
      await srv.close();
    }
  });

  describe('2 MiB hugetlb region', () => {
    const huge = useHugePages(8); // exactly the region: no spare huge page for the kernel
    it('every huge page served whole from the chunk cache (chunks of 1 MiB: a huge page spans two)', async function () {
      if (!huge.ok) { console.log(`      skipped: ${huge.reason}`); this.skip(); }
      const srv = await startRangeServer(snap, { manifest });
      const region = memoryType('hugetlbfs').create({ size, pageSize: 2 * MiB });
      try {
        const engine = await Engine.start({ regions: [{ region, source: sources.http(srv.url, { prefetch: { background: false } }) }], workers: 2 });
        try {
          const jobs = assignPages(size / (2 * MiB), 4, 'random').map((p) => ({ addr: region.addr, pageSize: 2 * MiB, pages: p, expectAddr: addressOf(snap), write: false }));
          const res = await runTouchers(jobs, limit(120_000));
          assert.equal(res.reduce((n, r) => n + r.mismatches, 0), 0, 'pages with wrong bytes');
        } finally {
          const st = await engine.stop();
          assert.equal(st.errors, 0);
          assert.equal(st.pages.total, size / (2 * MiB));
        }
      } finally {
        region.close();
        await srv.close();
      }
    });
  });

  it('working-set prefetch: recorded extents first in recorded order, then the rest; a demand fault jumps the queue', async () => {
    // Chunks outside the working set stall (60 s): with 2 requests in flight, prefetch may
    // hold only one, so the demand fault must get the other at once.
    const per = chunkSize / PAGE;
    const fast = new Set([9, 2, 12, 15]);
    const srv = await startRangeServer(snap, { manifest, faults: { delayMs: (off) => (fast.has(off / chunkSize) ? 0 : 60_000) } });
    const ws = [9 * per + 3, 9 * per + 4, 2 * per, 2 * per + 1, 12 * per + 10, 9 * per + 5];
    assert.deepEqual([...planChunks(ws, chunkSize, 16, false)], [9, 2, 12]);
    assert.deepEqual([...planChunks(ws, chunkSize, 16, true)], [9, 2, 12, 0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14, 15]);
    const mem = await RemoteMemory.open({ kind: 'http', url: srv.url }, { maxInFlight: 2, timeoutMs: 120_000, prefetch: { workingSet: ws, background: true } });
    const region = memoryType('anon').create({ size });
    try {
      const engine = await Engine.start({ regions: [{ region, source: mem.source(0) }], workers: 2, prefetch: { background: true } });
      try {
        while (srv.gets.length < 4) await new Promise((r) => setTimeout(r, 2));
        // The working set's pages are installed without a fault.
        for (const p of ws) while (engine.pageState(p) !== 2) await new Promise((r) => setTimeout(r, 2));
        await touchAndVerify(region, snap, 1, [15 * per + 7]);
        assert.deepEqual(srv.gets.map((g) => g.offset / chunkSize), [9, 2, 12, 0, 15], 'working set in recorded order, then the plan; the demand did not wait for it');
        assert.equal(engine.stats().faults.missing, 1);
        assert.equal(mem.remoteStats().demandChunks, 1);
      } finally {
        await engine.stop({ mode: 'abandon' });
      }
    } finally {
      region.close();
      await mem.close();
      await srv.close();
    }
  });
});

describe('remote sources: failures are explicit (child processes)', function () {
  this.timeout(limit(120_000));
  const size = 4 * MiB;
  const chunkSize = 1 * MiB;
  let snap: Uint8Array;
  let manifest: string;
  before(() => {
    snap = makeSnapshot(size, 22);
    manifest = manifestOf(snap, chunkSize);
  });
  const opts = { chunkSize, retries: 2, backoffMs: 10, timeoutMs: 1000, prefetch: { background: false } };

  const cases: { name: string; faults: Faults; expect: RegExp }[] = [
    { name: 'a chunk that always answers 503', faults: { status: (off) => (off === chunkSize ? 503 : 0) }, expect: /HTTP 503 \(after 3 attempts\)/ },
    { name: 'a chunk whose bytes never match the manifest', faults: { corrupt: (off) => off === chunkSize }, expect: /SHA-256 [0-9a-f]+ does not match the manifest/ },
    { name: 'a chunk whose connection always drops mid-body', faults: { dropAfter: (off) => (off === chunkSize ? 5000 : undefined) }, expect: /chunk-failed 1: .*(ended after|terminated|other side closed|socket)/i },
    { name: 'a chunk that never answers in time', faults: { delayMs: (off) => (off === chunkSize ? 30_000 : 0) }, expect: /no (complete )?answer in time/ },
  ];
  for (const c of cases) {
    it(`${c.name}: the faulting process gets SIGBUS and the chunk is named, no hang`, async () => {
      const srv = await startRangeServer(snap, { manifest, faults: c.faults });
      try {
        const r = await childTouch(srv.url, chunkSize / PAGE + 3, opts);
        assert.equal(r.signal, 'SIGBUS', `child ended with ${r.signal ?? 'code ' + r.code}: ${r.out}`);
        assert.match(r.out, c.expect);
        assert.doesNotMatch(r.out, /read ok/);
      } finally {
        await srv.close();
      }
    });
  }

  it('pages of healthy chunks are still served when another chunk fails', async () => {
    const srv = await startRangeServer(snap, { manifest, faults: { status: (off) => (off === chunkSize ? 500 : 0) } });
    try {
      const r = await childTouch(srv.url, 2 * (chunkSize / PAGE) + 1, opts);
      assert.equal(r.signal, null, r.out);
      assert.match(r.out, /read ok/);
    } finally {
      await srv.close();
    }
  });

  it('a truncated object (shorter than its manifest) is refused at open with a clear message', async () => {
    const srv = await startRangeServer(snap.subarray(0, size - 12345), { manifest });
    try {
      await assert.rejects(RemoteMemory.open({ kind: 'http', url: srv.url }), /has 4181959 bytes but its manifest says 4194304 \(truncated or replaced object\?\)/);
    } finally {
      await srv.close();
    }
  });

  it('a body shorter than its range (object truncated after open) fails that chunk explicitly', async () => {
    // HEAD claims the full size; the data behind it is short: the last chunk's range cannot be served.
    const srv = await startRangeServer(snap.subarray(0, size - chunkSize / 2), { headSize: size });
    try {
      const r = await childTouch(srv.url, 3 * (chunkSize / PAGE) + 200, { ...opts, verify: 'auto' });
      assert.equal(r.signal, 'SIGBUS', r.out);
      assert.match(r.out, /chunk-failed 3: .*range/);
    } finally {
      await srv.close();
    }
  });

  it('bad locations and options are refused with what to do', async () => {
    assert.throws(() => sources.http('ftp://x/y'), /neither s3:\/\/BUCKET\/KEY nor http\(s\):\/\/HOST\/PATH/);
    const srv = await startRangeServer(snap, { manifest });
    try {
      await assert.rejects(RemoteMemory.open({ kind: 'http', url: srv.url.replace('/mem', '/nothing') }), /cannot open .*HTTP 404/);
      await assert.rejects(RemoteMemory.open({ kind: 'http', url: srv.url }, { chunkSize: 2 * MiB }), /differs from the 1048576 of .*manifest/);
      await assert.rejects(RemoteMemory.open({ kind: 'http', url: srv.url }, { chunkSize: 1000 }), /multiple of 4096/);
      const region = memoryType('anon').create({ size: 2 * size });
      try {
        await assert.rejects(Engine.start({ regions: [{ region, source: sources.http(srv.url) }] }), /holds 4194304 bytes from offset 0, less than the region's 8388608/);
      } finally {
        region.close();
      }
    } finally {
      await srv.close();
    }
    const bare = await startRangeServer(snap);
    try {
      await assert.rejects(RemoteMemory.open({ kind: 'http', url: bare.url }, { verify: 'required' }), /has no manifest .*uffd-engine snapshot upload/);
    } finally {
      await bare.close();
    }
  });
});

describe('remote sources: S3-compatible store (s3rver on 127.0.0.1)', function () {
  this.timeout(limit(120_000));
  it('snapshot upload (multipart + manifest), then every page served byte-exact through sources.s3', async () => {
    const store = await startS3();
    const size = 24 * MiB;
    const snap = makeSnapshot(size, 23);
    const file = path.join(os.tmpdir(), `uffd-engine-s3-${process.pid}.mem`);
    fs.writeFileSync(file, snap);
    const region = memoryType('anon').create({ size });
    try {
      const loc = { kind: 's3' as const, bucket: store.bucket, key: 'vm/mem', endpoint: store.endpoint, credentials: store.credentials };
      const up = await uploadSnapshot(file, loc, { chunkSize: 2 * MiB, partSize: 8 * MiB });
      assert.equal(up.parts, 3);
      assert.equal(up.manifest.sha256.length, 12);
      const engine = await Engine.start({
        regions: [{ region, source: sources.s3({ bucket: store.bucket, key: 'vm/mem', endpoint: store.endpoint, credentials: store.credentials, prefetch: { background: false } }) }],
        workers: 2,
      });
      try {
        await touchAndVerify(region, snap, 4);
      } finally {
        const st = await engine.stop();
        assert.equal(st.errors, 0);
      }
    } finally {
      region.close();
      fs.rmSync(file, { force: true });
      await store.close();
    }
  });
});

describe('remote sources: nginx (plain HTTP Range)', function () {
  this.timeout(limit(120_000));
  it('a memory file and its manifest served by nginx: every page byte-exact, verified', async function () {
    const missing = nginxMissing();
    if (missing) {
      console.log(`      skipped: ${missing}`);
      this.skip();
    }
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-www-'));
    fs.chmodSync(root, 0o755); // nginx's workers run as an unprivileged user
    const size = 16 * MiB;
    const snap = makeSnapshot(size, 24);
    fs.writeFileSync(path.join(root, 'vm.mem'), snap);
    writeManifest(path.join(root, 'vm.mem'), 1 * MiB);
    const nginx = await startNginx(root);
    const region = memoryType('anon').create({ size });
    try {
      const mem = await RemoteMemory.open({ kind: 'http', url: nginx.url('vm.mem') }, { prefetch: { background: false } });
      try {
        assert.equal(mem.remoteStats().verified, true);
        assert.ok(mem.etag, 'nginx gives an ETag (used as If-Match)');
        const engine = await Engine.start({ regions: [{ region, source: mem.source(0) }], workers: 2 });
        try {
          await touchAndVerify(region, snap, 4);
        } finally {
          await engine.stop();
        }
        assert.equal(mem.remoteStats().requests, 16);
      } finally {
        await mem.close();
      }
    } finally {
      region.close();
      await nginx.close();
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('remote sources: uffd-engine snapshot upload + serve --mem-url (built CLI, Firecracker-style client)', function () {
  this.timeout(limit(120_000));
  const CLI = path.resolve(__dirname, '../src/cli/main.js');
  function runCli(args: string[], env: NodeJS.ProcessEnv = {}): { done: Promise<{ code: number | null; stdout: string; stderr: string }>; err: () => string } {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => { stdout += String(b); });
    child.stderr.on('data', (b) => { stderr += String(b); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); }));
    return { done, err: () => stderr };
  }
  /** Fails if the client did not exit 0, with serve's whole output: serve (--once) exits once the session ends, and its summary says what it poisoned. */
  async function assertClientOk(run: { code: number | null; signal: string | null; stdout: string; stderr: string }, cli: ReturnType<typeof runCli>): Promise<void> {
    if (run.code === 0) return;
    const served = await Promise.race([cli.done, new Promise<null>((r) => setTimeout(() => r(null), 10_000))]);
    assert.fail(`client exit ${run.code} (signal ${run.signal}): ${run.stderr}${run.stdout}\n--- serve's stderr:\n${cli.err()}` +
      (served ? `\n--- serve's stdout (exit ${served.code}):\n${served.stdout}` : ''));
  }
  async function waitFor(cond: () => boolean, what: string): Promise<void> {
    const t0 = Date.now();
    while (!cond()) {
      if (Date.now() - t0 > limit(60_000)) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it('uploads a memory file to s3rver, then serves a VM from s3:// (AWS_* credentials from the environment): every byte checked', async () => {
    const { spawnFcClient } = await import('../src/restore/fc-client.js');
    const store = await startS3();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-memurl-'));
    const memPath = path.join(dir, 'vm.mem');
    fs.writeFileSync(memPath, makeSnapshot(16 * MiB, 25));
    const env = { AWS_ACCESS_KEY_ID: store.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: store.credentials.secretAccessKey, AWS_REGION: 'us-east-1' };
    try {
      const up = await runCli(['snapshot', 'upload', memPath, `s3://${store.bucket}/vms/a.mem`, '--s3-endpoint', store.endpoint, '--chunk-size', '1M', '--part-size', '8M'], env).done;
      assert.equal(up.code, 0, up.stderr);
      assert.match(up.stdout, /16\.0 MiB in 2 part\(s\), 16 chunks of 1\.0 MiB/);
      const sock = path.join(dir, 'h.sock');
      const cli = runCli(['serve', '--socket', sock, '--mem-url', `s3://${store.bucket}/vms/a.mem`, '--s3-endpoint', store.endpoint, '--once', '--json'], env);
      await waitFor(() => /listening on/.test(cli.err()), 'serve to listen');
      assert.match(cli.err(), /chunks of 1\.0 MiB, verified against its manifest/);
      const run = await spawnFcClient({ socket: sock, memFile: memPath, regions: 2, regionSize: 4 * MiB, threads: 2, timeoutMs: limit(60_000) }).done;
      await assertClientOk(run, cli);
      const r = await cli.done;
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop() as string);
      assert.equal(s.errors, 0);
      assert.equal(s.totalPages, 2048);
      assert.match(r.stderr, /remote: \d+\/16 chunks of 1\.0 MiB cached .* every chunk verified against the manifest/);
    } finally {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve --mem-url --preload-ws: the working set\'s chunks are fetched first, in recorded order; the VM gets every byte', async () => {
    const { spawnFcClient } = await import('../src/restore/fc-client.js');
    const size = 16 * MiB;
    const snap = makeSnapshot(size, 27);
    const srv = await startRangeServer(snap, { manifest: manifestOf(snap, MiB) });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-memurl-'));
    const memPath = path.join(dir, 'vm.mem');
    fs.writeFileSync(memPath, snap);
    const wsFile = path.join(dir, 'ws.json');
    const per = MiB / PAGE;
    fs.writeFileSync(wsFile, JSON.stringify({ format: 'uffd-engine-working-set', version: 1, pageSize: 4096, memFile: { size }, pages: [11 * per + 5, 11 * per + 6, 3 * per, 14 * per + 9] }));
    try {
      const sock = path.join(dir, 'h.sock');
      const cli = runCli(['serve', '--socket', sock, '--mem-url', srv.url, '--preload-ws', wsFile, '--remote-in-flight', '2', '--once', '--json']);
      await waitFor(() => /listening on/.test(cli.err()), 'serve to listen');
      const run = await spawnFcClient({ socket: sock, memFile: memPath, regions: 2, regionSize: 8 * MiB, threads: 2, timeoutMs: limit(60_000) }).done;
      await assertClientOk(run, cli);
      const r = await cli.done;
      assert.equal(r.code, 0, r.stderr);
      // The working set's chunks in recorded order; a demand fault of the VM (say on chunk 0)
      // may jump in between them, as it should.
      const order = srv.gets.map((g) => g.offset / MiB);
      assert.deepEqual(order.filter((c) => [11, 3, 14].includes(c)).slice(0, 3), [11, 3, 14], `fetch order: ${order.join(',')}`);
      const s = JSON.parse(r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop() as string);
      assert.equal(s.errors, 0);
      assert.deepEqual(s.preloaded, { pages: 4, outside: 0 });
    } finally {
      await srv.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve --mem-url refuses what it cannot use, saying why (exit 2)', async () => {
    const srv = await startRangeServer(makeSnapshot(1 * MiB, 26));
    try {
      let r = await runCli(['serve', '--socket', '/tmp/x.sock', '--mem-url', 'ftp://h/x']).done;
      assert.equal(r.code, 2);
      assert.match(r.stderr, /neither s3:\/\/BUCKET\/KEY nor http\(s\)/);
      r = await runCli(['serve', '--socket', '/tmp/x.sock', '--mem-url', srv.url, '--mem-file', '/etc/hostname']).done;
      assert.equal(r.code, 2);
      assert.match(r.stderr, /give --mem-file or --mem-url, not both/);
      r = await runCli(['serve', '--socket', '/tmp/x.sock', '--mem-url', srv.url, '--verify', 'required']).done;
      assert.equal(r.code, 2);
      assert.match(r.stderr, /has no manifest/);
      r = await runCli(['snapshot', 'upload', '/etc/hostname', srv.url]).done;
      assert.equal(r.code, 2);
      assert.match(r.stderr, /upload needs an s3:\/\/ URL/);
    } finally {
      await srv.close();
    }
  });
});
