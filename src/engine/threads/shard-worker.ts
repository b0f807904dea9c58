// A piscina task that serves one shard for the life of the engine. With readers 'all' the
// worker reads the userfaultfd itself (as a native multi-threaded handler does) and
// resolves what it read, exactly once by the page-state claim; with readers 'dispatcher'
// faults arrive on its ring only. Either way the ring carries what the dispatcher hands it
// (faults it could not finish, re-zeroing, callback-source faults), and it goes first.
// When nothing is pending: background population; then a short spin and a sleep (on the
// ring, or in poll(2) on the uffd and the ring's eventfd). If the thread dies, the engine
// starts this task again on a fresh thread and it resumes where the ring's head stands.
import { threadId, workerData, type MessagePort } from 'node:worker_threads';
import { addressOf } from '../../kernel/libc.js';
import { EpollWaiter, eventfdDrain } from '../../kernel/memory.js';
import { yieldCpu } from '../../kernel/time.js';
import type { EngineSetup } from '../layout.js';
import type { CallbackRequest, ThreadMessage } from '../messages.js';
import { UffdReader } from '../reader.js';
import { Fault, type FillHow, monoMs, nowUs, Resolver } from '../resolver.js';
import { C_DIRECT, EntryKind, Ring } from '../shared.js';
import { CallbackSlot, CallbackState } from '../tables.js';
import { collectGarbage, isWarm, warmUpIfAsked, warmUpOnce } from '../warm-up.js';

export interface ShardTask {
  setup: EngineSetup;
  shard: number;
  /** To the main thread: events this worker read, and (callback sources) requests for bytes. */
  port: MessagePort | null;
}

warmUpIfAsked(workerData, (scratch) => { runShard({ setup: scratch, shard: 0, port: null }); });

export default function runShard(task: ShardTask): { shard: number } {
  const held: { close(): void }[] = [];
  try {
    return serveShard(task, held);
  } finally {
    // The thread lives on in the pool (after a throw too): give back what this task opened,
    // and once the task is gone (a warm thread idles until its next engine) its tables.
    for (const h of held) h.close();
    if (isWarm(workerData)) setImmediate(collectGarbage);
  }
}

function serveShard(task: ShardTask, held: { close(): void }[]): { shard: number } {
  const { setup, shard, port } = task;
  if (setup.warmUp) warmUpOnce(); // a cold start: compile the fault path before the first real fault
  const r = new Resolver(setup, shard, true);
  held.push(r);
  const ring = new Ring(setup.rings[shard] as EngineSetup['rings'][number]);
  const ctl = r.ctl;
  ctl.setThreadId(shard, threadId);
  if (setup.faultInjection) injectFaults(r, shard);
  if (port && setup.callbackStaging && setup.callbackControl) installCallbackFetch(r, setup, shard, port);
  const reads = setup.readers === 'all';
  const reader = reads ? new UffdReader(r, 64, (m: ThreadMessage) => port?.postMessage(m)) : null;
  const poller = reads ? new EpollWaiter([setup.uffdFd, ring.eventFd], [true, false]) : null;
  if (poller) held.push(poller);
  // A predecessor may have died holding the read lock or claims: free the one, finish the others.
  ctl.breakReadLock(shard);
  ctl.beginWorkerRecovery(shard, yieldCpu);
  r.recoverClaims(shard);
  ctl.markWorkerServing(shard); // the dispatcher stops resolving this shard's faults
  ctl.markReady();
  const spinUs = setup.spinMicros;
  const background = setup.prefetch.background;
  let lastGapUs = 0; // how long the last sleep lasted
  for (;;) {
    if (ctl.stopping()) break;
    const head = ring.head;
    const tail = ring.tail;
    if (head !== tail) {
      r.needReader();
      drainRing(r, ring, head, tail);
      continue;
    }
    r.readerAgain();
    if (reader && readAndResolve(r, reader) > 0) { lastGapUs = 0; continue; }
    if (((background && ctl.populationOpen()) || ctl.completing()) && (!ctl.backgroundDone() || r.arrivalsPending())) {
      r.needReader();
      ring.setAway(nowUs() || 1);
      r.backgroundStep();
      ring.setAway(0);
      continue;
    }
    // Spin briefly: waking a sleeping thread costs tens of µs on this kind of machine. But
    // only while work keeps arriving soon after the last sleep began (adaptive): spinning
    // through idle gaps steals the CPU the faulting threads need on a small machine.
    if (spinUs > 0 && lastGapUs < 4 * spinUs && !reader) {
      const from = nowUs();
      ring.setWatching(true);
      while (ring.tail === tail && ((nowUs() - from) | 0) < spinUs) { /* spin */ }
      ring.setWatching(false);
      if (ring.tail !== tail) { lastGapUs = 0; continue; }
    }
    r.updateCpu(); // at most every 50 ms: the clock read is a syscall
    const slept = nowUs();
    if (poller) {
      // The flag makes a producer signal the eventfd; the tail is checked after raising it.
      if (ring.mayPoll(tail)) {
        poller.wait(200);
        if (poller.revents(1) !== 0) eventfdDrain(ring.eventFd);
      }
      ring.awake();
    } else {
      ring.sleep(tail, 200);
    }
    lastGapUs = (nowUs() - slept) | 0;
  }
  // Re-zeroings handed here and not done yet (a stop that did not wait for them): the
  // ranges are unregistered by now, so MADV_DONTNEED no longer waits for a reader.
  for (let i = ring.head; i !== ring.tail; i = (i + 1) | 0) if (ring.kindAt(i) === EntryKind.rezero) r.rezeroAt(ring.addrAt(i));
  r.needReader(); // gone: the dispatcher reads
  r.updateCpu(true);
  return { shard };
}

