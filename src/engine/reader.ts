// Reading the userfaultfd, shared by every engine thread that reads it (the dispatcher and,
// with readers 'all', the workers, as native multi-threaded handlers do).
//
// Ordering: a thread takes the engine's read lock, reads one batch and applies the batch's
// non-fault events (REMOVE, UNMAP, REMAP, FORK) to the page-state and region tables before
// it lets go. So a fault that any thread reads after an event is only looked at once that
// event is in the tables (the kernel hands out messages in order, one reader at a time),
// exactly as when one thread read everything. Faults are resolved after the lock is
// released, concurrently, exactly once by the page-state claim. A fill that a REMOVE
// overtakes (claimed before the event was read) finds its page DROPPED when it finishes
// and makes it read zeros again (Resolver.finish/rezero).
import {
  SIZEOF_UFFD_MSG, UFFD_EVENT_FORK, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMAP, UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP,
  UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_RWP, UFFD_PAGEFAULT_FLAG_WP,
} from '../kernel/constants.js';
import { msgEvent, msgFaultAddress, msgFaultFlags, u64 } from '../kernel/messages.js';
import { yieldCpu } from '../kernel/time.js';
import { MessageBuffer } from '../kernel/userfaultfd.js';
import * as L from './layout.js';
import type { Resolver } from './resolver.js';
import { appendRemove } from './remove-journal.js';
import { C_EVENTS, C_READS, C_REMOVES, PAGE_DROPPED } from './shared.js';

/** What an engine thread tells the main thread (events, incidents). */
export type ThreadMessage =
  | { type: 'remove' | 'unmap'; start: number; end: number }
  | { type: 'remap'; from: number; to: number; len: number }
  | { type: 'fork'; ufd: number }
  | { type: 'unknown'; event: number }
  | { type: 'incident'; message: string };

/** The WRITE bit does not change how a fault is resolved: dropping it lets read and write faults share an ioctl. */
const KIND_BITS = UFFD_PAGEFAULT_FLAG_MINOR | UFFD_PAGEFAULT_FLAG_RWP | UFFD_PAGEFAULT_FLAG_WP;

export class UffdReader {
  readonly buf: MessageBuffer;
  private readonly dv: DataView;
  private readonly r: Resolver;
  private readonly ctl: Int32Array;
  private readonly table: Float64Array;
  private readonly post: (m: ThreadMessage) => void;
  private readonly journalFd: number;

  constructor(r: Resolver, capacity: number, post: (m: ThreadMessage) => void) {
    this.r = r;
    this.ctl = r.control;
    this.table = r.table;
    this.post = post;
    this.journalFd = r.setup.removeJournalFd ?? -1;
    this.buf = new MessageBuffer(capacity);
    this.dv = this.buf.view;
  }

  /**
   * One non-blocking read(2) under the read lock, the batch's events applied before the
   * lock is released. Returns the number of messages (0: nothing pending); the faults
   * among them are for the caller (isFault, address, flags).
   */
  read(): number {
    const ctl = this.ctl;
    while (Atomics.compareExchange(ctl, L.CT_READ_LOCK, 0, 1) !== 0) yieldCpu(); // held for one read(2)
    let n = 0;
    try {
      n = this.r.uffd.read(this.buf);
      if (n > 0) {
        this.r.counters[C_READS]++;
        for (let i = 0; i < n; i++) if (msgEvent(this.dv, i) !== UFFD_EVENT_PAGEFAULT) this.applyEvent(i);
      }
    } finally {
      Atomics.store(ctl, L.CT_READ_LOCK, 0);
    }
    return n;
  }

  isFault(i: number): boolean { return msgEvent(this.dv, i) === UFFD_EVENT_PAGEFAULT; }
  address(i: number): number { return msgFaultAddress(this.dv, i); }
  flags(i: number): number { return msgFaultFlags(this.dv, i) & KIND_BITS; }

  // ---- non-fault events ------------------------------------------------------------

