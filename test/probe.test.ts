// The probe: its core (memory-types/probe.ts) and the built CLI (probe --json, and the table).
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { FEATURE_NAMES } from '../src/kernel/constants.js';
import { kernelRelease } from '../src/kernel/memory.js';
import { Userfaultfd } from '../src/kernel/userfaultfd.js';
import { memoryTypes } from '../src/memory-types/index.js';
import { formatProbe, probe, type ProbeReport, type TypeProbe } from '../src/memory-types/probe.js';
import { limit } from './helpers/limits.js';
import { at } from './helpers/at.js';

const MAIN = path.join(__dirname, '..', 'src', 'cli', 'main.js');

function reg(t: TypeProbe, modes: string, pageIndex = 0) {
  const r = at(t.regions, pageIndex).registrations.find((g) => g.modes.join('+') === modes);
  assert.ok(r, `${t.name}: no registration row for ${modes}`);
  return r;
}

/** Checks a report's shape and the answers this machine must give. */
function checkReport(r: ProbeReport): void {
  assert.equal(r.kernel, kernelRelease());
  assert.equal(typeof r.arch, 'string');
  assert.ok(r.userfaultfd.ok, `userfaultfd unavailable: ${r.userfaultfd.error}`);
  const offered = Userfaultfd.offered();
  assert.equal(r.userfaultfd.features!.mask, '0x' + offered.features.toString(16));
  assert.ok(r.userfaultfd.features!.names.includes('MISSING_SHMEM'));
  // names and not-offered partition the known features
  const all = [...r.userfaultfd.features!.names, ...r.userfaultfd.notOffered!.map((f) => f.name)].sort();
  assert.deepEqual(all, [...FEATURE_NAMES].sort());
  for (const f of r.userfaultfd.notOffered!) assert.match(f.since, /^\d+\.\d+$/);
  assert.ok(r.userfaultfd.ioctls!.names.includes('register'));
  assert.ok('2048kB' in r.hugetlb && typeof r.hugetlb['2048kB'].free === 'number');
  assert.ok(r.elapsedMs >= 0); // how long it took is reported, not asserted (TCG is 10x slower)

  assert.deepEqual(r.types.map((t) => t.name), memoryTypes().map((t) => t.name));
  for (const t of r.types) {
    assert.ok(t.modes.length && t.ops.length && t.pageSizes.length, t.name);
    assert.equal(t.regions.length, t.pageSizes.length);
    for (const rp of t.regions) {
      assert.equal(typeof rp.available, 'boolean');
      if (!rp.available) assert.ok(rp.reason, `${t.name}: unavailable without a reason`);
      if (!rp.mapped) continue;
      // each single mode, plus the combination of declared modes when there is one
      assert.ok(rp.registrations.length >= 4);
      for (const g of rp.registrations) {
        assert.equal(typeof g.registered, 'boolean');
        if (g.registered) assert.match(g.ioctlMask!, /^0x[0-9a-f]+$/);
        else assert.ok(g.errno || g.blocker, `${t.name} ${g.modes}: refused without a reason`);
        if (g.declared && !g.usable) assert.ok(g.blocker, `${t.name} ${g.modes}: not usable, no blocker`);
      }
    }
  }

  const type = (n: string) => r.types.find((t) => t.name === n)!;
  const anon = type('anon');
  assert.ok(at(anon.regions, 0).available && at(anon.regions, 0).mapped);
  assert.deepEqual([reg(anon, 'missing').registered, reg(anon, 'missing').ioctlMask], [true, '0x13c']);
  assert.deepEqual(reg(anon, 'missing+wp').ioctlMask, '0x17c');
  assert.ok(reg(anon, 'missing+wp').usable);
  assert.deepEqual([reg(anon, 'minor').declared, reg(anon, 'minor').registered, reg(anon, 'minor').errno], [false, false, 'EINVAL']);

  const shmem = type('shmem');
  assert.ok(reg(shmem, 'missing').registered && reg(shmem, 'missing').usable);
  assert.ok(reg(shmem, 'minor').registered);
  assert.ok(reg(shmem, 'minor').ioctls!.includes('continue'));
  assert.equal(reg(shmem, 'missing+wp+minor').ioctlMask, '0x1fc');

  const huge = type('hugetlbfs');
  assert.deepEqual(huge.pageSizes, [2 * 1024 * 1024, 1024 * 1024 * 1024]);
  const h2 = at(huge.regions, 0);
  if (!h2.available) assert.match(h2.reason!, /nr_hugepages/);
  assert.ok(h2.mapped, `hugetlbfs 2 MiB not even mappable: ${h2.error}`);
  assert.equal(reg(huge, 'missing+wp+minor').ioctlMask, '0x1cc');

  if (!Userfaultfd.hasFeature('RWP')) {
    for (const n of ['anon', 'shmem', 'hugetlbfs']) {
      const g = reg(type(n), 'rwp');
      assert.equal(g.registered, false);
      assert.match(g.blocker!, /lacks UFFD_FEATURE_RWP.*RWP needs Linux 7\.3/);
    }
  }

  const gm = type('guest_memfd');
  if (at(gm.regions, 0).mapped) {
    const g = reg(gm, 'missing');
    assert.equal(g.registered, false);
    assert.equal(g.errno, 'EINVAL');
    assert.match(g.blocker!, /guest_memfd: this kernel refuses userfaultfd registration \(EINVAL\)/);
  } else {
    console.log(`      (guest_memfd region not mapped here: ${at(gm.regions, 0).reason ?? at(gm.regions, 0).error})`);
  }

  const file = type('file');
  if (at(file.regions, 0).available) {
    assert.ok(reg(file, 'wp').registered && reg(file, 'wp').usable);
    assert.deepEqual(reg(file, 'wp').features, ['WP_ASYNC']);
  } else {
    // e.g. a guest whose only disk filesystem is virtiofs with cache=none (mmap: ENODEV)
    assert.match(at(file.regions, 0).reason!, /MAP_SHARED|disk filesystem/);
    console.log(`      (file regions cannot be created here: ${at(file.regions, 0).reason})`);
  }
}


