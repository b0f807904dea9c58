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
// and makes it read zeros again (Resolver.finish/rezero); until then the page is marked,
// so that no other thread claims it (PageStates.drop). The kernel lets a madvise go on
// (and zap) as soon as its REMOVE is read, before the batch's events are applied here: the
// read sequence is odd meanwhile, and a fill that may have copied in that gap waits for it
// to turn even before it publishes its pages (Resolver.settle).
import { UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_RWP, UFFD_PAGEFAULT_FLAG_WP } from '../kernel/constants.js';
import { decodeMessage, loadFaultAddress, msgEvent, msgFaultAddressIs, msgFaultFlags } from '../kernel/messages.js';
import { yieldCpu } from '../kernel/time.js';
import { MessageBuffer } from '../kernel/userfaultfd.js';
import type { ThreadMessage } from './messages.js';
import type { Resolver } from './resolver.js';
import { appendRemove } from './remove-journal.js';
import { C_EVENTS, C_READS, C_REMOVES } from './shared.js';
import { ControlBlock, MAX_REGION_ROWS, RegionTable } from './tables.js';

/** The WRITE bit does not change how a fault is resolved: dropping it lets read and write faults share an ioctl. */
const KIND_BITS = UFFD_PAGEFAULT_FLAG_MINOR | UFFD_PAGEFAULT_FLAG_RWP | UFFD_PAGEFAULT_FLAG_WP;

/**
 * Stands in for read(2) of the userfaultfd in a rehearsal (warm-up.ts): writes messages into
 * the reader's buffer (at most `capacity`) and returns how many.
 */
export type ScriptedRead = (dv: DataView, capacity: number) => number;

export class UffdReader {
  readonly buf: MessageBuffer;
  private readonly dv: DataView;
  private readonly r: Resolver;
  private readonly ctl: ControlBlock;
  private readonly table: RegionTable;
  private readonly post: (m: ThreadMessage) => void;
  private readonly journalFd: number;
  private readonly script: ScriptedRead | null;

  constructor(r: Resolver, capacity: number, post: (m: ThreadMessage) => void, script: ScriptedRead | null = null) {
    this.script = script;
    this.r = r;
    this.ctl = r.ctl;
    this.table = r.table;
    this.post = post;
    this.journalFd = r.removeJournalFd;
    this.buf = new MessageBuffer(capacity);
    this.dv = this.buf.view;
  }

  /**
   * One non-blocking read(2) under the read lock, the batch's events applied before the
   * lock is released. Returns the number of messages (0: nothing pending); the faults
   * among them are for the caller (isFault, load, follows).
   */
  read(): number {
    this.ctl.lockRead(yieldCpu, this.r.thread); // held for one read(2) and its events
    let n = 0;
    try {
      n = this.script === null ? this.r.uffd.read(this.buf) : this.script(this.dv, this.buf.capacity);
      if (n > 0) {
        this.r.counters.add(C_READS);
        for (let i = 0; i < n; i++) if (msgEvent(this.dv, i) !== UFFD_EVENT_PAGEFAULT) this.applyEvent(i);
      }
    } finally {
      this.ctl.unlockRead();
    }
    return n;
  }

  isFault(i: number): boolean { return msgEvent(this.dv, i) === UFFD_EVENT_PAGEFAULT; }
  flags(i: number): number { return msgFaultFlags(this.dv, i) & KIND_BITS; }

  /** Copies fault message i's address and kind bits into f (the address is not returned: see Fault). */
  load(i: number, f: { addr: number; flags: number }): void {
    loadFaultAddress(this.dv, i, f);
    f.flags = msgFaultFlags(this.dv, i) & KIND_BITS;
  }

  /** Whether message i is a fault of f's kind at f.addr + delta (a run one ioctl can serve). */
  follows(i: number, f: { addr: number; flags: number }, delta: number): boolean {
    return this.isFault(i) && this.flags(i) === f.flags && msgFaultAddressIs(this.dv, i, f, delta);
  }

  // ---- non-fault events ------------------------------------------------------------

  private applyEvent(i: number): void {
    const ev = decodeMessage(this.dv, i); // events are rare: a decoded object is fine here
    this.r.counters.add(C_EVENTS);
    switch (ev.type) {
      case 'pagefault':
        return; // not an event (the caller's)
      case 'remove':
        // Journaled before it is applied: a supervisor's next engine must know of it if we die now.
        if (this.journalFd >= 0) appendRemove(this.journalFd, ev.start, ev.end);
        this.dropRange(ev.start, ev.end, false);
        this.r.counters.add(C_REMOVES);
        break;
      case 'unmap':
        this.dropRange(ev.start, ev.end, true);
        break;
      case 'remap':
        this.remap(ev.from, ev.to, ev.len);
        break;
      case 'fork':
      case 'unknown':
        break;
    }
    this.post(ev);
    this.ctl.eventApplied();
  }

  /** Marks pages of every row overlapping [start, end) as DROPPED; an unmap retires the rows it covers. */
  private dropRange(start: number, end: number, unmap: boolean): void {
    const tb = this.table;
    const rows = tb.rows();
    for (let row = 0; row < rows; row++) {
      if (!tb.alive(row)) continue;
      const rs = tb.start(row);
      const re = tb.end(row);
      const s = Math.max(start, rs);
      const e = Math.min(end, re);
      if (s >= e) continue;
      const ps = tb.pageSize(row);
      const first = Math.floor((s - rs) / ps);
      const last = Math.ceil((e - rs) / ps);
      const stateBase = tb.stateBase(row);
      for (let p = first; p < last; p++) this.r.states.drop(stateBase + p);
      if (unmap && s === rs && e === re) tb.retire(row);
    }
  }

  private addPart(from: number, start: number, size: number, offset: number): void {
    if (this.table.addPart(from, start, size, offset)) return;
    this.post({ type: 'incident', message: `mremap split a region more than ${MAX_REGION_ROWS} times; faults in the moved part are no longer served` });
  }

  /** mremap moved [from, from+len) to `to`: the pages keep their state, at a new address. */
  private remap(from: number, to: number, len: number): void {
    const tb = this.table;
    const row = tb.findRow(from);
    if (row < 0) return;
    const size = tb.size(row);
    const off = from - tb.start(row);
    const moved = Math.min(len, size - off);
    if (off === 0 && moved === size) {
      tb.move(row, to);
      return;
    }
    if (off + moved < size) this.addPart(row, from + moved, size - off - moved, off + moved); // the tail stays
    this.addPart(row, to, moved, off); // the moved part
    if (off === 0) tb.retire(row);
    else tb.truncate(row, off); // the head stays
  }
}
