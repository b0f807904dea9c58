// A regular file (ext4, xfs, ...) mapped MAP_SHARED. The kernel lets userfaultfd track such
// a mapping only for write-protection, and only with UFFD_FEATURE_WP_ASYNC (the kernel
// resolves the write in place and PAGEMAP_SCAN reports PAGE_IS_WRITTEN): no missing or minor
// faults, so no serving. Without a path, create() makes an unlinked temporary file in a
// directory that is not tmpfs (a tmpfs file would be shmem).
import { mapSharedRegion } from './shared-mapping.js';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as C from '../kernel/constants.js';
import { ConfigError } from '../kernel/errors.js';
import { close, ftruncate, mmap, munmap, openFile } from '../kernel/memory.js';
import { checkRegionOptions } from './check.js';
import type { Availability, MemoryType, Region, RegionOptions } from './types.js';

const MEMORY_FILESYSTEMS = new Set(['tmpfs', 'hugetlbfs', 'ramfs', 'devtmpfs', 'shm']);

/** The filesystem type of the mount a path lives on ("ext4"), from /proc/self/mounts. */
export function filesystemOf(p: string): string | undefined {
  let real: string;
  try {
    real = fs.realpathSync(p);
  } catch {
    return undefined;
  }
  let best = '';
  let type: string | undefined;
  for (const line of fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, mnt, fstype] = line.split(' ');
    if (!mnt) continue;
    const m = mnt.replace(/\\040/g, ' ');
    const inside = m === '/' || real === m || real.startsWith(m + '/');
    if (inside && m.length >= best.length) {
      best = m;
      type = fstype;
    }
  }
  return type;
}

/** Why a file in dir cannot be mapped MAP_SHARED (e.g. virtiofs with cache=none: ENODEV), or undefined. */
function sharedMapRefusal(dir: string): string | undefined {
  const p = path.join(dir, `uffd-engine-probe-${process.pid}-${++counter}`);
  let fd = -1;
  try {
    fd = openFile(p, C.O_RDWR | C.O_CREAT | C.O_TRUNC);
    fs.unlinkSync(p);
    ftruncate(fd, C.PAGE_SIZE);
    munmap(mmap(C.PAGE_SIZE, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0), C.PAGE_SIZE);
    return undefined;
  } catch (e) {
    fs.rmSync(p, { force: true });
    return `MAP_SHARED refused: ${(e as Error).message}`;
  } finally {
    if (fd >= 0) close(fd);
  }
}

let counter = 0;
let usable: { env: string | undefined; found: { dir?: string; reason?: string } } | undefined;

/** A writable directory on a disk filesystem whose files map MAP_SHARED, or why there is none. */
function tempDir(): { dir?: string; reason?: string } {
  const env = process.env.UFFD_ENGINE_FILE_DIR;
  if (!usable || usable.env !== env) usable = { env, found: findTempDir() };
  return usable.found;
}

/** Files in the candidate directories are probed once per process (per UFFD_ENGINE_FILE_DIR). */
function findTempDir(): { dir?: string; reason?: string } {
  const candidates = [process.env.UFFD_ENGINE_FILE_DIR, os.tmpdir(), '/var/tmp', process.cwd()].filter(Boolean) as string[];
  const seen: string[] = [];
  for (const dir of candidates) {
    try {
      fs.accessSync(dir, fs.constants.W_OK);
    } catch {
      seen.push(`${dir} (not writable)`);
      continue;
    }
    const t = filesystemOf(dir);
    if (t && MEMORY_FILESYSTEMS.has(t)) {
      seen.push(`${dir} (${t})`);
      continue;
    }
    const refused = sharedMapRefusal(dir);
    if (refused) {
      seen.push(`${dir} (${t}: ${refused})`);
      continue;
    }
    return { dir };
  }
  return { reason: `no writable directory on a disk filesystem whose files map MAP_SHARED for a temporary file ` +
    `(tried ${seen.join(', ')}); set UFFD_ENGINE_FILE_DIR or pass path` };
}

export const memoryType: MemoryType = {
  name: 'file',
  description: 'a regular file (not tmpfs) mapped MAP_SHARED: write-protect tracking with WP_ASYNC only',
  modes: ['wp'],
  ops: ['writeprotect'],
  pageSizes: [C.PAGE_SIZE],
  modeFeatures: { wp: ['WP_ASYNC'] },
  resolveOp: { missing: undefined, wp: 'writeprotect', minor: undefined, rwp: undefined },
  modeNotes: {
    missing: 'userfaultfd serves missing pages only for anon, shmem and hugetlbfs; a file mapping fills from its file',
    minor: 'minor faults exist only for shmem and hugetlbfs page caches',
    rwp: 'the RWP series covers anon, shmem and hugetlbfs only',
  },
  available(): Availability {
    const t = tempDir();
    return t.dir ? { ok: true } : { ok: false, reason: t.reason };
  },
  create(opts: RegionOptions): Region {
    const pageSize = checkRegionOptions(memoryType, opts);
    const size = opts.size;
    let fd: number;
    if (opts.path) {
      fd = openFile(opts.path, C.O_RDWR);
      const have = fs.fstatSync(fd).size;
      if (have < size) {
        close(fd);
        throw new ConfigError(`file ${opts.path} has ${have} bytes, fewer than the region size ${size}`);
      }
    } else {
      const t = tempDir();
      if (!t.dir) throw new ConfigError(t.reason ?? 'no directory for a temporary file');
      const p = path.join(t.dir, `uffd-engine-file-${process.pid}-${++counter}-${Date.now().toString(36)}`);
      fd = openFile(p, C.O_RDWR | C.O_CREAT | C.O_TRUNC);
      fs.unlinkSync(p); // the mapping keeps the inode; nothing is left behind
      try {
        ftruncate(fd, size);
      } catch (e) {
        close(fd);
        throw e;
      }
    }
    return mapSharedRegion('file', fd, size, pageSize, opts.noReserve);
  },
};

export default memoryType;
