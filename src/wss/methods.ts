// Which tracking methods a region can use on this kernel, how they are chosen, and what
// each costs and how exact it is (the same text goes into docs/wss.md and `wss --methods`).
import { ConfigError, UnsupportedError } from '../kernel/errors.js';
import { kernelRelease } from '../kernel/memory.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { PagePins } from './pins.js';
import { softDirtyProbe } from './soft-dirty.js';

export type AccessMethod = 'rwp' | 'zap' | 'minor' | 'move' | 'none';
export type WriteMethod = 'wp-async' | 'soft-dirty' | 'none';
/**
 * Who serves the faults of the trap methods and of evicted pages: the parallel engine
 * (src/engine/, its dispatcher and workers), or nobody (the methods in use raise no fault
 * messages).
 */
export type ServerKind = 'engine' | 'none';
export const ACCESS_METHODS: readonly AccessMethod[] = ['rwp', 'zap', 'minor', 'move', 'none'];

export interface MethodInfo {
  name: string;
  sees: string;
  types: string;
  kernel: string;
  cost: string;
  exactness: string;
}

export const METHOD_INFO: Record<WriteMethod | AccessMethod, MethodInfo> = {
  'wp-async': {
    name: 'wp-async', sees: 'writes', types: 'anon, shmem/memfd, hugetlbfs', kernel: 'WP_ASYNC + PAGEMAP_SCAN (6.7+)',
    cost: 'the first write to a page per interval takes one in-kernel write-protect fault (no message, no thread); ' +
      'scan and re-arm are one PAGEMAP_SCAN with PM_SCAN_WP_MATCHING (cost grows with populated page tables, not with the region size)',
    exactness: 'exact at page granularity: scan and re-arm are one atomic step, so no write is lost between intervals. ' +
      'Reads are invisible. Zero-page mappings (reads of never-written anon pages) and holes are not counted as written',
  },
  'soft-dirty': {
    name: 'soft-dirty', sees: 'writes (with rwp)', types: 'anon, shmem/memfd (not hugetlbfs: clear_refs never clears its bits)', kernel: 'CONFIG_MEM_SOFT_DIRTY + PAGE_IS_SOFT_DIRTY (6.8+)',
    cost: 'with rwp only (MODE_WP and MODE_RWP exclude each other): in the sample window, one PAGEMAP_SCAN of PAGE_IS_SOFT_DIRTY and ' +
      'a write of "4" to /proc/self/clear_refs, which write-protects every page of the process: the first write to any page of ' +
      'the process afterwards takes one in-kernel fault',
    exactness: 'exact for pages written in place: the region is read-write-protected before the scan, so nothing is written between ' +
      'the scan and the clear. A page the engine served back is installed dirty by the kernel: it counts as written when its bytes ' +
      'differ from the store copy it came from. The clear is process-wide; other trackers save their bits before it',
  },
  rwp: {
    name: 'rwp', sees: 'reads and writes', types: 'anon, shmem/memfd, hugetlbfs', kernel: 'UFFD_FEATURE_RWP + RWP_ASYNC (Linux 7.3)',
    cost: 'the first access to a page per interval takes one in-kernel protnone fault resolved in place (async); ' +
      'per interval: SET_MODE to sync, one PAGEMAP_SCAN of PAGE_IS_ACCESSED, one UFFDIO_RWPROTECT over the region, SET_MODE back',
    exactness: 'exact: accesses during the scan-and-re-arm window block (sync mode) and are counted in the next interval. ' +
      'Excludes write tracking on the same range (MODE_WP and MODE_RWP are exclusive)',
  },
  zap: {
    name: 'zap', sees: 'reads and writes', types: 'shmem/memfd, hugetlbfs (shared mappings with a page cache)', kernel: 'PAGEMAP_SCAN (6.7+)',
    cost: 'MADV_DONTNEED of the pages seen present (the page cache keeps the data); the next access to each is a minor ' +
      'page fault mapping it again from the page cache (in kernel, no message, no thread); per interval one PAGEMAP_SCAN. ' +
      'The range is registered MODE_WP (async, even without write tracking): that switches off fault-around, which would ' +
      'otherwise map up to 16 neighbouring cached pages on each read fault and report them as accessed',
    exactness: 'exact for reads and writes at page granularity, except an access in the microseconds between the scan of a ' +
      'run and its zap. Eviction is served by the engine: the pages are pinned (vmsplice) across the hole punch, so a write ' +
      'up to the punch is saved and a touch after it waits for the engine',
  },
  minor: {
    name: 'minor', sees: 'reads and writes', types: 'shmem/memfd, hugetlbfs', kernel: 'MINOR_SHMEM / MINOR_HUGETLBFS (5.13+)',
    cost: 'like zap, but registered MINOR: the first access to each page per interval is a synchronous minor fault that ' +
      "the engine resolves with UFFDIO_CONTINUE (a round trip per hot page per interval)",
    exactness: 'exact for accesses, as zap. Writes are not tracked with it: the engine maps a minor fault with UFFDIO_CONTINUE ' +
      'without MODE_WP (it does not keep the fault\'s WRITE flag), so a page read back would look written. Eviction as zap ' +
      '(pinned across the punch, served back by the engine)',
  },
  move: {
    name: 'move', sees: 'reads and writes', types: 'anon', kernel: 'UFFDIO_MOVE (6.8+)',
    cost: 'each interval moves the pages seen present into a holding area (the store) with UFFDIO_MOVE (no copy); the ' +
      'first access to each page per interval is a synchronous missing fault, whose page the engine\'s workers copy back ' +
      'from the store (the copy stays there until the next sample, which compares it to tell reads from writes): ~50k faults/s here',
    exactness: 'exact for reads; an access in the microseconds between the scan of a run and its move is counted in the ' +
      'next interval. Writes: a page that came back counts as written when its bytes differ from the copy it came from (a ' +
      'store of the same bytes is not seen). Eviction is race-free (held pages can only come back through the engine)',
  },
  none: {
    name: 'none', sees: 'nothing', types: 'all', kernel: '-', cost: 'none', exactness: '-',
  },
};

