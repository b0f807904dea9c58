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
import { EpollWaiter, eventfdDrain, gettid } from '../../kernel/memory.js';
import { setThreadNice, threadNice } from '../../kernel/sched.js';
import type { EngineSetup } from '../layout.js';
import type { DispatcherMessage } from '../messages.js';
import { ScriptedRead, UffdReader } from '../reader.js';
import { DEFERRED, Fault, nowUs, Resolver } from '../resolver.js';
import { C_ERRORS, C_HANDOFFS, C_INLINE, CounterBlock, EntryKind, Ring } from '../shared.js';
import { ControlBlock, MissOp, RegionTable, WorkerState } from '../tables.js';
import { collectGarbage, DISPATCH_REHEARSAL_FAULTS, isWarm, Rehearse, rehearseOnce, waitForSetup, warmUpOnce } from '../warm-up.js';

// The thread's own priority, to return to when an engine leaves it alone (dispatcherNice null).
const ownNice = threadNice();
/** A worker in one background chunk for longer than this (µs) is held by a slow source: its faults are resolved here. */
const AWAY_INLINE_US = 1000;
/** Background population opens this long (µs) after the dispatcher started reading, if no fault came first. */
const POPULATION_GRACE_US = 2000;

/**
 * Runs at the engine's dispatcherNice, or the thread's own (null; never above its own),
 * and says in the control block which, and why not if the one asked for was refused.
 */
function servePriority(setup: EngineSetup, ctl: ControlBlock): void {
  const want = setup.dispatcherNice === null ? ownNice : Math.min(ownNice, setup.dispatcherNice);
  const now = threadNice();
  const refused = want === now ? 0 : setThreadNice(want);
  ctl.setDispatcherPriority(gettid(), refused === 0 ? want : now, refused);
}

/** A rehearsal (warm-up.ts): serve a scratch engine, nothing posted to the main thread. */
const rehearse: Rehearse = (scratch, script) => {
  serve(scratch, () => undefined, script);
};

/**
 * Reads and routes the faults of one engine until it stops; `toMain` carries its events and
 * its exit; `script` stands in for read(2) in a rehearsal.
 */
function serve(setup: EngineSetup, toMain = (msg: DispatcherMessage): void => parentPort?.postMessage(msg), script: ScriptedRead | null = null): void {
  if (setup.warmUp) {
    // A cold start: compile the fault path, then the batch loop, before the first real fault.
    warmUpOnce();
    rehearseOnce(setup.workers, rehearse, DISPATCH_REHEARSAL_FAULTS);
  }
  const d = new Dispatch(setup, toMain, script);
  d.run();
  d.close();
  toMain({ type: 'exit' });
}

/**
 * One engine's dispatcher: its state, and the loop that reads and routes. A class, not
 * closures inside serve(): V8's optimised code for its methods holds for every instance,
 * so what a rehearsal compiled can serve the real engine after it (closures made anew per
 * engine are not the call targets the rehearsal's code was compiled for: V8 threw that code
 * away at the first real fault, "wrong call target").
 */
class Dispatch {
  private readonly eventFd: number;
  private readonly toMain: (msg: DispatcherMessage) => void;
  private readonly r: Resolver;
  private readonly ctl: ControlBlock;
  private readonly table: RegionTable;
  private readonly c: CounterBlock;
  private readonly rings: Ring[];
  private readonly staged: Int32Array;
  /**
   * Per batch: 2 if the shard's worker is down (dead, its replacement not serving yet: the
   * dispatcher resolves its faults), 1 if its ring was empty and it was not ready for a
   * fault when the batch was read (inline 'auto': see dispatchBatch). Only this thread adds
   * to a ring, so that holds for the batch; read once per batch, not per fault (a few
   * atomic loads).
   */
  private readonly quiet: Uint8Array;
  private readonly deathsSeen: Int32Array;
  private readonly fault = new Fault(); // the fault being routed (reused)
  private readonly reader: UffdReader;
  private readonly inlineAuto: boolean;
  private readonly inlineAll: boolean;
  private readonly inlineBatch: number;
  private readonly wakeBatch: number;
  /** Whether the dispatcher defers wake-ups (wakeBatch > 1 and it is the only reader). */
  private readonly mayDeferWakes: boolean;
  private readonly canInlineWp: boolean;
  private readonly stripePages: number;
  private readonly alwaysReads: boolean;
  private readonly workers: number;
  private readonly spinUs: number;
  private readonly background: boolean;
  private readonly both: EpollWaiter;
  /** Background population is open (run). */
  private populating = false;
  /** The loop's state (turn): when it was ready, empty reads since the last batch and since when, faults since the last sleep. */
  private readySince = 0;
  private idleReads = 0;
  private idleSince = 0;
  private lastBusy = false;
  private readonly wakeOnly: EpollWaiter;

