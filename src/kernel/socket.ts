// Unix stream sockets with file-descriptor passing (SCM_RIGHTS), through the libc
// bindings in libc.ts. This is what the Firecracker handshake needs: the handler listens
// on a path, the VMM connects and sends one message whose ancillary data carries the
// userfaultfd.
//
// Layouts (x86_64, glibc):
//   struct sockaddr_un { u16 sun_family; char sun_path[108]; }            110 bytes
//   struct iovec       { void *base @0; size_t len @8; }                    16 bytes
//   struct msghdr      { void *name @0; u32 namelen @8; (pad) iovec *iov @16; size_t iovlen @24;
//                        void *control @32; size_t controllen @40; int flags @48; (pad) }  56 bytes
//   struct cmsghdr     { size_t len @0; int level @8; int type @12; data @16 }  CMSG_ALIGN = 8
//   struct ucred       { i32 pid; u32 uid; u32 gid; }                           12 bytes
// The structs live in buffers allocated once per thread (module instance); only the
// payload is copied out into a fresh Buffer for the caller.
import * as fs from 'node:fs';
import koffi from 'koffi';
import * as C from './constants.js';
import { UffdError } from './errors.js';
import { addressOf, errno, errnoName, libc, ERRNO } from './libc.js';
import { u64, writeU64 } from './messages.js';

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const SO_PEERCRED = 17;
export const MSG_PEEK = 0x2;
export const MSG_CTRUNC = 0x8;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const SHUT_WR = 1;
export const POLLOUT = 0x004;
export const POLLRDHUP = 0x2000;

export const SIZEOF_SOCKADDR_UN = 110;
export const SUN_PATH_MAX = 107; // 108 bytes including the terminating NUL
export const SIZEOF_MSGHDR = 56;
export const SIZEOF_IOVEC = 16;
export const SIZEOF_CMSGHDR = 16;
export const SIZEOF_UCRED = 12;
/** Most fds one SCM_RIGHTS message may carry (SCM_MAX_FD in the kernel). */
export const SCM_MAX_FD = 253;

export const cmsgAlign = (n: number): number => (n + 7) & ~7;
export const cmsgSpace = (n: number): number => SIZEOF_CMSGHDR + cmsgAlign(n);
export const cmsgLen = (n: number): number => SIZEOF_CMSGHDR + n;

function fail(op: string, e = errno()): never {
  throw new UffdError({ op, errno: e, hint: socketHint(op, errnoName(e)) });
}

function socketHint(_op: string, code: string): string | undefined {
  switch (code) {
    case 'ENOENT': return 'no socket exists at that path (is the handler listening?)';
    case 'ECONNREFUSED': return 'nothing is listening on that socket (a stale socket file?)';
    case 'EADDRINUSE': return 'the path is in use; remove it or choose another';
    case 'EACCES': case 'EPERM': return 'permission denied on the socket path or its directory';
    case 'ENAMETOOLONG': return `a Unix socket path is limited to ${SUN_PATH_MAX} bytes`;
    case 'EPIPE': case 'ECONNRESET': return 'the peer closed the connection';
    case 'EMFILE': case 'ENFILE': return 'too many open files';
    default: return undefined;
  }
}

// ---- per-thread preallocated structs ----
// Always over an explicit ArrayBuffer: its backing store is off the V8 heap, so the
// address handed to the kernel cannot move.
const alloc = (n: number): Uint8Array => new Uint8Array(new ArrayBuffer(n));
const sockaddr = alloc(SIZEOF_SOCKADDR_UN);
const sockaddrAddr = addressOf(sockaddr);
const msghdr = alloc(SIZEOF_MSGHDR);
const msgDv = new DataView(msghdr.buffer);
const msgAddr = addressOf(msghdr);
const iov = alloc(SIZEOF_IOVEC);
const iovDv = new DataView(iov.buffer);
const iovAddr = addressOf(iov);
const ucred = alloc(16);
const ucredDv = new DataView(ucred.buffer);
const ucredAddr = addressOf(ucred);
const socklen = new Uint32Array(new ArrayBuffer(8));
const socklenAddr = addressOf(socklen);
const pollfd = alloc(8);
const pollDv = new DataView(pollfd.buffer);
const pollAddr = addressOf(pollfd);

