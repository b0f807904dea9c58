// Element i of an array that the test expects to have it: a failed assertion naming the
// index and the length otherwise (instead of a TypeError on undefined further on).
import * as assert from 'node:assert/strict';

export function at<T>(xs: ArrayLike<T>, i: number, what = 'element'): T {
  const x = xs[i];
  assert.ok(x !== undefined, `${what} ${i} is missing (length ${xs.length})`);
  return x;
}
