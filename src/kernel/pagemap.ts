// PAGEMAP_SCAN (Linux 6.7+): ask the kernel which pages of a range have some property
// (present, written since write-protected, swapped, zero-pfn, accessed since RWP-armed...)
// and get the answer as compact runs of pages, optionally write-protecting what matched in
// the same walk (PM_SCAN_WP_MATCHING: scan and re-arm as ONE atomic step).
//
// A Scanner owns one open fd of /proc/<pid>/pagemap, one preallocated struct pm_scan_arg
// (96 bytes) and one page_region vector (default 4096 regions of 24 bytes). A scan issues
// the ioctl, hands each returned region to the caller, and when the vector filled before
// the range ended (walk_end < end) continues from walk_end. Nothing is allocated per
// region; the counting helpers walk the vector's words directly. pagemap is never read
// entry by entry.
import * as C from './constants.js';
import { ConfigError, UffdError, UnsupportedError, hintFor } from './errors.js';
import { addressOf, errno, errnoName, libc, ERRNO } from './libc.js';

export interface ScanOptions {
  /** PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC. */
  flags?: number;
  /** Categories that must all be set (after inversion) for a page to match. */
  categoryMask?: number;
  /** Categories that match when clear instead of set. */
  categoryInverted?: number;
  /** At least one of these must be set (after inversion). */
  categoryAnyof?: number;
  /** Categories reported in each region (regions split where these differ). Default: the union of the masks. */
  returnMask?: number;
  /** Stop after this many matching pages (0: no limit). */
  maxPages?: number;
}

/** One run of pages with the same reported categories, [start, end). */
export interface PageRegion {
  start: number;
  end: number;
  categories: number;
}

export type RegionCallback = (start: number, end: number, categories: number) => void;

export interface ScanSummary {
  /** Regions reported. */
  regions: number;
  /** Bytes covered by the reported regions. */
  bytes: number;
  /** ioctl calls issued (more than one when the vector filled). */
  calls: number;
  /** Where the walk stopped: the end of the range unless maxPages stopped it. */
  walkEnd: number;
}

const ALL_CATEGORIES = (1 << 10) - 1;
const PAGE_SHIFT_DIV = C.PAGE_SIZE;

/** Names of PAGE_IS_* bits, for printing. */
export const CATEGORY_NAMES: Record<number, string> = {
  [C.PAGE_IS_WPALLOWED]: 'WPALLOWED',
  [C.PAGE_IS_WRITTEN]: 'WRITTEN',
  [C.PAGE_IS_FILE]: 'FILE',
  [C.PAGE_IS_PRESENT]: 'PRESENT',
  [C.PAGE_IS_SWAPPED]: 'SWAPPED',
  [C.PAGE_IS_PFNZERO]: 'PFNZERO',
  [C.PAGE_IS_HUGE]: 'HUGE',
  [C.PAGE_IS_SOFT_DIRTY]: 'SOFT_DIRTY',
  [C.PAGE_IS_GUARD]: 'GUARD',
  [C.PAGE_IS_ACCESSED]: 'ACCESSED',
};
/** Word i of a vector the kernel filled (indices inside the filled part by construction). */
function u32At(w: ArrayLike<number>, i: number): number {
  return w[i] ?? 0;
}
/** The u64 at words i (low) and i + 1 (high); exact below 2^53. */
function u64At(w: ArrayLike<number>, i: number): number {
  return u32At(w, i + 1) * 0x100000000 + u32At(w, i);
}

export function categoryNames(mask: number): string[] {
  const out: string[] = [];
  for (let b = 0; b < 10; b++) if (mask & (1 << b)) out.push(CATEGORY_NAMES[1 << b] ?? `bit ${b}`);
  return out;
}

/** What one PAGEMAP_SCAN is asked: [start, end), the region vector (address, capacity) and the options. */
export interface ScanArg extends Required<ScanOptions> {
  start: number;
  end: number;
  vec: number;
  vecLen: number;
}

