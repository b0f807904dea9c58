// The Firecracker-compatible restore server, minus the fault engine: listen on a Unix
// socket, accept each connection, check the peer's uid, receive the handshake (JSON +
// SCM_RIGHTS) with a timeout, validate it against the memory file, and hand
// (handshake, uffd fd, memory file) to an injected `serveConnection` — the parallel
// engine in production, a trivial handler in tests.
//
// Ownership: the server owns the connection socket and every received fd. It closes the
// uffd and the socket once serveConnection settles (dup the uffd to keep it longer), and
// closes every fd of a rejected handshake at once.
// Sessions end when Firecracker goes away: it keeps the socket open for its whole life,
// so the hang-up of the connection (ctx.hangup, ctx.signal) is the end of the VM.
import * as fs from 'node:fs';
import * as C from '../kernel/constants.js';
import { openFile, close as closeFd, getuid } from '../kernel/memory.js';
import {
  acceptAsync, closeFds, closeSocket, listenUnix, peerCredentials, recvWithFds, sendWithFds, socketPair, whenReadable,
  PeerCredentials, watchFd,
} from '../kernel/socket.js';
import {
  DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_REGIONS, encodeHandshake, Handshake, HandshakeError, jsonValueEnd, validateHandshake,
} from './handshake.js';

export interface MemoryFile {
  /** The file's path (or, for a memory file elsewhere, its URL). */
  path: string;
  /** Open read-only; the engine may mmap it. Owned by the server (closed on close()). -1 for a memory file elsewhere. */
  fd: number;
  size: number;
}

export interface SessionContext {
  /** Connection number (1, 2, ...). */
  id: number;
  /** The connection socket (owned by the server). */
  conn: number;
  peer: PeerCredentials;
  /** Resolves when the peer hangs up (Firecracker exited) or the server closes. */
  hangup: Promise<void>;
  /** Aborted at the same moment as hangup resolves. */
  signal: AbortSignal;
  /** For an accepted secret-hiding handshake: [guest_memfd, bitmap memfd] (closed with the session). */
  extraFds: number[];
}

/** Serves the faults of one restored VM; resolves when the session is over. */
export type ServeConnection = (handshake: Handshake, uffdFd: number, memFile: MemoryFile, ctx: SessionContext) => Promise<unknown>;

export type ServerEvent =
  | { type: 'listening'; path: string }
  | { type: 'accepted'; id: number; peer: PeerCredentials }
  | { type: 'rejected'; id: number; peer?: PeerCredentials; code: string; reason: string }
  | { type: 'session-start'; id: number; handshake: Handshake }
  | { type: 'session-end'; id: number; ms: number; error?: string };

export interface RestoreServerOptions {
  socketPath: string;
  memFilePath: string;
  /**
   * A memory file that is not a local file (e.g. in object storage): its URL and size; the
   * server opens nothing and serveConnection gets fd -1 (it brings its own page source).
   */
  remoteMemory?: { url: string; size: number };
  serveConnection: ServeConnection;
  /** Mode of the socket file (default 0o600). */
  socketMode?: number;
  /** Peer uids allowed to connect (default: our own uid). Empty array: anyone who can reach the socket. */
  allowedUids?: number[];
  /** How long a peer has, after connecting, to deliver the whole handshake (default 5000 ms). */
  recvTimeoutMs?: number;
  maxPayloadBytes?: number;
  maxRegions?: number;
  /** Page sizes accepted (default: 4 KiB plus the hugetlb sizes this kernel has). */
  pageSizes?: number[];
  /** Concurrent sessions; further connections wait in the backlog (default 64). */
  maxSessions?: number;
  secretHiding?: 'reject' | 'accept';
  onEvent?: (e: ServerEvent) => void;
}

/** 4 KiB plus every hugetlb size the kernel exposes under /sys/kernel/mm/hugepages. */
export function kernelPageSizes(): number[] {
  const sizes = [C.PAGE_SIZE];
  try {
    for (const d of fs.readdirSync('/sys/kernel/mm/hugepages')) {
      const m = /^hugepages-(\d+)kB$/.exec(d);
      if (m) sizes.push(Number(m[1]) * 1024);
    }
  } catch { /* no hugetlb */ }
  return sizes.filter((s) => s === C.PAGE_SIZE || s === C.HUGE_PAGE_2M || s === C.HUGE_PAGE_1G).sort((a, b) => a - b);
}