describe('probe', () => {
  it('the core answers from the kernel for every memory type', () => {
    checkReport(probe());
  });

  it('the table names every type, mode and blocker', () => {
    const r = probe();
    const text = formatProbe(r);
    assert.match(text, new RegExp(`kernel ${r.kernel.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    for (const t of r.types) assert.match(text, new RegExp(`^${t.name}: `, 'm'));
    assert.match(text, /missing\+wp\+minor/);
    if (!Userfaultfd.hasFeature('RWP')) assert.match(text, /not offered: RWP \(Linux 7\.3\)/);
    const gm = r.types.find((t) => t.name === 'guest_memfd');
    assert.ok(gm, 'the report lists guest_memfd');
    if (at(gm.regions, 0).mapped) assert.match(text, /refuses userfaultfd registration/);
  });

  it('the built CLI: probe --json prints the same report as JSON', () => {
    const t0 = Date.now();
    const out = execFileSync(process.execPath, [MAIN, 'probe', '--json'], { encoding: 'utf8', timeout: limit(20_000) });
    const wall = Date.now() - t0;
    const r = JSON.parse(out) as ProbeReport;
    checkReport(r);
    console.log(`      (probe --json: ${wall} ms wall, ${r.elapsedMs} ms probing)`);
  });

  it('the built CLI: probe prints a table, --help the options, a bad option fails with a message', () => {
    const table = execFileSync(process.execPath, [MAIN, 'probe'], { encoding: 'utf8', timeout: limit(20_000) });
    assert.match(table, /^anon: /m);
    assert.match(table, /^shmem: /m);
    const help = execFileSync(process.execPath, [MAIN, 'probe', '--help'], { encoding: 'utf8' });
    assert.match(help, /--json/);
    assert.throws(() => execFileSync(process.execPath, [MAIN, 'probe', '--bogus'], { encoding: 'utf8', stdio: 'pipe' }),
      (e: unknown) => (e as { status: number; stderr: string }).status !== 0 && /unknown option --bogus/.test((e as { stderr: string }).stderr));
  });
});
