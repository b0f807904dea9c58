// The one place that checks a request against a memory type's declaration and against what
// the running kernel offers, so that the engine refuses clearly instead of letting the kernel
// answer EINVAL. Every refusal is an UnsupportedError (or ConfigError for malformed input)
// whose message says what was wrong and what to do instead.
import { FEATURE_BITS, type FeatureName } from '../kernel/constants.js';
import { ConfigError, UffdError, UnsupportedError } from '../kernel/errors.js';
import { ERRNO } from '../kernel/libc.js';
import {
  IOCTL_NR, REGISTER_MODE_BITS, RegisterMode, Userfaultfd, featureNames, ioctlNames,
} from '../kernel/userfaultfd.js';
import { memoryType, memoryTypes } from './index.js';
import { RESOLVE_OPS, type MemoryType, type Region, type RegionOptions, type ResolveOp } from './types.js';

/** The Linux release that introduced each userfaultfd feature. */
export const FEATURE_SINCE: Record<FeatureName, string> = {
  PAGEFAULT_FLAG_WP: '5.7', EVENT_FORK: '4.11', EVENT_REMAP: '4.11', EVENT_REMOVE: '4.11',
  MISSING_HUGETLBFS: '4.11', MISSING_SHMEM: '4.11', EVENT_UNMAP: '4.11', SIGBUS: '4.14',
  THREAD_ID: '4.14', MINOR_HUGETLBFS: '5.13', MINOR_SHMEM: '5.14', EXACT_ADDRESS: '5.18',
  WP_HUGETLBFS_SHMEM: '5.19', WP_UNPOPULATED: '6.4', POISON: '6.6', WP_ASYNC: '6.7', MOVE: '6.8',
  RWP: '7.3', RWP_ASYNC: '7.3',
};

const FEATURE_FALLBACK: Partial<Record<FeatureName, string>> = {
  RWP: 'fall back to write tracking (WP_ASYNC + PAGEMAP_SCAN PAGE_IS_WRITTEN) or to sampling with MADV_COLD/MADV_PAGEOUT',
  RWP_ASYNC: 'fall back to write tracking (WP_ASYNC + PAGEMAP_SCAN PAGE_IS_WRITTEN)',
  WP_ASYNC: 'fall back to synchronous write-protect faults (mode wp without WP_ASYNC) on anon, shmem or hugetlbfs',
  MINOR_SHMEM: 'serve missing faults with UFFDIO_COPY instead',
  MINOR_HUGETLBFS: 'serve missing faults with UFFDIO_COPY instead',
  WP_HUGETLBFS_SHMEM: 'write-protect tracking of shmem/hugetlbfs is not possible here; use anon memory',
};

const MODE_FOR_OP: Partial<Record<ResolveOp, RegisterMode>> = {
  continue: 'minor', writeprotect: 'wp', rwprotect: 'rwp',
};

/** Why a kernel lacks a feature, and what to do: "this kernel lacks UFFD_FEATURE_RWP: RWP needs Linux 7.3; fall back to ...". */
export function lacksFeatureMessage(feature: FeatureName, neededFor?: string): string {
  const fallback = FEATURE_FALLBACK[feature];
  const what = feature.startsWith('RWP') ? 'RWP' : 'it';
  return `this kernel lacks UFFD_FEATURE_${feature}${neededFor ? ` (needed for ${neededFor})` : ''}: ` +
    `${what} needs Linux ${FEATURE_SINCE[feature]}` +
    (fallback ? `; ${fallback}` : '');
}

// Types to suggest instead: those declaring what is asked for, except ones whose support
// is still a pending kernel series (they carry a registerRefusal note).
function typesWith(pred: (t: MemoryType) => boolean, except: string): string[] {
  try {
    return memoryTypes().filter((t) => t.name !== except && !t.registerRefusal && pred(t)).map((t) => t.name);
  } catch {
    return [];
  }
}

function featuresOf(uffd: Userfaultfd | bigint): bigint {
  return typeof uffd === 'bigint' ? uffd : uffd.features;
}

/** The userfaultfd features a registration of `modes` on `type` needs. */
export function featuresFor(type: MemoryType, modes: readonly RegisterMode[]): FeatureName[] {
  const out = new Set<FeatureName>();
  for (const m of modes) for (const f of type.modeFeatures[m] ?? []) out.add(f);
  return [...out];
}

/**
 * Checks that `type` can be registered for `modes` with a userfaultfd granted `uffd`'s
 * features (a Userfaultfd, or its features mask), on this kernel. Throws UnsupportedError
 * naming what is wrong and what to do; ConfigError for malformed modes.
 */
