// Memory types: the registry, each type's declaration against what this kernel advertises on
// a real region, region creation, and guest_memfd (created, then refused by this kernel).
import { useCleanups } from './helpers/cleanups.js';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as C from '../src/kernel/constants.js';
import { ConfigError, UffdError, UnsupportedError } from '../src/kernel/errors.js';
import { checkExtension, createGuestMemfd, createVm, guestMemfdSupport, openKvm } from '../src/kernel/kvm.js';
import { bytesAt, close, mmap, munmap } from '../src/kernel/memory.js';
import { RegisterMode, Userfaultfd, ioctlNames } from '../src/kernel/userfaultfd.js';
import { checkRegister, checkResolve, featuresFor, registerChecked } from '../src/memory-types/check.js';
import { MEMORY_TYPES, memoryType, memoryTypes } from '../src/memory-types/index.js';
import { RESOLVE_OPS, type MemoryType, type Region } from '../src/memory-types/types.js';
import { assertBytes, assertFilled, pattern } from './helpers/bytes.js';
import { at } from './helpers/at.js';

const P = C.PAGE_SIZE;
const ALL_MODES: RegisterMode[] = ['missing', 'wp', 'minor', 'rwp'];
const OP_MODE: Partial<Record<string, RegisterMode>> = { continue: 'minor', writeprotect: 'wp', rwprotect: 'rwp' };

// What this 6.18 kernel advertises when a region is registered with all the declared modes
// it supports (rwp aside), per UAPI.md: anon 0x17c, memfd 0x1fc; hugetlbfs has no zeropage
// or move (0x1cc); a file mapping registered wp (WP_ASYNC) gets the anon set.
const EXPECTED_IOCTLS: Record<string, bigint> = { anon: 0x17cn, shmem: 0x1fcn, hugetlbfs: 0x1ccn, file: 0x17cn };

const cleanups = useCleanups();

describe('memory types: registry', () => {
  it('lists the five built-in types in kernel order', () => {
    assert.deepEqual(memoryTypes().map((t) => t.name), ['anon', 'shmem', 'hugetlbfs', 'guest_memfd', 'file']);
    assert.equal(memoryType('shmem').name, 'shmem');
  });

  it('an unknown name is a ConfigError listing the known ones', () => {
    assert.throws(() => memoryType('tmpfs'), (e: unknown) => e instanceof ConfigError &&
      /unknown memory type "tmpfs"; known: anon, shmem, hugetlbfs, guest_memfd, file/.test((e as Error).message));
  });

  it('the static table lists every memory-type module of the directory, each once', () => {
    // A module that exports a MemoryType but is missing from MEMORY_TYPES would be dead code.
    const dir = path.resolve(__dirname, '../src/memory-types');
    const modules = fs.readdirSync(dir).filter((f) => f.endsWith('.js')).sort();
    const declared: string[] = [];
    for (const file of modules) {
      const mod = require(path.join(dir, file)) as { default?: unknown };
      const t = mod.default as MemoryType | undefined;
      if (t && typeof t === 'object' && typeof t.name === 'string' && typeof t.create === 'function') {
        assert.ok(MEMORY_TYPES.includes(t), `memory-types/${file} exports "${t.name}", which MEMORY_TYPES does not list`);
        declared.push(t.name);
      }
    }
    assert.deepEqual(declared.sort(), MEMORY_TYPES.map((t) => t.name).sort());
    assert.equal(new Set(MEMORY_TYPES.map((t) => t.name)).size, MEMORY_TYPES.length);
    assert.notEqual(memoryTypes(), memoryTypes(), 'memoryTypes() returns a copy');
    assert.ok(Object.isFrozen(MEMORY_TYPES));
  });

  for (const t of memoryTypes()) {
    it(`${t.name}: the declaration is self-consistent`, () => {
      assert.ok(t.description.length > 0);
      assert.ok(t.modes.length > 0);
      for (const m of t.modes) assert.ok(ALL_MODES.includes(m), m);
      for (const op of t.ops) assert.ok(RESOLVE_OPS.includes(op), op);
      for (const m of Object.keys(t.modeFeatures)) assert.ok(t.modes.includes(m as RegisterMode), `modeFeatures.${m} for an undeclared mode`);
      for (const m of ALL_MODES) {
        const op = t.resolveOp[m];
        if (t.modes.includes(m)) {
          assert.ok(op && t.ops.includes(op), `${m} faults resolve with a declared op (got ${op})`);
        } else {
          assert.equal(op, undefined, `${m} is not declared, so no ${m} faults can happen`);
        }
      }
      for (const op of t.ops) {
        const needs = OP_MODE[op];
        if (needs) assert.ok(t.modes.includes(needs), `${op} needs mode ${needs}`);
      }
      for (const ps of t.pageSizes) assert.equal(ps % P, 0);
    });
  }

  it('the declared table matches the kernel view of UAPI.md', () => {
    const table = Object.fromEntries(memoryTypes().map((t) => [t.name, { modes: [...t.modes], ops: [...t.ops].sort() }]));
    assert.deepEqual(table.anon, { modes: ['missing', 'wp', 'rwp'], ops: ['copy', 'move', 'poison', 'rwprotect', 'writeprotect', 'zeropage'] });
    assert.deepEqual(table.shmem, { modes: ['missing', 'wp', 'minor', 'rwp'], ops: ['continue', 'copy', 'poison', 'rwprotect', 'writeprotect', 'zeropage'] });
    assert.deepEqual(table.hugetlbfs, { modes: ['missing', 'wp', 'minor', 'rwp'], ops: ['continue', 'copy', 'poison', 'rwprotect', 'writeprotect'] });
    assert.deepEqual(table.guest_memfd, { modes: ['missing', 'minor'], ops: ['continue', 'copy'] });
    assert.deepEqual(table.file, { modes: ['wp'], ops: ['writeprotect'] });
    assert.deepEqual(memoryType('shmem').modeFeatures.missing, ['MISSING_SHMEM']);
    assert.deepEqual(memoryType('shmem').modeFeatures.minor, ['MINOR_SHMEM']);
    assert.deepEqual(memoryType('hugetlbfs').modeFeatures.missing, ['MISSING_HUGETLBFS']);
    assert.deepEqual(memoryType('hugetlbfs').modeFeatures.minor, ['MINOR_HUGETLBFS']);
    assert.ok(memoryType('shmem').modeFeatures.wp!.includes('WP_HUGETLBFS_SHMEM'));
    assert.ok(memoryType('hugetlbfs').modeFeatures.wp!.includes('WP_HUGETLBFS_SHMEM'));
    for (const n of ['anon', 'shmem', 'hugetlbfs']) assert.deepEqual(memoryType(n).modeFeatures.rwp, ['RWP']);
    assert.deepEqual(memoryType('file').modeFeatures.wp, ['WP_ASYNC']);
  });
});

