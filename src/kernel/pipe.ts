// A pipe that can hold user pages: vmsplice(2) of a mapping into it takes a reference on
// each page instead of copying it (pipe buffers of user pages), and read(2) gives the bytes
// back. src/wss/pins.ts builds page pinning across a hole punch on it.
//
// x86_64 system call numbers. A pipe is grown to the size asked for when the user's pipe
// allowance permits (pipe-max-size, pipe-user-pages-soft); otherwise it keeps its size.
import { UnsupportedError } from './errors.js';
import { addressOf, errno, errnoName, libc } from './libc.js';

const SYS_vmsplice = 278;
const SYS_pipe2 = 293;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;
const SPLICE_F_NONBLOCK = 2;

export class Pipe {
  /** Read and write ends. */
  readonly r: number;
  readonly w: number;
  /** Bytes it holds at once. */
  readonly capacity: number;
  private readonly iov = new BigUint64Array(2);
  private readonly iovAddr: number;

  private constructor(r: number, w: number, capacity: number) {
    this.r = r;
    this.w = w;
    this.capacity = capacity;
    this.iovAddr = addressOf(this.iov);
  }

  /** pipe2(O_CLOEXEC), grown to `bytes` when allowed. Throws UnsupportedError naming the errno. */
  static open(bytes: number): Pipe {
    const fds = new Int32Array(2);
    if (libc.syscall5(SYS_pipe2, addressOf(fds), O_CLOEXEC, 0, 0, 0) < 0) {
      throw new UnsupportedError(`pipe2 failed: ${errnoName(errno())}`);
    }
    const [r = -1, w = -1] = fds;
    let cap = libc.fcntl(w, F_SETPIPE_SZ, bytes);
    if (cap < 0) cap = libc.fcntl(w, F_GETPIPE_SZ, 0);
    if (cap <= 0) {
      const e = errno();
      libc.close(r);
      libc.close(w);
      throw new UnsupportedError(`cannot size a pipe: ${errnoName(e)}`);
    }
    return new Pipe(r, w, cap);
  }

  /**
   * vmsplice(2) of [addr, addr+len) into the pipe, non-blocking: returns the bytes taken
   * (the pipe holds references to those pages). Throws UnsupportedError naming the errno.
   */
  vmsplice(addr: number, len: number): number {
    this.iov[0] = BigInt(addr);
    this.iov[1] = BigInt(len);
    const got = libc.syscall5(SYS_vmsplice, this.w, this.iovAddr, 1, SPLICE_F_NONBLOCK, 0);
    if (got <= 0) throw new UnsupportedError(`vmsplice of ${len} bytes at 0x${addr.toString(16)} failed: ${errnoName(errno())}`);
    return got;
  }

  /** read(2) of up to len bytes into [addr, addr+len): bytes read. Throws UnsupportedError on an error or end of file. */
  readTo(addr: number, len: number): number {
    const n = libc.read(this.r, addr, len);
    if (n <= 0) throw new UnsupportedError(`reading pinned pages back from a pipe failed: ${n < 0 ? errnoName(errno()) : 'end of file'}`);
    return n;
  }

  close(): void {
    libc.close(this.r);
    libc.close(this.w);
  }
}