  constructor(setup: EngineSetup, toMain: (msg: DispatcherMessage) => void, script: ScriptedRead | null) {
    this.eventFd = setup.eventFd; // copied, as every number the loop reads: see the class comment
    this.toMain = toMain;
    servePriority(setup, new ControlBlock(setup.control)); // first: the engine's other threads start meanwhile
    const r = new Resolver(setup, setup.workers, false);
    this.r = r;
    this.ctl = r.ctl;
    this.table = r.table;
    this.c = r.counters;
    this.rings = setup.rings.map((b) => new Ring(b));
    this.staged = new Int32Array(this.rings.length);
    this.quiet = new Uint8Array(this.rings.length);
    this.deathsSeen = new Int32Array(this.rings.length);
    this.reader = new UffdReader(r, 256, (msg) => this.toMain(msg), script);
    this.inlineAuto = setup.inline === 'auto';
    this.inlineAll = setup.inline === 'always';
    this.inlineBatch = setup.inlineBatch;
    this.wakeBatch = setup.wakeBatch;
    this.mayDeferWakes = setup.wakeBatch > 1 && setup.readers !== 'all';
    this.canInlineWp = setup.wpHook === null;
    this.stripePages = setup.stripePages;
    this.alwaysReads = setup.readers !== 'all';
    this.workers = setup.workers;
    this.spinUs = setup.dispatcherSpinMicros;
    this.background = setup.prefetch.background;
    // Exclusive on the uffd when the workers wait on it too: a fault wakes one reader, not all.
    this.both = new EpollWaiter([setup.uffdFd, setup.eventFd], [!this.alwaysReads, false]);
    this.wakeOnly = new EpollWaiter([setup.eventFd], [false]);
    // Re-zeroing a page blocks on work only a reader can do: a worker does it.
    r.deferRezero = (addr: number) => {
      const row = this.table.findRow(addr);
      if (row < 0) return;
      this.ctl.rezeroQueued(); // Engine.stop waits for these before unregistering
      this.stageRezero(this.shardOf(this.table.globalPage(row, addr)), addr);
    };
  }

  close(): void {
    this.r.updateCpu(true);
    this.r.close();
    this.both.close();
    this.wakeOnly.close();
    this.ctl.markDispatcherDone();
  }

  /** Stages a fault for a worker's ring, publishing (and waiting) while the ring is full. */
  private stage(shard: number, f: Fault): void {
    const ring = this.rings[shard] as Ring;
    while (!ring.stage(this.staged[shard] as number, f)) this.full(shard, ring);
    this.staged[shard] = (this.staged[shard] as number) + 1;
  }

  /** Stages a request to re-zero the page at addr, as stage() does a fault. */
  private stageRezero(shard: number, addr: number): void {
    const ring = this.rings[shard] as Ring;
    const t = nowUs();
    while (!ring.stageRezero(this.staged[shard] as number, addr, t)) this.full(shard, ring);
    this.staged[shard] = (this.staged[shard] as number) + 1;
  }

  /** A ring is full: publish what is staged for it and let its worker drain it. */
  private full(shard: number, ring: Ring): void {
    ring.publish(this.staged[shard] as number);
    this.staged[shard] = 0;
    ring.kick();
    this.ctl.pause(0.05);
  }

  /** The shard of global page g: stripes of stripePages pages, dealt round the rings. */
  private shardOf(g: number): number {
    return Math.floor(g / this.stripePages) % this.rings.length;
  }

  /** Resolves the fault here or hands it to its shard's worker; `batch`: messages in the read. */
  private route(f: Fault, batch: number): void {
    const { flags, row } = f;
    const r = this.r;
    if (row < 0) {
      r.handleFault(f); // not ours any more: wake so the kernel decides
      return;
    }
    const table = this.table;
    const shard = this.shardOf(table.stateBase(row) + f.local);
    const inlineOk = ((flags & UFFD_PAGEFAULT_FLAG_WP) ? this.canInlineWp : true) && table.missingOp(row) !== MissOp.callback;
    // 'auto': the worker is not ready for it (asleep, starting, held by a slow chunk) and the
    // batch is small: resolving here is cheaper than waking or waiting for it. A worker that
    // watches its ring (or has work queued, or is in a short chunk) gets the fault; a
    // large batch wakes the workers so they share it.
    const q = this.quiet[shard];
    if (inlineOk && (this.inlineAll || q === 2 || (this.inlineAuto && batch <= this.inlineBatch && this.staged[shard] === 0 && q === 1))) {
      if (r.handleFault(f) !== DEFERRED) {
        this.c.add(C_INLINE);
        return;
      }
    }
    this.stage(shard, f);
    this.c.add(C_HANDOFFS);
  }

