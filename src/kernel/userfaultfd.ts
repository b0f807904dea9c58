// A userfaultfd: creation, feature negotiation, registration and every resolve ioctl.
// Each call writes its struct into one preallocated buffer owned by the instance and
// passes the buffer's address, so an operation on the hot path allocates nothing.
// An instance is used by one thread; other threads wrap the same fd with fromFd().
import * as C from './constants.js';
import { FeatureName, FEATURE_BITS, FEATURE_NAMES } from './constants.js';
import { ConfigError, UffdError, UnsupportedError, hintFor } from './errors.js';
import { addressOf, errno, errnoName, libc, ERRNO } from './libc.js';
import { s64, u64, writeU64 } from './messages.js';
import { yieldCpu } from './time.js';

export interface UserfaultfdOptions {
  closeOnExec?: boolean; // default true
  nonBlocking?: boolean; // default true: the dispatcher polls
  userModeOnly?: boolean; // default false: faults taken in the kernel (KVM, read(2)) are reported too
  /** Features that must be granted; creation fails with a clear error if the kernel lacks one. */
  features?: FeatureName[];
  /** Features taken when the kernel offers them. */
  optionalFeatures?: FeatureName[];
}

export type RegisterMode = 'missing' | 'wp' | 'minor' | 'rwp';
export const REGISTER_MODE_BITS: Record<RegisterMode, number> = {
  missing: C.UFFDIO_REGISTER_MODE_MISSING,
  wp: C.UFFDIO_REGISTER_MODE_WP,
  minor: C.UFFDIO_REGISTER_MODE_MINOR,
  rwp: C.UFFDIO_REGISTER_MODE_RWP,
};

export type IoctlName = 'register' | 'unregister' | 'wake' | 'copy' | 'zeropage' | 'move' | 'writeprotect'
  | 'continue' | 'poison' | 'rwprotect' | 'set_mode' | 'api';
export const IOCTL_NR: Record<IoctlName, number> = {
  register: C._UFFDIO_REGISTER, unregister: C._UFFDIO_UNREGISTER, wake: C._UFFDIO_WAKE,
  copy: C._UFFDIO_COPY, zeropage: C._UFFDIO_ZEROPAGE, move: C._UFFDIO_MOVE,
  writeprotect: C._UFFDIO_WRITEPROTECT, continue: C._UFFDIO_CONTINUE, poison: C._UFFDIO_POISON,
  rwprotect: C._UFFDIO_RWPROTECT, set_mode: C._UFFDIO_SET_MODE, api: C._UFFDIO_API,
};

/** Names of the bits set in a features mask. */
export function featureNames(mask: bigint): FeatureName[] {
  return FEATURE_NAMES.filter((n) => (mask >> BigInt(FEATURE_BITS[n])) & 1n);
}
export function featureMask(names: readonly FeatureName[]): bigint {
  let m = 0n;
  for (const n of names) {
    if (!(n in FEATURE_BITS)) throw new ConfigError(`unknown userfaultfd feature "${n}"; known: ${FEATURE_NAMES.join(', ')}`);
    m |= 1n << BigInt(FEATURE_BITS[n]);
  }
  return m;
}
/** Names of the ioctls whose bit is set in an `ioctls` mask from UFFDIO_API or UFFDIO_REGISTER. */
export function ioctlNames(mask: bigint): IoctlName[] {
  return (Object.keys(IOCTL_NR) as IoctlName[]).filter((n) => (mask >> BigInt(IOCTL_NR[n])) & 1n);
}

function fail(op: string, start?: number, len?: number, done?: number): never {
  const e = errno();
  throw new UffdError({ op, errno: e, start, len, done, hint: hintFor(op, errnoName(e)) });
}

// How long a (un)protect retries EAGAIN: the event in the way is read by another thread
// (an engine's dispatcher) within microseconds; seconds mean nobody reads this uffd.
const AGAIN_RETRY_MS = 5000;

