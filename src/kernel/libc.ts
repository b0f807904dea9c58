// The only module that loads libc through koffi. Other kernel-layer modules take
// their functions from here. Addresses cross the boundary as plain numbers
// (uint64_t): user-space addresses fit in 47 bits, so a double holds them exactly,
// and numbers, unlike BigInts, cost no allocation on the hot path.
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');

export const libc = {
  syscall1: lib.func('long syscall(long nr, long a1)') as (nr: number, a1: number) => number,
  syscall2s: lib.func('syscall', 'long', ['long', 'str', 'long']) as (nr: number, s: string, a: number) => number,
  syscall5: lib.func('syscall', 'long', ['long', 'long', 'uint64_t', 'long', 'long', 'long']) as (
    nr: number, a1: number, a2: number, a3: number, a4: number, a5: number) => number,
  open: lib.func('int open(str path, int flags, int mode)') as (p: string, f: number, m: number) => number,
  close: lib.func('int close(int fd)') as (fd: number) => number,
  // ioctl with a pointer argument passed as an address (a preallocated struct buffer).
  ioctl: lib.func('ioctl', 'int', ['int', 'unsigned long', 'uint64_t']) as (fd: number, req: number, arg: number) => number,
  read: lib.func('long read(int fd, uint64_t buf, size_t n)') as (fd: number, buf: number, n: number) => number,
  write: lib.func('long write(int fd, uint64_t buf, size_t n)') as (fd: number, buf: number, n: number) => number,
  pread: lib.func('long pread(int fd, uint64_t buf, size_t n, long off)') as (fd: number, buf: number, n: number, off: number) => number,
  pwrite: lib.func('long pwrite(int fd, uint64_t buf, size_t n, long off)') as (fd: number, buf: number, n: number, off: number) => number,
  poll: lib.func('int poll(uint64_t fds, unsigned long nfds, int timeout)') as (fds: number, n: number, t: number) => number,
  epoll_create1: lib.func('int epoll_create1(int flags)') as (flags: number) => number,
  epoll_ctl: lib.func('int epoll_ctl(int epfd, int op, int fd, uint64_t event)') as (ep: number, op: number, fd: number, ev: number) => number,
  epoll_wait: lib.func('int epoll_wait(int epfd, uint64_t events, int max, int timeout)') as (ep: number, ev: number, max: number, t: number) => number,
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)') as (v: number, f: number) => number,
  mmap: lib.func('uint64_t mmap(uint64_t addr, size_t len, int prot, int flags, int fd, long off)') as (
    addr: number, len: number, prot: number, flags: number, fd: number, off: number) => number,
  munmap: lib.func('int munmap(uint64_t addr, size_t len)') as (addr: number, len: number) => number,
  mremap: lib.func('uint64_t mremap(uint64_t old, size_t oldLen, size_t newLen, int flags, uint64_t newAddr)') as (
    old: number, oldLen: number, newLen: number, flags: number, newAddr: number) => number,
  mprotect: lib.func('int mprotect(uint64_t addr, size_t len, int prot)') as (addr: number, len: number, prot: number) => number,
  madvise: lib.func('int madvise(uint64_t addr, size_t len, int advice)') as (addr: number, len: number, advice: number) => number,
  ftruncate: lib.func('int ftruncate(int fd, long len)') as (fd: number, len: number) => number,
  fallocate: lib.func('int fallocate(int fd, int mode, long off, long len)') as (fd: number, mode: number, off: number, len: number) => number,
  memcpy: lib.func('uint64_t memcpy(uint64_t dst, uint64_t src, size_t n)') as (d: number, s: number, n: number) => number,
  memset: lib.func('uint64_t memset(uint64_t dst, int c, size_t n)') as (d: number, c: number, n: number) => number,
  memcmp: lib.func('int memcmp(uint64_t a, uint64_t b, size_t n)') as (a: number, b: number, n: number) => number,
  getpid: lib.func('int getpid()') as () => number,
  malloc_trim: lib.func('int malloc_trim(size_t pad)') as (pad: number) => number,
  gettid: lib.func('int gettid()') as () => number,
  getuid: lib.func('unsigned int getuid()') as () => number,
  fork: lib.func('int fork()') as () => number,
  _exit: lib.func('void _exit(int code)') as (code: number) => void,
  waitpid: lib.func('int waitpid(int pid, uint64_t status, int options)') as (pid: number, status: number, opts: number) => number,
  kill: lib.func('int kill(int pid, int sig)') as (pid: number, sig: number) => number,
  dup: lib.func('int dup(int fd)') as (fd: number) => number,
  fcntl: lib.func('int fcntl(int fd, int cmd, long arg)') as (fd: number, cmd: number, arg: number) => number,
  socket: lib.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number,
  socketpair: lib.func('int socketpair(int domain, int type, int protocol, uint64_t sv)') as (d: number, t: number, p: number, sv: number) => number,
  bind: lib.func('int bind(int fd, uint64_t addr, unsigned int len)') as (fd: number, addr: number, len: number) => number,
  listen: lib.func('int listen(int fd, int backlog)') as (fd: number, backlog: number) => number,
  accept4: lib.func('int accept4(int fd, uint64_t addr, uint64_t len, int flags)') as (fd: number, a: number, l: number, f: number) => number,
  connect: lib.func('int connect(int fd, uint64_t addr, unsigned int len)') as (fd: number, addr: number, len: number) => number,
  sendmsg: lib.func('long sendmsg(int fd, uint64_t msg, int flags)') as (fd: number, msg: number, flags: number) => number,
  recvmsg: lib.func('long recvmsg(int fd, uint64_t msg, int flags)') as (fd: number, msg: number, flags: number) => number,
  getsockopt: lib.func('int getsockopt(int fd, int level, int name, uint64_t val, uint64_t len)') as (
    fd: number, level: number, name: number, val: number, len: number) => number,
  shutdown: lib.func('int shutdown(int fd, int how)') as (fd: number, how: number) => number,
  clock_gettime: lib.func('int clock_gettime(int clk, uint64_t ts)') as (clk: number, ts: number) => number,
  getrusage: lib.func('int getrusage(int who, uint64_t usage)') as (who: number, usage: number) => number,
  sched_yield: lib.func('int sched_yield()') as () => number,
  getpriority: lib.func('int getpriority(int which, int who)') as (which: number, who: number) => number,
  setpriority: lib.func('int setpriority(int which, int who, int prio)') as (which: number, who: number, prio: number) => number,
  sched_setscheduler: lib.func('int sched_setscheduler(int pid, int policy, uint64_t param)') as (pid: number, policy: number, param: number) => number,
  sched_getscheduler: lib.func('int sched_getscheduler(int pid)') as (pid: number) => number,
};

