// The load benchmark (uffd-engine bench): tiny runs of the built command, checking the
// shape of its output, that both sides ran and that every byte verified. Timings are
// never asserted (the machine is shared; a figure can be anything).
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildNative } from '../src/bench/native.js';
import { BenchConfig, checkConfig, DEFAULT_CONFIG, externalFeatures, MiB, summarize, SideRun } from '../src/bench/engine-bench.js';
import { configFromOptions } from '../src/cli/bench.js';
import { suiteConfig, suiteTargets } from '../src/bench/suite.js';
import { limit } from './helpers/limits.js';

const CLI = path.resolve(__dirname, '../src/cli/main.js');

interface CliRun { code: number; stdout: string; stderr: string }

function cli(args: string[], timeoutMs = limit(60_000)): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'bench', ...args], { timeout: timeoutMs, maxBuffer: 64 * MiB }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function json(r: CliRun): Record<string, any> {
  assert.equal(r.code, 0, `exit code (stderr: ${r.stderr.trim()})`);
  return JSON.parse(r.stdout);
}

const SPREAD_KEYS = ['median', 'min', 'max'];
function assertSummary(s: Record<string, any>, what: string): void {
  for (const k of ['faultsPerSec', 'pagesPerSec', 'mbPerSec', 'p50', 'p90', 'p99', 'max']) {
    assert.ok(s[k], `${what}.${k}`);
    for (const q of SPREAD_KEYS) assert.ok(Number.isFinite(s[k][q]) && s[k][q] >= 0, `${what}.${k}.${q} = ${s[k][q]}`);
  }
  assert.ok(s.cpuPerFaultUs === null || Number.isFinite(s.cpuPerFaultUs.median), `${what}.cpuPerFaultUs`);
  assert.equal(s.mismatches, 0, `${what}: pages that did not verify`);
}

function assertRun(r: Record<string, any>, pages: number, what: string): void {
  assert.equal(r.mismatches, 0, `${what}: mismatches`);
  assert.equal(r.initial.pages, pages, `${what}: pages touched`);
  assert.ok(r.initial.elapsedSec > 0, `${what}: elapsed`);
  const l = r.initial.latencyUs;
  assert.ok(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, `${what}: percentiles ordered ${JSON.stringify(l)}`);
  assert.equal(r.initial.histogram.reduce((s: number, b: { count: number }) => s + b.count, 0), pages, `${what}: histogram holds every touch`);
  assert.ok(Array.isArray(r.samples), `${what}: samples`);
}

