// What the tracker remembers of each page: one history byte per page for accesses (or, with
// writes only, writes) and one for writes, in sparse chunks (pages.ts). Bit 7 is the newest
// interval ... bit 1 six intervals before; bit 0 = known (seen present at least once). From
// it: hot (accessed in >= hotMin of the last hotWindow intervals), cold (known and not
// accessed in the last coldAfter intervals), warm (the rest), ranges and heat per bucket.
import { ConfigError } from '../kernel/errors.js';
import { CHUNK_PAGES, CHUNK_SHIFT, SparseBytes } from './pages.js';

export const KNOWN = 0x01;
export const NEWEST = 0x80;

/** Page classes: CLASS_UNKNOWN (never seen), hot, warm, cold. */
export const CLASS_UNKNOWN = 0;
export const CLASS_HOT = 1;
export const CLASS_WARM = 2;
export const CLASS_COLD = 3;

export type HistoryKind = 'accessed' | 'written' | 'hot' | 'warm' | 'cold' | 'known';

export interface HistoryOptions {
  hotMin?: number;
  hotWindow?: number;
  coldAfter?: number;
}

function popcount8(x: number): number {
  let n = 0;
  for (; x; x &= x - 1) n++;
  return n;
}

/** Whether a history byte says "known and idle for at least minIdle intervals". */
export function idleTest(minIdle: number): (b: number) => boolean {
  if (!Number.isInteger(minIdle) || minIdle < 1 || minIdle > 7) throw new ConfigError(`minIdle must be in 1..7, got ${minIdle}`);
  const idleMask = (0xff << (8 - minIdle)) & 0xfe;
  return (b) => (b & KNOWN) !== 0 && (b & idleMask) === 0;
}

export class PageHistory {
  readonly pages: number;
  /** Access (or, with writes only, write) history per page. */
  readonly access: SparseBytes;
  /** Write history per page. */
  readonly write: SparseBytes;
  readonly hotMin: number;
  readonly hotWindow: number;
  readonly coldAfter: number;
  private readonly classOf = new Uint8Array(256);

  constructor(pages: number, opts: HistoryOptions = {}) {
    this.pages = pages;
    this.access = new SparseBytes(pages);
    this.write = new SparseBytes(pages);
    this.hotMin = opts.hotMin ?? 2;
    this.hotWindow = opts.hotWindow ?? 4;
    this.coldAfter = opts.coldAfter ?? 3;
    if (this.hotWindow < 1 || this.hotWindow > 7 || this.hotMin < 1 || this.hotMin > this.hotWindow) {
      throw new ConfigError(`hotMin (${this.hotMin}) must be in 1..hotWindow and hotWindow (${this.hotWindow}) in 1..7`);
    }
    if (this.coldAfter < 1 || this.coldAfter > 7) throw new ConfigError(`coldAfter must be in 1..7, got ${this.coldAfter}`);
    const hotMask = (0xff << (8 - this.hotWindow)) & 0xfe;
    const coldMask = (0xff << (8 - this.coldAfter)) & 0xfe;
    for (let b = 0; b < 256; b++) {
      if (!(b & KNOWN)) this.classOf[b] = CLASS_UNKNOWN;
      else if (popcount8(b & hotMask) >= this.hotMin) this.classOf[b] = CLASS_HOT;
      else if ((b & coldMask) === 0) this.classOf[b] = CLASS_COLD;
      else this.classOf[b] = CLASS_WARM;
    }
  }

  /** Marks pages known and (when `activity`) active in the newest interval; returns pages newly marked active. */
  mark(h: SparseBytes, first: number, last: number, activity: boolean): number {
    let added = 0;
    const set = activity ? NEWEST | KNOWN : KNOWN;
    let p = first;
    while (p < last) {
      const chunk = p >>> CHUNK_SHIFT;
      const end = Math.min((chunk + 1) << CHUNK_SHIFT, last);
      const base = (h.slot(chunk) << CHUNK_SHIFT) - (chunk << CHUNK_SHIFT);
      const b = h.bytes; // length-tracking: valid after the pool grew
      for (let i = base + p, n = base + end; i < n; i++) {
        const x = b[i] ?? 0;
        if (activity && !(x & NEWEST)) added++;
        b[i] = x | set;
      }
      p = end;
    }
    return added;
  }