/** errno of the calling thread, as left by the last libc call. */
export function errno(): number {
  return koffi.errno();
}

/** Sets errno of the calling thread (for calls whose return value cannot say they failed). */
export function setErrno(value: number): void {
  koffi.errno(value);
}

/** Address of the first byte of a typed array's memory (ArrayBuffer or SharedArrayBuffer). */
export function addressOf(view: ArrayBufferView): number {
  return Number(koffi.address(view as unknown as Uint8Array));
}

/** An ArrayBuffer over native memory (no copy): how tests and the faulting side touch a region. */
export function viewOf(addr: number, len: number): ArrayBuffer {
  return koffi.view(addr as unknown as bigint, len) as ArrayBuffer;
}

const errnoByNumber = new Map<number, string>();
for (const [name, value] of Object.entries(koffi.os.errno as Record<string, number>)) {
  if (!errnoByNumber.has(value) || name === 'EAGAIN' || name === 'EOPNOTSUPP') errnoByNumber.set(value, name);
}
/** The symbolic name of an errno value ("EEXIST"), or "E<n>" when unknown. */
export function errnoName(e: number): string {
  return errnoByNumber.get(e) ?? `E${e}`;
}
/** The errno values the code names (Linux numbers, from koffi); errnoName() for the rest. */
type ErrnoName = 'EACCES' | 'EADDRINUSE' | 'EAGAIN' | 'EBADF' | 'EBUSY' | 'ECONNABORTED' | 'ECONNREFUSED' | 'EEXIST' |
  'EFAULT' | 'EINTR' | 'EINVAL' | 'ENAMETOOLONG' | 'ENOENT' | 'ENOMEM' | 'ENOSPC' | 'ENOSYS' | 'EPERM' | 'ESRCH';
export const ERRNO = koffi.os.errno as Readonly<Record<ErrnoName, number>> & Readonly<Record<string, number | undefined>>;