/**
 * Writes a struct pm_scan_arg into dv at offset 0 (all fields u64, little-endian):
 * 0 size, 8 flags, 16 start, 24 end, 32 walk_end, 40 vec, 48 vec_len, 56 max_pages,
 * 64 category_inverted, 72 category_mask, 80 category_anyof_mask, 88 return_mask.
 */
export function encodeScanArg(dv: DataView, o: ScanArg): void {
  w64(dv, 0, C.SIZEOF_PM_SCAN_ARG);
  w64(dv, 8, o.flags);
  w64(dv, 16, o.start);
  w64(dv, 24, o.end);
  w64(dv, 32, 0);
  w64(dv, 40, o.vec);
  w64(dv, 48, o.vecLen);
  w64(dv, 56, o.maxPages);
  w64(dv, 64, o.categoryInverted);
  w64(dv, 72, o.categoryMask);
  w64(dv, 80, o.categoryAnyof);
  w64(dv, 88, o.returnMask);
}
function w64(dv: DataView, off: number, v: number): void {
  dv.setUint32(off, v >>> 0, true);
  dv.setUint32(off + 4, Math.floor(v / 0x100000000) >>> 0, true);
}

let supportedCache: boolean | undefined;

export class Scanner {
  readonly fd: number;
  /** Capacity of the region vector. */
  readonly vecLen: number;
  private readonly argBuf = new Uint8Array(C.SIZEOF_PM_SCAN_ARG);
  private readonly argDv = new DataView(this.argBuf.buffer);
  private readonly argWords = new Uint32Array(this.argBuf.buffer);
  private readonly argAddr: number;
  private readonly vec: Uint32Array; // 6 words per region: start lo/hi, end lo/hi, categories lo/hi
  private readonly vecAddr: number;
  private readonly opts: Required<ScanOptions> = {
    flags: 0, categoryMask: 0, categoryInverted: 0, categoryAnyof: 0, returnMask: 0, maxPages: 0,
  };
  /** Total ioctl calls and their time, for cost reports. */
  calls = 0;
  nanos = 0n;
  private closed = false;

  /** Whether this kernel has PAGEMAP_SCAN (Linux 6.7+); asked once. */
  static supported(): boolean {
    if (supportedCache !== undefined) return supportedCache;
    const s = new Scanner({ vecLen: 1 });
    try {
      s.scanRaw(0, 0, {}, 0);
      supportedCache = true;
    } catch (e) {
      if (e instanceof UnsupportedError) supportedCache = false;
      else throw e;
    } finally {
      s.close();
    }
    return supportedCache;
  }

  /**
   * pid: whose page tables to scan (default this process). vecLen: regions per ioctl
   * (the kernel walks at most until the vector is full, then we continue from walk_end).
   */
  constructor(opts: { pid?: number | 'self'; vecLen?: number } = {}) {
    const pid = opts.pid ?? 'self';
    this.vecLen = opts.vecLen ?? 4096;
    if (!Number.isInteger(this.vecLen) || this.vecLen < 1) throw new ConfigError(`vecLen must be a positive integer, got ${opts.vecLen}`);
    const path = `/proc/${pid}/pagemap`;
    const fd = libc.open(path, C.O_RDONLY | C.O_CLOEXEC, 0);
    if (fd < 0) {
      const e = errno();
      throw new UffdError({ op: `open ${path}`, errno: e, hint: e === ERRNO.EACCES || e === ERRNO.EPERM
        ? 'scanning another process needs PTRACE_MODE_READ access to it (same user, or root)' : hintFor('open', errnoName(e)) });
    }
    this.fd = fd;
    this.argAddr = addressOf(this.argBuf);
    this.vec = new Uint32Array(this.vecLen * 6);
    this.vecAddr = addressOf(this.vec);
  }

