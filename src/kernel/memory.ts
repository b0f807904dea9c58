// Memory and file helpers the engine serves and tests use: mmap, memfd, madvise,
// fallocate, pread/pwrite, eventfd, poll, and views of native memory.
import * as C from './constants.js';
import { UffdError, hintFor } from './errors.js';
import { addressOf, errno, errnoName, libc, viewOf } from './libc.js';

function fail(op: string, start?: number, len?: number): never {
  const e = errno();
  throw new UffdError({ op, errno: e, start, len, hint: hintFor(op, errnoName(e)) });
}

// (void *)-1. koffi hands a uint64_t above 2^53 back as a BigInt, so MAP_FAILED arrives as
// 18446744073709551615n, not as a number: anything that is not a plain number is a failure.
function mapFailed(p: number | bigint): boolean {
  return typeof p !== 'number' || p < 0 || p >= 2 ** 53;
}

export function mmap(len: number, prot: number, flags: number, fd = -1, offset = 0, addr = 0): number {
  const p = libc.mmap(addr, len, prot, flags, fd, offset);
  if (mapFailed(p)) fail('mmap', addr, len);
  return p;
}
export function munmap(addr: number, len: number): void {
  if (libc.munmap(addr, len) < 0) fail('munmap', addr, len);
}
export function mremap(addr: number, oldLen: number, newLen: number, flags: number, newAddr = 0): number {
  const p = libc.mremap(addr, oldLen, newLen, flags, newAddr);
  if (mapFailed(p)) fail('mremap', addr, oldLen);
  return p;
}
export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const MREMAP_DONTUNMAP = 4;

export function mprotect(addr: number, len: number, prot: number): void {
  if (libc.mprotect(addr, len, prot) < 0) fail('mprotect', addr, len);
}
export function madvise(addr: number, len: number, advice: number): void {
  if (libc.madvise(addr, len, advice) < 0) fail('madvise', addr, len);
}
/** madvise returning the errno instead of throwing (0 on success). */
export function tryMadvise(addr: number, len: number, advice: number): number {
  return libc.madvise(addr, len, advice) < 0 ? errno() : 0;
}

export function memfdCreate(name: string, flags = C.MFD_CLOEXEC): number {
  const fd = libc.syscall2s(C.SYS_memfd_create, name, flags);
  if (fd < 0) fail('memfd_create');
  return fd;
}
export function ftruncate(fd: number, len: number): void {
  if (libc.ftruncate(fd, len) < 0) fail('ftruncate', 0, len);
}
export function fallocate(fd: number, mode: number, offset: number, len: number): void {
  if (libc.fallocate(fd, mode, offset, len) < 0) fail('fallocate', offset, len);
}
/** Frees the backing pages of [offset, offset+len) of a file (memfd, hugetlbfs, tmpfs). */
export function punchHole(fd: number, offset: number, len: number): void {
  fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, offset, len);
}
export function openFile(path: string, flags: number, mode = 0o600): number {
  const fd = libc.open(path, flags | C.O_CLOEXEC, mode);
  if (fd < 0) fail(`open ${path}`);
  return fd;
}
export function close(fd: number): void {
  libc.close(fd);
}
/** pread into native memory at addr; returns bytes read. */
export function preadTo(fd: number, addr: number, len: number, offset: number): number {
  const n = libc.pread(fd, addr, len, offset);
  if (n < 0) fail('pread', offset, len);
  return n;
}
/** pwrite from native memory at addr; returns bytes written. */
export function pwriteFrom(fd: number, addr: number, len: number, offset: number): number {
  const n = libc.pwrite(fd, addr, len, offset);
  if (n < 0) fail('pwrite', offset, len);
  return n;
}
/** pwrite a JS buffer, all of it. */
export function pwriteAll(fd: number, data: Uint8Array, offset: number): void {
  const base = addressOf(data);
  let done = 0;
  while (done < data.length) done += pwriteFrom(fd, base + done, data.length - done, offset + done);
}
export function memcpy(dst: number, src: number, len: number): void {
  libc.memcpy(dst, src, len);
}
export function memset(dst: number, c: number, len: number): void {
  libc.memset(dst, c, len);
}
export function memcmp(a: number, b: number, len: number): number {
  return libc.memcmp(a, b, len);
}

/** A Uint8Array over native memory (no copy). */
export function bytesAt(addr: number, len: number): Uint8Array {
  return new Uint8Array(viewOf(addr, len));
}

