// The dispatcher thread: polls the userfaultfd and a wake-up eventfd and reads messages in
// batches (UffdReader: under the engine's read lock, non-fault events applied to the tables
// before any later fault is looked at). With readers 'all' the workers read the uffd too and
// the dispatcher resolves what it reads itself; it is the reader that never blocks, so an
// event is always read (a worker waiting for one — EAGAIN, a rezero — is never stuck).
// With readers 'dispatcher' it shards faults by address to the workers' rings, resolving a
// fault itself when the target worker sleeps and the batch is small (a hand-off costs a
// cross-CPU wake-up, which is slower than the ioctl).
import { parentPort, workerData } from 'node:worker_threads';
import { PAGE_SIZE, UFFD_PAGEFAULT_FLAG_WP } from '../../kernel/constants.js';
import { EpollWaiter, eventfdDrain } from '../../kernel/memory.js';
import type { EngineSetup } from '../layout.js';
import type { DispatcherMessage } from '../messages.js';
import { UffdReader } from '../reader.js';
import { DEFERRED, Fault, nowUs, Resolver } from '../resolver.js';
import { C_ERRORS, C_HANDOFFS, C_INLINE, EntryKind, Ring } from '../shared.js';
import { MissOp, WorkerState } from '../tables.js';
import { collectGarbage, isWarm, waitForSetup, warmUpOnce } from '../warm-up.js';

