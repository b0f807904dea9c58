// uffd_msg decoding from bytes laid out by hand (UAPI.md "Messages"): 32 bytes per message,
// event u8 at 0, the argument from byte 8, little endian.
import * as assert from 'node:assert/strict';
import {
  decodeMessage, faultKind, msgEvent, msgFaultAddress, msgFaultFlags, msgFaultTid, s64, u64, writeU64,
} from '../src/kernel/messages.js';

/** Writes a little-endian u64 given as a bigint into bytes, by hand. */
function putU64(b: Uint8Array, off: number, v: bigint): void {
  for (let i = 0; i < 8; i++) b[off + i] = Number((v >> BigInt(8 * i)) & 0xffn);
}
function putU32(b: Uint8Array, off: number, v: number): void {
  for (let i = 0; i < 4; i++) b[off + i] = (v >>> (8 * i)) & 0xff;
}

function messages(n: number): { bytes: Uint8Array; dv: DataView } {
  const bytes = new Uint8Array(32 * n);
  return { bytes, dv: new DataView(bytes.buffer) };
}

const ADDR = 0x7ffd_1234_5000n; // above 2^32: both halves matter
const ADDR2 = 0x5555_dead_b000n;

describe('uffd_msg decoding', () => {
  function pagefault(flags: number, address: bigint, tid = 0, pad = 0) {
    const { bytes, dv } = messages(1);
    bytes[0] = 0x12;
    bytes[1] = pad; bytes[2] = pad; // reserved bytes must be ignored
    putU64(bytes, 8, BigInt(flags));
    putU64(bytes, 16, address);
    putU32(bytes, 24, tid);
    return dv;
  }

  const cases: [string, number, string, boolean][] = [
    ['missing read', 0, 'missing', false],
    ['missing write', 1, 'missing', true],
    ['write-protect (WRITE|WP)', 1 | 2, 'wp', true],
    ['minor read', 4, 'minor', false],
    ['minor write', 4 | 1, 'minor', true],
    ['rwp read', 8, 'rwp', false],
    ['rwp write', 8 | 1, 'rwp', true],
  ];
  for (const [label, flags, kind, write] of cases) {
    it(`PAGEFAULT ${label}: flags 0x${flags.toString(16)} -> kind ${kind}`, () => {
      const dv = pagefault(flags, ADDR, 4242, 0xff);
      assert.deepEqual(decodeMessage(dv, 0), {
        type: 'pagefault', kind, write, address: Number(ADDR), flags, tid: 4242,
      });
      assert.equal(msgEvent(dv, 0), 0x12);
      assert.equal(msgFaultFlags(dv, 0), flags);
      assert.equal(msgFaultAddress(dv, 0), Number(ADDR));
      assert.equal(msgFaultTid(dv, 0), 4242);
    });
  }

  it('PAGEFAULT with an exact (unaligned) address and no thread id', () => {
    const dv = pagefault(1, ADDR + 0x123n);
    const m = decodeMessage(dv, 0);
    assert.equal(m.type, 'pagefault');
    if (m.type === 'pagefault') {
      assert.equal(m.address, Number(ADDR) + 0x123);
      assert.equal(m.tid, 0);
    }
  });

  it('FORK: ufd u32 at 8', () => {
    const { bytes, dv } = messages(1);
    bytes[0] = 0x13;
    putU32(bytes, 8, 17);
    putU32(bytes, 12, 0xffffffff); // padding after the u32
    assert.deepEqual(decodeMessage(dv, 0), { type: 'fork', ufd: 17 });
  });

  it('REMAP: from @8, to @16, len @24', () => {
    const { bytes, dv } = messages(1);
    bytes[0] = 0x14;
    putU64(bytes, 8, ADDR);
    putU64(bytes, 16, ADDR2);
    putU64(bytes, 24, 0x20_0000n);
    assert.deepEqual(decodeMessage(dv, 0), { type: 'remap', from: Number(ADDR), to: Number(ADDR2), len: 0x200000 });
  });

  it('REMOVE: start @8, end @16', () => {
    const { bytes, dv } = messages(1);
    bytes[0] = 0x15;
    putU64(bytes, 8, ADDR);
    putU64(bytes, 16, ADDR + 0x3000n);
    assert.deepEqual(decodeMessage(dv, 0), { type: 'remove', start: Number(ADDR), end: Number(ADDR) + 0x3000 });
  });

  it('UNMAP: start @8, end @16', () => {
    const { bytes, dv } = messages(1);
    bytes[0] = 0x16;
    putU64(bytes, 8, ADDR2);
    putU64(bytes, 16, ADDR2 + 0x1000n);
    assert.deepEqual(decodeMessage(dv, 0), { type: 'unmap', start: Number(ADDR2), end: Number(ADDR2) + 0x1000 });
  });

  it('an unknown event number is reported, not misread', () => {
    const { bytes, dv } = messages(1);
    bytes[0] = 0x42;
    assert.deepEqual(decodeMessage(dv, 0), { type: 'unknown', event: 0x42 });
  });

  it('decodes message i of a batch read (records at i * 32)', () => {
    const { bytes, dv } = messages(4);
    bytes[0] = 0x12; putU64(bytes, 8, 1n); putU64(bytes, 16, ADDR); putU32(bytes, 24, 7);
    bytes[32] = 0x15; putU64(bytes, 40, ADDR2); putU64(bytes, 48, ADDR2 + 0x2000n);
    bytes[64] = 0x12; putU64(bytes, 72, 4n); putU64(bytes, 80, ADDR2 + 0x1000n); putU32(bytes, 88, 8);
    bytes[96] = 0x13; putU32(bytes, 104, 99);
    assert.deepEqual(decodeMessage(dv, 0), { type: 'pagefault', kind: 'missing', write: true, address: Number(ADDR), flags: 1, tid: 7 });
    assert.deepEqual(decodeMessage(dv, 1), { type: 'remove', start: Number(ADDR2), end: Number(ADDR2) + 0x2000 });
    assert.deepEqual(decodeMessage(dv, 2), { type: 'pagefault', kind: 'minor', write: false, address: Number(ADDR2) + 0x1000, flags: 4, tid: 8 });
    assert.deepEqual(decodeMessage(dv, 3), { type: 'fork', ufd: 99 });
    assert.equal(msgEvent(dv, 1), 0x15);
    assert.equal(msgFaultAddress(dv, 2), Number(ADDR2) + 0x1000);
    assert.equal(msgFaultTid(dv, 2), 8);
  });

  it('faultKind: WP takes precedence, then MINOR, then RWP; none is missing', () => {
    assert.equal(faultKind(0), 'missing');
    assert.equal(faultKind(1), 'missing');
    assert.equal(faultKind(2), 'wp');
    assert.equal(faultKind(4), 'minor');
    assert.equal(faultKind(8), 'rwp');
  });

  it('u64/writeU64 round-trip addresses up to 2^53 and agree with hand-laid bytes', () => {
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    for (const v of [0n, 1n, 0xffff_ffffn, 0x1_0000_0000n, ADDR, 0x1f_ffff_ffff_ffffn]) {
      putU64(b, 0, v);
      assert.equal(u64(dv, 0), Number(v));
      writeU64(dv, 8, Number(v));
      assert.deepEqual([...b.subarray(8, 16)], [...b.subarray(0, 8)]);
    }
  });

  it('s64 reads bytes done and negative errno out-fields', () => {
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    putU64(b, 0, 0x3000n);
    assert.equal(s64(dv, 0), 0x3000);
    putU64(b, 0, (1n << 64n) - 17n); // -EEXIST
    assert.equal(s64(dv, 0), -17);
    putU64(b, 0, (1n << 64n) - 11n); // -EAGAIN
    assert.equal(s64(dv, 0), -11);
    putU64(b, 0, 0x1_0000_0000n);
    assert.equal(s64(dv, 0), 0x1_0000_0000);
  });
});