/** An anonymous private mapping (the memory of most processes). */
export function mapAnonymous(len: number, extraFlags = 0, prot = C.PROT_READ | C.PROT_WRITE): number {
  return mmap(len, prot, C.MAP_PRIVATE | C.MAP_ANONYMOUS | extraFlags);
}

export function eventfd(flags = C.EFD_CLOEXEC | C.EFD_NONBLOCK): number {
  const fd = libc.eventfd(0, flags);
  if (fd < 0) fail('eventfd');
  return fd;
}

/** poll(2) over a fixed set of fds with a preallocated pollfd array. */
export class Poller {
  private readonly buf: Uint8Array;
  private readonly dv: DataView;
  private readonly addr: number;
  readonly count: number;
  constructor(fds: number[]) {
    this.count = fds.length;
    this.buf = new Uint8Array(8 * fds.length);
    this.dv = new DataView(this.buf.buffer);
    this.addr = addressOf(this.buf);
    fds.forEach((fd, i) => {
      this.dv.setInt32(i * 8, fd, true);
      this.dv.setInt16(i * 8 + 4, C.POLLIN, true);
    });
  }
  /** Waits up to timeoutMs (-1: forever); returns the number of ready fds (0 on timeout or EINTR). */
  wait(timeoutMs: number): number {
    for (let i = 0; i < this.count; i++) this.dv.setInt16(i * 8 + 6, 0, true);
    const n = libc.poll(this.addr, this.count, timeoutMs);
    if (n < 0) {
      if (errno() === 4 /* EINTR */) return 0;
      fail('poll');
    }
    return n;
  }
  revents(i: number): number {
    return this.dv.getInt16(i * 8 + 6, true);
  }
}

/**
 * epoll(7) over a fixed set of fds, each added with EPOLLEXCLUSIVE when asked: of several
 * threads waiting on the same fd (each with its own EpollWaiter), a wake-up reaches one,
 * not all (poll(2) wakes every waiter: a thundering herd per userfault). Same use as Poller.
 */
export class EpollWaiter {
  private readonly epfd: number;
  private readonly buf: Uint8Array;
  private readonly dv: DataView;
  private readonly addr: number;
  private readonly ready: Uint8Array;
  readonly count: number;
  constructor(fds: number[], exclusive: boolean[]) {
    this.count = fds.length;
    this.buf = new Uint8Array(C.SIZEOF_EPOLL_EVENT * fds.length);
    this.dv = new DataView(this.buf.buffer);
    this.addr = addressOf(this.buf);
    this.ready = new Uint8Array(fds.length);
    this.epfd = libc.epoll_create1(C.EPOLL_CLOEXEC);
    if (this.epfd < 0) fail('epoll_create1');
    const ev = new Uint8Array(C.SIZEOF_EPOLL_EVENT);
    const evv = new DataView(ev.buffer);
    fds.forEach((fd, i) => {
      evv.setUint32(0, C.EPOLLIN | (exclusive[i] ? C.EPOLLEXCLUSIVE : 0), true);
      evv.setBigUint64(4, BigInt(i), true);
      if (libc.epoll_ctl(this.epfd, C.EPOLL_CTL_ADD, fd, addressOf(ev)) < 0) {
        libc.close(this.epfd);
        fail('epoll_ctl');
      }
    });
  }
  /** Waits up to timeoutMs (-1: forever); returns the number of ready fds (0 on timeout or EINTR). */
  wait(timeoutMs: number): number {
    this.ready.fill(0);
    const n = libc.epoll_wait(this.epfd, this.addr, this.count, timeoutMs);
    if (n < 0) {
      if (errno() === 4 /* EINTR */) return 0;
      fail('epoll_wait');
    }
    for (let k = 0; k < n; k++) this.ready[this.dv.getUint32(k * C.SIZEOF_EPOLL_EVENT + 4, true)] = 1;
    return n;
  }
  /** Non-zero if fd i was ready in the last wait. */
  revents(i: number): number {
    return this.ready[i] ?? 0;
  }
  close(): void {
    libc.close(this.epfd);
  }
}

const efdBuf = new BigUint64Array(1);
const efdAddr = addressOf(efdBuf);
export function eventfdSignal(fd: number): void {
  efdBuf[0] = 1n;
  libc.write(fd, efdAddr, 8);
}
export function eventfdDrain(fd: number): void {
  libc.read(fd, efdAddr, 8);
}

