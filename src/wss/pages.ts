// Sparse per-page arrays for huge, mostly empty regions. A region is cut into chunks of
// CHUNK_PAGES pages; a directory (one Int32 per chunk) maps a chunk to a slot in a pool
// that grows only when a page of a new chunk is first recorded. Memory is therefore
// proportional to the chunks ever touched, not to the region: a 1 TiB region costs a 2 MiB
// directory (4 bytes per 2 MiB chunk) plus CHUNK_PAGES elements per touched chunk (4 KiB pages).
//
// SharedPageStates puts both in SharedArrayBuffers (the pool is growable), so a fault
// handler on another thread sees the same states; only the owning thread allocates chunks.
export const CHUNK_SHIFT = 9;
export const CHUNK_PAGES = 1 << CHUNK_SHIFT; // 512

function growCapacity(bytes: number, need: number, max: number): number {
  let n = Math.max(bytes, 64 * 1024);
  while (n < need) n *= 2;
  return Math.min(n, max);
}

/** A sparse byte per page (main-thread bookkeeping: access/write histories). */
export class SparseBytes {
  readonly pages: number;
  readonly chunks: number;
  /** chunk -> slot + 1 (0: none). */
  readonly dir: Int32Array;
  private buf: ArrayBuffer;
  /** The pool: slot s holds pages [s*CHUNK_PAGES, (s+1)*CHUNK_PAGES) of chunk slotChunk[s]. */
  bytes: Uint8Array;
  words: Uint32Array;
  slotChunk: Int32Array;
  used = 0;

  constructor(pages: number) {
    this.pages = pages;
    this.chunks = Math.ceil(pages / CHUNK_PAGES);
    this.dir = new Int32Array(this.chunks);
    const max = this.chunks * CHUNK_PAGES;
    this.buf = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(
      Math.min(64 * 1024, max), { maxByteLength: max });
    this.bytes = new Uint8Array(this.buf);
    this.words = new Uint32Array(this.buf);
    this.slotChunk = new Int32Array(Math.max(16, Math.min(this.chunks, 1024)));
  }

  /** Slot of a chunk, allocating it (zeroed) if needed. */
  slot(chunk: number): number {
    const d = this.dir[chunk];
    if (d) return d - 1;
    const s = this.used++;
    const need = this.used * CHUNK_PAGES;
    if (need > this.buf.byteLength) {
      const b = this.buf as unknown as { resize(n: number): void; maxByteLength: number };
      b.resize(growCapacity(this.buf.byteLength, need, b.maxByteLength));
    }
    if (s >= this.slotChunk.length) {
      const n = new Int32Array(Math.min(this.chunks, this.slotChunk.length * 2));
      n.set(this.slotChunk);
      this.slotChunk = n;
    }
    this.slotChunk[s] = chunk;
    this.dir[chunk] = s + 1;
    return s;
  }

  /** Index into `bytes` of a page, or -1 when its chunk was never touched. */
  indexOf(page: number): number {
    const d = this.dir[page >>> CHUNK_SHIFT];
    return d ? ((d - 1) << CHUNK_SHIFT) | (page & (CHUNK_PAGES - 1)) : -1;
  }
  get(page: number): number {
    const i = this.indexOf(page);
    return i < 0 ? 0 : this.bytes[i];
  }

  /** Calls fn(slotBase, pageBase, count) for each chunk overlapping [first, last) pages, allocating chunks. */
  forRange(first: number, last: number, fn: (idx: number, page: number, n: number) => void): void {
    let p = first;
    while (p < last) {
      const chunk = p >>> CHUNK_SHIFT;
      const chunkEnd = Math.min((chunk + 1) << CHUNK_SHIFT, last);
      const s = this.slot(chunk);
      fn((s << CHUNK_SHIFT) | (p & (CHUNK_PAGES - 1)), p, chunkEnd - p);
      p = chunkEnd;
    }
  }

  /** Bytes of memory this structure holds (directory + pool + reverse map). */
  get footprint(): number {
    return this.dir.byteLength + this.buf.byteLength + this.slotChunk.byteLength;
  }
}

// Page states shared with the fault handler (Int32 so Atomics.wait/notify work on them).
export const PS_NONE = 0; // resident in the region, or never populated
export const PS_HELD = 1; // moved aside into the holding area at the same offset (anon access trap)
export const PS_EVICTING = 2; // being saved to the store; a fault on it waits
export const PS_EVICTED = 3; // bytes in the store, page gone from memory
export const PS_SERVING = 4; // the handler is putting it back
export const PAGE_STATE_NAMES = ['none', 'held', 'evicting', 'evicted', 'serving'];

export interface SharedPageStatesInit {
  pages: number;
  dir: SharedArrayBuffer;
  pool: SharedArrayBuffer;
}

/** A sparse Int32 state per page, in SharedArrayBuffers; any thread may allocate chunks. */
export class SharedPageStates {
  readonly pages: number;
  readonly dir: Int32Array;
  /** Length-tracking view over the growable pool (sees growth made by any thread). */
  readonly pool: Int32Array;
  private readonly poolBuf: SharedArrayBuffer;