/**
 * A region for registration only (never touched): MAP_NORESERVE, so that hugetlbfs needs no
 * free pages (other suites may hold the reserved ones).
 */
function regionFor(t: MemoryType): Region {
  const pageSize = at(t.pageSizes, 0);
  const r = t.create({ size: 2 * pageSize, pageSize, noReserve: true });
  cleanups.push(() => r.close());
  return r;
}

/**
 * File regions need a disk filesystem whose files map MAP_SHARED; a guest whose only one is a
 * virtiofs root with cache=none (`npm run test:kernel`) has none: print why and skip.
 */
function fileRegionsOrSkip(ctx: Mocha.Context): void {
  const a = memoryType('file').available();
  if (!a.ok) {
    console.log(`      skipped: ${a.reason}`);
    ctx.skip();
  }
}

describe('memory types: declarations against this kernel (real regions)', () => {
  for (const name of ['anon', 'shmem', 'hugetlbfs', 'file']) {
    it(`${name}: the declared modes register and the kernel advertises the declared ops`, function () {
      if (name === 'file') fileRegionsOrSkip(this);
      const t = memoryType(name);
      const r = regionFor(t);
      const modes = t.modes.filter((m) => m !== 'rwp');
      const u = Userfaultfd.create({ features: featuresFor(t, modes) });
      cleanups.push(() => u.close());
      const io = registerChecked(u, r, modes);
      assert.equal(io, EXPECTED_IOCTLS[name], `${name} advertised 0x${io.toString(16)} (${ioctlNames(io).join(', ')})`);
      for (const op of t.ops) {
        if (op === 'rwprotect') continue;
        checkResolve(t, op, io); // throws if the kernel lacks a declared op
        assert.ok(ioctlNames(io).includes(op as never), `${op} advertised`);
      }
      u.unregister(r.addr, r.size, r.pageSize);
      // Each single declared mode registers on its own too (fresh userfaultfd each).
      for (const m of modes) {
        const u1 = Userfaultfd.create({ features: featuresFor(t, [m]) });
        try {
          const io1 = registerChecked(u1, r, [m]);
          const needs = (op: string) => OP_MODE[op];
          for (const op of t.ops) {
            const need = needs(op);
            if (need === 'rwp' || (need && need !== m)) continue;
            checkResolve(t, op, io1);
          }
        } finally {
          u1.close();
        }
      }
    });

    it(`${name}: rwp, declared, is refused on a kernel without RWP (with the fix)`, function () {
      if (Userfaultfd.hasFeature('RWP')) {
        console.log('      (this kernel offers RWP)');
        this.skip();
      }
      const t = memoryType(name);
      if (!t.modes.includes('rwp')) {
        assert.throws(() => checkRegister(t, ['rwp'], 0n), (e: unknown) => e instanceof UnsupportedError && /cannot be registered for rwp/.test((e as Error).message));
        return;
      }
      assert.throws(() => checkRegister(t, ['rwp'], Userfaultfd.offered().features),
        (e: unknown) => e instanceof UnsupportedError && /lacks UFFD_FEATURE_RWP/.test((e as Error).message) && /Linux 7\.3/.test((e as Error).message));
      // ... and the kernel itself indeed refuses the mode bit.
      const r = regionFor(t);
      const u = Userfaultfd.create({});
      cleanups.push(() => u.close());
      assert.throws(() => u.register(r.addr, r.size, C.UFFDIO_REGISTER_MODE_RWP, r.pageSize), (e: unknown) => e instanceof UffdError && e.code === 'EINVAL');
    });
  }

  it('modes a type does not declare are refused by check.ts, and the kernel agrees', () => {
    const anon = memoryType('anon');
    const r = regionFor(anon);
    assert.throws(() => checkRegister(anon, ['minor'], Userfaultfd.offered().features), UnsupportedError);
    const u = Userfaultfd.create({});
    cleanups.push(() => u.close());
    assert.throws(() => u.register(r.addr, r.size, ['minor']), (e: unknown) => e instanceof UffdError && e.code === 'EINVAL');
    const file = memoryType('file');
    assert.throws(() => checkRegister(file, ['missing'], Userfaultfd.offered().features), UnsupportedError);
    if (!file.available().ok) {
      console.log(`      (not asking the kernel about file regions: ${file.available().reason})`);
      return;
    }
    const fr = regionFor(file);
    assert.throws(() => u.register(fr.addr, fr.size, ['missing']), (e: unknown) => e instanceof UffdError && e.code === 'EINVAL');
  });

  it('file: wp needs WP_ASYNC; check.ts says so, the kernel refuses without it', function () {
    fileRegionsOrSkip(this);
    const t = memoryType('file');
    const r = regionFor(t);
    const bare = Userfaultfd.create({ features: ['PAGEFAULT_FLAG_WP'] });
    cleanups.push(() => bare.close());
    assert.throws(() => registerChecked(bare, r, ['wp']), (e: unknown) => e instanceof UnsupportedError && /WP_ASYNC/.test((e as Error).message));
    assert.throws(() => bare.register(r.addr, r.size, ['wp']), (e: unknown) => e instanceof UffdError && e.code === 'EINVAL');
  });
});