  /** Routes the faults among the n messages just read at t. */
  private routeAll(n: number, t: number): void {
    const reader = this.reader;
    const fault = this.fault;
    for (let i = 0; i < n; i++) {
      if (!reader.isFault(i)) continue;
      reader.load(i, fault);
      this.table.locate(fault);
      fault.readUs = t;
      fault.more = 0;
      try {
        this.route(fault, n);
      } catch (err) {
        // The dispatcher must not die with messages unread: a thread blocked in madvise
        // waits for this reader to read its REMOVE, and a restart needs the main thread.
        // Report, wake the thread (it faults again), go on.
        this.c.add(C_ERRORS);
        this.toMain({ type: 'incident', message: `dispatcher: resolving the fault at 0x${fault.addr.toString(16)} failed: ${(err as Error).message}` });
        this.r.safeWake(fault.addr - (fault.addr % PAGE_SIZE), PAGE_SIZE);
      }
    }
  }

  /** Routes the faults among the n messages just read, then publishes what it staged. */
  private dispatchBatch(n: number): void {
    const rings = this.rings;
    const ctl = this.ctl;
    const t = nowUs();
    for (let s = 0; s < rings.length; s++) {
      const ring = rings[s] as Ring;
      // 0 (hand over): work is queued for the worker, or it spins on its ring, or it fills a
      // background chunk begun less than AWAY_INLINE_US ago (it is back within ~0.3 ms, and
      // on a small machine a guest that waits meanwhile leaves the CPUs to the population,
      // which restores far more per CPU second than demand faults do). 1 (resolve here):
      // it sleeps, starts up, or is held in a chunk by a slow or stuck source.
      let q = 1;
      if (ctl.workerState(s) !== WorkerState.serving) q = 2;
      else if (!this.inlineAuto || ring.size() !== 0 || ring.consumerWatching()) q = 0;
      else {
        const away = ring.consumerAwayFor(t);
        if (away >= 0 && away <= AWAY_INLINE_US) q = 0;
      }
      this.quiet[s] = q;
    }
    // Deferred wakes (Resolver.deferWakes): the threads of the faults resolved here wait
    // until the next read finds nothing pending, then one UFFDIO_WAKE over their span wakes
    // them all (turn). Up to wakeBatch faults: a batch that would take more first wakes
    // those deferred range by range (the faults it just read wait in their span). A batch
    // larger than wakeBatch wakes as it fills, as does a lone fault with nothing deferred
    // (nothing to share a wake with; deferring it costs an ioctl if the next read is not
    // empty). Only this thread reads (readers 'dispatcher'), and not while the workers
    // populate: threads then wait on pages of their chunks, which a span would wake for
    // nothing.
    const r = this.r;
    const deferred = r.wakesDeferred();
    const defer = this.mayDeferWakes && n <= this.wakeBatch && (n > 1 || deferred > 0) && !this.populatingNow();
    if (deferred > 0 && (!defer || deferred + n > this.wakeBatch)) r.flushWakes(false);
    r.deferWakes(defer);
    try {
      this.routeAll(n, t);
    } finally {
      r.deferWakes(false);
    }
    for (let s = 0; s < rings.length; s++) {
      const k = this.staged[s] as number;
      if (k !== 0) {
        (rings[s] as Ring).publish(k);
        this.staged[s] = 0;
      }
    }
  }

  /**
   * Worker s died (the main thread counted it and signalled the eventfd): finish its claim,
   * unless its replacement is doing that, and wake the threads of the faults left in its
   * ring: they fault again and are resolved here until the replacement serves. So a worker
   * that dies again and again (a crash loop, restarted with a back-off) stalls no fault.
   */
  private takeOver(s: number): void {
    const ctl = this.ctl;
    if (ctl.workerState(s) === WorkerState.serving) {
      this.deathsSeen[s] = ctl.deaths(s); // replaced already: the replacement finished the claim
      return;
    }
    if (!ctl.beginDispatcherRecovery(s)) return; // the replacement is recovering: look again next time round
    this.deathsSeen[s] = ctl.deaths(s);
    try {
      this.r.takeOverClaim(s);
    } catch (err) {
      this.toMain({ type: 'incident', message: `dispatcher: finishing dead worker ${s}'s fill failed: ${(err as Error).message}` });
    } finally {
      ctl.endDispatcherRecovery(s);
    }
    const ring = this.rings[s] as Ring;
    for (let i = ring.head; i !== ring.tail; i = (i + 1) | 0) {
      if (ring.kindAt(i) !== EntryKind.fault) continue;
      const addr = ring.addrAt(i);
      const row = this.table.findRow(addr);
      const ps = row < 0 ? PAGE_SIZE : this.table.pageSize(row);
      this.r.safeWake(addr - (addr % ps), ps);
    }
  }

