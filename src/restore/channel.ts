// A message channel between the serve supervisor and its engine processes: JSON messages
// over a Unix stream socket (one end of a socketpair, the child's fd 3), file descriptors
// (the VM's userfaultfd, the memory file, the VM's connection) passed with SCM_RIGHTS.
//
// Frame: u32 JSON length, u32 fd count, JSON (little endian). A message's fds travel with
// its first byte; a stream read may also return the end of the message before it, and the
// kernel ends a read after the data that carried fds, so fds can arrive before their
// frame is complete but never after it: they wait in a FIFO and each frame takes its count.
import { closeFds, closeSocket, recvWithFds, sendWithFds, watchFd } from '../kernel/socket.js';

const HEADER = 8;
/** Largest frame accepted (a handshake of 1024 regions is ~150 KiB). */
const MAX_FRAME = 16 * 1024 * 1024;

export type ChannelMessage = { type: string } & Record<string, unknown>;

export class Channel {
  private buf: Buffer = Buffer.alloc(0);
  private readonly fds: number[] = [];
  private unwatch: (() => void) | null;
  private closed = false;

  /**
   * fd: a connected, non-blocking Unix stream socket (owned by the channel from now on).
   * onMessage gets each message with its fds (the receiver owns them); onClose runs once,
   * when the peer is gone (EOF or error) or close() is called.
   */
  constructor(readonly fd: number, private readonly onMessage: (m: ChannelMessage, fds: number[]) => void,
    private readonly onClose: () => void) {
    this.unwatch = watchFd(fd, () => this.readable());
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Sends one message; false when the peer is gone (the fds are not sent then, and stay the caller's). */
  send(m: ChannelMessage, fds: readonly number[] = []): boolean {
    if (this.closed) return false;
    const json = Buffer.from(JSON.stringify(m), 'utf8');
    const frame = Buffer.alloc(HEADER + json.length);
    frame.writeUInt32LE(json.length, 0);
    frame.writeUInt32LE(fds.length, 4);
    json.copy(frame, HEADER);
    try {
      sendWithFds(this.fd, frame, fds, 10_000);
      return true;
    } catch {
      this.close();
      return false;
    }
  }

  /**
   * Reads and delivers every message already received, now (not at the next poll): for a
   * peer known to be gone, whose last messages may still sit in the socket.
   */
  drain(): void {
    if (!this.closed) this.readable();
  }

  private readable(): void {
    let gone = false;
    for (;;) {
      let m;
      try {
        m = recvWithFds(this.fd, 64 * 1024, 16);
      } catch {
        gone = true;
        break;
      }
      this.fds.push(...m.fds);
      if (m.wouldBlock) break;
      if (m.eof || m.controlTruncated) {
        gone = true;
        break;
      }
      this.buf = this.buf.length ? Buffer.concat([this.buf, m.data]) : m.data;
    }
    // Messages that arrived before the peer went away are still delivered.
    while (!this.closed && this.buf.length >= HEADER) {
      const len = this.buf.readUInt32LE(0);
      const nfds = this.buf.readUInt32LE(4);
      if (len > MAX_FRAME || nfds > 16) {
        gone = true;
        break;
      }
      if (this.buf.length < HEADER + len) break;
      const text = this.buf.subarray(HEADER, HEADER + len).toString('utf8');
      this.buf = this.buf.subarray(HEADER + len);
      const fds = this.fds.splice(0, nfds);
      let msg: ChannelMessage;
      try {
        msg = JSON.parse(text) as ChannelMessage;
      } catch {
        closeFds(fds);
        gone = true;
        break;
      }
      try {
        this.onMessage(msg, fds);
      } catch { /* a handler's bug must not break the channel */ }
    }
    if (gone) this.close();
  }

  /** Stops reading, closes the socket and any fds not yet taken by a message. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unwatch?.();
    this.unwatch = null;
    closeFds(this.fds.splice(0));
    closeSocket(this.fd);
    this.onClose();
  }
}
