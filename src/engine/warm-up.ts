// The thread side of warm engine threads (threads.ts): the JIT warm-up every engine thread
// runs before it serves anything, and the dispatcher's wait for its setup.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { parentPort, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { MADV_DONTNEED, MAP_POPULATE, PAGE_SIZE, UFFD_PAGEFAULT_FLAG_WRITE } from '../kernel/constants.js';
import { close, eventfd, eventfdSignal, madvise, mapAnonymous, munmap } from '../kernel/memory.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import type { EngineSetup } from './layout.js';
import { writeFaultMessage } from '../kernel/messages.js';
import { ScriptedRead, UffdReader } from './reader.js';
import { Fault, nowUs, Resolver } from './resolver.js';
import { Counters, PageStates, Ring } from './shared.js';
import { Claims, ControlBlock, RegionTable, scratchRow } from './tables.js';

/** What a warm thread gets as workerData. */
export interface WarmData {
  warm: true;
  /** [0] dispatcher: 0 waiting, 1 a setup was posted, 2 quit. [1]: threads that finished their warm-up. */
  signal: SharedArrayBuffer;
}

export function isWarm(data: unknown): data is WarmData {
  return typeof data === 'object' && data !== null && (data as WarmData).warm === true;
}

/** A row of a scratch setup: `size` bytes at `start`, copied from `srcAddr` (0: no source). */
export interface ScratchRow { start: number; size: number; srcAddr: number }

/** An EngineSetup over the given rows (4 KiB pages, COPY from srcAddr), for warm-ups and micro-benchmarks. */
export function scratchSetup(uffdFd: number, rows: ScratchRow[], workers: number): EngineSetup {
  const regionTable = RegionTable.allocate();
  const control = ControlBlock.allocate();
  const table = new RegionTable(regionTable, new ControlBlock(control));
  let base = 0;
  rows.forEach((r, i) => {
    table.write(i, scratchRow(r.start, r.size, r.srcAddr, base));
    base += r.size / PAGE_SIZE;
  });
  new ControlBlock(control).setRegionRows(rows.length);
  return {
    uffdFd, features: '0', workers, stripePages: 16, regionTable, states: PageStates.allocate(base), totalPages: base,
    counters: Counters.allocate(workers + 1), control, claims: Claims.allocate(workers + 1),
    rings: [], order: null,
    prefetch: { readAheadMin: 0, readAheadMax: 0, background: false, chunkPages: 64, orderLength: 0 },
    zeroAddr: 0, onSourceError: 'poison', afterRemove: 'zero', readers: 'all', warmUp: false, inline: 'auto', spinMicros: 0, dispatcherSpinMicros: 0, dispatcherNice: null,
    inlineBatch: 16, wakeBatch: 16, wpHook: null, faultInjection: false, callbackStaging: null, callbackControl: null, callbackRunBytes: 0, callbackTimeoutMs: 0, eventFd: -1,
    gates: [], gateCursors: new SharedArrayBuffer(4),
  };
}

/**
 * Runs the per-fault path (read, claim, UFFDIO_COPY, finish, latency) `rounds` times over
 * a private 64-page region registered on a private userfaultfd, so V8 has compiled it
 * before the first real fault. No fault is involved: UFFDIO_COPY fills a registered range
 * whether or not a thread waits there.
 */
let warmed = false;

/** warmUp() once per thread: a thread started warm, or a pool thread reused, does not repeat it. */
export function warmUpOnce(): void {
  if (!warmed) warmUp();
}