describe('memory types: regions', () => {
  for (const name of ['anon', 'shmem', 'file']) {
    it(`${name}: a region maps read-write memory${name === 'anon' ? '' : ' shared with its alias'}`, function () {
      if (name === 'file') fileRegionsOrSkip(this);
      const t = memoryType(name);
      assert.deepEqual(t.available(), { ok: true });
      const r = t.create({ size: 3 * P });
      cleanups.push(() => r.close());
      assert.equal(r.type, name);
      assert.equal(r.size, 3 * P);
      assert.equal(r.pageSize, P);
      assert.equal(r.addr % P, 0);
      const data = pattern(3 * P, 21);
      bytesAt(r.addr, 3 * P).set(data);
      assertBytes(bytesAt(r.addr, 3 * P), data, 'written bytes');
      if (name === 'anon') {
        assert.equal(r.fd, -1);
        assert.equal(r.aliasAddr, 0);
      } else {
        assert.ok(r.fd >= 0);
        assertBytes(bytesAt(r.aliasAddr, 3 * P), data, 'alias sees the same pages');
      }
    });
  }

  it('sizes and page sizes are validated (ConfigError)', () => {
    assert.throws(() => memoryType('anon').create({ size: P + 1 }), ConfigError);
    assert.throws(() => memoryType('anon').create({ size: 0 }), ConfigError);
    assert.throws(() => memoryType('shmem').create({ size: P, pageSize: 2 * 1024 * 1024 }), ConfigError);
    assert.throws(() => memoryType('hugetlbfs').create({ size: P, noReserve: true }), ConfigError);
  });

  it('file: maps an existing file by path, and refuses one smaller than the region', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-file-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const p = path.join(dir, 'data.bin');
    const data = pattern(2 * P, 22);
    fs.writeFileSync(p, data);
    const r = memoryType('file').create({ size: 2 * P, path: p });
    cleanups.push(() => r.close());
    assertBytes(bytesAt(r.addr, 2 * P), data, 'file contents through the mapping');
    assert.throws(() => memoryType('file').create({ size: 3 * P, path: p }), (e: unknown) => e instanceof ConfigError && /fewer than/.test((e as Error).message));
  });

  it('hugetlbfs: without free pages, available() says so with the fix and create() refuses', function () {
    const t = memoryType('hugetlbfs');
    const a = t.available(2 * 1024 * 1024);
    if (a.ok) {
      console.log('      (2 MiB pages are free right now: nothing to refuse)');
      this.skip();
    }
    assert.match(a.reason!, /hugetlb pages|huge pages/);
    assert.match(a.reason!, /nr_hugepages/);
    let created: Region | undefined;
    try {
      created = t.create({ size: 2 * 1024 * 1024 });
    } catch (e) {
      assert.ok(e instanceof UnsupportedError && /nr_hugepages/.test(e.message), String(e));
    }
    if (created) {
      created.close();
      // Only legitimate if another suite reserved pages in between.
      assert.ok(t.available(2 * 1024 * 1024).ok, 'create() succeeded although no 2 MiB page was free');
      console.log('      (another process reserved 2 MiB pages meanwhile)');
    }
    const b = t.available(1024 * 1024 * 1024);
    if (!b.ok) assert.match(b.reason!, /1 GiB/);
  });
});