export class ReceiveError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'ReceiveError';
    this.code = code;
  }
}

/**
 * Reads one handshake from a connected (non-blocking) socket without blocking the event
 * loop: bytes until they form one complete JSON value, plus every fd that arrived.
 * Throws ReceiveError (timeout, closed, too-large, fds) after closing any fd received.
 */
export async function receiveHandshake(conn: number, timeoutMs: number, maxBytes = DEFAULT_MAX_PAYLOAD,
  maxFds = 4, signal?: AbortSignal): Promise<{ payload: Buffer; fds: number[]; trailing: number }> {
  const deadline = Date.now() + timeoutMs;
  const chunks: Buffer[] = [];
  const fds: number[] = [];
  let total = 0;
  try {
    for (;;) {
      const m = recvWithFds(conn, Math.min(64 * 1024, maxBytes + 1 - total), maxFds);
      if (!m.wouldBlock) {
        fds.push(...m.fds);
        if (m.controlTruncated) {
          throw new ReceiveError('fds', `the peer sent more file descriptors than the ${maxFds} a handshake may carry`);
        }
        if (m.eof) {
          throw new ReceiveError('closed', total === 0 ? 'the peer closed the connection without sending a handshake'
            : `the peer closed the connection after ${total} bytes of an incomplete handshake`);
        }
        chunks.push(m.data);
        total += m.data.length;
        if (total > maxBytes) throw new ReceiveError('too-large', `handshake larger than ${maxBytes} bytes`);
        const text = Buffer.concat(chunks).toString('utf8');
        const end = jsonValueEnd(text);
        if (end >= 0) {
          const payload = Buffer.from(text.slice(0, end), 'utf8');
          return { payload, fds, trailing: total - payload.length };
        }
        continue;
      }
      const left = deadline - Date.now();
      const ready = left > 0 && await whenReadable(conn, left, signal);
      if (signal?.aborted) throw new ReceiveError('closing', 'the server is shutting down');
      if (!ready) {
        throw new ReceiveError('timeout', total === 0 ? `no handshake within ${timeoutMs} ms`
          : `handshake incomplete after ${timeoutMs} ms (${total} bytes received)`);
      }
    }
  } catch (e) {
    closeFds(fds);
    throw e;
  }
}

/**
 * Watches a connection for the peer's hang-up (EOF or error) on the event loop; data that
 * arrives meanwhile is read and dropped (mainline Firecracker sends nothing after the
 * handshake).
 */
export function watchHangup(conn: number): { hangup: Promise<void>; cancel(): void } {
  let unwatch: (() => void) | undefined;
  let resolveFn!: () => void;
  const hangup = new Promise<void>((r) => { resolveFn = r; });
  let done = false;
  const finish = (): void => {
    if (done) return;
    done = true;
    unwatch?.();
    resolveFn();
  };
  unwatch = watchFd(conn, () => {
    for (let i = 0; i < 64; i++) {
      let m;
      try {
        m = recvWithFds(conn, 4096, 4);
      } catch {
        finish();
        return;
      }
      closeFds(m.fds);
      if (m.eof) { finish(); return; }
      if (m.wouldBlock) return;
    }
  });
  return { hangup, cancel: finish };
}

export interface SessionOutcome {
  accepted: boolean;
  /** Why the handshake was refused, or the error serveConnection ended with. */
  reason?: string;
  /** For a refusal: the HandshakeError / ReceiveError code, or 'uid', 'peer', 'closing'. */
  code?: string;
}

export class RestoreServer {
  readonly opts: RestoreServerOptions;
  readonly memFile: MemoryFile;
  private listenFd: number;
  private nextId = 1;
  private closing = false;
  /** Aborted by close(): stops a pending accept before the listening fd is closed. */
  private readonly stopAccept = new AbortController();
  private accepting: Promise<unknown> = Promise.resolve();
  private readonly sessions = new Map<number, { stop: AbortController; done: Promise<void> }>();
  private readonly pageSizes: number[];
  private rehearsal: Promise<void> | undefined;

