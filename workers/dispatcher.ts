// The dispatcher thread: polls the userfaultfd and a wake-up eventfd, reads messages in
// batches, shards page faults by address to the workers' rings, and applies non-fault
// events (REMOVE, UNMAP, REMAP, FORK) to the page-state table itself. When the target
// worker sleeps and the batch is small, it resolves the fault itself: a hand-off would
// cost a cross-CPU wake-up, which is slower than the ioctl.
import { parentPort, workerData } from 'node:worker_threads';
import {
  SIZEOF_UFFD_MSG, UFFD_EVENT_FORK, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMAP, UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP,
  UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_RWP, UFFD_PAGEFAULT_FLAG_WP,
} from '../src/kernel/constants.js';
import { eventfdDrain, Poller } from '../src/kernel/memory.js';
import { msgEvent, msgFaultAddress, msgFaultFlags, u64 } from '../src/kernel/messages.js';
import { MessageBuffer } from '../src/kernel/userfaultfd.js';
import * as L from '../src/engine/layout.js';
import { nowMs, Resolver } from '../src/engine/resolver.js';
import { C_EVENTS, C_HANDOFFS, C_INLINE, C_READS, C_REMOVES, PAGE_DROPPED, Ring } from '../src/engine/shared.js';

const setup = workerData as L.EngineSetup;
const r = new Resolver(setup, setup.workers, false);
const ctl = r.control;
const table = r.table;
const c = r.counters;
const rings = setup.rings.map((b) => new Ring(b));
const staged = new Int32Array(rings.length);
const poller = new Poller([setup.uffdFd, setup.eventFd]);
const buf = new MessageBuffer(256);
const dv = buf.view;
const uffd = r.uffd;
const inlineAuto = setup.inline === 'auto';
const inlineAll = setup.inline === 'always';
const canInlineWp = setup.wpHook === null;
// Re-zeroing a page blocks on work only this thread can do: a worker does it.
r.deferRezero = (addr: number) => {
  const row = r.findRow(addr);
  if (row < 0) return;
  const shard = Math.floor(r.globalPage(row, addr) / setup.stripePages) % rings.length;
  while (!rings[shard].stage(staged[shard], addr, L.FAULT_REZERO, nowMs())) {
    rings[shard].publish(staged[shard]);
    staged[shard] = 0;
    Atomics.wait(ctl, L.CT_STOP, 0, 0.05);
  }
  staged[shard]++;
};
const KIND_BITS = UFFD_PAGEFAULT_FLAG_MINOR | UFFD_PAGEFAULT_FLAG_RWP | UFFD_PAGEFAULT_FLAG_WP;

function post(msg: unknown): void {
  parentPort?.postMessage(msg);
}

function route(addr: number, flags: number, t: number, batch: number): void {
  const row = r.findRow(addr);
  if (row < 0) {
    r.handleFault(addr, flags, t, 0); // not ours any more: wake so the kernel decides
    return;
  }
  const g = r.globalPage(row, addr);
  const shard = Math.floor(g / setup.stripePages) % rings.length;
  const ring = rings[shard];
  const kindOk = (flags & UFFD_PAGEFAULT_FLAG_WP) ? canInlineWp : true;
  if (inlineAll && kindOk && table[row * L.RT_WORDS + L.RT_MISSING_OP] !== L.MISS_CALLBACK) {
    r.handleFault(addr, flags, t, 0, row);
    if (!r.deferred) {
      c[C_INLINE]++;
      return;
    }
  } else if (inlineAuto && batch <= setup.inlineBatch && kindOk && staged[shard] === 0 && ring.size() === 0 && ring.consumerSleeping()
    && table[row * L.RT_WORDS + L.RT_MISSING_OP] !== L.MISS_CALLBACK) {
    // The worker sleeps and the batch is small: resolving here is cheaper than waking it.
    // A worker that is awake (or has work queued) gets the fault, keeping its order; a
    // large batch wakes the workers so they share it.
    r.handleFault(addr, flags, t, 0, row);
    if (!r.deferred) {
      c[C_INLINE]++;
      return;
    }
  }
  while (!ring.stage(staged[shard], addr, flags, t)) {
    // Ring full: publish what is staged and let the worker drain it.
    ring.publish(staged[shard]);
    staged[shard] = 0;
    ring.kick();
    Atomics.wait(ctl, L.CT_STOP, 0, 0.05);
  }
  staged[shard]++;
  c[C_HANDOFFS]++;
}

