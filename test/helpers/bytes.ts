// Byte patterns for tests, and a byte-by-byte comparison that names the first difference.
import * as assert from 'node:assert/strict';

/** A deterministic pattern that differs per page and per byte (never all one value). */
export function pattern(len: number, seed: number, pageSize = 4096): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) {
    const page = Math.floor(i / pageSize);
    b[i] = (seed * 131 + page * 31 + i * 7 + (i >>> 8)) & 0xff;
  }
  return b;
}

/** Asserts that every byte of `actual` equals `expected`, reporting the first mismatch. */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length),
    Buffer.from(expected.buffer, expected.byteOffset, expected.length)) === 0) return;
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(`${what}: byte ${i} (page ${Math.floor(i / 4096)}, offset ${i % 4096}) is ` +
        `0x${actual[i]?.toString(16)}, expected 0x${expected[i]?.toString(16)}`);
    }
  }
}

/** Asserts every byte equals `value`. */
export function assertFilled(actual: Uint8Array, value: number, what: string): void {
  assertBytes(actual, new Uint8Array(actual.length).fill(value), what);
}