describe('memory types: guest_memfd', () => {
  before(function () {
    const s = guestMemfdSupport();
    if (!s.ok) {
      console.log(`      skipped: ${s.reason}`);
      this.skip();
    }
  });

  it('kvm.ts: KVM_CREATE_VM and KVM_CREATE_GUEST_MEMFD create fds; a guest_memfd without MMAP cannot be mapped', () => {
    const kvm = openKvm();
    cleanups.push(() => close(kvm));
    assert.ok(checkExtension(kvm, C.KVM_CAP_GUEST_MEMFD) > 0);
    const vm = createVm(kvm);
    cleanups.push(() => close(vm));
    const plain = createGuestMemfd(vm, 4 * P, 0);
    cleanups.push(() => close(plain));
    assert.ok(plain >= 0);
    assert.throws(() => mmap(4 * P, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, plain), (e: unknown) => e instanceof UffdError && e.code === 'ENODEV');
    assert.throws(() => createGuestMemfd(vm, P + 1, C.GUEST_MEMFD_FLAG_MMAP),
      (e: unknown) => e instanceof UffdError && e.code === 'EINVAL' && e.op === 'KVM_CREATE_GUEST_MEMFD' && /page size/.test((e as Error).message));
    const mapped = createGuestMemfd(vm, 4 * P, C.GUEST_MEMFD_FLAG_MMAP | C.GUEST_MEMFD_FLAG_INIT_SHARED);
    cleanups.push(() => close(mapped));
    const addr = mmap(4 * P, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, mapped);
    cleanups.push(() => munmap(addr, 4 * P));
    assertFilled(bytesAt(addr, 4 * P), 0, 'fresh guest memory');
  });

  it('a guest_memfd region is shared memory: bytes written show through the alias', () => {
    const r = memoryType('guest_memfd').create({ size: 4 * P });
    cleanups.push(() => r.close());
    const data = pattern(4 * P, 23);
    bytesAt(r.addr, 4 * P).set(data);
    assertBytes(bytesAt(r.aliasAddr, 4 * P), data, 'alias of the guest_memfd');
  });

  it('registration of the declared modes is refused by this kernel with a clear UnsupportedError', () => {
    const t = memoryType('guest_memfd');
    const r = t.create({ size: 2 * P });
    cleanups.push(() => r.close());
    for (const modes of [['missing'], ['minor'], ['missing', 'minor']] as RegisterMode[][]) {
      const u = Userfaultfd.create({});
      try {
        checkRegister(t, modes, u); // the declaration allows it ...
        assert.throws(() => registerChecked(u, r, modes), (e: unknown) => e instanceof UnsupportedError &&
          /guest_memfd: this kernel refuses userfaultfd registration \(EINVAL\)/.test((e as Error).message) &&
          /allow uffd support in guest_memfd/.test((e as Error).message));
      } finally {
        u.close();
      }
    }
    const u = Userfaultfd.create({});
    cleanups.push(() => u.close());
    assert.throws(() => registerChecked(u, r, ['wp']), (e: unknown) => e instanceof UnsupportedError && /guest_memfd cannot be registered for wp/.test((e as Error).message));
  });
});