  private setOpts(o: ScanOptions): Required<ScanOptions> {
    const t = this.opts;
    t.flags = o.flags ?? 0;
    t.categoryMask = o.categoryMask ?? 0;
    t.categoryInverted = o.categoryInverted ?? 0;
    t.categoryAnyof = o.categoryAnyof ?? 0;
    t.returnMask = o.returnMask ?? (t.categoryMask | t.categoryAnyof | t.categoryInverted);
    t.maxPages = o.maxPages ?? 0;
    if ((t.categoryMask | t.categoryInverted | t.categoryAnyof | t.returnMask) & ~ALL_CATEGORIES) {
      throw new ConfigError(`PAGEMAP_SCAN: unknown category bits in ${JSON.stringify(o)}`);
    }
    if (t.flags & ~(C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC)) {
      throw new ConfigError(`PAGEMAP_SCAN: unknown flags 0x${t.flags.toString(16)}; use PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`);
    }
    return t;
  }

  /**
   * One ioctl over [start, end); returns the number of regions in the vector. The walk end
   * is in lastWalkEnd. Throws a typed error on failure.
   */
  scanRaw(start: number, end: number, o: ScanOptions, maxPages = o.maxPages ?? 0): number {
    if (this.closed) throw new ConfigError('Scanner is closed');
    const t = this.setOpts(o);
    encodeScanArg(this.argDv, { ...t, maxPages, start, end, vec: this.vecAddr, vecLen: this.vecLen });
    const t0 = process.hrtime.bigint();
    let n = libc.ioctl(this.fd, C.PAGEMAP_SCAN, this.argAddr);
    while (n < 0 && errno() === ERRNO.EINTR) n = libc.ioctl(this.fd, C.PAGEMAP_SCAN, this.argAddr);
    this.nanos += process.hrtime.bigint() - t0;
    this.calls++;
    if (n < 0) this.fail(start, end, t);
    return n;
  }

  private fail(start: number, end: number, t: Required<ScanOptions>): never {
    const e = errno();
    const code = errnoName(e);
    let hint: string | undefined;
    if (code === 'ENOTTY' || code === 'EOPNOTSUPP') {
      throw new UnsupportedError('PAGEMAP_SCAN is not available on this kernel (needs Linux 6.7 or later)');
    } else if (code === 'EINVAL' && ((t.categoryMask | t.categoryInverted | t.categoryAnyof | t.returnMask) & C.PAGE_IS_ACCESSED)) {
      hint = 'PAGE_IS_ACCESSED needs a kernel with userfaultfd RWP (Linux 7.3); on older kernels use the zap (memfd) or move (anon) access fallbacks';
    } else if (code === 'EINVAL' && (t.flags & C.PM_SCAN_WP_MATCHING)) {
      hint = 'PM_SCAN_WP_MATCHING is refused on RWP-registered ranges and needs a page-aligned start; check the range';
    } else if (code === 'EPERM' && (t.flags & C.PM_SCAN_CHECK_WPASYNC)) {
      hint = 'part of the range is not registered MODE_WP on a userfaultfd with UFFD_FEATURE_WP_ASYNC (PM_SCAN_CHECK_WPASYNC)';
    } else if (code === 'EFAULT') {
      hint = 'the range is not a valid user address range';
    } else {
      hint = hintFor('pagemap_scan', code);
    }
    throw new UffdError({ op: 'PAGEMAP_SCAN', errno: e, start, len: end - start, hint });
  }

  /** Where the last ioctl stopped walking. */
  get lastWalkEnd(): number {
    const w = this.argWords;
    return u64At(w, 8);
  }
  /** Region i of the last ioctl (valid until the next call). */
  regionStart(i: number): number { return u64At(this.vec, i * 6); }
  regionEnd(i: number): number { return u64At(this.vec, i * 6 + 2); }
  regionCategories(i: number): number { return u32At(this.vec, i * 6 + 4); }