let control = alloc(cmsgSpace(4 * 8));
let controlDv = new DataView(control.buffer);
let controlAddr = addressOf(control);
function ensureControl(bytes: number): void {
  if (control.length >= bytes) return;
  control = alloc(bytes);
  controlDv = new DataView(control.buffer);
  controlAddr = addressOf(control);
}
let dataBuf = alloc(64 * 1024);
let dataAddr = addressOf(dataBuf);
function ensureData(bytes: number): void {
  if (dataBuf.length >= bytes) return;
  dataBuf = alloc(bytes);
  dataAddr = addressOf(dataBuf);
}

/** Fills the preallocated sockaddr_un; returns the length to pass to bind/connect. */
function fillSockaddr(path: string): number {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length === 0) throw new UffdError({ op: 'sockaddr', errno: ERRNO.EINVAL }, 'a Unix socket path must not be empty');
  if (bytes.length > SUN_PATH_MAX) {
    throw new UffdError({ op: 'sockaddr', errno: ERRNO.ENAMETOOLONG },
      `socket path "${path}" is ${bytes.length} bytes; a Unix socket path is limited to ${SUN_PATH_MAX} bytes`);
  }
  if (bytes.includes(0)) throw new UffdError({ op: 'sockaddr', errno: ERRNO.EINVAL }, 'a socket path must not contain NUL bytes');
  sockaddr.fill(0);
  new DataView(sockaddr.buffer).setUint16(0, AF_UNIX, true);
  sockaddr.set(bytes, 2);
  return 2 + bytes.length + 1;
}

function newSocket(nonBlocking: boolean): number {
  const fd = libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) fail('socket');
  return fd;
}

/**
 * poll(2) one fd for `events` (POLLIN, POLLOUT); returns revents, 0 on timeout.
 * timeoutMs -1 waits forever. Blocks the calling thread.
 */
export function pollOne(fd: number, events: number, timeoutMs: number): number {
  const deadline = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
  for (;;) {
    pollDv.setInt32(0, fd, true);
    pollDv.setInt16(4, events, true);
    pollDv.setInt16(6, 0, true);
    const left = deadline === Infinity ? -1 : Math.max(0, deadline - Date.now());
    const n = libc.poll(pollAddr, 1, left);
    if (n > 0) return pollDv.getInt16(6, true) & 0xffff;
    if (n === 0) return 0;
    const e = errno();
    if (e !== ERRNO.EINTR) fail('poll', e);
    if (Date.now() >= deadline) return 0;
  }
}

export interface ListenOptions {
  /** File mode of the socket path (default 0o600: only our user may connect). */
  mode?: number;
  backlog?: number;
  /** Listening socket non-blocking (default true), so accept never blocks. */
  nonBlocking?: boolean;
}

/**
 * Binds and listens on a Unix stream socket at `path`. A stale socket file (one that
 * nobody listens on) is removed first; a live one, or a path that is not a socket, is an
 * error. The mode is applied between bind and listen, so nobody can connect before it.
 */
