// Shared memory: a memfd (tmpfs inode) mapped MAP_SHARED. It has a page cache, so besides
// missing faults it supports minor faults: fill the page cache through the alias mapping
// (never registered), then map the page in with UFFDIO_CONTINUE.
import { mapSharedRegion } from './shared-mapping.js';
import * as C from '../kernel/constants.js';
import { memfdCreate } from '../kernel/memory.js';
import { checkRegionOptions } from './check.js';
import type { MemoryType, Region, RegionOptions } from './types.js';

export const memoryType: MemoryType = {
  name: 'shmem',
  description: 'shared memory: a memfd mapped MAP_SHARED (tmpfs page cache)',
  modes: ['missing', 'wp', 'minor', 'rwp'],
  ops: ['copy', 'zeropage', 'continue', 'writeprotect', 'poison', 'rwprotect'],
  pageSizes: [C.PAGE_SIZE],
  modeFeatures: {
    missing: ['MISSING_SHMEM'],
    wp: ['PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM'],
    minor: ['MINOR_SHMEM'],
    rwp: ['RWP'],
  },
  resolveOp: { missing: 'copy', wp: 'writeprotect', minor: 'continue', rwp: 'rwprotect' },
  available() {
    return { ok: true };
  },
  create(opts: RegionOptions): Region {
    const pageSize = checkRegionOptions(memoryType, opts);
    const size = opts.size;
    const fd = memfdCreate('uffd-engine-shmem', C.MFD_CLOEXEC);
    return mapSharedRegion('shmem', fd, size, pageSize, opts.noReserve, [], true);
  },
};

export default memoryType;
