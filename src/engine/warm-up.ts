// The thread side of warm engine threads (threads.ts): the JIT warm-up every engine thread
// runs before it serves anything, and the dispatcher's wait for its setup.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { parentPort, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { MADV_DONTNEED, MAP_POPULATE, PAGE_SIZE } from '../kernel/constants.js';
import { close, eventfd, madvise, mapAnonymous, munmap } from '../kernel/memory.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import type { EngineSetup } from './layout.js';
import { UffdReader } from './reader.js';
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
    zeroAddr: 0, onSourceError: 'poison', afterRemove: 'zero', readers: 'all', warmUp: false, inline: 'auto', spinMicros: 0, dispatcherSpinMicros: 0,
    inlineBatch: 16, wpHook: null, faultInjection: false, callbackStaging: null, callbackControl: null, callbackRunBytes: 0, callbackTimeoutMs: 0, eventFd: -1,
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
    for (let k = 0; k < rounds; k++) {
      reader.read(); // nothing pending: EAGAIN
      for (let p = 0; p < pages; p++) {
        fault.addr = region + p * PAGE_SIZE;
        r.table.locate(fault);
        fault.readUs = nowUs();
        r.handleFault(fault);
      }
      madvise(region, len, MADV_DONTNEED); // no EVENT_REMOVE negotiated: no event
      words.fill(0);
    }
  } finally {
    uffd.close();
    munmap(region, len);
    munmap(src, len);
  }
}

/**
 * Runs a thread's serve function once on a scratch engine that is stopped from the start:
 * it sets up (resolver, rings, epoll) and leaves at its loop's first stop check. V8
 * compiles a function at its first call, and a thread's serve function is large: without
 * this the first real engine pays that (about a millisecond on this machine) between the
 * handshake and its first fault.
 */
export function rehearseServe(workers: number, serve: (setup: EngineSetup) => void): void {
  const len = 16 * PAGE_SIZE;
  const uffd = Userfaultfd.create();
  const region = mapAnonymous(len);
  const efd = eventfd();
  try {
    uffd.register(region, len, ['missing']);
    const setup = scratchSetup(uffd.fd, [{ start: region, size: len, srcAddr: 0 }], workers);
    setup.eventFd = efd;
    setup.rings = Array.from({ length: workers }, () => Ring.allocate(16, efd));
    setup.readers = 'dispatcher';
    new ControlBlock(setup.control).requestStop();
    serve(setup);
  } finally {
    uffd.close();
    munmap(region, len);
    close(efd);
  }
}

/** A warm thread's preparation: the fault path's warm-up, then a rehearsal of its serve loop; counted ready either way. */
function prepareWarmThread(signal: Int32Array, rehearse: (setup: EngineSetup) => void): void {
  try {
    warmUp();
    rehearseServe(1, rehearse);
  } finally {
    Atomics.add(signal, 1, 1);
  }
}

/** In a pool thread: prepare at load when the pool was started warm (rehearse: the thread's serve, see rehearseServe). */
export function warmUpIfAsked(data: unknown, rehearse: (setup: EngineSetup) => void): void {
  if (isWarm(data)) prepareWarmThread(new Int32Array(data.signal), rehearse);
}

/**
 * In the dispatcher thread: its setup — workerData itself (a cold start), or, for a warm
 * thread, warm up (once), then wait for an Engine to post the setup. A warm dispatcher
 * comes back here after each engine it served (threads.ts: reusable sets).
 */
export function waitForSetup(data: unknown, rehearse: (setup: EngineSetup) => void): EngineSetup {
  if (!isWarm(data)) return data as EngineSetup;
  const signal = new Int32Array(data.signal);
  if (!warmed) prepareWarmThread(signal, rehearse);
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