export function listenUnix(path: string, opts: ListenOptions = {}): number {
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (st) {
    if (!st.isSocket()) {
      throw new UffdError({ op: 'listen', errno: ERRNO.EEXIST },
        `${path} exists and is not a socket; refusing to remove it`);
    }
    const probe = newSocket(false);
    const len = fillSockaddr(path);
    const r = libc.connect(probe, sockaddrAddr, len);
    const e = errno();
    libc.close(probe);
    if (r === 0) {
      throw new UffdError({ op: 'listen', errno: ERRNO.EADDRINUSE },
        `another process is already listening on ${path}`);
    }
    if (e !== ERRNO.ECONNREFUSED && e !== ERRNO.ENOENT) fail('connect (stale-socket probe)', e);
    try { fs.unlinkSync(path); } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  const fd = newSocket(opts.nonBlocking ?? true);
  try {
    const len = fillSockaddr(path);
    if (libc.bind(fd, sockaddrAddr, len) < 0) fail('bind');
    fs.chmodSync(path, opts.mode ?? 0o600);
    if (libc.listen(fd, opts.backlog ?? 16) < 0) fail('listen');
  } catch (e) {
    libc.close(fd);
    throw e;
  }
  return fd;
}

const pairBuf = new Int32Array(new ArrayBuffer(8));
const pairAddr = addressOf(pairBuf);

/**
 * A connected pair of Unix stream sockets (close-on-exec; non-blocking unless asked): a
 * private channel to a child process, which gets one end as an inherited fd.
 */
export function socketPair(nonBlocking = true): [number, number] {
  if (libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0), 0, pairAddr) < 0) fail('socketpair');
  return [pairBuf[0] ?? -1, pairBuf[1] ?? -1];
}

/** Connects to a Unix stream socket; the socket is blocking unless nonBlocking. */
export function connectUnix(path: string, nonBlocking = false): number {
  const fd = newSocket(false);
  const len = fillSockaddr(path);
  for (;;) {
    if (libc.connect(fd, sockaddrAddr, len) === 0) break;
    const e = errno();
    if (e === ERRNO.EINTR) continue;
    libc.close(fd);
    throw new UffdError({ op: 'connect', errno: e, hint: socketHint('connect', errnoName(e)) },
      `connect ${path} failed: ${errnoName(e)}`);
  }
  if (nonBlocking) setNonBlocking(fd, true);
  return fd;
}

const F_GETFL = 3;
const F_SETFL = 4;
export function setNonBlocking(fd: number, on: boolean): void {
  const fl = libc.fcntl(fd, F_GETFL, 0);
  if (fl < 0) fail('fcntl');
  if (libc.fcntl(fd, F_SETFL, on ? fl | C.O_NONBLOCK : fl & ~C.O_NONBLOCK) < 0) fail('fcntl');
}

/**
 * accept4 without blocking: the new connection's fd (non-blocking, close-on-exec), or
 * -1 when no connection is pending.
 */