export function warmUp(rounds = 40): void {
  warmed = true;
  const pages = 64;
  const len = pages * PAGE_SIZE;
  const uffd = Userfaultfd.create();
  const region = mapAnonymous(len);
  const src = mapAnonymous(len, MAP_POPULATE);
  try {
    uffd.register(region, len, ['missing']);
    const setup = scratchSetup(uffd.fd, [{ start: region, size: len, srcAddr: src }], 1);
    const r = new Resolver(setup, 0, true);
    const reader = new UffdReader(r, 64, () => undefined);
    const words = new Int32Array(setup.states);
    const fault = new Fault();
    // A Fault's `more` is 0 for every fault the dispatcher reads and takes other values only
    // on a worker's ring: V8 would compile it as a constant, and the first real engine's
    // store to it threw handleFault's code away (--trace-generalization). One other value now.
    fault.more = 1;
    fault.more = 0;
    for (let k = 0; k < rounds; k++) {
      reader.read(); // nothing pending: EAGAIN
      for (let p = 0; p < pages; p++) resolveAt(r, fault, region + p * PAGE_SIZE, p & 1 ? UFFD_PAGEFAULT_FLAG_WRITE : 0); // both kinds: see rehearseServe
      madvise(region, len, MADV_DONTNEED); // no EVENT_REMOVE negotiated: no event
      words.fill(0);
    }
    warmPopulation(uffd, region, src, rounds);
  } finally {
    uffd.close();
    munmap(region, len);
    munmap(src, len);
  }
}

/** Resolves a demand fault at addr as a reader would hand it over (f: reused). */
function resolveAt(r: Resolver, f: Fault, addr: number, flags: number): void {
  f.addr = addr;
  f.flags = flags;
  r.table.locate(f);
  f.readUs = nowUs();
  r.handleFault(f);
}

/**
 * The prefetch paths on the same region: demand faults that read ahead (sequential, so the
 * window grows, then scattered), and background population in chunks with holes, as a
 * worker runs them through a restore. Without this they compiled during the first VM's
 * population, and threw code away there when a site no rehearsal had reached ran
 * (--trace-deopt: "insufficient type feedback" in handleFault, extendClaim, fill, finish).
 */
function warmPopulation(uffd: Userfaultfd, region: number, src: number, rounds: number): void {
  const pages = 64;
  const len = pages * PAGE_SIZE;
  const setup = scratchSetup(uffd.fd, [{ start: region, size: len, srcAddr: src }], 1);
  setup.prefetch = { readAheadMin: 1, readAheadMax: 8, background: true, chunkPages: 8, orderLength: 0 };
  const r = new Resolver(setup, 0, true);
  const states = new PageStates(setup.states, pages);
  const words = new Int32Array(setup.states);
  const ctl = new ControlBlock(setup.control);
  const fault = new Fault();
  for (let k = 0; k < rounds; k++) {
    // Demand faults: a sequential run (the read-ahead window doubles), then every 7th page.
    for (let p = 0; p < 16; p++) resolveAt(r, fault, region + p * PAGE_SIZE, p & 1 ? UFFD_PAGEFAULT_FLAG_WRITE : 0);
    for (let p = 20; p < pages; p += 7) resolveAt(r, fault, region + p * PAGE_SIZE, 0);
    // Background chunks over what is left (runs between the pages already there).
    ctl.restartBackground();
    while (r.backgroundStep()) { /* chunk after chunk */ }
    if (states.nextMissing(0, pages) >= 0) throw new Error('warm-up: background population left pages missing');
    madvise(region, len, MADV_DONTNEED); // no EVENT_REMOVE negotiated: no event
    words.fill(0);
  }
  r.close();
}

/** A thread's serve function, run on a scratch setup; `script` stands in for the uffd's read(2) (null: the real one). */
export type Rehearse = (setup: EngineSetup, script: ScriptedRead | null) => void;

/** Faults a dispatcher's rehearsal routes (see rehearseServe for why this many). */
export const DISPATCH_REHEARSAL_FAULTS = 8192;
/** The rehearsing dispatcher's spin (µs) before it sleeps: short, the rehearsal's idle moments are twice as long. */
const REHEARSAL_SPIN_US = 20;
/** The quiet start of the second rehearsal session (µs): past the dispatcher's POPULATION_GRACE_US (2 ms). */
const QUIET_START_US = 2500;
let rehearsed = false;

