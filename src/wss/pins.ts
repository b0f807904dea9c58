// Holding file pages across a hole punch, so that saving a page and freeing it is one step
// for every writer. vmsplice(2) of a mapping into a pipe takes a reference on each page
// instead of copying it (pipe buffers of user pages); punching the hole then removes the
// pages from the page cache and unmaps them everywhere, but the pipe still holds them: any
// write made up to the punch is in the pages the pipe returns when it is read, and after the
// punch nothing can write them any more (a touch is a missing fault, which the engine holds).
// This is what lets the parallel engine serve evicted shmem/hugetlbfs pages without taking
// part in the eviction (it resolves minor faults without consulting anyone's page states).
//
// x86_64 system call numbers; pipes are grown to pipe-max-size (1 MiB by default) when the
// user's pipe allowance permits, and enough of them are opened to hold one huge page.
import * as C from '../kernel/constants.js';
import { ConfigError, UnsupportedError } from '../kernel/errors.js';
import { addressOf, errno, errnoName, libc } from '../kernel/libc.js';
import * as M from '../kernel/memory.js';

const SYS_vmsplice = 278;
const SYS_pipe2 = 293;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;
const SPLICE_F_NONBLOCK = 2;
const PIPE_BYTES = 1 << 20;
const MAX_PIPES = 64;

interface Pipe { r: number; w: number; cap: number; used: number }

export class PagePins {
  private readonly pipes: Pipe[] = [];
  /** Bytes the pipes can hold at once: the largest run pin() takes. */
  readonly capacity: number;
  private readonly iov = new BigUint64Array(2);
  private readonly iovAddr: number;
  private pinned = 0;

  /** Opens pipes that together hold at least `minBytes` (and at least 1 MiB). */
  constructor(minBytes: number) {
    this.iovAddr = addressOf(this.iov);
    const want = Math.max(minBytes, PIPE_BYTES);
    let cap = 0;
    try {
      while (cap < want) {
        if (this.pipes.length >= MAX_PIPES) {
          throw new UnsupportedError(`holding ${want} bytes of pages needs more than ${MAX_PIPES} pipes ` +
            `(each holds ${this.pipes[0]?.cap ?? 0} bytes here; raise /proc/sys/fs/pipe-max-size, or use server 'trap')`);
        }
        const p = openPipe();
        this.pipes.push(p);
        cap += p.cap;
      }
    } catch (e) {
      this.close();
      throw e;
    }
    this.capacity = cap;
  }

  /**
   * Takes references on the pages of [addr, addr+len) (a mapping that is never registered
   * with a userfaultfd, e.g. an alias of the region's file). len must fit in capacity; pages
   * not in memory are faulted in by the read. Call drainTo() before pinning again.
   */
  pin(addr: number, len: number): void {
    if (this.pinned) throw new ConfigError('PagePins.pin: drain the pinned pages first');
    if (len > this.capacity) throw new ConfigError(`PagePins.pin: ${len} bytes exceed the capacity of ${this.capacity}`);
    let done = 0;
    for (const p of this.pipes) {
      while (done < len && p.used < p.cap) {
        const n = Math.min(len - done, p.cap - p.used);
        this.iov[0] = BigInt(addr + done);
        this.iov[1] = BigInt(n);
        const got = libc.syscall5(SYS_vmsplice, p.w, this.iovAddr, 1, SPLICE_F_NONBLOCK, 0);
        if (got <= 0) {
          const e = errno();
          this.pinned = done;
          this.discard();
          throw new UnsupportedError(`vmsplice of ${n} bytes at 0x${(addr + done).toString(16)} failed: ${errnoName(e)}`);
        }
        p.used += got;
        done += got;
      }
      if (done >= len) break;
    }
    if (done < len) {
      this.pinned = done;
      this.discard();
      throw new UnsupportedError(`the pipes took only ${done} of ${len} bytes`);
    }
    this.pinned = len;
  }

  /** Reads the pinned pages, in order, into [dst, dst+len) and lets them go. */
  drainTo(dst: number, len: number): void {
    if (len !== this.pinned) throw new ConfigError(`PagePins.drainTo: ${len} bytes asked, ${this.pinned} pinned`);
    let done = 0;
    for (const p of this.pipes) {
      while (p.used > 0) {
        const n = libc.read(p.r, dst + done, p.used);
        if (n <= 0) throw new UnsupportedError(`reading pinned pages back from a pipe failed: ${n < 0 ? errnoName(errno()) : 'end of file'}`);
        p.used -= n;
        done += n;
      }
    }
    this.pinned = 0;
  }

  /** Drops pinned pages without reading them (error paths). */
  private discard(): void {
    const sink = new Uint8Array(64 * 1024);
    const a = addressOf(sink);
    for (const p of this.pipes) {
      while (p.used > 0) {
        const n = libc.read(p.r, a, Math.min(p.used, sink.length));
        if (n <= 0) break;
        p.used -= n;
      }
      p.used = 0;
    }
    this.pinned = 0;
  }

  close(): void {
    for (const p of this.pipes.splice(0)) {
      libc.close(p.r);
      libc.close(p.w);
    }
  }

  /**
   * Whether vmsplice keeps references here (a write after the vmsplice is what the pipe
   * returns, also after the page left the page cache): checked once on a small memfd.
   */
  static probe(): { ok: boolean; reason?: string } {
    if (probed) return probed;
    const size = 4 * C.PAGE_SIZE;
    let fd = -1;
    let map = 0;
    let buf = 0;
    let pins: PagePins | undefined;
    try {
      fd = M.memfdCreate('uffd-engine-pin-probe');
      M.ftruncate(fd, size);
      map = M.mmap(size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0);
      const b = M.bytesAt(map, size);
      b.fill(0x11);
      pins = new PagePins(size);
      pins.pin(map, size);
      b[C.PAGE_SIZE + 3] = 0x22; // after the vmsplice, before the punch
      M.punchHole(fd, 0, size);
      buf = M.mapAnonymous(size);
      pins.drainTo(buf, size);
      const got = M.bytesAt(buf, size);
      probed = got[C.PAGE_SIZE + 3] === 0x22 && got[0] === 0x11
        ? { ok: true }
        : { ok: false, reason: 'vmsplice copied the pages instead of referencing them (a write before the punch would be lost)' };
    } catch (e) {
      probed = { ok: false, reason: (e as Error).message };
    } finally {
      pins?.close();
      if (buf) M.munmap(buf, size);
      if (map) M.munmap(map, size);
      if (fd >= 0) M.close(fd);
    }
    return probed;
  }
}

let probed: { ok: boolean; reason?: string } | undefined;

function openPipe(): Pipe {
  const fds = new Int32Array(2);
  if (libc.syscall5(SYS_pipe2, addressOf(fds), O_CLOEXEC, 0, 0, 0) < 0) {
    throw new UnsupportedError(`pipe2 failed: ${errnoName(errno())}`);
  }
  const [r = -1, w = -1] = fds;
  // Grow to 1 MiB when allowed (pipe-max-size, and the user's pipe-user-pages-soft).
  let cap = libc.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES);
  if (cap < 0) cap = libc.fcntl(w, F_GETPIPE_SZ, 0);
  if (cap <= 0) {
    libc.close(r);
    libc.close(w);
    throw new UnsupportedError(`cannot size a pipe: ${errnoName(errno())}`);
  }
  return { r, w, cap, used: 0 };
}
