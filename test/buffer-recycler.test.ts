// The recycler of engine tables on reusable threads (src/engine/buffer-recycler.ts).
import assert from 'node:assert/strict';
import { BufferRecycler, RECYCLE_MAX_BYTES } from '../src/engine/buffer-recycler.js';

describe('engine: buffer recycler', () => {
  it('hands back a given-back buffer of the same length, zeroed; otherwise the fresh one', () => {
    const r = new BufferRecycler();
    const fresh = new SharedArrayBuffer(64);
    assert.equal(r.swap(fresh), fresh, 'nothing to recycle yet: the fresh buffer');
    const used = new SharedArrayBuffer(64);
    new Uint8Array(used).fill(7);
    r.giveBack([used, used]); // given twice: kept once
    assert.equal(r.swap(new SharedArrayBuffer(32)).byteLength, 32, 'another length: a fresh buffer');
    const got = r.swap(new SharedArrayBuffer(64));
    assert.equal(got, used);
    assert.ok(new Uint8Array(got).every((b) => b === 0), 'zeroed');
    const next = new SharedArrayBuffer(64);
    assert.equal(r.swap(next), next, 'each kept buffer is handed out once');
  });

  it('does not keep buffers larger than RECYCLE_MAX_BYTES (zeroing them would cost more)', () => {
    const r = new BufferRecycler();
    r.giveBack([new SharedArrayBuffer(RECYCLE_MAX_BYTES + 8)]);
    const fresh = new SharedArrayBuffer(RECYCLE_MAX_BYTES + 8);
    assert.equal(r.swap(fresh), fresh);
  });
});