/**
 * Runs a thread's serve function on a scratch engine (readers 'dispatcher'). V8 compiles a
 * function at its first call, and a thread's serve function is large: without this the
 * first real engine pays that (about a millisecond on this machine) between the handshake
 * and its first fault. With `faults` 0 the engine is stopped from the start: serve sets up
 * (resolver, rings, epoll) and leaves at its loop's first stop check. Otherwise (the
 * dispatcher) its reader is handed that many page faults on a private 64-page region,
 * read in batches of 1 to 6 as faulting threads send them under load, which it routes and
 * resolves as it would real ones (UFFDIO_COPY fills a registered range whether or not a
 * thread waits there) — so the dispatcher's own fault path is compiled before the first
 * real fault, not only the resolver warmUp() exercises. ~2,300 batches: after ~300 (2560
 * faults in batches of 1 to 16) the batch-level functions (read, dispatchBatch, the loop)
 * still compiled at the first real faults, and the 16x2 bench's first 75 ms ran at
 * 113-116k pages/s instead of 137-139k (steady ~150-170k).
 */
export function rehearseServe(workers: number, serve: Rehearse, faults = 0): void {
  rehearsed = true;
  if (faults === 0) {
    rehearseSession(workers, serve, 0, 0);
    return;
  }
  // Two sessions, as engines start: one whose first fault comes at once (population opens
  // with the first batch), and a short one whose guest stays quiet past the population
  // grace (it opens on the dispatcher's timer): V8 threw the loop's code away the first
  // time a real engine took the path the rehearsal had not.
  // The short one first: the script's read is then a call to either closure, and the
  // code compiled in the long one serves both.
  rehearseSession(workers, serve, 256, QUIET_START_US);
  rehearseSession(workers, serve, faults, 0);
}

/** One scripted session of rehearseServe: `faults` faults, after `quietUs` µs without any. */
function rehearseSession(workers: number, serve: Rehearse, faults: number, quietUs: number): void {
  const pages = 64;
  const len = pages * PAGE_SIZE;
  const uffd = Userfaultfd.create();
  const region = mapAnonymous(len);
  const src = faults > 0 ? mapAnonymous(len, MAP_POPULATE) : 0;
  const efd = eventfd();
  try {
    uffd.register(region, len, ['missing']);
    const setup = scratchSetup(uffd.fd, [{ start: region, size: len, srcAddr: src }], workers);
    setup.eventFd = efd;
    // Big enough that a fault handed off instead of resolved (no worker takes it) never fills one.
    setup.rings = Array.from({ length: workers }, () => Ring.allocate(faults > 0 ? 4096 : 16, efd));
    setup.readers = 'dispatcher';
    const ctl = new ControlBlock(setup.control);
    if (faults === 0) {
      ctl.requestStop();
      serve(setup, null);
      return;
    }
    // The workers sleep with empty rings, as between a real engine's faults: the dispatcher resolves.
    for (const b of setup.rings) new Ring(b).mayPoll(0);
    const states = new Int32Array(setup.states);
    const order = Array.from({ length: pages }, (_, p) => p);
    let sent = 0;
    let next = pages; // index into order: a new round starts once every page was sent
    let batch = 0;
    let reads = 0;
    let idleUntil = 0;
    setup.dispatcherSpinMicros = REHEARSAL_SPIN_US;
    // From the first read, which comes after the dispatcher took its start time: a quiet
    // start counted from before it (a cold first session builds its state slowly) could end
    // before the population grace does.
    let quietSince = 0;
    const script: ScriptedRead = (dv, capacity) => {
      if (sent >= faults) {
        ctl.requestStop();
        return 0;
      }
      // First and now and then no fault for a while, as before a guest's first fault and
      // between its bursts: the loop spins on empty reads, then sleeps in epoll (the eventfd
      // raised here lets it out at once). So those paths are compiled too: V8 threw the
      // loop's code away at the first real empty read, then at the first sleep, and compiled
      // it again in the first real faults.
      if (reads === 0) quietSince = nowUs();
      if (reads < 40 || ((nowUs() - quietSince) | 0) < quietUs) {
        // Before the first fault (population not open yet): ~20 sleeps or more, the first
        // ones before V8 gives the loop its feedback vector (lazy allocation: after a few calls).
        reads++;
        eventfdSignal(efd);
        return 0;
      }
      if (idleUntil === 0 && reads++ % 64 === 0) idleUntil = (nowUs() + 2 * REHEARSAL_SPIN_US) | 0;
      if (idleUntil !== 0) {
        if (((nowUs() - idleUntil) | 0) < 0) {
          eventfdSignal(efd);
          return 0;
        }
        idleUntil = 0;
      }
      if (next >= pages) {
        // The last round's pages were all resolved (inline, in the batches read before): unmap them, start again.
        madvise(region, len, MADV_DONTNEED); // no EVENT_REMOVE negotiated: no event
        states.fill(0);
        for (let i = pages - 1; i > 0; i--) {
          const j = (Math.imul(i, 2654435761) >>> 0) % (i + 1);
          const t = order[i] as number;
          order[i] = order[j] as number;
          order[j] = t;
        }
        next = 0;
      }
      const n = Math.min(1 + (batch++ % 6), capacity, pages - next, faults - sent);
      // Read and write faults, as a guest sends them: a field that held one value throughout
      // the rehearsal is one V8 compiles as a constant, and the first real write fault would
      // throw that code away (seen with --trace-generalization: Fault.flags).
      for (let i = 0; i < n; i++) {
        writeFaultMessage(dv, i, region + (order[next + i] as number) * PAGE_SIZE, (sent + i) & 1 ? UFFD_PAGEFAULT_FLAG_WRITE : 0);
      }
      next += n;
      sent += n;
      return n;
    };
    serve(setup, script);
  } finally {
    uffd.close();
    munmap(region, len);
    if (src) munmap(src, len);
    close(efd);
  }
}

