// Anonymous private memory (MAP_PRIVATE|MAP_ANONYMOUS): the memory of most processes.
// No page cache, so no minor faults; the only type UFFDIO_MOVE works on.
import * as C from '../kernel/constants.js';
import { mapAnonymous, munmap } from '../kernel/memory.js';
import { checkRegionOptions } from './check.js';
import type { MemoryType, Region, RegionOptions } from './types.js';

export const memoryType: MemoryType = {
  name: 'anon',
  description: 'anonymous private memory (MAP_PRIVATE|MAP_ANONYMOUS)',
  modes: ['missing', 'wp', 'rwp'],
  ops: ['copy', 'zeropage', 'move', 'writeprotect', 'poison', 'rwprotect'],
  pageSizes: [C.PAGE_SIZE],
  modeFeatures: { wp: ['PAGEFAULT_FLAG_WP'], rwp: ['RWP'] },
  resolveOp: { missing: 'copy', wp: 'writeprotect', minor: undefined, rwp: 'rwprotect' },
  modeNotes: { minor: 'it has no page cache' },
  available() {
    return { ok: true };
  },
  create(opts: RegionOptions): Region {
    const pageSize = checkRegionOptions(memoryType, opts);
    const size = opts.size;
    const addr = mapAnonymous(size, opts.noReserve ? C.MAP_NORESERVE : 0);
    let closed = false;
    return {
      type: 'anon', addr, size, pageSize, fd: -1, aliasAddr: 0,
      close() {
        if (closed) return;
        closed = true;
        munmap(addr, size);
      },
    };
  },
};

export default memoryType;
