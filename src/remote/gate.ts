// The chunk gate: what the engine's threads know about a chunked cache of a remote memory
// file. The cache is a memfd mapped in this process (the region's source address); a
// chunk's bytes may be copied from it once its state word says PRESENT. Everything is in
// SharedArrayBuffers so workers, the dispatcher, the fetch thread and the main thread see
// the same words without messages:
//   states[c]    ABSENT → WANTED (a fault asked for it) → FETCHING → PRESENT | FAILED
//   queue        demand requests (chunk + 1), multi-producer, read by the fetch thread
//   arrivals     chunks in the order they became PRESENT or FAILED (for background installs)
// A demand fault never waits behind the main thread's event loop: a worker writes the
// request and rings the fetch thread's doorbell itself, then sleeps on the chunk's word.

export const CHUNK_ABSENT = 0;
export const CHUNK_WANTED = 1;
export const CHUNK_FETCHING = 2;
export const CHUNK_PRESENT = 3;
export const CHUNK_FAILED = 4;

// Control words (Int32Array over GateSetup.control).
export const G_DOORBELL = 0; // bumped (and notified) by a worker after queueing a demand request
export const G_QUEUE_HEAD = 1; // next free slot of the demand queue (producers reserve with Atomics.add)
export const G_PUBLISHED = 2; // entries written to `arrivals` (notified on each)
export const G_FETCHER_ALIVE = 3; // 1 while the fetch thread runs; 0: every wait gives up
export const G_WORDS = 8;

/** How the engine's threads reach one cache (structured-cloned to each thread). */
export interface GateSetup {
  /** Address of the cache mapping in this process (the source address of byte 0). */
  base: number;
  size: number;
  chunkSize: number;
  chunks: number;
  states: SharedArrayBuffer;
  control: SharedArrayBuffer;
  queue: SharedArrayBuffer;
  arrivals: SharedArrayBuffer;
}

export function allocateGate(base: number, size: number, chunkSize: number): GateSetup {
  const chunks = Math.ceil(size / chunkSize);
  return {
    base, size, chunkSize, chunks,
    states: new SharedArrayBuffer(chunks * 4),
    control: new SharedArrayBuffer(G_WORDS * 4),
    // Each chunk is queued at most once (ABSENT → WANTED happens once): no wrap-around.
    queue: new SharedArrayBuffer(chunks * 4),
    arrivals: new SharedArrayBuffer(chunks * 4),
  };
}

/** A thread's view of a gate. Nothing here allocates after construction. */
export class Gate {
  readonly setup: GateSetup;
  readonly states: Int32Array;
  readonly control: Int32Array;
  readonly queue: Int32Array;
  readonly arrivals: Int32Array;
  private readonly base: number;
  private readonly end: number;
  private readonly chunkSize: number;

  constructor(setup: GateSetup) {
    this.setup = setup;
    this.states = new Int32Array(setup.states);
    this.control = new Int32Array(setup.control);
    this.queue = new Int32Array(setup.queue);
    this.arrivals = new Int32Array(setup.arrivals);
    this.base = setup.base;
    this.end = setup.base + setup.size;
    this.chunkSize = setup.chunkSize;
  }

  /** The chunk holding source address addr. */
  chunkOf(addr: number): number {
    return Math.floor((addr - this.base) / this.chunkSize);
  }

  /**
   * Bytes from source address addr (up to len) that may be copied now: the run of PRESENT
   * chunks from the one holding addr. 0 when that chunk is not there yet; minus the bytes
   * from addr to the end of that chunk when it FAILED (they can never be served).
   */
  ready(addr: number, len: number): number {
    const last = Math.min(addr + len, this.end);
    let c = this.chunkOf(addr);
    const first = Atomics.load(this.states, c);
    let upTo = this.base + (c + 1) * this.chunkSize; // the end of chunk c
    if (first === CHUNK_FAILED) return -(Math.min(upTo, last) - addr);
    if (first !== CHUNK_PRESENT) return 0;
    while (upTo < last && Atomics.load(this.states, ++c) === CHUNK_PRESENT) upTo += this.chunkSize;
    return Math.min(upTo, last) - addr;
  }

  /** Asks the fetch thread for chunk c (once; a chunk already asked for, fetching or done is left alone). */
  request(c: number): void {
    if (Atomics.compareExchange(this.states, c, CHUNK_ABSENT, CHUNK_WANTED) !== CHUNK_ABSENT) return;
    const slot = Atomics.add(this.control, G_QUEUE_HEAD, 1);
    Atomics.store(this.queue, slot, c + 1);
    Atomics.add(this.control, G_DOORBELL, 1);
    Atomics.notify(this.control, G_DOORBELL);
  }

  /**
   * Requests the chunks holding [addr, addr+need) and sleeps until each is PRESENT or
   * FAILED, the fetch thread is gone, or stop[stopIndex] becomes non-zero. Then returns
   * ready(addr, len). The fetch thread bounds every fetch (timeout x retries), so this
   * always ends.
   */
  wait(addr: number, need: number, len: number, stop: Int32Array, stopIndex: number): number {
    const first = this.chunkOf(addr);
    const last = this.chunkOf(Math.min(addr + need, this.end) - 1);
    for (let c = first; c <= last; c++) this.request(c);
    for (let c = first; c <= last; c++) {
      for (;;) {
        const s = Atomics.load(this.states, c);
        if (s === CHUNK_PRESENT || s === CHUNK_FAILED) break;
        if (Atomics.load(stop, stopIndex) !== 0) return 0;
        if (Atomics.load(this.control, G_FETCHER_ALIVE) === 0) return -(Math.min(this.base + (c + 1) * this.chunkSize, addr + len) - addr);
        Atomics.wait(this.states, c, s, 100);
      }
    }
    return this.ready(addr, len);
  }

  /** Chunks that arrived (PRESENT or FAILED) so far, in arrival order: arrivals[0 .. published). */
  published(): number {
    return Atomics.load(this.control, G_PUBLISHED);
  }
}

interface WaitAsyncResult { async: boolean; value: Promise<string> | string }
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): WaitAsyncResult }).waitAsync;

/**
 * Calls onArrival (on this thread's event loop) each time any of the gates publishes an
 * arrival, until the returned function is called. Used to wake idle workers so they
 * install prefetched chunks; demand faults do not depend on it.
 */
export function watchArrivals(gates: GateSetup[], onArrival: () => void): () => void {
  let stopped = false;
  for (const g of gates) {
    const ctl = new Int32Array(g.control);
    const loop = async (): Promise<void> => {
      let seen = Atomics.load(ctl, G_PUBLISHED);
      while (!stopped) {
        const r = waitAsync(ctl, G_PUBLISHED, seen);
        if (r.async) await r.value;
        if (stopped) return;
        const now = Atomics.load(ctl, G_PUBLISHED);
        if (now !== seen) {
          seen = now;
          onArrival();
        }
      }
    };
    void loop();
  }
  return () => {
    stopped = true;
    for (const g of gates) Atomics.notify(new Int32Array(g.control), G_PUBLISHED);
  };
}