  private constructor(opts: RestoreServerOptions, listenFd: number, memFile: MemoryFile) {
    this.opts = opts;
    this.listenFd = listenFd;
    this.memFile = memFile;
    this.pageSizes = opts.pageSizes ?? kernelPageSizes();
  }

  /** Opens the memory file and starts listening (a stale socket file is replaced). */
  static listen(opts: RestoreServerOptions): RestoreServer {
    const size = opts.remoteMemory ? opts.remoteMemory.size : fs.statSync(opts.memFilePath).size;
    const fd = opts.remoteMemory ? -1 : openFile(opts.memFilePath, C.O_RDONLY);
    let listenFd: number;
    try {
      listenFd = listenUnix(opts.socketPath, { mode: opts.socketMode ?? 0o600 });
    } catch (e) {
      if (fd >= 0) closeFd(fd);
      throw e;
    }
    const s = new RestoreServer(opts, listenFd, { path: opts.remoteMemory?.url ?? opts.memFilePath, fd, size });
    s.emit({ type: 'listening', path: opts.socketPath });
    return s;
  }

  /** Resolves once run()'s rehearsal of the connection path is over (see rehearseReceive; for tests). */
  get rehearsed(): Promise<void> {
    return this.rehearsal ?? Promise.resolve();
  }

  get activeSessions(): number {
    return this.sessions.size;
  }

  private emit(e: ServerEvent): void {
    try {
      this.opts.onEvent?.(e);
    } catch { /* a logger must not break the server */ }
  }

  /** Accepts connections until close(). Each is handled concurrently. */
  async run(): Promise<void> {
    this.rehearsal ??= this.rehearseReceive().catch(() => undefined); // alongside the first accept: a VM does not wait for it
    while (!this.closing) {
      if (this.sessions.size >= (this.opts.maxSessions ?? 64)) {
        await Promise.race([...this.sessions.values()].map((s) => s.done));
        continue;
      }
      await this.acceptOne(250);
    }
  }

  /**
   * The path of a connection before its session — peer credentials, receiving the handshake
   * and its fd, validating it, watching for the hang-up — run 20 times over a socketpair of
   * our own before the first VM, quietly: V8 compiles a function when it first runs and
   * optimises it after many runs, and the first VMs paid that between their handshake and
   * their first fault (validateHandshake alone: ~0.6 ms the first time, ~0.1 the second,
   * ~10 µs warm).
   */
  private async rehearseReceive(): Promise<void> {
    const [a, b] = socketPair();
    try {
      const payload = Buffer.from(encodeHandshake([{ baseHostVirtAddr: 0x7f0000000000, size: C.PAGE_SIZE, offset: 0, pageSize: C.PAGE_SIZE }]));
      for (let i = 0; i < 20 && !this.closing; i++) {
        sendWithFds(b, payload, [b], 1000);
        peerCredentials(a);
        const r = await receiveHandshake(a, 1000);
        closeFds(r.fds);
        validateHandshake(r.payload, r.fds.length, { memFileSize: C.PAGE_SIZE, pageSizes: this.pageSizes, secretHiding: this.opts.secretHiding });
        watchHangup(a).cancel();
      }
    } finally {
      closeSocket(a);
      closeSocket(b);
    }
  }

  /**
   * Waits up to timeoutMs for one connection and starts handling it; undefined on
   * timeout. `outcome` settles when the session is over (accepted and served), or at
   * once when the handshake was refused (with the reason).
   */
  async acceptOne(timeoutMs: number): Promise<{ id: number; outcome: Promise<SessionOutcome> } | undefined> {
    if (this.listenFd < 0 || this.closing) return undefined;
    const pending = acceptAsync(this.listenFd, timeoutMs, this.stopAccept.signal);
    this.accepting = pending;
    const conn = await pending;
    if (conn < 0) return undefined;
    const id = this.nextId++;
    const stop = new AbortController();
    const outcome = this.handle(id, conn, stop.signal);
    const done = outcome.then(() => undefined);
    this.sessions.set(id, { stop, done });
    void done.finally(() => this.sessions.delete(id));
    // Wrapped in an object: an async function returning the promise itself would wait for it.
    return { id, outcome };
  }