  private applyEvent(i: number): void {
    const dv = this.dv;
    const base = i * SIZEOF_UFFD_MSG;
    const ev = msgEvent(dv, i);
    this.r.counters[C_EVENTS]++;
    switch (ev) {
      case UFFD_EVENT_REMOVE: {
        const start = u64(dv, base + 8);
        const end = u64(dv, base + 16);
        // Journaled before it is applied: a supervisor's next engine must know of it if we die now.
        if (this.journalFd >= 0) appendRemove(this.journalFd, start, end);
        this.dropRange(start, end, false);
        this.r.counters[C_REMOVES]++;
        this.post({ type: 'remove', start, end });
        break;
      }
      case UFFD_EVENT_UNMAP: {
        const start = u64(dv, base + 8);
        const end = u64(dv, base + 16);
        this.dropRange(start, end, true);
        this.post({ type: 'unmap', start, end });
        break;
      }
      case UFFD_EVENT_REMAP: {
        const from = u64(dv, base + 8);
        const to = u64(dv, base + 16);
        const len = u64(dv, base + 24);
        this.remap(from, to, len);
        this.post({ type: 'remap', from, to, len });
        break;
      }
      case UFFD_EVENT_FORK:
        this.post({ type: 'fork', ufd: dv.getUint32(base + 8, true) });
        break;
      default:
        this.post({ type: 'unknown', event: ev });
    }
    Atomics.add(this.ctl, L.CT_EPOCH, 1);
  }

  /** Marks pages of every row overlapping [start, end) as DROPPED; an unmap retires rows it covers. */
  private dropRange(start: number, end: number, unmap: boolean): void {
    const table = this.table;
    const rows = Atomics.load(this.ctl, L.CT_REGION_ROWS);
    for (let row = 0; row < rows; row++) {
      const b = row * L.RT_WORDS;
      if (table[b + L.RT_ALIVE] === 0) continue;
      const rs = table[b + L.RT_START];
      const re = rs + table[b + L.RT_SIZE];
      const s = Math.max(start, rs);
      const e = Math.min(end, re);
      if (s >= e) continue;
      const ps = table[b + L.RT_PAGE_SIZE];
      const first = Math.floor((s - rs) / ps);
      const last = Math.ceil((e - rs) / ps);
      const stateBase = table[b + L.RT_STATE_BASE];
      for (let p = first; p < last; p++) this.r.states.set(stateBase + p, PAGE_DROPPED);
      if (unmap && s === rs && e === re) table[b + L.RT_ALIVE] = 0;
    }
  }

  private addRow(from: number, start: number, size: number, offset: number): void {
    const table = this.table;
    const rows = Atomics.load(this.ctl, L.CT_REGION_ROWS);
    if (rows >= L.MAX_REGION_ROWS) {
      this.post({ type: 'incident', message: `mremap split a region more than ${L.MAX_REGION_ROWS} times; faults in the moved part are no longer served` });
      return;
    }
    const src = from * L.RT_WORDS;
    const dst = rows * L.RT_WORDS;
    for (let k = 0; k < L.RT_WORDS; k++) table[dst + k] = table[src + k];
    const ps = table[src + L.RT_PAGE_SIZE];
    table[dst + L.RT_START] = start;
    table[dst + L.RT_SIZE] = size;
    table[dst + L.RT_STATE_BASE] = table[src + L.RT_STATE_BASE] + offset / ps;
    table[dst + L.RT_SRC_ADDR] = table[src + L.RT_SRC_ADDR] + offset;
    table[dst + L.RT_SRC_OFFSET] = table[src + L.RT_SRC_OFFSET] + offset;
    Atomics.store(this.ctl, L.CT_REGION_ROWS, rows + 1);
  }

  /** mremap moved [from, from+len) to `to`: the pages keep their state, at a new address. */
  private remap(from: number, to: number, len: number): void {
    const table = this.table;
    const row = this.r.findRow(from);
    if (row < 0) return;
    const b = row * L.RT_WORDS;
    const rs = table[b + L.RT_START];
    const size = table[b + L.RT_SIZE];
    const off = from - rs;
    const moved = Math.min(len, size - off);
    if (off === 0 && moved === size) {
      table[b + L.RT_START] = to;
      return;
    }
    if (off + moved < size) this.addRow(row, from + moved, size - off - moved, off + moved); // the tail stays
    this.addRow(row, to, moved, off); // the moved part
    if (off === 0) table[b + L.RT_ALIVE] = 0;
    else table[b + L.RT_SIZE] = off; // the head stays
  }
}