  /** readers 'all': a worker is busy away from the uffd (or not started): read in its place. */
  private helpWanted(): boolean {
    for (let w = 0; w < this.workers; w++) if (this.ctl.helpWanted(w)) return true;
    return false;
  }

  /** Background population is open and not finished: the workers are filling chunks. */
  private populatingNow(): boolean {
    return this.background && this.populating && !this.ctl.backgroundDone();
  }

  /** Lets the workers populate in the background (see run). */
  private openPopulation(): void {
    this.populating = true;
    this.ctl.openPopulation();
    for (const ring of this.rings) ring.kick(); // workers waiting to populate
  }

  /** The loop: read and route while faults come, sleep in epoll when none do, until the engine stops. */
  run(): void {
    const ctl = this.ctl;
    // A predecessor (a dispatcher that died) may have held the read lock or claims.
    ctl.breakReadLock(this.workers);
    this.r.recoverClaims(this.workers);
    ctl.markReady();
    // Background population opens after the first batch of faults, or after a moment
    // without any (readers 'all': at once, the workers read the faults).
    this.readySince = nowUs();
    if (!this.alwaysReads) this.openPopulation();
    // A turn is a call, not a loop body: run() is entered once per engine, and a long loop
    // in it is compiled by on-stack replacement for each engine anew (14-51 ms of TurboFan
    // on a background thread, in the first real engine's first faults), while turn()'s
    // code from the rehearsal serves every engine.
    try {
      while (this.turn());
    } finally {
      this.r.flushWakes(false); // no thread is left waiting for a wake that never comes
    }
  }

  /** One turn: read and route a batch, or spin, or sleep in epoll. False once the engine stops. */
  private turn(): boolean {
    const ctl = this.ctl;
    if (ctl.stopping()) return false;
    const rings = this.rings;
    for (let s = 0; s < rings.length; s++) if (ctl.deaths(s) !== this.deathsSeen[s]) this.takeOver(s);
    if (this.alwaysReads || this.helpWanted()) {
      const n = this.reader.read();
      if (n > 0) {
        this.idleReads = 0;
        this.lastBusy = true;
        this.dispatchBatch(n);
        if (!this.populating) this.openPopulation();
        return true;
      }
      // Nothing pending: wake the threads of the faults resolved since the last such read,
      // all at once (see dispatchBatch)...
      if (this.r.wakesDeferred() > 0) this.r.flushWakes(true);
      // ...and keep trying for a moment before sleeping, but only while faults keep coming
      // (a sleeping CPU takes tens of µs to wake on this kind of machine).
      if (this.idleReads === 0) this.idleSince = nowUs();
      // Not while the workers populate: the CPU a spin takes is theirs (a restore's 1 GiB
      // filled ~12% sooner without it), and a fault then waits for a worker's chunk anyway.
      if (++this.idleReads < 2 || (this.spinUs > 0 && this.lastBusy && !this.populatingNow() && ((nowUs() - this.idleSince) | 0) < this.spinUs)) return true;
    }
    this.idleReads = 0;
    this.lastBusy = false;
    this.r.updateCpu();
    if (!this.populating && ((nowUs() - this.readySince) | 0) >= POPULATION_GRACE_US) this.openPopulation();
    if (this.alwaysReads) {
      this.both.wait(this.populating ? -1 : 1);
    } else {
      // The flag is raised before the help words are read; a worker raises its word before it
      // reads the flag: one of the two sees the other.
      ctl.setDispatcherIdle(true);
      if (this.helpWanted()) this.both.wait(5); // reading in a worker's place: look again soon, it may be back
      else this.wakeOnly.wait(-1);
      ctl.setDispatcherIdle(false);
    }
    eventfdDrain(this.eventFd);
    return true;
  }
}

// Started last: the class above must exist before the first engine is served.
// A warm dispatcher (threads.ts) serves one engine after another until it is told to quit;
// a cold one (workerData is the setup) serves its engine and ends.
if (isWarm(workerData)) {
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