export function acceptNonBlocking(listenFd: number): number {
  for (;;) {
    const fd = libc.accept4(listenFd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    const e = errno();
    if (e === ERRNO.EINTR) continue;
    // A connection that was reset before we took it: nothing to accept now.
    if (e === ERRNO.EAGAIN || e === ERRNO.ECONNABORTED) return -1;
    fail('accept4', e);
  }
}

/** Waits (poll) up to timeoutMs for a connection; its fd, or -1 on timeout. Blocks the thread. */
export function accept(listenFd: number, timeoutMs: number): number {
  const deadline = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
  for (;;) {
    const fd = acceptNonBlocking(listenFd);
    if (fd >= 0) return fd;
    const left = deadline === Infinity ? -1 : deadline - Date.now();
    if (left <= 0 && deadline !== Infinity) return -1;
    if (pollOne(listenFd, C.POLLIN, left) === 0) return -1;
  }
}

export interface ReceivedMessage {
  /** The payload bytes (a copy; empty with eof = true when the peer closed). */
  data: Buffer;
  /** Every fd that arrived in SCM_RIGHTS control messages (close-on-exec). Caller owns them. */
  fds: number[];
  /** MSG_CTRUNC: the control buffer was too small; fds that did not fit were dropped by the kernel. */
  controlTruncated: boolean;
  /** MSG_TRUNC: (datagram sockets) payload was cut; on a stream socket the rest stays queued. */
  dataTruncated: boolean;
  /** The peer closed its end (recvmsg returned 0 bytes). */
  eof: boolean;
  /** Nothing was available (non-blocking socket, no data). */
  wouldBlock: boolean;
}

/**
 * One recvmsg(2) of up to maxBytes with room for maxFds descriptors. Returns whatever
 * arrived; every received fd is returned in `fds` (even when truncated) and the caller
 * must close the ones it does not keep — see closeFds. On a non-blocking socket with
 * nothing pending, wouldBlock is set.
 */
export function recvWithFds(fd: number, maxBytes: number, maxFds: number, flags = 0): ReceivedMessage {
  if (!(maxBytes > 0) || !Number.isInteger(maxBytes)) throw new RangeError(`maxBytes must be a positive integer (got ${maxBytes})`);
  if (!(maxFds >= 0) || maxFds > SCM_MAX_FD || !Number.isInteger(maxFds)) throw new RangeError(`maxFds must be 0..${SCM_MAX_FD} (got ${maxFds})`);
  ensureData(maxBytes);
  const controlLen = maxFds > 0 ? cmsgSpace(4 * maxFds) : 0;
  ensureControl(Math.max(controlLen, 8));
  control.fill(0, 0, controlLen);
  writeU64(iovDv, 0, dataAddr);
  writeU64(iovDv, 8, maxBytes);
  msghdr.fill(0);
  writeU64(msgDv, 16, iovAddr);
  writeU64(msgDv, 24, 1);
  if (controlLen > 0) {
    writeU64(msgDv, 32, controlAddr);
    writeU64(msgDv, 40, controlLen);
  }
  let n: number;
  for (;;) {
    n = libc.recvmsg(fd, msgAddr, flags | MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    const e = errno();
    if (e === ERRNO.EINTR) continue;
    if (e === ERRNO.EAGAIN) {
      return { data: Buffer.alloc(0), fds: [], controlTruncated: false, dataTruncated: false, eof: false, wouldBlock: true };
    }
    fail('recvmsg', e);
  }
  const msgFlags = msgDv.getInt32(48, true);
  const fds = parseRightsFds(controlDv, Math.min(u64(msgDv, 40), controlLen));
  return {
    data: Buffer.from(dataBuf.subarray(0, n)),
    fds,
    controlTruncated: (msgFlags & MSG_CTRUNC) !== 0,
    dataTruncated: (msgFlags & MSG_TRUNC) !== 0,
    eof: n === 0 && fds.length === 0,
    wouldBlock: false,
  };
}

/** Walks the cmsghdr chain of a control buffer and collects the SCM_RIGHTS fds. */
export function parseRightsFds(dv: DataView, controlLen: number): number[] {
  const fds: number[] = [];
  let off = 0;
  while (off + SIZEOF_CMSGHDR <= controlLen) {
    const len = u64(dv, off);
    if (len < SIZEOF_CMSGHDR || off + len > controlLen) break;
    const level = dv.getInt32(off + 8, true);
    const type = dv.getInt32(off + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      const count = Math.floor((len - SIZEOF_CMSGHDR) / 4);
      for (let i = 0; i < count; i++) fds.push(dv.getInt32(off + SIZEOF_CMSGHDR + 4 * i, true));
    }
    off += cmsgAlign(len);
  }
  return fds;
}

/** Closes every fd in the list (received descriptors we are not keeping). */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) if (fd >= 0) libc.close(fd);
}

