// The package as a user sees it: resolved by its name through package.json "exports" (a
// self-reference from inside the repository, and a consumer outside it that has the package
// in node_modules), the curated root API, the "kernel" subpath, internal paths not
// reachable, and the type declarations that go with each export (tsc on a consumer file).
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { useCleanups } from './helpers/cleanups.js';
import { limit } from './helpers/limits.js';

const ROOT = path.resolve(__dirname, '../..');
const cleanups = useCleanups();

/** What `require('uffd-engine')` gives: values only (types are checked by tsc below). */
const ROOT_EXPORTS = [
  'ConfigError', 'Engine', 'HandshakeError', 'MEMORY_TYPES', 'RangeResult', 'RemoteMemory', 'RestoreServer', 'UffdError',
  'UnsupportedError', 'Userfaultfd', 'WssTracker', 'engineSessions', 'memoryType', 'memoryTypes', 'parseMemUrl',
  'sources', 'uploadSnapshot', 'writeManifest',
];

/** A directory outside the repository whose node_modules holds the package (a symlink to it). */
function consumerDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-consumer-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'node_modules', '@types'), { recursive: true });
  fs.symlinkSync(ROOT, path.join(dir, 'node_modules', 'uffd-engine'), 'dir');
  fs.symlinkSync(path.join(ROOT, 'node_modules', '@types', 'node'), path.join(dir, 'node_modules', '@types', 'node'), 'dir');
  return dir;
}

describe('package exports', function () {
  this.timeout(limit(60_000));

  it('the root resolves by name to the curated API and nothing of the raw kernel layer', () => {
    assert.equal(require.resolve('uffd-engine'), path.join(ROOT, 'dist/src/index.js'));
    const api = require('uffd-engine') as Record<string, unknown>;
    assert.deepEqual(Object.keys(api).sort(), [...ROOT_EXPORTS].sort());
    for (const raw of ['close', 'memcpy', 'getpid', 'mmap', 'libc', 'uapi', 'socket', 'kvm']) {
      assert.equal(api[raw], undefined, `${raw} belongs to uffd-engine/kernel, not the root`);
    }
    const { Engine, memoryType, sources, Userfaultfd } = api as typeof import('../src/index.js');
    assert.equal(typeof Engine.start, 'function');
    assert.equal(memoryType('anon').name, 'anon');
    assert.equal(sources.zero().kind, 'zero');
    assert.equal(typeof Userfaultfd.create, 'function');
  });

  it('"uffd-engine/kernel" is the raw kernel layer, the same objects the root uses', () => {
    assert.equal(require.resolve('uffd-engine/kernel'), path.join(ROOT, 'dist/src/kernel/index.js'));
    const k = require('uffd-engine/kernel') as typeof import('../src/kernel/index.js');
    for (const name of ['Userfaultfd', 'mmap', 'munmap', 'close', 'memcpy', 'bytesAt', 'uapi', 'socket', 'kvm', 'Scanner']) {
      assert.notEqual((k as Record<string, unknown>)[name], undefined, `uffd-engine/kernel exports ${name}`);
    }
    assert.equal(k.Userfaultfd, (require('uffd-engine') as typeof import('../src/index.js')).Userfaultfd);
    assert.equal(k.uapi.UFFD_API, 0xaa);
  });

  it('internal modules are not reachable by name (ERR_PACKAGE_PATH_NOT_EXPORTED)', () => {
    for (const p of ['uffd-engine/dist/src/engine/engine.js', 'uffd-engine/dist/src/cli/args.js', 'uffd-engine/src/index.ts',
      'uffd-engine/dist/src/kernel/libc.js', 'uffd-engine/cli', 'uffd-engine/engine']) {
      assert.throws(() => require.resolve(p), (e: NodeJS.ErrnoException) => e.code === 'ERR_PACKAGE_PATH_NOT_EXPORTED', p);
    }
  });

  it('a consumer outside the repository: node resolves both exports and no internal path', () => {
    const dir = consumerDir();
    const script = `
      const api = require('uffd-engine');
      const k = require('uffd-engine/kernel');
      let internal = 'reachable';
      try { require('uffd-engine/dist/src/engine/engine.js'); } catch (e) { internal = e.code; }
      console.log(JSON.stringify({ keys: Object.keys(api).sort(), mmap: typeof k.mmap, same: k.Userfaultfd === api.Userfaultfd, internal }));`;
    fs.writeFileSync(path.join(dir, 'use.js'), script);
    const r = spawnSync(process.execPath, ['use.js'], { cwd: dir, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { keys: string[]; mmap: string; same: boolean; internal: string };
    assert.deepEqual(out, { keys: [...ROOT_EXPORTS].sort(), mmap: 'function', same: true, internal: 'ERR_PACKAGE_PATH_NOT_EXPORTED' });
  });

  it('the declarations go with the exports: a consumer type-checks against them, internal paths do not resolve', () => {
    const dir = consumerDir();
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'commonjs' }));
    fs.writeFileSync(path.join(dir, 'use.ts'), `
      import { Engine, memoryType, sources, type EngineOptions, type MemoryType, type PageSource, WssTracker, RestoreServer } from 'uffd-engine';
      import { mmap, uapi, type RegisterMode } from 'uffd-engine/kernel';
      const t: MemoryType = memoryType('anon');
      const s: PageSource = sources.zero();
      const o: Partial<EngineOptions> = { workers: 1 };
      const m: RegisterMode = 'missing';
      const n: number = uapi.PAGE_SIZE;
      void [Engine.start, t, s, o, m, n, mmap, WssTracker, RestoreServer];
      // @ts-expect-error the raw kernel layer is not at the root
      import { close } from 'uffd-engine';
      // @ts-expect-error internal modules are not exported
      import { Engine as Internal } from 'uffd-engine/dist/src/engine/engine.js';
      void [close, Internal];
    `);
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022'], types: ['node'], strict: true, noEmit: true, skipLibCheck: true },
      files: ['use.ts'],
    }));
    const tsc = path.join(ROOT, 'node_modules', '.bin', 'tsc');
    const r = spawnSync(tsc, ['-p', dir], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `tsc on a consumer of the package failed:\n${r.stdout}${r.stderr}`);
  });
});