export interface MethodChoice {
  write: WriteMethod;
  access: AccessMethod;
  server: ServerKind;
  /** Why each was chosen (or not), for the report. */
  notes: string[];
}

const FILE_TYPES = new Set(['shmem', 'hugetlbfs']);

/** Whether this kernel offers RWP with async resolution. */
export function kernelHasRwp(): boolean {
  return Userfaultfd.hasFeature('RWP') && Userfaultfd.hasFeature('RWP_ASYNC');
}

/** The fallback access method for a memory type on kernels without RWP. */
export function rwpFallback(type: string): AccessMethod {
  return type === 'anon' ? 'move' : 'zap';
}

function rwpMissing(type: string): string {
  const fb = type === 'anon'
    ? "'move' (UFFDIO_MOVE access trap: pages moved into a store and copied back by the engine on the first touch)"
    : "'zap' (MADV_DONTNEED + PAGE_IS_PRESENT scan, async) or 'minor' (MINOR-fault trap served by the engine, sync)";
  return `access method 'rwp' needs UFFD_FEATURE_RWP and RWP_ASYNC (userfaultfd read-write-protect, Linux 7.3), ` +
    `which this kernel (${kernelRelease()}) does not offer; the fallback for ${type} is ${fb}`;
}

/**
 * Resolves the requested methods for a memory type on this kernel. 'auto' takes the best
 * available; an explicit request the kernel or type cannot do is an UnsupportedError naming
 * the fallback.
 */
