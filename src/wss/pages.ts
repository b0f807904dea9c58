// Sparse per-page arrays for huge, mostly empty regions. A region is cut into chunks of
// CHUNK_PAGES pages; a directory (one Int32 per chunk) maps a chunk to a slot in a pool
// that grows only when a page of a new chunk is first recorded. Memory is therefore
// proportional to the chunks ever touched, not to the region: a 1 TiB region costs a 2 MiB
// directory (4 bytes per 2 MiB chunk) plus CHUNK_PAGES elements per touched chunk (4 KiB pages).
//
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
    return i < 0 ? 0 : this.bytes[i] ?? 0;
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

// Which pages have a copy in the tracker's store (the engine's source): one byte per page in
// sparse chunks, kept by the main thread only (the engine's own page-state table says whether
// a fault is served from the store; this one says why the store holds the page).
export const COPY_NONE = 0; // no copy: the page is in the region (or a hole)
export const COPY_HELD = 1; // moved into the store by the anon access trap (move) this interval
export const COPY_EVICTED = 2; // evicted: its bytes are in the store, gone from memory
export const COPY_STATE_NAMES = ['none', 'held', 'evicted'] as const;

/** A sparse per-page COPY_* state. */
export class PageCopies {
  private readonly marks: SparseBytes;

  constructor(pages: number) {
    this.marks = new SparseBytes(pages);
  }

  get(page: number): number {
    return this.marks.get(page);
  }

  /** Sets pages [first, last) to state (COPY_NONE allocates nothing). */
  setRange(first: number, last: number, state: number): void {
    if (state === COPY_NONE) {
      for (let p = first; p < last; p++) {
        const i = this.marks.indexOf(p);
        if (i >= 0) this.marks.bytes[i] = COPY_NONE;
      }
      return;
    }
    this.marks.forRange(first, last, (idx, _page, n) => { this.marks.bytes.fill(state, idx, idx + n); });
  }

  /** Pages per state (indexed by COPY_*). */
  counts(): [number, number, number] {
    const out: [number, number, number] = [0, 0, 0];
    const b = this.marks.bytes;
    for (let i = 0, n = this.marks.used * CHUNK_PAGES; i < n; i++) {
      const v = b[i];
      if (v === COPY_HELD) out[COPY_HELD]++;
      else if (v === COPY_EVICTED) out[COPY_EVICTED]++;
    }
    return out;
  }

  /** Calls fn(page, state) for each page with a copy, in page order. */
  forEachSet(fn: (page: number, state: number) => void): void {
    const { dir, bytes } = this.marks;
    for (let c = 0; c < dir.length; c++) {
      const d = dir[c];
      if (!d) continue;
      const base = (d - 1) << CHUNK_SHIFT;
      const first = c << CHUNK_SHIFT;
      const n = Math.min(CHUNK_PAGES, this.marks.pages - first);
      for (let k = 0; k < n; k++) {
        const v = bytes[base + k];
        if (v) fn(first + k, v);
      }
    }
  }

  get footprint(): number {
    return this.marks.footprint;
  }
}