/** Resolves the ring's entries from head to tail, a run of faults on consecutive pages with one ioctl. */
/** The fault being resolved (reused: drainRing and readAndResolve never nest). */
const fault = new Fault();

function drainRing(r: Resolver, ring: Ring, head: number, tail: number): void {
  const tb = r.table;
  let i = head;
  while (i !== tail) {
    if (ring.kindAt(i) === EntryKind.rezero) {
      r.rezeroAt(ring.addrAt(i));
      i = (i + 1) | 0;
      ring.commit(i);
      continue;
    }
    ring.loadFault(i, fault);
    tb.locate(fault);
    let more = 0;
    const ps = fault.row < 0 ? 4096 : tb.pageSize(fault.row);
    while (((i + more + 1) | 0) !== tail && ring.follows(i + more + 1, fault, (more + 1) * ps)) more++;
    fault.more = more;
    const absorbed = r.handleFault(fault); // never DEFERRED in a worker
    i = (i + 1 + absorbed) | 0;
    ring.commit(i);
  }
}

/** One batch read from the uffd and resolved here; returns the messages read. */
function readAndResolve(r: Resolver, reader: UffdReader): number {
  const n = reader.read();
  if (n === 0) return 0;
  const tb = r.table;
  const t = nowUs();
  let i = 0;
  while (i < n) {
    if (!reader.isFault(i)) { i++; continue; }
    reader.load(i, fault);
    tb.locate(fault);
    const ps = fault.row < 0 ? 4096 : tb.pageSize(fault.row);
    let more = 0;
    while (i + more + 1 < n && reader.follows(i + more + 1, fault, (more + 1) * ps)) more++;
    fault.readUs = t;
    fault.more = more;
    const absorbed = r.handleFault(fault);
    r.counters.add(C_DIRECT, 1 + absorbed);
    i += 1 + absorbed;
  }
  return n;
}

/**
 * Fault injection (EngineOptions.faultInjection, tests only): the worker dies at its next
 * fill once Engine.killWorker(shard, 'throw') armed it, holding a claim as a crashed worker
 * would. Installed once at start: an engine without it has no check on its fill path.
 */
function injectFaults(r: Resolver, shard: number): void {
  const fill = r.fill.bind(r);
  r.fill = (row: number, local: number, n: number, how: FillHow): number => {
    if (r.ctl.takeKill(shard)) {
      r.claim.record(row, local, n, how.from);
      throw new Error(`worker ${shard} killed by fault injection`);
    }
    return fill(row, local, n, how);
  };
}

// Callback sources run on the main thread: ask it for the bytes over the port, wait on
// this worker's slot, then copy from the staging buffer.
function installCallbackFetch(r: Resolver, setup: EngineSetup, shard: number, port: MessagePort): void {
  const slot = new CallbackSlot(setup.callbackControl as SharedArrayBuffer, setup.callbackStaging as SharedArrayBuffer, setup.callbackRunBytes, shard);
  r.callbackStagingAddr = addressOf(slot.staging);
  let seq = 0;
  r.fetchCallback = (source, offset, len) => {
    const id = ++seq;
    slot.request(id);
    r.needReader();
    const req: CallbackRequest = { type: 'callback', shard, id, source, offset, len };
    port.postMessage(req);
    const deadline = monoMs() + setup.callbackTimeoutMs;
    let state = slot.state();
    while (state === CallbackState.requested) {
      const left = deadline - monoMs();
      if (left <= 0 || r.ctl.stopping()) break;
      state = slot.wait(Math.min(left, 100));
    }
    slot.reset();
    return state === CallbackState.ready;
  };
}
