// Unix sockets and SCM_RIGHTS through koffi, against the real kernel.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { memfdCreate, close } from '../src/kernel/memory.js';
import { openFdCount } from './helpers/restore-fixtures.js';
import {
  accept, acceptAsync, acceptNonBlocking, closeFds, closeSocket, connectUnix, listenUnix, peerCredentials,
  recvWithFds, sendWithFds, whenReadable, SUN_PATH_MAX,
} from '../src/kernel/socket.js';
import { at } from './helpers/at.js';

function fdTarget(fd: number): string {
  return fs.readlinkSync(`/proc/self/fd/${fd}`);
}

describe('socket: Unix stream sockets with SCM_RIGHTS', () => {
  let dir: string;
  let sock: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-sock-'));
    sock = path.join(dir, 's.sock');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('listens with the requested mode, accepts, and reports the peer credentials', () => {
    const l = listenUnix(sock, { mode: 0o660 });
    try {
      assert.equal(fs.statSync(sock).mode & 0o777, 0o660);
      assert.ok(fs.statSync(sock).isSocket());
      assert.equal(acceptNonBlocking(l), -1, 'nothing pending yet');
      const c = connectUnix(sock);
      const a = accept(l, 1000);
      assert.ok(a >= 0);
      assert.deepEqual(peerCredentials(a), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
      closeSocket(c);
      closeSocket(a);
    } finally {
      closeSocket(l);
    }
  });

  it('accept with a timeout returns -1 when nobody connects', () => {
    const l = listenUnix(sock);
    try {
      const t0 = Date.now();
      assert.equal(accept(l, 50), -1);
      assert.ok(Date.now() - t0 >= 45);
    } finally {
      closeSocket(l);
    }
  });

  it('removes a stale socket file, refuses a live one and a path that is not a socket', () => {
    const l1 = listenUnix(sock);
    assert.throws(() => listenUnix(sock), /already listening/);
    closeSocket(l1); // the file stays behind: stale
    assert.ok(fs.existsSync(sock));
    const l2 = listenUnix(sock);
    const c = connectUnix(sock);
    closeSocket(c);
    closeSocket(l2);
    const file = path.join(dir, 'regular');
    fs.writeFileSync(file, 'keep me');
    assert.throws(() => listenUnix(file), /not a socket; refusing to remove it/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');
    assert.throws(() => listenUnix('/tmp/' + 'x'.repeat(SUN_PATH_MAX)), /limited to 107 bytes/);
    assert.throws(() => connectUnix(path.join(dir, 'nobody.sock')), /ENOENT/);
  });

  it('passes data and fds; the received fd is the same open file', () => {
    const l = listenUnix(sock);
    const memfd = memfdCreate('uffd-sock-test-fd');
    try {
      const c = connectUnix(sock);
      const a = accept(l, 1000);
      const payload = Buffer.from('[{"hello":"world"}]');
      assert.equal(sendWithFds(c, payload, [memfd]), payload.length);
      const m = recvWithFds(a, 1024, 1);
      assert.equal(m.data.toString(), payload.toString());
      assert.equal(m.fds.length, 1);
      assert.notEqual(m.fds[0], memfd);
      assert.equal(fdTarget(at(m.fds, 0)), fdTarget(memfd));
      assert.match(fdTarget(at(m.fds, 0)), /memfd:uffd-sock-test-fd/);
      assert.equal(m.controlTruncated, false);
      assert.equal(m.eof, false);
      // close-on-exec is set on received fds (MSG_CMSG_CLOEXEC).
      assert.match(fs.readFileSync(`/proc/self/fdinfo/${m.fds[0]}`, 'utf8'), /flags:\s+0[0-7]*2[0-7]{6}\b/);
      closeFds(m.fds);
      // Nothing more pending on a non-blocking accepted socket; then EOF after close.
      assert.equal(recvWithFds(a, 1024, 1).wouldBlock, true);
      closeSocket(c);
      const e = recvWithFds(a, 1024, 1);
      assert.equal(e.eof, true);
      closeSocket(a);
    } finally {
      close(memfd);
      closeSocket(l);
    }
  });

  it('more fds than room: MSG_CTRUNC, the ones that fit are returned and closing them leaks nothing', () => {
    const l = listenUnix(sock);
    const memfd = memfdCreate('uffd-sock-many');
    try {
      const before = openFdCount();
      const c = connectUnix(sock);
      const a = accept(l, 1000);
      sendWithFds(c, Buffer.from('x'), Array(8).fill(memfd));
      const m = recvWithFds(a, 16, 1); // room for 2 fds (8-byte alignment)
      assert.equal(m.controlTruncated, true);
      assert.ok(m.fds.length >= 1 && m.fds.length <= 2, `got ${m.fds.length}`);
      closeFds(m.fds);
      // A hostile peer sending 2 fds when 1 is expected: both arrive, both closed.
      sendWithFds(c, Buffer.from('y'), [memfd, memfd]);
      const m2 = recvWithFds(a, 16, 4);
      assert.equal(m2.fds.length, 2);
      closeFds(m2.fds);
      closeSocket(c);
      closeSocket(a);
      assert.equal(openFdCount(), before);
    } finally {
      close(memfd);
      closeSocket(l);
    }
  });

  it('a large payload crosses in several reads; the fd travels with the first byte', () => {
    const l = listenUnix(sock);
    const memfd = memfdCreate('uffd-sock-big');
    try {
      const c = connectUnix(sock);
      const a = accept(l, 1000);
      const big = Buffer.alloc(100 * 1024, 0x61); // fits the socket buffer, crosses in several skbs
      assert.equal(sendWithFds(c, big, [memfd]), big.length);
      const chunks: Buffer[] = [];
      const fds: number[] = [];
      for (;;) {
        const m = recvWithFds(a, 16 * 1024, 2);
        if (m.wouldBlock) break;
        chunks.push(m.data);
        fds.push(...m.fds);
        if (chunks.length === 1) assert.equal(m.fds.length, 1, 'the fd arrives with the first read');
      }
      assert.equal(Buffer.concat(chunks).length, big.length);
      assert.ok(chunks.length >= 2);
      assert.equal(fds.length, 1);
      closeFds(fds);
      closeSocket(c);
      closeSocket(a);
    } finally {
      close(memfd);
      closeSocket(l);
    }
  });

  it('acceptAsync and whenReadable wait without blocking the event loop', async () => {
    const l = listenUnix(sock);
    try {
      let ticks = 0;
      const iv = setInterval(() => ticks++, 5);
      setTimeout(() => closeSocket(connectUnix(sock)), 60);
      const a = await acceptAsync(l, 2000);
      clearInterval(iv);
      assert.ok(a >= 0);
      assert.ok(ticks >= 3, `event loop ran ${ticks} timer ticks while waiting`);
      // The peer already closed: readable (EOF) at once.
      assert.equal(await whenReadable(a, 1000), true);
      assert.equal(recvWithFds(a, 16, 1).eof, true);
      closeSocket(a);
      assert.equal(await acceptAsync(l, 30), -1);
    } finally {
      closeSocket(l);
    }
  });
});