/**
 * Sends all of `data` with `fds` attached (SCM_RIGHTS) to the first byte, as one
 * sendmsg when the socket buffer allows (Firecracker sends its handshake in one call).
 * On a non-blocking socket, waits up to timeoutMs for room. Returns bytes sent.
 */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = [], timeoutMs = 5000): number {
  if (fds.length > SCM_MAX_FD) throw new RangeError(`at most ${SCM_MAX_FD} fds per message`);
  if (data.length === 0 && fds.length > 0) throw new RangeError('fds must travel with at least one byte of data');
  const deadline = Date.now() + timeoutMs;
  let sent = 0;
  const payload = alloc(Math.max(1, data.length)); // a copy we own, off-heap: its address is stable
  payload.set(data);
  const payloadAddr = data.length > 0 ? addressOf(payload) : 0;
  while (sent < data.length || (data.length === 0 && sent === 0)) {
    writeU64(iovDv, 0, payloadAddr + sent);
    writeU64(iovDv, 8, data.length - sent);
    msghdr.fill(0);
    writeU64(msgDv, 16, iovAddr);
    writeU64(msgDv, 24, 1);
    if (sent === 0 && fds.length > 0) {
      const space = cmsgSpace(4 * fds.length);
      ensureControl(space);
      control.fill(0, 0, space);
      writeU64(controlDv, 0, cmsgLen(4 * fds.length));
      controlDv.setInt32(8, SOL_SOCKET, true);
      controlDv.setInt32(12, SCM_RIGHTS, true);
      fds.forEach((f, i) => controlDv.setInt32(SIZEOF_CMSGHDR + 4 * i, f, true));
      writeU64(msgDv, 32, controlAddr);
      writeU64(msgDv, 40, space);
    }
    const n = libc.sendmsg(fd, msgAddr, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += n;
      if (data.length === 0) break;
      continue;
    }
    const e = errno();
    if (e === ERRNO.EINTR) continue;
    if (e === ERRNO.EAGAIN) {
      const left = deadline - Date.now();
      if (left <= 0 || pollOne(fd, POLLOUT, left) === 0) {
        throw new UffdError({ op: 'sendmsg', errno: e }, `sendmsg: peer did not take the data within ${timeoutMs} ms (${sent}/${data.length} bytes sent)`);
      }
      continue;
    }
    fail('sendmsg', e);
  }
  return sent;
}

export interface PeerCredentials { pid: number; uid: number; gid: number }

/** The credentials of the process at the other end, as of connect() (SO_PEERCRED). */
export function peerCredentials(fd: number): PeerCredentials {
  ucred.fill(0);
  socklen[0] = SIZEOF_UCRED;
  if (libc.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, ucredAddr, socklenAddr) < 0) fail('getsockopt SO_PEERCRED');
  return { pid: ucredDv.getInt32(0, true), uid: ucredDv.getUint32(4, true), gid: ucredDv.getUint32(8, true) };
}

export function closeSocket(fd: number): void {
  if (fd >= 0) libc.close(fd);
}

/**
 * Resolves when fd becomes readable (or the peer hangs up) without blocking the event
 * loop (a libuv poll handle through koffi); false on timeout or when `signal` aborts.
 * timeoutMs < 0: no timeout. Stop waiting (abort) before closing the fd: libuv must not
 * watch a closed descriptor.
 */
export function whenReadable(fd: number, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      resolve(false);
      return;
    }
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    let handle: { stop(): void; close(): void } | undefined;
    const onAbort = (): void => finish(false);
    const finish = (v: boolean | Error): void => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (handle) { handle.stop(); handle.close(); }
      if (v instanceof Error) reject(v); else resolve(v);
    };
    try {
      handle = koffi.node.poll(fd, { readable: true, disconnect: true }, () => finish(true));
    } catch (e) {
      finish(e as Error);
      return;
    }
    if (timeoutMs >= 0) timer = setTimeout(() => finish(false), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Waits without blocking the event loop for a connection; its fd, or -1 on timeout or abort. */
export async function acceptAsync(listenFd: number, timeoutMs: number, signal?: AbortSignal): Promise<number> {
  const deadline = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
  for (;;) {
    if (signal?.aborted) return -1;
    const fd = acceptNonBlocking(listenFd);
    if (fd >= 0) return fd;
    const left = deadline === Infinity ? -1 : deadline - Date.now();
    if (deadline !== Infinity && left <= 0) return -1;
    if (!(await whenReadable(listenFd, left, signal))) return -1;
  }
}

/**
 * Calls `onEvent` from the event loop whenever `fd` is readable or its peer hung up (a libuv
 * poll handle through koffi). Returns a function that stops watching.
 */
export function watchFd(fd: number, onEvent: () => void): () => void {
  const handle = koffi.node.poll(fd, { readable: true, disconnect: true }, onEvent) as { stop(): void; close(): void };
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    handle.stop();
    handle.close();
  };
}