/** rehearseServe() unless this thread has rehearsed already (a warm thread did before its first engine). */
export function rehearseOnce(workers: number, serve: Rehearse, faults: number): void {
  if (!rehearsed) rehearseServe(workers, serve, faults);
}

/**
 * A warm thread's preparation: the fault path's warm-up, then a rehearsal of its serve loop
 * (with `faults` routed: the dispatcher); counted ready either way.
 */
function prepareWarmThread(signal: Int32Array, rehearse: Rehearse, faults: number): void {
  try {
    warmUp();
    rehearseServe(1, rehearse, faults);
  } finally {
    Atomics.add(signal, 1, 1);
  }
}

/** In a pool thread: prepare at load when the pool was started warm (rehearse: the thread's serve, see rehearseServe). */
export function warmUpIfAsked(data: unknown, rehearse: Rehearse): void {
  if (isWarm(data)) prepareWarmThread(new Int32Array(data.signal), rehearse, 0);
}

/**
 * In the dispatcher thread: its setup — workerData itself (a cold start), or, for a warm
 * thread, warm up (once), then wait for an Engine to post the setup. A warm dispatcher
 * comes back here after each engine it served (threads.ts: reusable sets).
 */
export function waitForSetup(data: unknown, rehearse: Rehearse): EngineSetup {
  if (!isWarm(data)) return data as EngineSetup;
  const signal = new Int32Array(data.signal);
  if (!warmed) prepareWarmThread(signal, rehearse, DISPATCH_REHEARSAL_FAULTS);
  for (;;) {
    Atomics.wait(signal, 0, 0);
    if (Atomics.load(signal, 0) === 2) process.exit(0);
    const m = receiveMessageOnPort(parentPort as unknown as MessagePort);
    if (m) {
      Atomics.store(signal, 0, 0); // taken: the next engine's take() raises it again
      return m.message as EngineSetup;
    }
    Atomics.wait(signal, 0, 1, 1); // posted, not yet visible here
  }
}

let gcFn: (() => void) | null | undefined;

/**
 * A full collection of this thread's heap. A warm thread that lives on after its engine
 * stopped is idle: nothing allocates, so V8 never collects, and the dead engine's shared
 * tables (rings, page states: ~200 KiB for a small VM, 64 MiB per TiB of pages) stay
 * resident for as long as any thread still holds a view of them. Without --expose-gc the
 * function is taken from a fresh context with the flag set for that moment.
 */
export function collectGarbage(): void {
  if (gcFn === undefined) {
    gcFn = (globalThis as { gc?: () => void }).gc ?? null;
    if (!gcFn) {
      try {
        v8.setFlagsFromString('--expose-gc');
        gcFn = vm.runInNewContext('gc') as () => void;
      } catch {
        gcFn = null;
      } finally {
        v8.setFlagsFromString('--no-expose-gc');
      }
    }
  }
  gcFn?.();
}