// ---- non-fault events ------------------------------------------------------------

/** Marks pages of every row overlapping [start, end) as DROPPED; returns rows fully covered. */
function dropRange(start: number, end: number, unmap: boolean): void {
  const rows = Atomics.load(ctl, L.CT_REGION_ROWS);
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
    const base = table[b + L.RT_STATE_BASE];
    for (let p = first; p < last; p++) r.states.set(base + p, PAGE_DROPPED);
    if (unmap && s === rs && e === re) table[b + L.RT_ALIVE] = 0;
  }
}

function addRow(from: number, start: number, size: number, offset: number): void {
  const rows = Atomics.load(ctl, L.CT_REGION_ROWS);
  if (rows >= L.MAX_REGION_ROWS) {
    post({ type: 'incident', message: `mremap split a region more than ${L.MAX_REGION_ROWS} times; faults in the moved part are no longer served` });
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
  Atomics.store(ctl, L.CT_REGION_ROWS, rows + 1);
}

/** mremap moved [from, from+len) to `to`: the pages keep their state, at a new address. */
function remap(from: number, to: number, len: number): void {
  const row = r.findRow(from);
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
  if (off + moved < size) addRow(row, from + moved, size - off - moved, off + moved); // the tail stays
  addRow(row, to, moved, off); // the moved part
  if (off === 0) table[b + L.RT_ALIVE] = 0;
  else table[b + L.RT_SIZE] = off; // the head stays
}

function handleEvent(i: number): void {
  const base = i * SIZEOF_UFFD_MSG;
  const ev = msgEvent(dv, i);
  c[C_EVENTS]++;
  switch (ev) {
    case UFFD_EVENT_REMOVE: {
      const start = u64(dv, base + 8);
      const end = u64(dv, base + 16);
      dropRange(start, end, false);
      c[C_REMOVES]++;
      post({ type: 'remove', start, end });
      break;
    }
    case UFFD_EVENT_UNMAP: {
      const start = u64(dv, base + 8);
      const end = u64(dv, base + 16);
      dropRange(start, end, true);
      post({ type: 'unmap', start, end });
      break;
    }
    case UFFD_EVENT_REMAP: {
      const from = u64(dv, base + 8);
      const to = u64(dv, base + 16);
      const len = u64(dv, base + 24);
      remap(from, to, len);
      post({ type: 'remap', from, to, len });
      break;
    }
    case UFFD_EVENT_FORK:
      post({ type: 'fork', ufd: dv.getUint32(base + 8, true) });
      break;
    default:
      post({ type: 'unknown', event: ev });
  }
  Atomics.add(ctl, L.CT_EPOCH, 1);
}

// ---- main loop -----------------------------------------------------------------------

Atomics.add(ctl, L.CT_READY, 1);
let idleReads = 0;
let idleSince = 0;
let lastBusy = false; // faults arrived since the last sleep
const spinMs = setup.dispatcherSpinMicros / 1000;
for (;;) {
  if (Atomics.load(ctl, L.CT_STOP) !== 0) break;
  const n = uffd.read(buf);
  if (n === 0) {
    // Nothing pending: keep trying for a moment before sleeping in poll, but only while
    // faults keep coming (a sleeping CPU takes tens of µs to wake on this kind of machine).
    if (idleReads === 0) idleSince = performance.now();
    if (++idleReads < 2 || (spinMs > 0 && lastBusy && performance.now() - idleSince < spinMs)) continue;
    idleReads = 0;
    lastBusy = false;
    r.updateCpu();
    poller.wait(-1);
    if (poller.revents(1) !== 0) eventfdDrain(setup.eventFd);
    continue;
  }
  c[C_READS]++;
  idleReads = 0;
  lastBusy = true;
  const t = nowMs();
  for (let i = 0; i < n; i++) {
    if (msgEvent(dv, i) === UFFD_EVENT_PAGEFAULT) {
      // The WRITE bit does not change how a fault is resolved: dropping it lets read and
      // write faults on neighbouring pages share one ioctl.
      route(msgFaultAddress(dv, i), msgFaultFlags(dv, i) & KIND_BITS, t, n);
    } else {
      handleEvent(i);
    }
  }
  for (let s = 0; s < rings.length; s++) {
    if (staged[s] !== 0) {
      rings[s].publish(staged[s]);
      staged[s] = 0;
    }
  }
}
r.updateCpu(true);
Atomics.store(ctl, L.CT_DISPATCHER_DONE, 1);
post({ type: 'exit' });