  /**
   * Scans [start, end), continuing from walk_end while the vector fills, and calls
   * onRegion for each reported region (in address order; two adjacent regions with the
   * same categories may come out split where one ioctl ended and the next began).
   */
  scan(start: number, end: number, o: ScanOptions = {}, onRegion?: RegionCallback): ScanSummary {
    checkRange(start, end);
    let regions = 0;
    let bytes = 0;
    let calls = 0;
    let pos = start;
    let budget = o.maxPages ?? 0; // in 4 KiB pages, as the kernel counts
    const vec = this.vec;
    while (pos < end) {
      const n = this.scanRaw(pos, end, o, budget);
      calls++;
      for (let i = 0; i < n; i++) {
        const b = i * 6;
        const s = u64At(vec, b);
        const e = u64At(vec, b + 2);
        bytes += e - s;
        if (onRegion) onRegion(s, e, u32At(vec, b + 4));
      }
      regions += n;
      const walkEnd = this.lastWalkEnd;
      if (walkEnd >= end || walkEnd <= pos) { pos = walkEnd > pos ? walkEnd : end; break; }
      pos = walkEnd;
      if (budget) {
        budget = (o.maxPages ?? 0) - bytes / PAGE_SHIFT_DIV;
        if (budget <= 0) break; // maxPages reached
      }
    }
    return { regions, bytes, calls, walkEnd: pos };
  }

  /** Scans and returns the regions as objects, adjacent equal runs merged (for tests and small ranges). */
  collect(start: number, end: number, o: ScanOptions = {}): PageRegion[] {
    const out: PageRegion[] = [];
    this.scan(start, end, o, (s, e, c) => {
      const last = out[out.length - 1];
      if (last && last.end === s && last.categories === c) last.end = e;
      else out.push({ start: s, end: e, categories: c });
    });
    return out;
  }

  /**
   * Yields the matching regions one by one (an object per region: for tests, tools and small
   * ranges; periodic scanners use scan() with a callback). Each ioctl's vector is copied out
   * before the next call, so the caller may scan again while iterating.
   */
  *regions(start: number, end: number, o: ScanOptions = {}): Generator<PageRegion> {
    checkRange(start, end);
    let pos = start;
    let budget = o.maxPages ?? 0;
    let found = 0;
    while (pos < end) {
      const n = this.scanRaw(pos, end, o, budget);
      const batch: PageRegion[] = [];
      for (let i = 0; i < n; i++) {
        const r = { start: this.regionStart(i), end: this.regionEnd(i), categories: this.regionCategories(i) };
        found += r.end - r.start;
        batch.push(r);
      }
      const walkEnd = this.lastWalkEnd;
      yield* batch;
      if (walkEnd >= end || walkEnd <= pos) break;
      pos = walkEnd;
      if (budget) {
        budget = (o.maxPages ?? 0) - found / PAGE_SHIFT_DIV;
        if (budget <= 0) break;
      }
    }
  }

  /** Bytes in [start, end) that match, without building regions. */
  countBytes(start: number, end: number, o: ScanOptions = {}): number {
    return this.scan(start, end, o).bytes;
  }

  /**
   * Bytes per reported category bit: out[b] = bytes of matching pages whose reported
   * categories have bit b. Fills and returns a caller-provided Float64Array(10) so a
   * periodic caller allocates nothing.
   */
  countByCategory(start: number, end: number, o: ScanOptions, out = new Float64Array(10)): Float64Array {
    out.fill(0);
    checkRange(start, end);
    let pos = start;
    const vec = this.vec;
    while (pos < end) {
      const n = this.scanRaw(pos, end, o);
      for (let i = 0; i < n; i++) {
        const k = i * 6;
        const len = u64At(vec, k + 2) - u64At(vec, k);
        let c = u32At(vec, k + 4);
        for (let bit = 0; c && bit < out.length; bit++, c >>>= 1) if (c & 1) out[bit] = u32At(out, bit) + len;
      }
      const walkEnd = this.lastWalkEnd;
      if (walkEnd >= end || walkEnd <= pos) break;
      pos = walkEnd;
    }
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }
}

function checkRange(start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new ConfigError(`PAGEMAP_SCAN: bad range [${start}, ${end})`);
  }
  if (start % C.PAGE_SIZE) {
    throw new ConfigError(`PAGEMAP_SCAN: start 0x${start.toString(16)} is not page-aligned`);
  }
}