function retryAgain(op: string, start: number, len: number, attempt: () => boolean): void {
  let deadline = 0;
  while (!attempt()) {
    const now = performance.now();
    if (!deadline) deadline = now + AGAIN_RETRY_MS;
    else if (now > deadline) {
      throw new UffdError({ op, errno: ERRNO.EAGAIN, start, len, hint: `still EAGAIN after ${AGAIN_RETRY_MS / 1000} s: ` +
        'an event (REMOVE, UNMAP, REMAP, FORK) on this userfaultfd is waiting to be read; the thread that reads the uffd must read it' });
    }
    yieldCpu();
  }
}

let offeredCache: { features: bigint; ioctls: bigint } | undefined;

function openFd(flags: number): number {
  let fd = libc.syscall1(C.SYS_userfaultfd, flags);
  if (fd >= 0) return fd;
  const sysErr = errno();
  // Fall back to /dev/userfaultfd (Linux 6.1+), which works where the syscall is refused
  // to unprivileged users but the device node is accessible.
  const dev = libc.open('/dev/userfaultfd', C.O_RDWR | C.O_CLOEXEC, 0);
  if (dev >= 0) {
    fd = libc.ioctl(dev, C.USERFAULTFD_IOC_NEW, flags);
    const devErr = errno();
    libc.close(dev);
    if (fd >= 0) return fd;
    throw new UffdError({ op: 'userfaultfd', errno: devErr, hint: hintFor('userfaultfd', errnoName(devErr)) });
  }
  throw new UffdError({ op: 'userfaultfd', errno: sysErr, hint: hintFor('userfaultfd', errnoName(sysErr)) });
}

/**
 * What a range operation (copy, zeropage, continue, poison, move) did: `bytes` done from
 * the start, and `errno` 0 (all of it), EEXIST (stopped at a page already there) or EAGAIN
 * (the mappings are changing, or partial progress). Pass one per thread and reuse it: the
 * per-fault path allocates nothing.
 */
export class RangeResult {
  bytes = 0;
  errno = 0;
}

/**
 * A range ioctl: its name in errors, request number, whether its struct has a source
 * ({ dst, src, len, mode, out }; else { range, mode, out }), and the offset of its s64 out
 * field (bytes done).
 */
interface RangeIoctl { op: string; req: number; src: boolean; outOff: number }
const IO_COPY: RangeIoctl = { op: 'copy', req: C.UFFDIO_COPY, src: true, outOff: 32 };
const IO_ZEROPAGE: RangeIoctl = { op: 'zeropage', req: C.UFFDIO_ZEROPAGE, src: false, outOff: 24 };
const IO_CONTINUE: RangeIoctl = { op: 'continue', req: C.UFFDIO_CONTINUE, src: false, outOff: 24 };
const IO_POISON: RangeIoctl = { op: 'poison', req: C.UFFDIO_POISON, src: false, outOff: 24 };
const IO_MOVE: RangeIoctl = { op: 'move', req: C.UFFDIO_MOVE, src: true, outOff: 32 };

export class Userfaultfd {
  readonly fd: number;
  /** Features granted by UFFDIO_API (for fromFd: what the caller says was negotiated). */
  readonly features: bigint;
  /** Ioctls the API call advertised (bit nr per ioctl). */
  readonly ioctls: bigint;
  readonly nonBlocking: boolean;

  private readonly arg = new ArrayBuffer(128);
  private readonly dv = new DataView(this.arg);
  /** The argument struct as u32 words (little-endian): the *Operands ioctls write it without DataView calls. */
  private readonly a32 = new Uint32Array(this.arg);
  private readonly argAddr: number;
  /**
   * Operands of the next copyOperands / zeropageOperands / continueOperands /
   * poisonOperands / tryProtectOperands: [0] start (the destination), [1] source, [2]
   * length, in bytes. The per-fault path writes them here instead of passing them: an
   * address is not a small integer, and V8 boxes such a number in a fresh heap object
   * each time it crosses a call it did not inline.
   */
  readonly operands = new Float64Array(3);
  private closed = false;
  /** Whether RWP was granted (asked once: RWP faults un-protect through it). */
  private readonly rwp: boolean;