/**
 * Gives the C allocator's free memory back to the kernel (malloc_trim(3): every arena, free
 * pages in the middle too). For measuring what a process keeps: free memory glibc holds on
 * to otherwise counts as resident. Returns whether anything was released.
 */
export function mallocTrim(): boolean {
  return libc.malloc_trim(0) === 1;
}

export function getpid(): number {
  return libc.getpid();
}
export function gettid(): number {
  return libc.gettid();
}
export function getuid(): number {
  return libc.getuid();
}
/**
 * Ends the process now with `code` (_exit(2)): no exit handlers, no waiting for other
 * threads — for a process whose threads may be blocked in the kernel on faults no one serves.
 */
export function exitImmediately(code: number): never {
  libc._exit(code);
  throw new Error('_exit returned'); // unreachable
}

/** Hugetlb pages of the given size reserved and free right now. */
export function hugetlbPages(sizeKiB = 2048): { total: number; free: number } {
  const fs = require('node:fs') as typeof import('node:fs');
  const dir = `/sys/kernel/mm/hugepages/hugepages-${sizeKiB}kB`;
  try {
    return {
      total: Number(fs.readFileSync(`${dir}/nr_hugepages`, 'utf8')),
      free: Number(fs.readFileSync(`${dir}/free_hugepages`, 'utf8')),
    };
  } catch {
    return { total: 0, free: 0 };
  }
}

/** Kernel release string (uname -r). */
export function kernelRelease(): string {
  const fs = require('node:fs') as typeof import('node:fs');
  return fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
}

/**
 * Forks this process into the cgroup open at `cgroupFd` (clone3 with CLONE_INTO_CGROUP,
 * Linux 5.7), for tests of what fork copies (the child's /proc/PID/pagemap). The cgroup must
 * be frozen (cgroup.freeze 1): the child then never runs, which it must not — a copy of this
 * multi-threaded process cannot run JavaScript. (glibc's fork() is no way out either: it holds
 * malloc's locks across the system call, which with UFFD_FEATURE_EVENT_FORK waits for a reader
 * of the userfaultfd, another thread here, which allocates.) End the child with endChild().
 */
export function forkIntoFrozenCgroup(cgroupFd: number): number {
  const args = new BigUint64Array(11); // struct clone_args, 88 bytes
  args[0] = CLONE_INTO_CGROUP;
  args[4] = BigInt(SIGCHLD); // exit_signal
  args[10] = BigInt(cgroupFd);
  const pid = libc.syscall5(SYS_CLONE3, addressOf(args), 88, 0, 0, 0);
  if (pid < 0) throw new Error(`clone3(CLONE_INTO_CGROUP) failed: ${errnoName(errno())}`);
  return pid;
}

const SYS_CLONE3 = 435; // x86_64
const CLONE_INTO_CGROUP = 0x200000000n;
const SIGCHLD = 17;

/** Kills a child (SIGKILL ends a frozen one too) and reaps it. */
export function endChild(pid: number): void {
  libc.kill(pid, 9);
  libc.waitpid(pid, 0, 0);
}

/**
 * Pins [addr, addr+len) long-term (FOLL_LONGTERM) by registering it as an io_uring fixed
 * buffer, as a DMA user would; the returned function unpins (closes the ring). A pinned anon
 * page is copied at fork instead of shared (copy_present_page). Throws when io_uring is not
 * available (io_uring_disabled, seccomp).
 */
export function pinLongterm(addr: number, len: number): () => void {
  const params = new Uint8Array(120); // struct io_uring_params, zeroed
  const ring = libc.syscall5(SYS_IO_URING_SETUP, 1, addressOf(params), 0, 0, 0);
  if (ring < 0) throw new Error(`io_uring_setup failed: ${errnoName(errno())}`);
  const iov = new BigUint64Array([BigInt(addr), BigInt(len)]);
  if (libc.syscall5(SYS_IO_URING_REGISTER, ring, 0 /* IORING_REGISTER_BUFFERS */, addressOf(iov), 1, 0) < 0) {
    const e = errnoName(errno());
    libc.close(ring);
    throw new Error(`io_uring_register(IORING_REGISTER_BUFFERS) failed: ${e}`);
  }
  return () => { libc.close(ring); };
}
const SYS_IO_URING_SETUP = 425;
const SYS_IO_URING_REGISTER = 427;