describe('uffd-engine bench', function () {
  this.timeout(limit(60_000));
  let skipReason: string | undefined;
  let tmp: string;

  before(async function () {
    this.timeout(limit(180_000));
    const b = await buildNative();
    if (typeof b !== 'string') {
      skipReason = b.skipped;
      console.log(`      (C-workload bench tests skipped: ${b.skipped})`);
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-test-'));
  });
  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('with the C workload', function () {
    beforeEach(function () {
      if (skipReason) this.skip();
    });

    it('runs both sides on the same workload and reports JSON with every field; every byte verified', async () => {
      const out = json(await cli(['--size', '8M', '--threads', '2', '--workers', '2', '--repeat', '1', '--json']));
      assert.match(out.command, /^uffd-engine bench/);
      assert.ok(out.machine.cpus >= 1 && typeof out.machine.kernel === 'string');
      assert.equal(out.config.size, 8 * MiB);
      assert.equal(out.config.threads, 2);
      assert.equal(out.nativeSkipped, null, 'the native side ran');
      const sides = out.runs.map((r: { side: string }) => r.side).sort();
      assert.deepEqual(sides, ['engine', 'native'], 'one run of each side');
      for (const r of out.runs) assertRun(r, 2048, r.side);
      const eng = out.runs.find((r: { side: string }) => r.side === 'engine');
      assert.ok(eng.engine, 'engine internals');
      assert.equal(eng.engine.faults.total, 2048, 'the engine served every page (no prefetch)');
      assert.ok(eng.engine.dispatcherCpuSec >= 0 && eng.engine.workersCpuSec.length === 2);
      assert.equal(eng.engine.features, '0x0', 'anon missing: no features to negotiate');
      assert.equal(eng.features, '0x0', 'what the C program negotiated');
      const nat = out.runs.find((r: { side: string }) => r.side === 'native');
      assert.match(nat.handler, /native \(2 handler threads\)/);
      assertSummary(out.engine.initial, 'engine');
      assertSummary(out.native.initial, 'native');
      assert.equal(out.engine.steady, null);
      assert.equal(out.ratios.phase, 'initial');
      for (const k of ['faultsPerSec', 'pagesPerSec', 'p50', 'p99']) assert.ok(out.ratios[k] > 0, `ratio ${k}`);
    });

    it('--sweep: one row per thread x worker count, engine beside native, ratios under a stable key', async () => {
      const out = json(await cli(['--sweep', '--sweep-threads', '1,4', '--sweep-workers', '1,2', '--size', '4M', '--repeat', '1', '--json']));
      assert.deepEqual(out.sweep.map((r: { threads: number; workers: number }) => `${r.threads}/${r.workers}`), ['1/1', '4/1', '1/2', '4/2']);
      for (const r of out.sweep) {
        assert.equal(r.mismatches, 0);
        assert.ok(r.engineFaultsPerSec > 0 && r.nativeFaultsPerSec > 0, 'both sides ran');
        for (const k of ['faultsPerSec', 'p50', 'cpuPerFaultUs']) assert.ok(r.ratios[k] > 0, `ratio ${k}`);
      }
      const text = await cli(['--sweep', '--sweep-threads', '2', '--sweep-workers', '1', '--size', '2M', '--repeat', '1']);
      assert.match(text.stdout, /\| faulting threads \| workers/);
    });

    it('bounce on memfd minor faults: steady state for both sides, a report with both plots', async () => {
      const report = path.join(tmp, 'bench.html');
      const out = json(await cli(['--type', 'memfd', '--kind', 'minor', '--size', '4M', '--threads', '2', '--bounce', '2',
        '--repeat', '1', '--json', '--report', report]));
      assert.equal(out.ratios.phase, 'steady');
      for (const r of out.runs) {
        assert.equal(r.mismatches, 0);
        assert.ok(r.steady, `${r.side}: steady figures`);
        assert.equal(r.steady.pages, 2 * 1024, `${r.side}: 2 rounds of 1024 pages`);
      }
      assertSummary(out.engine.steady, 'engine steady');
      assertSummary(out.native.steady, 'native steady');
      const html = fs.readFileSync(report, 'utf8');
      assert.match(html, /^<!doctype html>/);
      assert.equal((html.match(/<svg /g) ?? []).length, 2, 'a histogram and a throughput plot');
      assert.match(html, /Fault latency/);
      assert.match(html, /Throughput over time/);
      assert.doesNotMatch(html, /<script|https?:\/\/(?!www\.w3\.org)/, 'no scripts, no external assets');
    });

    it('restore preset: prefetch against the fc handler, memcpy measured in the same run; an SVG report', async () => {
      const report = path.join(tmp, 'bench.svg');
      const out = json(await cli(['--mode', 'restore', '--size', '8M', '--repeat', '1', '--json', '--report', report]));
      assert.equal(out.config.prefetch, true);
      assert.equal(out.config.pattern, 'sequential');
      assert.match(out.runs.find((r: { side: string }) => r.side === 'native').handler, /fc/);
      assert.ok(out.memcpy && out.memcpy.gibPerSec > 0, 'memcpy bandwidth');
      assert.ok(out.ratios.memcpy > 0);
      for (const r of out.runs) assert.equal(r.mismatches, 0);
      const eng = out.runs.find((r: { side: string }) => r.side === 'engine');
      assert.equal(eng.engine.pages.total, 2048, 'every page filled once (demand, read-ahead or background)');
      const svg = fs.readFileSync(report, 'utf8');
      assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      assert.match(svg, /Fault latency/);
    });

    it('--no-native runs the engine side only, and says so', async () => {
      const out = json(await cli(['--size', '4M', '--threads', '1', '--workers', '1', '--repeat', '1', '--no-native', '--json', '--source', 'zero']));
      assert.deepEqual(out.runs.map((r: { side: string }) => r.side), ['engine']);
      assert.match(out.nativeSkipped, /--no-native/);
      assert.equal(out.native, null);
      assert.equal(out.ratios.faultsPerSec, null);
      assert.equal(out.runs[0].mismatches, 0);
      assert.equal(out.runs[0].engine.pages.zeroFilled, 1024, 'zero source: every page zero-filled');
    });

    it('prints a side-by-side table', async () => {
      const r = await cli(['--size', '4M', '--threads', '2', '--repeat', '1', '--kind', 'wp']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /faults\/s/);
      assert.match(r.stdout, /latency p50 µs/);
      assert.match(r.stdout, /handler CPU µs\/fault/);
      assert.match(r.stdout, /engine\/native/);
      assert.match(r.stdout, /mismatches 0\s+mismatches 0/);
    });
  });

  it('without the C workload (--workload js): the engine side with JavaScript faulting threads, native skipped with a note', async () => {
    const out = json(await cli(['--workload', 'js', '--size', '4M', '--threads', '2', '--repeat', '1', '--json']));
    assert.deepEqual(out.runs.map((r: { side: string }) => r.side), ['engine']);
    assert.match(out.nativeSkipped, /skipped/);
    assert.ok(out.notes.some((n: string) => /JavaScript faulting threads/.test(n)));
    assert.equal(out.runs[0].mismatches, 0);
    assert.equal(out.runs[0].initial.pages, 1024);
  });

  it('--micro prints ns/op for each building block', async () => {
    const out = json(await cli(['--micro', '--micro-time', '20', '--json']));
    const names = out.micro.map((m: { name: string }) => m.name).join('\n');
    for (const re of [/ioctl UFFDIO_WAKE/, /UFFDIO_COPY/, /decode uffd_msg/, /ring: stage/, /page state claim/, /shard routing/]) {
      assert.match(names, re);
    }
    for (const m of out.micro) assert.ok(m.nsPerOp > 0 && Number.isFinite(m.nsPerOp), `${m.name}: ${m.nsPerOp}`);
  });

  it('--mode memory measures RSS before/after an engine over a sparse region, in fresh processes', async () => {
    const out = json(await cli(['--mode', 'memory', '--size', '64G', '--json']));
    for (const m of [out.rss.big, out.rss.small]) {
      for (const k of ['baseMiB', 'mappedMiB', 'startedMiB', 'touchedMiB', 'stoppedMiB', 'overheadMiB', 'overheadTouchedMiB']) {
        assert.ok(Number.isFinite(m[k]) && m[k] > -64, `${k} = ${m[k]}`);
      }
      assert.equal(m.touched, 1024);
    }
    assert.equal(out.rss.big.regionSize, 64 * 1024 * MiB);
    assert.equal(out.rss.big.pageStateTableMiB, 6, '2 bits and a drop mark per 4 KiB page');
  });

  it('refuses bad options with a reason', async () => {
    const r = await cli(['--pattern', 'zigzag']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /--pattern must be one of/);
    const r2 = await cli(['--type', 'memfd', '--bounce', '2']);
    assert.notEqual(r2.code, 0);
    assert.match(r2.stderr, /PUNCH_HOLE/);
    const r3 = await cli(['--report', path.join(tmp, 'x.pdf'), '--size', '1M', '--repeat', '1', '--no-native']);
    assert.notEqual(r3.code, 0);
  });

  it('options: presets, overrides, features of the received uffd, targets', () => {
    const base = { native: true, workload: 'c', suite: false, sweep: false, micro: false, microTime: 300, json: false, help: false, _: [] };
    const serial = configFromOptions({ ...base, mode: 'serial', size: 8 * MiB });
    assert.equal(serial.threads, 1);
    assert.equal(serial.workers, 1);
    assert.equal(serial.size, 8 * MiB);
    assert.equal(serial.pin, 'split');
    assert.equal(configFromOptions({ ...base, mode: 'serial', pin: 'none' }).pin, 'none');
    assert.throws(() => configFromOptions({ ...base, pin: 'left' }), /--pin must be one of/);
    const restore = configFromOptions({ ...base, mode: 'restore' });
    assert.equal(restore.reference, 'fc');
    assert.equal(restore.prefetch, true);
    assert.ok(restore.memcpy > 0);
    const pages = configFromOptions({ ...base, pages: 100, prefetch: 'on', pattern: 'hotset' });
    assert.equal(pages.size, 100 * 4096);
    assert.equal(pages.prefetch, true);
    assert.equal(pages.pattern, 'hot-set');
    assert.throws(() => configFromOptions({ ...base, prefetch: 'maybe' }), /on or off/);
    const cfg: BenchConfig = { ...DEFAULT_CONFIG };
    assert.equal(checkConfig(cfg), null);
    assert.match(checkConfig({ ...cfg, kind: 'minor' }) ?? '', /memfd or hugetlbfs/);
    assert.match(checkConfig({ ...cfg, size: 4097 }) ?? '', /multiple of the page size/);
    assert.deepEqual(externalFeatures({ ...cfg, type: 'memfd', kind: 'minor' }, false), ['MINOR_SHMEM']);
    assert.deepEqual(externalFeatures({ ...cfg, type: 'memfd', kind: 'wp' }, false), ['PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM']);
    assert.deepEqual(externalFeatures({ ...cfg, bounce: 2 }, true), ['EVENT_REMOVE']);
    assert.equal(suiteConfig('throughput').threads, 8);
    assert.equal(suiteConfig('bounce').bounce, 5);
    assert.equal(summarize([], 'initial'), null);
    const run = (side: 'engine' | 'native', fps: number, p50: number): SideRun => ({
      side, handler: side, rep: 1, steady: null, mismatches: 0, mismatchBytes: 0, verifiedBytes: 0, setupSec: 0, verifySec: 0,
      wallSec: 1, samples: [], phaseWindow: { start: 0, end: 1 }, features: '0x0', pid: 1,
      initial: {
        elapsedSec: 1, pages: fps, faultsPerSec: fps, pagesPerSec: fps, mbPerSec: fps / 256,
        latencyUs: { p50, p90: p50, p99: p50, max: p50, mean: p50, min: p50 }, histogram: [], handlerCpuSec: 1,
        cpuPerFaultUs: 1e6 / fps, faultingCpuSec: 1, handlerFaults: fps,
      },
    });
    const s = summarize([run('engine', 10, 5), run('engine', 30, 7), run('engine', 20, 6)], 'initial');
    assert.deepEqual(s?.faultsPerSec, { median: 20, min: 10, max: 30 });
    const fake = (name: string, fps: number | null, p50: number | null) => ({
      config: { ...cfg, name }, nativeSkipped: null, runs: [], engine: null, native: null, memcpy: null, plainFaults: null, notes: [],
      ratios: { phase: 'initial' as const, faultsPerSec: fps, pagesPerSec: fps, p50, p99: null, cpuPerFaultUs: null, memcpy: null },
    });
    const t = suiteTargets([fake('throughput', 0.9, 1), fake('serial', 1, 1.5)], null);
    assert.equal(t.find((x) => x.name.startsWith('throughput'))?.met, true);
    assert.equal(t.find((x) => x.name.startsWith('serial'))?.met, false);
  });
});

describe('serve-first-touch (bench/serve-first-touch.ts)', function () {
  this.timeout(limit(120_000));
  it('connects VMs to a real serve one after the other: every byte checked, each handshake -> first touch served printed', async () => {
    const script = path.resolve(__dirname, '../bench/serve-first-touch.js');
    const r = await new Promise<CliRun>((resolve) => {
      execFile(process.execPath, [script, '--vms', '2', '--size', '4M', '--gap-ms', '300', '--json'], { timeout: limit(100_000) }, (err, stdout, stderr) => {
        resolve({ code: err ? 1 : 0, stdout, stderr });
      });
    });
    const out = json(r);
    assert.equal(out.vms, 2);
    assert.equal(out.firstTouchMs.length, 2);
    for (const ms of out.firstTouchMs) assert.ok(Number.isFinite(ms) && ms > 0, `first touch ${ms} ms`);
    assert.ok(out.medianMs >= out.minMs && out.medianMs <= out.maxMs);
    assert.equal(out.mismatches, 0, 'pages that did not verify');
  });
});
