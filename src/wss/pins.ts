// Holding file pages across a hole punch, so that saving a page and freeing it is one step
// for every writer. vmsplice(2) of a mapping into a pipe takes a reference on each page
// instead of copying it (pipe buffers of user pages); punching the hole then removes the
// pages from the page cache and unmaps them everywhere, but the pipe still holds them: any
// write made up to the punch is in the pages the pipe returns when it is read, and after the
// punch nothing can write them any more (a touch is a missing fault, which the engine holds).
// This is what lets the parallel engine serve evicted shmem/hugetlbfs pages without taking
// part in the eviction (it resolves minor faults without consulting anyone's page states).
//
// Pipes are grown to pipe-max-size (1 MiB by default) when the user's pipe allowance permits,
// and enough of them are opened to hold one huge page.
import * as C from '../kernel/constants.js';
import { ConfigError, UnsupportedError } from '../kernel/errors.js';
import { addressOf } from '../kernel/libc.js';
import * as M from '../kernel/memory.js';
import { Pipe } from '../kernel/pipe.js';

const PIPE_BYTES = 1 << 20;
const MAX_PIPES = 64;

/** A pipe and the bytes of pinned pages it holds now. */
interface Held { pipe: Pipe; used: number }

export class PagePins {
  private readonly pipes: Held[] = [];
  /** Bytes the pipes can hold at once: the largest run pin() takes. */
  readonly capacity: number;
  private pinned = 0;

  /** Opens pipes that together hold at least `minBytes` (and at least 1 MiB). */
  constructor(minBytes: number) {
    const want = Math.max(minBytes, PIPE_BYTES);
    let cap = 0;
    try {
      while (cap < want) {
        if (this.pipes.length >= MAX_PIPES) {
          throw new UnsupportedError(`holding ${want} bytes of pages needs more than ${MAX_PIPES} pipes ` +
            `(each holds ${this.pipes[0]?.pipe.capacity ?? 0} bytes here; raise /proc/sys/fs/pipe-max-size, or use server 'trap')`);
        }
        const pipe = Pipe.open(PIPE_BYTES);
        this.pipes.push({ pipe, used: 0 });
        cap += pipe.capacity;
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
      while (done < len && p.used < p.pipe.capacity) {
        const n = Math.min(len - done, p.pipe.capacity - p.used);
        let got: number;
        try {
          got = p.pipe.vmsplice(addr + done, n);
        } catch (e) {
          this.pinned = done;
          this.discard();
          throw e;
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
        const n = p.pipe.readTo(dst + done, p.used);
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
      try {
        while (p.used > 0) p.used -= p.pipe.readTo(a, Math.min(p.used, sink.length));
      } catch {
        // Nothing more to read back.
      }
      p.used = 0;
    }
    this.pinned = 0;
  }

  close(): void {
    for (const p of this.pipes.splice(0)) p.pipe.close();
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
