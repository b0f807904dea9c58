// The part every file-backed memory type shares: map a file twice MAP_SHARED (the region
// that gets registered, and an unregistered alias through which the page cache is filled),
// and a Region that unmaps both and closes the file (and anything else it owns) once.
import * as C from '../kernel/constants.js';
import { close, ftruncate, mmap, munmap } from '../kernel/memory.js';
import type { MemoryTypeName, Region } from './types.js';

export function mapSharedRegion(type: MemoryTypeName, fd: number, size: number, pageSize: number,
  noReserve: boolean | undefined, alsoClose: number[] = [], truncate = false): Region {
  let addr = 0;
  let aliasAddr = 0;
  try {
    if (truncate) ftruncate(fd, size); // a new memfd: give it its size
    const flags = C.MAP_SHARED | (noReserve ? C.MAP_NORESERVE : 0);
    addr = mmap(size, C.PROT_READ | C.PROT_WRITE, flags, fd, 0);
    aliasAddr = mmap(size, C.PROT_READ | C.PROT_WRITE, flags, fd, 0);
  } catch (e) {
    if (addr) munmap(addr, size);
    close(fd);
    for (const f of alsoClose) close(f);
    throw e;
  }
  let closed = false;
  return {
    type, addr, size, pageSize, fd, aliasAddr,
    close() {
      if (closed) return;
      closed = true;
      munmap(addr, size);
      munmap(aliasAddr, size);
      close(fd);
      for (const f of alsoClose) close(f);
    },
  };
}