export function checkRegister(type: MemoryType, modes: readonly RegisterMode[], uffd: Userfaultfd | bigint): void {
  if (!modes.length) throw new ConfigError('register: no mode given; use one or more of missing, wp, minor, rwp');
  for (const m of modes) {
    if (!(m in REGISTER_MODE_BITS)) throw new ConfigError(`unknown register mode "${m}"; use missing, wp, minor or rwp`);
  }
  if (modes.includes('wp') && modes.includes('rwp')) {
    throw new UnsupportedError('modes wp and rwp cannot be combined on one range (the kernel answers EINVAL); ' +
      'register rwp alone (it may combine with missing or minor) or wp alone');
  }
  for (const m of modes) {
    if (type.modes.includes(m)) continue;
    const note = type.modeNotes?.[m];
    const others = typesWith((t) => t.modes.includes(m), type.name);
    throw new UnsupportedError(`memory type ${type.name} cannot be registered for ${m} faults` +
      (note ? ` (${note})` : '') +
      (others.length ? `; use ${others.join(' or ')}` : '') +
      `; ${type.name} supports: ${type.modes.join(', ')}`);
  }
  const granted = featuresOf(uffd);
  let offered: bigint | undefined;
  for (const m of modes) {
    for (const f of type.modeFeatures[m] ?? []) {
      const bit = 1n << BigInt(FEATURE_BITS[f]);
      if (granted & bit) continue;
      offered ??= Userfaultfd.offered().features;
      if (!(offered & bit)) {
        throw new UnsupportedError(lacksFeatureMessage(f, `${m} faults on ${type.name}`));
      }
      throw new UnsupportedError(`${m} faults on ${type.name} need UFFD_FEATURE_${f}, which this userfaultfd was not created with; ` +
        `create it with Userfaultfd.create({ features: [${featuresFor(type, modes).map((x) => `'${x}'`).join(', ')}] }) ` +
        `(it has: ${featureNames(granted).join(', ') || 'none'})`);
    }
  }
}


/**
 * Checks that faults on a range of `type` can be resolved with `op`, given the ioctls the
 * kernel advertised when the range was registered (the bigint UFFDIO_REGISTER returned).
 */
export function checkResolve(type: MemoryType, op: ResolveOp, advertisedIoctls: bigint): void {
  if (!RESOLVE_OPS.includes(op)) {
    throw new ConfigError(`unknown resolve operation "${op}"; known: ${RESOLVE_OPS.join(', ')}`);
  }
  if (!type.ops.includes(op)) {
    const others = typesWith((t) => t.ops.includes(op), type.name);
    const alt = op === 'zeropage' && type.ops.includes('copy') ? '; resolve with copy from a zero-filled page instead' : '';
    throw new UnsupportedError(`memory type ${type.name} cannot be resolved with ${op}${alt}` +
      (others.length ? ` (${op} works on ${others.join(', ')})` : '') + `; ${type.name} supports: ${type.ops.join(', ')}`);
  }
  if ((advertisedIoctls >> BigInt(IOCTL_NR[op])) & 1n) return;
  if (op === 'rwprotect' && !Userfaultfd.hasFeature('RWP')) {
    throw new UnsupportedError(`UFFDIO_RWPROTECT is not available: ${lacksFeatureMessage('RWP')}`);
  }
  const mode = MODE_FOR_OP[op];
  const advertised = ioctlNames(advertisedIoctls).join(', ') || 'none';
  throw new UnsupportedError(`the kernel did not advertise UFFDIO_${op.toUpperCase()} for this ${type.name} range` +
    (mode ? `: register the range with mode ${mode}` : '') + ` (advertised: ${advertised})`);
}

/** Validates region options against a type; returns the page size to use. */
export function checkRegionOptions(type: MemoryType, opts: RegionOptions): number {
  const pageSize = opts.pageSize ?? type.pageSizes[0];
  if (pageSize === undefined || !type.pageSizes.includes(pageSize)) {
    throw new ConfigError(`memory type ${type.name} has no page size ${pageSize}; use ${type.pageSizes.join(' or ')}`);
  }
  if (!Number.isSafeInteger(opts.size) || opts.size <= 0 || opts.size % pageSize) {
    throw new ConfigError(`a ${type.name} region size must be a positive multiple of the page size ${pageSize} (got ${opts.size})`);
  }
  return pageSize;
}

/**
 * Checks, then registers `region` (or [start, start+len) inside it) for `modes` on `uffd`.
 * Returns the ioctls the kernel advertises for the range. A registration the type declares
 * but the running kernel refuses with EINVAL becomes an UnsupportedError explaining why.
 */
export function registerChecked(uffd: Userfaultfd, region: Region, modes: readonly RegisterMode[],
  range?: { start: number; len: number }): bigint {
  const type = memoryType(region.type);
  checkRegister(type, modes, uffd);
  const start = range?.start ?? region.addr;
  const len = range?.len ?? region.size;
  if (start < region.addr || start + len > region.addr + region.size) {
    throw new ConfigError(`register: [0x${start.toString(16)}, +0x${len.toString(16)}) is outside the ${type.name} region ` +
      `[0x${region.addr.toString(16)}, +0x${region.size.toString(16)})`);
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(len) || len <= 0 || start % region.pageSize || len % region.pageSize) {
    throw new UffdError({ op: 'register', errno: ERRNO.EINVAL, start, len },
      `register: [0x${start.toString(16)}, +0x${len.toString(16)}) must be a non-empty range aligned to the ${type.name} page size 0x${region.pageSize.toString(16)}`);
  }
  try {
    return uffd.register(start, len, modes, region.pageSize);
  } catch (e) {
    // The request passed every check above, so an EINVAL here is the kernel's own refusal.
    if (e instanceof UffdError && e.errno === ERRNO.EINVAL && type.registerRefusal) {
      throw new UnsupportedError(`${type.name}: this kernel refuses userfaultfd registration (EINVAL): ${type.registerRefusal}`);
    }
    throw e;
  }
}
