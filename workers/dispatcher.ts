// The dispatcher thread: polls the userfaultfd and a wake-up eventfd and reads messages in
// batches (UffdReader: under the engine's read lock, non-fault events applied to the tables
// before any later fault is looked at). With readers 'all' the workers read the uffd too and
// the dispatcher resolves what it reads itself; it is the reader that never blocks, so an
// event is always read (a worker waiting for one — EAGAIN, a rezero — is never stuck).
// With readers 'dispatcher' it shards faults by address to the workers' rings, resolving a
// fault itself when the target worker sleeps and the batch is small (a hand-off costs a
// cross-CPU wake-up, which is slower than the ioctl).
import { parentPort, workerData } from 'node:worker_threads';
import { UFFD_PAGEFAULT_FLAG_WP } from '../src/kernel/constants.js';
import { EpollWaiter, eventfdDrain } from '../src/kernel/memory.js';
import * as L from '../src/engine/layout.js';
import { UffdReader, ThreadMessage } from '../src/engine/reader.js';
import { nowMs, Resolver } from '../src/engine/resolver.js';
import { C_HANDOFFS, C_INLINE, Ring } from '../src/engine/shared.js';
import { waitForSetup, warmUpOnce } from '../src/engine/warm-up.js';

const setup: L.EngineSetup = waitForSetup(workerData);
if (setup.warmUp) warmUpOnce(); // a cold start: compile the fault path before the first real fault
const r = new Resolver(setup, setup.workers, false);
const ctl = r.control;
const table = r.table;
const c = r.counters;
const rings = setup.rings.map((b) => new Ring(b));
const staged = new Int32Array(rings.length);
const reader = new UffdReader(r, 256, post);
const inlineAuto = setup.inline === 'auto';
const inlineAll = setup.inline === 'always';
const canInlineWp = setup.wpHook === null;
// Re-zeroing a page blocks on work only a reader can do: a worker does it.
r.deferRezero = (addr: number) => {
  const row = r.findRow(addr);
  if (row < 0) return;
  Atomics.add(ctl, L.CT_REZERO_PENDING, 1); // Engine.stop waits for these before unregistering
  const shard = Math.floor(r.globalPage(row, addr) / setup.stripePages) % rings.length;
  while (!rings[shard].stage(staged[shard], addr, L.FAULT_REZERO, nowMs())) {
    rings[shard].publish(staged[shard]);
    staged[shard] = 0;
    Atomics.wait(ctl, L.CT_STOP, 0, 0.05);
  }
  staged[shard]++;
};

function post(msg: ThreadMessage | { type: 'exit' }): void {
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

// ---- main loop -----------------------------------------------------------------------

/** readers 'all': a worker is busy away from the uffd (or not started): read in its place. */
function helpWanted(): boolean {
  for (let w = 0; w < setup.workers; w++) if (Atomics.load(ctl, L.CT_HELP + w) !== 0) return true;
  return false;
}

const alwaysReads = setup.readers !== 'all';
// Exclusive on the uffd when the workers wait on it too: a fault wakes one reader, not all.
const both = new EpollWaiter([setup.uffdFd, setup.eventFd], [!alwaysReads, false]);
const wakeOnly = new EpollWaiter([setup.eventFd], [false]);
Atomics.add(ctl, L.CT_READY, 1);
let idleReads = 0;
let idleSince = 0;
let lastBusy = false; // faults arrived since the last sleep
const spinMs = setup.dispatcherSpinMicros / 1000;
for (;;) {
  if (Atomics.load(ctl, L.CT_STOP) !== 0) break;
  if (alwaysReads || helpWanted()) {
    const n = reader.read();
    if (n > 0) {
      idleReads = 0;
      lastBusy = true;
      const t = nowMs();
      for (let i = 0; i < n; i++) if (reader.isFault(i)) route(reader.address(i), reader.flags(i), t, n);
      for (let s = 0; s < rings.length; s++) {
        if (staged[s] !== 0) {
          rings[s].publish(staged[s]);
          staged[s] = 0;
        }
      }
      continue;
    }
    // Nothing pending: keep trying for a moment before sleeping, but only while faults keep
    // coming (a sleeping CPU takes tens of µs to wake on this kind of machine).
    if (idleReads === 0) idleSince = performance.now();
    if (++idleReads < 2 || (spinMs > 0 && lastBusy && performance.now() - idleSince < spinMs)) continue;
  }
  idleReads = 0;
  lastBusy = false;
  r.updateCpu();
  if (alwaysReads) {
    both.wait(-1);
  } else {
    // The flag is raised before the help words are read; a worker raises its word before it
    // reads the flag: one of the two sees the other.
    Atomics.store(ctl, L.CT_DISPATCHER_IDLE, 1);
    if (helpWanted()) both.wait(5); // reading in a worker's place: look again soon, it may be back
    else wakeOnly.wait(-1);
    Atomics.store(ctl, L.CT_DISPATCHER_IDLE, 0);
  }
  eventfdDrain(setup.eventFd);
}
r.updateCpu(true);
both.close();
wakeOnly.close();
Atomics.store(ctl, L.CT_DISPATCHER_DONE, 1);
post({ type: 'exit' });