// A warm dispatcher (threads.ts) serves one engine after another until it is told to quit;
// a cold one (workerData is the setup) serves its engine and ends.
if (isWarm(workerData)) {
  const rehearse = (scratch: EngineSetup): void => serve(scratch, () => undefined);
  void (async () => {
    for (;;) {
      serve(waitForSetup(workerData, rehearse));
      collectGarbage(); // idle from here on: let go of the last engine's tables
      // Let the event loop turn before waiting for the next engine: the immediates and
      // finalizers Node defers to it run only then (waitForSetup blocks the thread).
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
} else {
  serve(workerData as EngineSetup);
}

/** Reads and routes the faults of one engine until it stops; `toMain` carries its events and its exit. */
function serve(setup: EngineSetup, toMain = (msg: DispatcherMessage): void => parentPort?.postMessage(msg)): void {
  if (setup.warmUp) warmUpOnce(); // a cold start: compile the fault path before the first real fault
  const r = new Resolver(setup, setup.workers, false);
  const ctl = r.ctl;
  const table = r.table;
  const c = r.counters;
  const rings = setup.rings.map((b) => new Ring(b));
  const staged = new Int32Array(rings.length);
  // Per batch: 2 if the shard's worker is down (dead, its replacement not serving yet: the
  // dispatcher resolves its faults), 1 if it slept with an empty ring when the batch was read
  // (inline 'auto'). Only this thread adds to a ring, so that holds for the batch; read once
  // per batch, not per fault (three atomic loads).
  const quiet = new Uint8Array(rings.length);
  const deathsSeen = new Int32Array(rings.length);
  const fault = new Fault(); // the fault being routed (reused)
  const reader = new UffdReader(r, 256, post);
  const inlineAuto = setup.inline === 'auto';
  const inlineAll = setup.inline === 'always';
  const canInlineWp = setup.wpHook === null;

  /** Stages a fault for a worker's ring, publishing (and waiting) while the ring is full. */
  function stage(shard: number, f: Fault): void {
    const ring = rings[shard] as Ring;
    while (!ring.stage(staged[shard] as number, f)) full(shard, ring);
    staged[shard] = (staged[shard] as number) + 1;
  }

  /** Stages a request to re-zero the page at addr, as stage() does a fault. */
  function stageRezero(shard: number, addr: number): void {
    const ring = rings[shard] as Ring;
    const t = nowUs();
    while (!ring.stageRezero(staged[shard] as number, addr, t)) full(shard, ring);
    staged[shard] = (staged[shard] as number) + 1;
  }

  /** A ring is full: publish what is staged for it and let its worker drain it. */
  function full(shard: number, ring: Ring): void {
    ring.publish(staged[shard] as number);
    staged[shard] = 0;
    ring.kick();
    ctl.pause(0.05);
  }

  /** The shard of global page g: stripes of stripePages pages, dealt round the rings. */
  function shardOf(g: number): number {
    return Math.floor(g / setup.stripePages) % rings.length;
  }

  // Re-zeroing a page blocks on work only a reader can do: a worker does it.
  r.deferRezero = (addr: number) => {
    const row = table.findRow(addr);
    if (row < 0) return;
    ctl.rezeroQueued(); // Engine.stop waits for these before unregistering
    stageRezero(shardOf(table.globalPage(row, addr)), addr);
  };

  function post(msg: DispatcherMessage): void {
    toMain(msg);
  }

  /** Resolves the fault here or hands it to its shard's worker; `batch`: messages in the read. */
  function route(f: Fault, batch: number): void {
    const { flags, row } = f;
    if (row < 0) {
      r.handleFault(f); // not ours any more: wake so the kernel decides
      return;
    }
    const shard = shardOf(table.stateBase(row) + f.local);
    const inlineOk = ((flags & UFFD_PAGEFAULT_FLAG_WP) ? canInlineWp : true) && table.missingOp(row) !== MissOp.callback;
    // 'auto': the worker sleeps and the batch is small: resolving here is cheaper than waking
    // it. A worker that is awake (or has work queued) gets the fault, keeping its order; a
    // large batch wakes the workers so they share it.
    const q = quiet[shard];
    if (inlineOk && (inlineAll || q === 2 || (inlineAuto && batch <= setup.inlineBatch && staged[shard] === 0 && q === 1))) {
      if (r.handleFault(f) !== DEFERRED) {
        c.add(C_INLINE);
        return;
      }
    }
    stage(shard, f);
    c.add(C_HANDOFFS);
  }

  /**
   * Worker s died (the main thread counted it and signalled the eventfd): finish its claim,
   * unless its replacement is doing that, and wake the threads of the faults left in its
   * ring: they fault again and are resolved here until the replacement serves. So a worker
   * that dies again and again (a crash loop, restarted with a back-off) stalls no fault.
   */
  function takeOver(s: number): void {
    if (ctl.workerState(s) === WorkerState.serving) {
      deathsSeen[s] = ctl.deaths(s); // replaced already: the replacement finished the claim
      return;
    }
    if (!ctl.beginDispatcherRecovery(s)) return; // the replacement is recovering: look again next time round
    deathsSeen[s] = ctl.deaths(s);
    try {
      r.takeOverClaim(s);
    } catch (err) {
      post({ type: 'incident', message: `dispatcher: finishing dead worker ${s}'s fill failed: ${(err as Error).message}` });
    } finally {
      ctl.endDispatcherRecovery(s);
    }
    const ring = rings[s] as Ring;
    for (let i = ring.head; i !== ring.tail; i = (i + 1) | 0) {
      if (ring.kindAt(i) !== EntryKind.fault) continue;
      const addr = ring.addrAt(i);
      const row = table.findRow(addr);
      const ps = row < 0 ? PAGE_SIZE : table.pageSize(row);
      r.safeWake(addr - (addr % ps), ps);
    }
  }

  // ---- main loop -----------------------------------------------------------------------

  /** readers 'all': a worker is busy away from the uffd (or not started): read in its place. */
  function helpWanted(): boolean {
    for (let w = 0; w < setup.workers; w++) if (ctl.helpWanted(w)) return true;
    return false;
  }

  const alwaysReads = setup.readers !== 'all';
  // Exclusive on the uffd when the workers wait on it too: a fault wakes one reader, not all.
  const both = new EpollWaiter([setup.uffdFd, setup.eventFd], [!alwaysReads, false]);
  const wakeOnly = new EpollWaiter([setup.eventFd], [false]);
  // A predecessor (a dispatcher that died) may have held the read lock or claims.
  ctl.breakReadLock(setup.workers);
  r.recoverClaims(setup.workers);
  ctl.markReady();
  let idleReads = 0;
  let idleSince = 0;
  let lastBusy = false; // faults arrived since the last sleep
  const spinUs = setup.dispatcherSpinMicros;
  for (;;) {
    if (ctl.stopping()) break;
    for (let s = 0; s < rings.length; s++) if (ctl.deaths(s) !== deathsSeen[s]) takeOver(s);
    if (alwaysReads || helpWanted()) {
      const n = reader.read();
      if (n > 0) {
        idleReads = 0;
        lastBusy = true;
        const t = nowUs();
        for (let s = 0; s < rings.length; s++) {
          const ring = rings[s] as Ring;
          quiet[s] = ctl.workerState(s) !== WorkerState.serving ? 2 : inlineAuto && ring.size() === 0 && ring.consumerSleeping() ? 1 : 0;
        }
        for (let i = 0; i < n; i++) {
          if (!reader.isFault(i)) continue;
          reader.load(i, fault);
          table.locate(fault);
          fault.readUs = t;
          fault.more = 0;
          try {
            route(fault, n);
          } catch (err) {
            // The dispatcher must not die with messages unread: a thread blocked in madvise
            // waits for this reader to read its REMOVE, and a restart needs the main thread.
            // Report, wake the thread (it faults again), go on.
            c.add(C_ERRORS);
            post({ type: 'incident', message: `dispatcher: resolving the fault at 0x${fault.addr.toString(16)} failed: ${(err as Error).message}` });
            r.safeWake(fault.addr - (fault.addr % PAGE_SIZE), PAGE_SIZE);
          }
        }
        for (let s = 0; s < rings.length; s++) {
          const k = staged[s] as number;
          if (k !== 0) {
            (rings[s] as Ring).publish(k);
            staged[s] = 0;
          }
        }
        continue;
      }
      // Nothing pending: keep trying for a moment before sleeping, but only while faults keep
      // coming (a sleeping CPU takes tens of µs to wake on this kind of machine).
      if (idleReads === 0) idleSince = nowUs();
      if (++idleReads < 2 || (spinUs > 0 && lastBusy && ((nowUs() - idleSince) | 0) < spinUs)) continue;
    }
    idleReads = 0;
    lastBusy = false;
    r.updateCpu();
    if (alwaysReads) {
      both.wait(-1);
    } else {
      // The flag is raised before the help words are read; a worker raises its word before it
      // reads the flag: one of the two sees the other.
      ctl.setDispatcherIdle(true);
      if (helpWanted()) both.wait(5); // reading in a worker's place: look again soon, it may be back
      else wakeOnly.wait(-1);
      ctl.setDispatcherIdle(false);
    }
    eventfdDrain(setup.eventFd);
  }
  r.updateCpu(true);
  r.close();
  both.close();
  wakeOnly.close();
  ctl.markDispatcherDone();
  post({ type: 'exit' });
}