  static allocate(pages: number): SharedPageStatesInit {
    const chunks = Math.ceil(pages / CHUNK_PAGES);
    // Slot 0 of the pool is the control chunk: word 0 counts allocated slots.
    const max = (chunks + 1) * CHUNK_PAGES * 4;
    const SAB = SharedArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => SharedArrayBuffer;
    return { pages, dir: new SharedArrayBuffer(chunks * 4), pool: new SAB(Math.min(64 * 1024, max), { maxByteLength: max }) };
  }

  constructor(init: SharedPageStatesInit) {
    this.pages = init.pages;
    this.dir = new Int32Array(init.dir);
    this.poolBuf = init.pool;
    this.pool = new Int32Array(init.pool);
  }

  get init(): SharedPageStatesInit {
    return { pages: this.pages, dir: this.dir.buffer as SharedArrayBuffer, pool: this.poolBuf };
  }

  /** Index in pool of a page's state, or -1 (state none) when its chunk has no slot. */
  indexOf(page: number): number {
    const d = Atomics.load(this.dir, page >>> CHUNK_SHIFT);
    return d ? (d << CHUNK_SHIFT) | (page & (CHUNK_PAGES - 1)) : -1;
  }
  get(page: number): number {
    const i = this.indexOf(page);
    return i < 0 ? PS_NONE : Atomics.load(this.pool, i);
  }

  /** Index of a page's state, allocating its chunk if needed (safe from any thread). */
  ensure(page: number): number {
    const chunk = page >>> CHUNK_SHIFT;
    let d = Atomics.load(this.dir, chunk);
    if (!d) {
      const slot = Atomics.add(this.pool, 0, 1) + 1; // slot numbers start at 1
      const need = (slot + 1) * CHUNK_PAGES * 4;
      const b = this.poolBuf as unknown as { grow(n: number): void; maxByteLength: number; byteLength: number };
      while (b.byteLength < need) {
        try {
          b.grow(growCapacity(b.byteLength, need, b.maxByteLength));
        } catch {
          // another thread grew it concurrently (grow never shrinks): re-check
        }
      }
      const prev = Atomics.compareExchange(this.dir, chunk, 0, slot);
      d = prev === 0 ? slot : prev; // lost the race: the other slot wins, ours stays unused
    }
    return (d << CHUNK_SHIFT) | (page & (CHUNK_PAGES - 1));
  }

  set(page: number, state: number): void {
    const i = state === PS_NONE ? this.indexOf(page) : this.ensure(page);
    if (i >= 0) {
      Atomics.store(this.pool, i, state);
      Atomics.notify(this.pool, i);
    }
  }
  /** Sets [first, last) to state. */
  setRange(first: number, last: number, state: number): void {
    for (let p = first; p < last; p++) this.set(p, state);
  }
  /** compareExchange on a page's state; returns the previous value. Wakes waiters on success. */
  cas(page: number, expected: number, replacement: number): number {
    const i = expected === PS_NONE ? this.ensure(page) : this.indexOf(page);
    if (i < 0) return PS_NONE;
    const prev = Atomics.compareExchange(this.pool, i, expected, replacement);
    if (prev === expected) Atomics.notify(this.pool, i);
    return prev;
  }
  /** Waits (up to ms) while a page is in `state`. */
  waitWhile(page: number, state: number, ms: number): void {
    const i = this.indexOf(page);
    if (i >= 0) Atomics.wait(this.pool, i, state, ms);
  }

  /** Pages per state over all allocated chunks. */
  counts(): number[] {
    const out = [0, 0, 0, 0, 0];
    const n = Math.min((Atomics.load(this.pool, 0) + 1) * CHUNK_PAGES, this.pool.length);
    for (let i = CHUNK_PAGES; i < n; i++) out[this.pool[i]]++;
    return out;
  }

  /** Calls fn(page) for each page in `state` (in chunk-allocation order). */
  forEachIn(state: number, fn: (page: number) => void): void {
    const slots = Atomics.load(this.pool, 0);
    const slotChunk = new Int32Array(slots + 1).fill(-1);
    for (let c = 0; c < this.dir.length; c++) { const d = this.dir[c]; if (d) slotChunk[d] = c; }
    for (let s = 1; s <= slots; s++) {
      const c = slotChunk[s];
      if (c < 0) continue;
      const base = s << CHUNK_SHIFT;
      for (let k = 0; k < CHUNK_PAGES; k++) if (this.pool[base + k] === state) fn((c << CHUNK_SHIFT) + k);
    }
  }

  /** Calls fn(page, state) for each page not in state none, in page order. */
  forEachSet(fn: (page: number, state: number) => void): void {
    const pool = this.pool;
    for (let c = 0; c < this.dir.length; c++) {
      const d = Atomics.load(this.dir, c);
      if (!d) continue;
      const base = d << CHUNK_SHIFT;
      const first = c << CHUNK_SHIFT;
      const n = Math.min(CHUNK_PAGES, this.pages - first);
      for (let k = 0; k < n; k++) {
        const v = pool[base + k];
        if (v !== PS_NONE) fn(first + k, v);
      }
    }
  }

  get footprint(): number {
    return this.dir.byteLength + this.poolBuf.byteLength;
  }
}
