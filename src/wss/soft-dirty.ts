// Written pages under RWP. MODE_WP and MODE_RWP exclude each other on a range, so a tracker
// that uses RWP for accesses asks the kernel's soft-dirty bit for writes instead: PAGEMAP_SCAN
// reports it as PAGE_IS_SOFT_DIRTY (Linux 6.8+), and writing "4" to /proc/self/clear_refs
// clears it. The clear is process-wide, so before clearing, every other live tracker collects
// the soft-dirty pages of its region: no tracker loses the writes of its current interval.
import { writeFileSync } from 'node:fs';
import * as C from '../kernel/constants.js';
import { bytesAt, mapAnonymous, munmap } from '../kernel/memory.js';
import { Scanner } from '../kernel/pagemap.js';

/** A tracker that reads soft-dirty bits: collect() saves its region's bits before someone clears them. */
export interface SoftDirtyUser {
  collectSoftDirty(): void;
}

const users = new Set<SoftDirtyUser>();

export function addSoftDirtyUser(u: SoftDirtyUser): void { users.add(u); }
export function removeSoftDirtyUser(u: SoftDirtyUser): void { users.delete(u); }

/** Clears the soft-dirty bits of the whole process, after the other users saved theirs. */
export function clearSoftDirty(self?: SoftDirtyUser): void {
  for (const u of users) if (u !== self) u.collectSoftDirty();
  writeFileSync('/proc/self/clear_refs', '4');
}

let probed: { ok: boolean; reason: string } | undefined;

/**
 * Whether writes can be told by soft-dirty bits here: PAGEMAP_SCAN knows PAGE_IS_SOFT_DIRTY,
 * clear_refs clears it, and a write sets it again (CONFIG_MEM_SOFT_DIRTY). Asked once.
 */
export function softDirtyProbe(): { ok: boolean; reason: string } {
  if (probed) return probed;
  const P = C.PAGE_SIZE;
  let a = 0;
  const s = new Scanner({ vecLen: 4 });
  const dirty = () => s.countBytes(a, a + P, { categoryMask: C.PAGE_IS_SOFT_DIRTY });
  try {
    a = mapAnonymous(P);
    const b = bytesAt(a, P);
    b[0] = 1;
    clearSoftDirty();
    const afterClear = dirty();
    b[0] = 2;
    const afterWrite = dirty();
    probed = afterClear === 0 && afterWrite === P
      ? { ok: true, reason: 'PAGE_IS_SOFT_DIRTY + clear_refs 4' }
      : { ok: false, reason: `soft-dirty bits do not follow writes here (after clear ${afterClear} bytes, after a write ${afterWrite}; CONFIG_MEM_SOFT_DIRTY?)` };
  } catch (e) {
    probed = { ok: false, reason: `soft-dirty tracking is not available: ${(e as Error).message}` };
  } finally {
    if (a) munmap(a, P);
    s.close();
  }
  return probed;
}
