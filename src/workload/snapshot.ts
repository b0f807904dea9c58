// Generated snapshots: deterministic bytes that differ in every page and every word, so a
// page served from the wrong place or half-copied is caught by a byte comparison.
import * as fs from 'node:fs';

/** Fills `out` with the pattern of `seed`, as if it started at byte `offset` of the snapshot. */
export function fillPattern(out: Uint8Array, seed: number, offset = 0): void {
  if (out.byteOffset % 4 || out.byteLength % 4 || offset % 4) throw new RangeError('pattern buffers must be 4-byte aligned');
  const w = new Uint32Array(out.buffer, out.byteOffset, out.byteLength / 4);
  const first = offset / 4;
  for (let i = 0; i < w.length; i++) {
    // A cheap integer hash of (seed, word index): every word of every page differs.
    let x = (first + i) ^ Math.imul(seed, 0x9e3779b1);
    x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
    x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
    w[i] = x ^ (x >>> 16);
  }
}

/** A snapshot of `size` bytes in a SharedArrayBuffer. */
export function makeSnapshot(size: number, seed = 1): Uint8Array {
  const b = new Uint8Array(new SharedArrayBuffer(size));
  fillPattern(b, seed);
  return b;
}

/** Writes a snapshot file of `size` bytes in 8 MiB chunks; returns its path. */
export function writeSnapshotFile(path: string, size: number, seed = 1): string {
  const chunk = new Uint8Array(Math.min(size, 8 << 20));
  const fd = fs.openSync(path, 'w');
  try {
    for (let off = 0; off < size; off += chunk.length) {
      const n = Math.min(chunk.length, size - off);
      fillPattern(chunk.subarray(0, n), seed, off);
      fs.writeSync(fd, chunk, 0, n, off);
    }
  } finally {
    fs.closeSync(fd);
  }
  return path;
}