  private constructor(fd: number, features: bigint, ioctls: bigint, nonBlocking: boolean) {
    this.fd = fd;
    this.features = features;
    this.ioctls = ioctls;
    this.nonBlocking = nonBlocking;
    this.argAddr = addressOf(new Uint8Array(this.arg));
    this.rwp = this.has('RWP');
  }

  /** What this kernel offers (asked once on a throw-away userfaultfd, then cached). */
  static offered(): { features: bigint; ioctls: bigint } {
    if (offeredCache) return offeredCache;
    const fd = openFd(C.O_CLOEXEC | C.O_NONBLOCK);
    try {
      const buf = new ArrayBuffer(C.SIZEOF_UFFDIO_API);
      const dv = new DataView(buf);
      writeU64(dv, 0, C.UFFD_API);
      if (libc.ioctl(fd, C.UFFDIO_API, addressOf(new Uint8Array(buf))) < 0) fail('api');
      offeredCache = { features: dv.getBigUint64(8, true), ioctls: dv.getBigUint64(16, true) };
      return offeredCache;
    } finally {
      libc.close(fd);
    }
  }

  static hasFeature(name: FeatureName): boolean {
    return (Userfaultfd.offered().features & C.featureBit(name)) !== 0n;
  }

  static create(opts: UserfaultfdOptions = {}): Userfaultfd {
    const required = featureMask(opts.features ?? []);
    const offered = Userfaultfd.offered().features;
    const missing = required & ~offered;
    if (missing) {
      throw new UnsupportedError(`this kernel does not offer userfaultfd feature(s) ${featureNames(missing).join(', ')}` +
        (featureNames(missing).some((n) => n.startsWith('RWP')) ? ' (RWP needs Linux 7.3)' : '') +
        `; it offers ${featureNames(offered).join(', ')}`);
    }
    let wanted = required | (featureMask(opts.optionalFeatures ?? []) & offered);
    if ((wanted & C.featureBit('RWP_ASYNC')) && !(wanted & C.featureBit('RWP'))) {
      throw new ConfigError('RWP_ASYNC needs RWP too (the kernel answers EINVAL otherwise)');
    }
    if ((wanted & C.featureBit('WP_ASYNC')) && !(offered & C.featureBit('WP_ASYNC'))) wanted &= ~C.featureBit('WP_ASYNC');
    const nonBlocking = opts.nonBlocking ?? true;
    const flags = ((opts.closeOnExec ?? true) ? C.O_CLOEXEC : 0) | (nonBlocking ? C.O_NONBLOCK : 0)
      | (opts.userModeOnly ? C.UFFD_USER_MODE_ONLY : 0);
    const fd = openFd(flags);
    const buf = new ArrayBuffer(C.SIZEOF_UFFDIO_API);
    const dv = new DataView(buf);
    writeU64(dv, 0, C.UFFD_API);
    dv.setBigUint64(8, wanted, true);
    if (libc.ioctl(fd, C.UFFDIO_API, addressOf(new Uint8Array(buf))) < 0) {
      const e = errno();
      libc.close(fd);
      throw new UffdError({ op: 'api', errno: e, hint: hintFor('api', errnoName(e)) });
    }
    // The kernel writes back every feature it supports, not what it enabled: what it
    // enabled is exactly what we asked for.
    return new Userfaultfd(fd, wanted, dv.getBigUint64(16, true), nonBlocking);
  }

  /**
   * Wraps a userfaultfd that is already open and negotiated (another thread's, or one
   * received over a socket). features: what was negotiated, when known.
   */
  static fromFd(fd: number, features = 0n, ioctls = 0n, nonBlocking = true): Userfaultfd {
    return new Userfaultfd(fd, features, ioctls, nonBlocking);
  }

  has(feature: FeatureName): boolean {
    return (this.features & C.featureBit(feature)) !== 0n;
  }
  get featureNames(): FeatureName[] {
    return featureNames(this.features);
  }

  private range(start: number, len: number): void {
    writeU64(this.dv, 0, start);
    writeU64(this.dv, 8, len);
  }