export function chooseMethods(type: string, req: { write?: boolean | 'auto'; access?: AccessMethod | 'auto'; evict?: boolean }): MethodChoice {
  const notes: string[] = [];
  const isFile = FILE_TYPES.has(type);
  if (type !== 'anon' && !isFile) {
    throw new UnsupportedError(`working-set tracking supports anon, shmem and hugetlbfs regions, not ${type}`);
  }
  const hasRwp = kernelHasRwp();
  if (req.evict && isFile) {
    // The engine serves evicted file pages only if they can be pinned across the punch.
    const pins = PagePins.probe();
    if (!pins.ok) {
      throw new UnsupportedError(`evicting ${type} pages needs them pinned across the hole punch (vmsplice), and ${pins.reason}; ` +
        "use evictCold('pageout'|'cold') hints without { evict: true }");
    }
  }
  let access: AccessMethod;
  const reqAccess = req.access ?? 'auto';
  if (reqAccess === 'auto') {
    if (hasRwp) {
      access = 'rwp';
      notes.push('access: rwp (the kernel offers UFFD_FEATURE_RWP)');
    } else {
      access = rwpFallback(type);
      notes.push(`access: ${access} (this kernel has no RWP; ${access} is the fallback for ${type})`);
    }
  } else {
    access = reqAccess;
    if (!ACCESS_METHODS.includes(access)) throw new ConfigError(`unknown access method "${access}"; use ${ACCESS_METHODS.join(', ')} or auto`);
    if (access === 'rwp' && !hasRwp) throw new UnsupportedError(rwpMissing(type));
    if ((access === 'zap' || access === 'minor') && !isFile) {
      throw new UnsupportedError(`access method '${access}' needs a page cache (shmem/memfd or hugetlbfs); on anon MADV_DONTNEED ` +
        `would free the data. Use 'move' for anon${hasRwp ? " or 'rwp'" : ''}`);
    }
    if (access === 'move' && type !== 'anon') {
      throw new UnsupportedError(`access method 'move' uses UFFDIO_MOVE, which works on anon memory only; for ${type} use 'zap' or 'minor'`);
    }
    if (access === 'move' && !Userfaultfd.hasFeature('MOVE')) {
      throw new UnsupportedError("access method 'move' needs UFFD_FEATURE_MOVE (Linux 6.8)");
    }
    if (access === 'minor' && !Userfaultfd.hasFeature(type === 'hugetlbfs' ? 'MINOR_HUGETLBFS' : 'MINOR_SHMEM')) {
      throw new UnsupportedError(`access method 'minor' needs UFFD_FEATURE_MINOR_${type === 'hugetlbfs' ? 'HUGETLBFS' : 'SHMEM'}`);
    }
    notes.push(`access: ${access} (requested)`);
  }
  let write: WriteMethod;
  const reqWrite = req.write ?? 'auto';
  const wpOk = Userfaultfd.hasFeature('WP_ASYNC') && (type === 'anon' || Userfaultfd.hasFeature('WP_HUGETLBFS_SHMEM'));
  // clear_refs does not clear the soft-dirty bits of hugetlb pages: they would stay dirty.
  const sd = access !== 'rwp' || reqWrite === false ? undefined : type === 'hugetlbfs'
    ? { ok: false, reason: 'soft-dirty bits of hugetlb pages are never cleared (clear_refs skips hugetlb mappings)' } : softDirtyProbe();
  const minorNoWrites = 'the engine maps a minor fault with UFFDIO_CONTINUE without MODE_WP (it does not keep the fault\'s WRITE ' +
    'flag), so every page read back would look written';
  if (reqWrite === 'auto') {
    if (sd) {
      write = sd.ok ? 'soft-dirty' : 'none';
      notes.push(sd.ok
        ? 'write: soft-dirty (MODE_WP and MODE_RWP exclude each other on one range; PAGE_IS_SOFT_DIRTY tells the writes)'
        : `write: none (MODE_WP and MODE_RWP exclude each other on one range, and ${sd.reason})`);
    } else if (access === 'minor') {
      write = 'none';
      notes.push(`write: none (${minorNoWrites}; access 'zap' tracks writes with wp-async)`);
    } else if (wpOk) {
      write = 'wp-async';
      notes.push('write: wp-async (WP_ASYNC + PAGEMAP_SCAN PAGE_IS_WRITTEN)');
    } else {
      write = 'none';
      notes.push('write: none (this kernel lacks WP_ASYNC)');
    }
  } else if (reqWrite) {
    if (sd) {
      if (!sd.ok) {
        throw new UnsupportedError("write tracking with access method 'rwp' uses soft-dirty bits (MODE_WP and MODE_RWP exclude each " +
          `other on one range), and ${sd.reason}; track writes with a fallback access method (wp-async), or accesses only`);
      }
      write = 'soft-dirty';
      notes.push('write: soft-dirty (requested with rwp: PAGE_IS_SOFT_DIRTY + clear_refs)');
    } else if (access === 'minor') {
      throw new UnsupportedError(`write tracking with access method 'minor' is not possible: ${minorNoWrites}. ` +
        "Use access 'zap' (the same scan, no fault per touch; writes with wp-async) or track accesses only");
    } else {
      if (!wpOk) throw new UnsupportedError(`write tracking needs UFFD_FEATURE_WP_ASYNC (Linux 6.7)${isFile ? ' and WP_HUGETLBFS_SHMEM' : ''}`);
      write = 'wp-async';
      notes.push('write: wp-async (requested)');
    }
  } else {
    write = 'none';
  }
  if (req.evict && access === 'none') {
    throw new UnsupportedError(`eviction needs an access method that traps the next touch: ${type === 'anon' ? "'move'" : "'zap' or 'minor'"}${hasRwp ? " or 'rwp'" : ''}`);
  }
  // Who serves faults: the engine, whenever the methods raise any.
  const needsServer = access === 'move' || access === 'minor' || !!req.evict;
  const server: ServerKind = needsServer ? 'engine' : 'none';
  if (needsServer) {
    const what = access === 'move' ? 'held and evicted pages are' : access === 'minor' ? 'minor faults (UFFDIO_CONTINUE) and evicted pages are' : 'evicted pages are';
    notes.push(`server: engine (${what} served by the parallel engine's workers${access === 'rwp' ? '; RWP faults in a sync window wait for the evictor' : ''})`);
  }
  return { write, access, server, notes };
}