  /** Starts a new interval: every history shifts by one bit, known stays. */
  age(): void {
    for (const h of [this.access, this.write]) {
      const w = h.words;
      const n = (h.used * CHUNK_PAGES) >>> 2;
      for (let i = 0; i < n; i++) {
        const x = w[i] ?? 0;
        w[i] = ((x >>> 1) & 0x7e7e7e7e) | (x & 0x01010101);
      }
    }
  }

  /** Pages per class, indexed by CLASS_*. */
  classify(): [number, number, number, number] {
    const out: [number, number, number, number] = [0, 0, 0, 0];
    const b = this.access.bytes;
    const n = this.access.used * CHUNK_PAGES;
    const cls = this.classOf;
    for (let i = 0; i < n; i++) {
      const c = cls[b[i] ?? 0] ?? CLASS_UNKNOWN;
      out[c as 0 | 1 | 2 | 3]++;
    }
    return out;
  }

  /** The test for a kind of page, on its history byte. */
  test(kind: HistoryKind): (b: number) => boolean {
    const cls = this.classOf;
    switch (kind) {
      case 'accessed': case 'written': return (b) => (b & NEWEST) !== 0;
      case 'hot': return (b) => cls[b] === CLASS_HOT;
      case 'warm': return (b) => cls[b] === CLASS_WARM;
      case 'cold': return (b) => cls[b] === CLASS_COLD;
      default: return (b) => (b & KNOWN) !== 0;
    }
  }

  /** The history a kind of page is read from. */
  of(kind: HistoryKind): SparseBytes {
    return kind === 'written' ? this.write : this.access;
  }

  /** Page runs [first, last) in page order whose history byte passes test; fn returns false to stop. */
  forPages(h: SparseBytes, test: (b: number) => boolean, fn: (first: number, last: number) => boolean): void {
    const bytes = h.bytes;
    for (let c = 0; c < h.chunks; c++) {
      const d = h.dir[c];
      if (!d) continue;
      const base = (d - 1) << CHUNK_SHIFT;
      const pageBase = c << CHUNK_SHIFT;
      const n = Math.min(CHUNK_PAGES, this.pages - pageBase);
      let runStart = -1;
      for (let k = 0; k <= n; k++) {
        const hit = k < n && test(bytes[base + k] ?? 0);
        if (hit && runStart < 0) runStart = k;
        else if (!hit && runStart >= 0) {
          if (!fn(pageBase + runStart, pageBase + k)) return;
          runStart = -1;
        }
      }
    }
  }

  /**
   * Fraction of each of `buckets` equal page slices accessed (and written) in the newest
   * interval, into the arrays given.
   */
  heat(accessed: Float32Array, written: Float32Array): void {
    const buckets = accessed.length;
    accessed.fill(0);
    written.fill(0);
    const perBucket = this.pages / buckets;
    for (const [h, out] of [[this.access, accessed], [this.write, written]] as const) {
      const bytes = h.bytes;
      for (let s = 0; s < h.used; s++) {
        const pageBase = (h.slotChunk[s] ?? 0) << CHUNK_SHIFT;
        const base = s << CHUNK_SHIFT;
        for (let k = 0; k < CHUNK_PAGES; k++) {
          if ((bytes[base + k] ?? 0) & NEWEST) {
            const i = Math.min(buckets - 1, Math.floor((pageBase + k) / perBucket));
            out[i] = (out[i] ?? 0) + 1;
          }
        }
      }
      for (let i = 0; i < buckets; i++) out[i] = (out[i] ?? 0) / perBucket;
    }
  }

  get footprint(): number {
    return this.access.footprint + this.write.footprint;
  }
}
