// Which tracking methods a region can use on this kernel, how they are chosen, and what
// each costs and how exact it is (the same text goes into docs/wss.md and `wss --methods`).
import { ConfigError, UnsupportedError } from '../kernel/errors.js';
import { kernelRelease } from '../kernel/memory.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { PagePins } from './pins.js';

export type AccessMethod = 'rwp' | 'zap' | 'minor' | 'move' | 'none';
export type WriteMethod = 'wp-async' | 'none';
/**
 * Who serves the faults of the trap methods and of evicted pages: the parallel engine
 * (src/engine/, its dispatcher and workers), the tracker's own single handler thread
 * (TrapServer), or nobody (the methods in use raise no fault messages).
 */
export type ServerKind = 'engine' | 'trap' | 'none';
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
      'up to the punch is saved and a touch after it waits for the engine; with the trap server a write between saving and ' +
      'punching could be lost (use minor there)',
  },
  minor: {
    name: 'minor', sees: 'reads and writes', types: 'shmem/memfd, hugetlbfs', kernel: 'MINOR_SHMEM / MINOR_HUGETLBFS (5.13+)',
    cost: 'like zap, but the first access to each page per interval is a synchronous minor fault served by a handler ' +
      'thread with UFFDIO_CONTINUE (a round trip: measured here ~60k faults/s, ~17 us each, with the handler spinning 50 us ' +
      'before it sleeps; 25-60 us when it has to be woken)',
    exactness: 'exact, and race-free eviction: a page being saved and punched cannot be touched (the fault waits), then ' +
      'comes back from the store with UFFDIO_COPY',
  },
  move: {
    name: 'move', sees: 'reads and writes', types: 'anon', kernel: 'UFFDIO_MOVE (6.8+)',
    cost: 'each interval moves the pages seen present into a holding area (the store) with UFFDIO_MOVE (no copy); the ' +
      'first access to each page per interval is a synchronous missing fault. Served by the engine (default), whose workers ' +
      'copy the page back from the store (the copy stays there until the next sample, which compares it to tell reads from ' +
      'writes); served by the trap handler thread, it is moved back (a read with write tracking: UFFDIO_COPY with MODE_WP). ' +
      'A round trip either way: ~50k faults/s here',
    exactness: 'exact for reads; an access in the microseconds between the scan of a run and its move is counted in the ' +
      'next interval. Writes: exact with the trap server; with the engine a page that came back counts as written when its ' +
      'bytes differ from the copy it came from (a store of the same bytes is not seen). Eviction is race-free (held pages ' +
      'can only come back through the server)',
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
export function rwpFallback(type: string, evict = false, server: ServerKind | 'auto' = 'auto'): AccessMethod {
  if (type === 'anon') return 'move';
  return evict && server === 'trap' ? 'minor' : 'zap';
}

function rwpMissing(type: string): string {
  const fb = type === 'anon'
    ? "'move' (UFFDIO_MOVE access trap: pages moved to a holding area and moved back on the first touch)"
    : "'zap' (MADV_DONTNEED + PAGE_IS_PRESENT scan, async) or 'minor' (MINOR-fault trap, sync, safe for eviction)";
  return `access method 'rwp' needs UFFD_FEATURE_RWP and RWP_ASYNC (userfaultfd read-write-protect, Linux 7.3), ` +
    `which this kernel (${kernelRelease()}) does not offer; the fallback for ${type} is ${fb}`;
}

/**
 * Resolves the requested methods for a memory type on this kernel. 'auto' takes the best
 * available; an explicit request the kernel or type cannot do is an UnsupportedError naming
 * the fallback.
 */
export function chooseMethods(type: string, req: {
  write?: boolean | 'auto'; access?: AccessMethod | 'auto'; evict?: boolean; server?: 'engine' | 'trap' | 'auto';
}): MethodChoice {
  const notes: string[] = [];
  const isFile = FILE_TYPES.has(type);
  if (type !== 'anon' && !isFile) {
    throw new UnsupportedError(`working-set tracking supports anon, shmem and hugetlbfs regions, not ${type}`);
  }
  const hasRwp = kernelHasRwp();
  let reqServer = req.server ?? 'auto';
  if (!['engine', 'trap', 'auto'].includes(reqServer)) throw new ConfigError(`unknown server "${reqServer}"; use engine, trap or auto`);
  if (reqServer !== 'trap' && req.evict && isFile) {
    // The engine serves evicted file pages only if they can be pinned across the punch.
    const pins = PagePins.probe();
    if (!pins.ok) {
      if (reqServer === 'engine') {
        throw new UnsupportedError(`the engine cannot serve evicted ${type} pages here: ${pins.reason}; use server 'trap' (access 'minor')`);
      }
      reqServer = 'trap';
      notes.push(`server: trap (pages cannot be pinned across a hole punch here: ${pins.reason})`);
    }
  }
  let access: AccessMethod;
  const reqAccess = req.access ?? 'auto';
  if (reqAccess === 'auto') {
    if (hasRwp) {
      access = 'rwp';
      notes.push('access: rwp (the kernel offers UFFD_FEATURE_RWP)');
    } else {
      access = rwpFallback(type, req.evict, reqServer);
      notes.push(`access: ${access} (this kernel has no RWP; ${access} is the fallback for ${type}${req.evict && isFile ? ' when evicting' : ''})`);
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
  if (reqWrite === 'auto') {
    if (access === 'rwp') {
      write = 'none';
      notes.push('write: none (MODE_WP and MODE_RWP exclude each other on one range; RWP reports accesses)');
    } else if (wpOk) {
      write = 'wp-async';
      notes.push('write: wp-async (WP_ASYNC + PAGEMAP_SCAN PAGE_IS_WRITTEN)');
    } else {
      write = 'none';
      notes.push('write: none (this kernel lacks WP_ASYNC)');
    }
  } else if (reqWrite) {
    if (access === 'rwp') {
      throw new ConfigError("write tracking (MODE_WP) and access method 'rwp' (MODE_RWP) exclude each other on one range; " +
        'RWP reports every access, writes included; or choose a fallback access method to get writes separately');
    }
    if (!wpOk) throw new UnsupportedError(`write tracking needs UFFD_FEATURE_WP_ASYNC (Linux 6.7)${isFile ? ' and WP_HUGETLBFS_SHMEM' : ''}`);
    write = 'wp-async';
    notes.push('write: wp-async (requested)');
  } else {
    write = 'none';
  }
  if (req.evict && access === 'zap' && reqServer === 'trap') {
    throw new UnsupportedError("eviction with access method 'zap' and the trap server could lose a write made between saving a page " +
      "and punching it; use access 'minor' with the trap server, or the engine server (it pins the pages across the punch)");
  }
  if (req.evict && access === 'none') {
    throw new UnsupportedError(`eviction needs an access method that traps the next touch: ${type === 'anon' ? "'move'" : "'zap' or 'minor'"}${hasRwp ? " or 'rwp'" : ''}`);
  }
  // Who serves faults.
  let server: ServerKind;
  const needsServer = access === 'move' || access === 'minor' || !!req.evict;
  if (!needsServer) {
    server = 'none';
  } else if (access === 'minor' || access === 'rwp') {
    if (reqServer === 'engine') {
      throw new UnsupportedError(access === 'minor'
        ? "access method 'minor' needs the trap server: the engine maps a minor fault with UFFDIO_CONTINUE at once, so it can " +
          'neither install a page write-protected for a read (write tracking) nor keep a page away while it is saved and ' +
          "punched; use 'zap' (evicted pages are then served by the engine) or server 'trap'"
        : "eviction under 'rwp' needs the trap server: RWP faults in the eviction window must wait for the evictor, and the " +
          'engine un-protects them at once');
    }
    server = 'trap';
    notes.push(`server: trap (${access} needs the tracker's own handler; see docs/wss.md)`);
  } else {
    server = reqServer === 'trap' ? 'trap' : 'engine';
    notes.push(server === 'engine'
      ? `server: engine (${access === 'move' ? 'held and evicted pages' : 'evicted pages'} are served back by the parallel engine's workers)`
      : 'server: trap (the tracker\'s single handler thread, requested)');
  }
  return { write, access, server, notes };
}
