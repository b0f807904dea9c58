// hugetlbfs: a memfd created with MFD_HUGETLB (2 MiB or 1 GiB pages) mapped MAP_SHARED.
// Whole huge pages only; no UFFDIO_ZEROPAGE (copy a zero page instead). Pages come from the
// pool the administrator reserved (nr_hugepages). A memfd mapping reserves nothing at mmap
// time, so a fault with the pool empty is a SIGBUS: create() refuses unless pages are free
// (or noReserve is asked for, e.g. to probe registration only).
import { mapSharedRegion } from './shared-mapping.js';
import * as C from '../kernel/constants.js';
import { UnsupportedError } from '../kernel/errors.js';
import { hugetlbPages, memfdCreate } from '../kernel/memory.js';
import { checkRegionOptions } from './check.js';
import type { Availability, MemoryType, Region, RegionOptions } from './types.js';

function label(pageSize: number): string {
  return pageSize >= C.HUGE_PAGE_1G ? `${pageSize / C.HUGE_PAGE_1G} GiB` : `${pageSize / (1024 * 1024)} MiB`;
}

function poolFix(pageSize: number, pages: number): string {
  const kib = pageSize / 1024;
  return pageSize === C.HUGE_PAGE_2M
    ? `echo ${Math.max(pages, 64)} > /proc/sys/vm/nr_hugepages`
    : `echo ${Math.max(pages, 1)} > /sys/kernel/mm/hugepages/hugepages-${kib}kB/nr_hugepages`;
}

/** Whether `pages` huge pages of that size are free now; the reason and the fix when not. */
function availability(pageSize: number, pages = 1): Availability {
  const kib = pageSize / 1024;
  const fs = require('node:fs') as typeof import('node:fs');
  if (!fs.existsSync(`/sys/kernel/mm/hugepages/hugepages-${kib}kB`)) {
    return { ok: false, reason: `this machine has no ${label(pageSize)} huge pages (no hugepages-${kib}kB pool)` };
  }
  const { total, free } = hugetlbPages(kib);
  if (total === 0) {
    return { ok: false, reason: `no ${label(pageSize)} hugetlb pages reserved: ${poolFix(pageSize, pages)}` };
  }
  if (free < pages) {
    return {
      ok: false,
      reason: `only ${free} of ${total} reserved ${label(pageSize)} hugetlb pages are free and ${pages} are needed: ` +
        `${poolFix(pageSize, total + pages - free)}`,
    };
  }
  return { ok: true };
}

export const memoryType: MemoryType = {
  name: 'hugetlbfs',
  description: 'hugetlbfs: a memfd with MFD_HUGETLB mapped MAP_SHARED (2 MiB or 1 GiB pages)',
  modes: ['missing', 'wp', 'minor', 'rwp'],
  ops: ['copy', 'continue', 'writeprotect', 'poison', 'rwprotect'],
  pageSizes: [C.HUGE_PAGE_2M, C.HUGE_PAGE_1G],
  modeFeatures: {
    missing: ['MISSING_HUGETLBFS'],
    wp: ['PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM'],
    minor: ['MINOR_HUGETLBFS'],
    rwp: ['RWP'],
  },
  resolveOp: { missing: 'copy', wp: 'writeprotect', minor: 'continue', rwp: 'rwprotect' },
  available(pageSize = C.HUGE_PAGE_2M) {
    return availability(pageSize);
  },
  create(opts: RegionOptions): Region {
    const pageSize = checkRegionOptions(memoryType, opts);
    const size = opts.size;
    if (!opts.noReserve) {
      const a = availability(pageSize, size / pageSize);
      if (!a.ok) throw new UnsupportedError(`cannot create a hugetlbfs region of ${size} bytes: ${a.reason}`);
    }
    const fd = memfdCreate('uffd-engine-hugetlb',
      C.MFD_CLOEXEC | C.MFD_HUGETLB | (pageSize === C.HUGE_PAGE_1G ? C.MFD_HUGE_1GB : C.MFD_HUGE_2MB));
    return mapSharedRegion('hugetlbfs', fd, size, pageSize, opts.noReserve, [], true);
  },
};

export default memoryType;