  private checkRange(op: string, start: number, len: number, align: number): void {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(len) || start < 0 || len <= 0) {
      throw new UffdError({ op, errno: ERRNO.EINVAL, start, len },
        `${op}: start and length must be non-negative integers and the length above zero (got start=${start}, len=${len})`);
    }
    if (start % align || len % align) {
      throw new UffdError({ op, errno: ERRNO.EINVAL, start, len },
        `${op}: [0x${start.toString(16)}, +0x${len.toString(16)}) is not aligned to the page size 0x${align.toString(16)}; round start down and length up to a page multiple`);
    }
  }

  /** Registers a range; returns the ioctls the kernel advertises for it (bit nr each). */
  register(start: number, len: number, modes: readonly RegisterMode[] | number, align = C.PAGE_SIZE): bigint {
    this.checkRange('register', start, len, align);
    let mode = 0;
    if (typeof modes === 'number') mode = modes;
    else for (const m of modes) {
      if (!(m in REGISTER_MODE_BITS)) throw new ConfigError(`unknown register mode "${m}"; use missing, wp, minor or rwp`);
      mode |= REGISTER_MODE_BITS[m];
    }
    if ((mode & C.UFFDIO_REGISTER_MODE_WP) && (mode & C.UFFDIO_REGISTER_MODE_RWP)) {
      throw new ConfigError('register: modes wp and rwp exclude each other (the kernel answers EINVAL)');
    }
    this.range(start, len);
    writeU64(this.dv, 16, mode);
    writeU64(this.dv, 24, 0);
    if (libc.ioctl(this.fd, C.UFFDIO_REGISTER, this.argAddr) < 0) fail('register', start, len);
    return this.dv.getBigUint64(24, true);
  }

  /**
   * UFFDIO_REGISTER with raw mode bits and none of register()'s checks, so that a test can
   * see the kernel's own answer to a combination register() refuses (e.g. wp+rwp: EINVAL).
   */
  registerUnchecked(start: number, len: number, modeBits: number): bigint {
    this.range(start, len);
    writeU64(this.dv, 16, modeBits);
    writeU64(this.dv, 24, 0);
    if (libc.ioctl(this.fd, C.UFFDIO_REGISTER, this.argAddr) < 0) fail('register', start, len);
    return this.dv.getBigUint64(24, true);
  }

  unregister(start: number, len: number, align = C.PAGE_SIZE): void {
    this.checkRange('unregister', start, len, align);
    this.range(start, len);
    if (libc.ioctl(this.fd, C.UFFDIO_UNREGISTER, this.argAddr) < 0) fail('unregister', start, len);
  }

  /** Wakes threads waiting on faults in the range (after a DONTWAKE resolve, or to let them retry). */
  wake(start: number, len: number): void {
    this.range(start, len);
    if (libc.ioctl(this.fd, C.UFFDIO_WAKE, this.argAddr) < 0) fail('wake', start, len);
  }

  /**
   * Writes a u64 (< 2^53) at u32 word w of the argument struct: writeU64 (messages.ts) for
   * the per-fault path, small enough that V8 inlines it (test/hot-path.test.ts: with
   * writeU64 there, the address arguments were boxed, ~33 bytes per fault).
   */
  private put(w: number, v: number): void {
    const a = this.a32;
    a[w] = v >>> 0;
    a[w + 1] = (v / 4294967296) >>> 0;
  }

  // A range operation with an s64 out field, on the operands' start and length (their
  // source too when the struct has one): returns the bytes done; on partial or no progress
  // the errno is EEXIST or EAGAIN (in `out`: pass one to tell them apart); any other errno
  // throws.
  private rangeOp(io: RangeIoctl, mode: number, out?: RangeResult): number {
    const a = this.a32;
    const ops = this.operands;
    this.put(0, ops[0] as number);
    if (io.src) this.put(2, ops[1] as number);
    const lenWord = io.src ? 4 : 2;
    this.put(lenWord, ops[2] as number);
    a[lenWord + 2] = mode;
    a[lenWord + 3] = 0;
    const outWord = io.outOff >> 2;
    a[outWord] = 0;
    a[outWord + 1] = 0;
    let bytes = ops[2] as number;
    let e = 0;
    if (libc.ioctl(this.fd, io.req, this.argAddr) !== 0) {
      e = errno();
      const done = s64(this.dv, io.outOff);
      if (done > 0) {
        // Partial progress: the kernel reports bytes done and answers EAGAIN.
        bytes = done;
        e = ERRNO.EAGAIN;
      } else if (e === ERRNO.EEXIST || e === ERRNO.EAGAIN) {
        bytes = 0;
      } else {
        throw new UffdError({ op: io.op, errno: e, start: ops[0] as number, len: ops[2] as number, done: 0, hint: hintFor(io.op, errnoName(e)) });
      }
    }
    if (out) {
      out.bytes = bytes;
      out.errno = e;
    }
    return bytes;
  }

  /** UFFDIO_COPY of the operands' length from their source to their start (mode: COPY_MODE_DONTWAKE | COPY_MODE_WP). */
  copyOperands(mode: number, out?: RangeResult): number { return this.rangeOp(IO_COPY, mode, out); }
  /** UFFDIO_ZEROPAGE over the operands' range. */
  zeropageOperands(mode: number, out?: RangeResult): number { return this.rangeOp(IO_ZEROPAGE, mode, out); }
  /** UFFDIO_CONTINUE over the operands' range. */
  continueOperands(mode: number, out?: RangeResult): number { return this.rangeOp(IO_CONTINUE, mode, out); }
  /** UFFDIO_POISON over the operands' range. */
  poisonOperands(mode: number, out?: RangeResult): number { return this.rangeOp(IO_POISON, mode, out); }

  private setOperands(start: number, src: number, len: number): void {
    const ops = this.operands;
    ops[0] = start;
    ops[1] = src;
    ops[2] = len;
  }

  /** UFFDIO_COPY len bytes from src to dst (mode: COPY_MODE_DONTWAKE | COPY_MODE_WP). */
  copy(dst: number, src: number, len: number, mode = 0, out?: RangeResult): number {
    this.setOperands(dst, src, len);
    return this.rangeOp(IO_COPY, mode, out);
  }

  zeropage(start: number, len: number, mode = 0, out?: RangeResult): number {
    this.setOperands(start, 0, len);
    return this.rangeOp(IO_ZEROPAGE, mode, out);
  }

  /** UFFDIO_CONTINUE: maps pages already in the page cache (minor faults). */
  continue(start: number, len: number, mode = 0, out?: RangeResult): number {
    this.setOperands(start, 0, len);
    return this.rangeOp(IO_CONTINUE, mode, out);
  }

  poison(start: number, len: number, mode = 0, out?: RangeResult): number {
    this.setOperands(start, 0, len);
    return this.rangeOp(IO_POISON, mode, out);
  }

  /** UFFDIO_MOVE: moves pages from src to dst (anon), leaving src empty. */
  move(dst: number, src: number, len: number, mode = 0, out?: RangeResult): number {
    this.setOperands(dst, src, len);
    return this.rangeOp(IO_MOVE, mode, out);
  }

  /**
   * Write-protects (protect = true) or un-protects the range (un-protect wakes unless
   * DONTWAKE). EAGAIN (the mappings are changing under an event, e.g. a REMOVE, that no one
   * has read yet) is retried while another thread reads it; see tryWriteprotect().
   */
  writeprotect(start: number, len: number, protect: boolean, dontWake = false): void {
    retryAgain('writeprotect', start, len, () => this.tryWriteprotect(start, len, protect, dontWake));
  }

  /** One UFFDIO_WRITEPROTECT: false on EAGAIN (an event not read yet: retry once it is), throws on any other error. */
  tryWriteprotect(start: number, len: number, protect: boolean, dontWake = false): boolean {
    this.setOperands(start, 0, len);
    return this.protectOnce('writeprotect', C.UFFDIO_WRITEPROTECT,
      (protect ? C.UFFDIO_WRITEPROTECT_MODE_WP : 0) | (dontWake ? C.UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0));
  }

  /** Read-write-protects (Linux 7.3 RWP) or restores access to the range; EAGAIN is retried as in writeprotect(). */
  rwprotect(start: number, len: number, protect: boolean, dontWake = false): void {
    retryAgain('rwprotect', start, len, () => this.tryRwprotect(start, len, protect, dontWake));
  }

  /** One UFFDIO_RWPROTECT: false on EAGAIN, throws on any other error. */
  tryRwprotect(start: number, len: number, protect: boolean, dontWake = false): boolean {
    this.needRwp();
    this.setOperands(start, 0, len);
    return this.protectOnce('rwprotect', C.UFFDIO_RWPROTECT,
      (protect ? C.UFFDIO_RWPROTECT_MODE_RWP : 0) | (dontWake ? C.UFFDIO_RWPROTECT_MODE_DONTWAKE : 0));
  }

  /**
   * One un-protect (or protect) of the operands' range: UFFDIO_RWPROTECT when `rwp`, else
   * UFFDIO_WRITEPROTECT (un-protecting wakes the range). False on EAGAIN, as tryWriteprotect.
   */
  tryProtectOperands(rwp: boolean, protect: boolean): boolean {
    if (rwp) {
      this.needRwp();
      return this.protectOnce('rwprotect', C.UFFDIO_RWPROTECT, protect ? C.UFFDIO_RWPROTECT_MODE_RWP : 0);
    }
    return this.protectOnce('writeprotect', C.UFFDIO_WRITEPROTECT, protect ? C.UFFDIO_WRITEPROTECT_MODE_WP : 0);
  }

  private needRwp(): void {
    if (!this.rwp) {
      throw new UnsupportedError('rwprotect needs UFFD_FEATURE_RWP (Linux 7.3 read-write-protect), which this userfaultfd was not granted; ' +
        'use WP_ASYNC write tracking or the access-tracking fallbacks instead');
    }
  }

  // WRITEPROTECT and RWPROTECT share one struct: { range, mode }, over the operands' range.
  private protectOnce(op: string, req: number, mode: number): boolean {
    const a = this.a32;
    const ops = this.operands;
    this.put(0, ops[0] as number);
    this.put(2, ops[2] as number);
    a[4] = mode;
    a[5] = 0;
    if (libc.ioctl(this.fd, req, this.argAddr) === 0) return true;
    if (errno() === ERRNO.EAGAIN) return false;
    fail(op, ops[0] as number, ops[2] as number);
  }

  /** UFFDIO_SET_MODE (Linux 7.3): toggles features such as RWP_ASYNC at run time. */
  setMode(enable: FeatureName[], disable: FeatureName[]): void {
    const en = featureMask(enable);
    const dis = featureMask(disable);
    if (en & dis) throw new ConfigError(`setMode: ${featureNames(en & dis).join(', ')} cannot be both enabled and disabled`);
    if (!this.has('RWP')) {
      throw new UnsupportedError('setMode (UFFDIO_SET_MODE) needs Linux 7.3 with UFFD_FEATURE_RWP; this userfaultfd lacks it');
    }
    this.dv.setBigUint64(0, en, true);
    this.dv.setBigUint64(8, dis, true);
    if (libc.ioctl(this.fd, C.UFFDIO_SET_MODE, this.argAddr) < 0) fail('set_mode');
  }

  /**
   * Reads up to buf.capacity messages with one read(2); returns how many arrived
   * (0 when the fd is non-blocking and nothing is pending).
   */
  read(buf: MessageBuffer): number {
    const n = libc.read(this.fd, buf.address, buf.capacity * C.SIZEOF_UFFD_MSG);
    if (n >= 0) return n / C.SIZEOF_UFFD_MSG;
    const e = errno();
    if (e === ERRNO.EAGAIN || e === ERRNO.EINTR) return 0;
    return fail('read');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }
}

/** A reusable buffer for batched read(2) of uffd_msg records. */
export class MessageBuffer {
  readonly capacity: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly address: number;
  constructor(capacity = 256) {
    this.capacity = capacity;
    this.bytes = new Uint8Array(capacity * C.SIZEOF_UFFD_MSG);
    this.view = new DataView(this.bytes.buffer);
    this.address = addressOf(this.bytes);
  }
}

export { u64 };