  private async handle(id: number, conn: number, stop: AbortSignal): Promise<SessionOutcome> {
    let peer: PeerCredentials | undefined;
    const reject = (code: string, reason: string): { accepted: false; reason: string; code: string } => {
      closeSocket(conn);
      this.emit({ type: 'rejected', id, peer, code, reason });
      return { accepted: false, reason, code };
    };
    try {
      peer = peerCredentials(conn);
    } catch (e) {
      return reject('peer', (e as Error).message);
    }
    this.emit({ type: 'accepted', id, peer });
    const allowed = this.opts.allowedUids ?? [getuid()];
    if (allowed.length > 0 && !allowed.includes(peer.uid)) {
      return reject('uid', `peer pid ${peer.pid} runs as uid ${peer.uid}, which is not allowed (allowed: ${allowed.join(', ')})`);
    }
    let received: { payload: Buffer; fds: number[]; trailing: number };
    try {
      received = await receiveHandshake(conn, this.opts.recvTimeoutMs ?? 5000, this.opts.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD,
        4, stop);
    } catch (e) {
      return reject(e instanceof ReceiveError ? e.code : 'recv', (e as Error).message);
    }
    if (stop.aborted) {
      closeFds(received.fds);
      return reject('closing', 'the server is shutting down');
    }
    let handshake: Handshake;
    try {
      handshake = validateHandshake(received.payload, received.fds.length, {
        memFileSize: this.memFile.size,
        maxRegions: this.opts.maxRegions ?? DEFAULT_MAX_REGIONS,
        maxPayloadBytes: this.opts.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD,
        pageSizes: this.pageSizes,
        secretHiding: this.opts.secretHiding,
      });
    } catch (e) {
      closeFds(received.fds);
      return reject(e instanceof HandshakeError ? e.code : 'invalid', (e as Error).message);
    }
    if (received.trailing > 0) handshake.warnings.push(`${received.trailing} bytes after the handshake were ignored`);
    const [uffdFd, ...extraFds] = received.fds;
    if (uffdFd === undefined) return reject('invalid', 'the handshake carried no userfaultfd');
    const watch = watchHangup(conn);
    const ac = new AbortController();
    void watch.hangup.then(() => ac.abort());
    if (stop.aborted) watch.cancel();
    else stop.addEventListener('abort', () => watch.cancel(), { once: true });
    const ctx: SessionContext = { id, conn, peer, hangup: watch.hangup, signal: ac.signal, extraFds };
    this.emit({ type: 'session-start', id, handshake });
    const t0 = Date.now();
    let error: string | undefined;
    try {
      await this.opts.serveConnection(handshake, uffdFd, this.memFile, ctx);
    } catch (e) {
      error = e instanceof Error ? e.message : String(e);
    } finally {
      watch.cancel();
      closeFds([uffdFd, ...extraFds]);
      closeSocket(conn);
    }
    this.emit({ type: 'session-end', id, ms: Date.now() - t0, error });
    return { accepted: true, reason: error };
  }

  /**
   * Stops accepting, ends every session (their hangup resolves / signal aborts), waits
   * for them, removes the socket file and closes the memory file.
   */
  async close(): Promise<void> {
    this.closing = true;
    this.stopAccept.abort();
    await this.accepting.catch(() => undefined);
    await this.rehearsal; // its loop stops at `closing`; its socketpair is closed when it settles
    if (this.listenFd >= 0) {
      closeSocket(this.listenFd);
      this.listenFd = -1;
      try { fs.unlinkSync(this.opts.socketPath); } catch { /* already gone */ }
    }
    for (const s of this.sessions.values()) s.stop.abort();
    await Promise.all([...this.sessions.values()].map((s) => s.done));
    if (this.memFile.fd >= 0) closeFd(this.memFile.fd);
    (this.memFile as { fd: number }).fd = -1;
  }
}
