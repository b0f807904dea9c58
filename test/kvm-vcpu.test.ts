// Pins the KVM vCPU ioctl numbers, struct layouts and exit decoding (no /dev/kvm needed).
import assert from 'node:assert/strict';
import * as K from '../src/kernel/kvm-vcpu.js';
import { guestChecksum, CHECKSUM_CODE } from '../src/restore/kvm-guest.js';

describe('kvm-vcpu: UAPI numbers and layouts', () => {
  it('ioctl numbers match linux/kvm.h on x86_64', () => {
    assert.equal(K.KVM_CREATE_VCPU, 0xae41);
    assert.equal(K.KVM_GET_VCPU_MMAP_SIZE, 0xae04);
    assert.equal(K.KVM_RUN, 0xae80);
    assert.equal(K.KVM_SET_USER_MEMORY_REGION, 0x4020ae46);
    assert.equal(K.KVM_SET_TSS_ADDR, 0xae47);
    assert.equal(K.KVM_GET_REGS, 0x8090ae81);
    assert.equal(K.KVM_SET_REGS, 0x4090ae82);
    assert.equal(K.KVM_GET_SREGS, 0x8138ae83);
    assert.equal(K.KVM_SET_SREGS, 0x4138ae84);
  });

  it('exit reasons', () => {
    assert.equal(K.KVM_EXIT.IO, 2);
    assert.equal(K.KVM_EXIT.HLT, 5);
    assert.equal(K.KVM_EXIT.MMIO, 6);
    assert.equal(K.KVM_EXIT.SHUTDOWN, 8);
    assert.equal(K.KVM_EXIT.FAIL_ENTRY, 9);
    assert.equal(K.KVM_EXIT.INTR, 10);
    assert.equal(K.KVM_EXIT.INTERNAL_ERROR, 17);
    assert.equal(K.KVM_EXIT.SYSTEM_EVENT, 24);
    assert.equal(K.KVM_EXIT.MEMORY_FAULT, 39);
    assert.equal(K.exitName(5), 'HLT');
    assert.equal(K.exitName(999), 'EXIT_999');
  });

  it('kvm_userspace_memory_region layout', () => {
    const dv = new DataView(new ArrayBuffer(32));
    K.encodeMemoryRegion(dv, { slot: 3, flags: K.KVM_MEM_READONLY, gpa: 0x100000, size: 0x200000, hostAddr: 0x7f0012345000 });
    assert.equal(dv.getUint32(0, true), 3);
    assert.equal(dv.getUint32(4, true), 2);
    assert.equal(dv.getBigUint64(8, true), 0x100000n);
    assert.equal(dv.getBigUint64(16, true), 0x200000n);
    assert.equal(dv.getBigUint64(24, true), 0x7f0012345000n);
  });

  it('kvm_regs: 18 u64 in order, rip at 128 and rflags at 136', () => {
    const dv = new DataView(new ArrayBuffer(K.SIZEOF_KVM_REGS));
    K.encodeRegs(dv, { rax: 1, rsi: 0x100000, rip: 0x1234, rflags: 2 });
    assert.equal(dv.getBigUint64(0, true), 1n);
    assert.equal(dv.getBigUint64(4 * 8, true), 0x100000n);
    assert.equal(dv.getBigUint64(128, true), 0x1234n);
    assert.equal(dv.getBigUint64(136, true), 2n);
    const r = K.decodeRegs(dv);
    assert.equal(r.rip, 0x1234);
    assert.equal(r.rbx, 0);
  });

  it('kvm_sregs: segments of 24 bytes, gdt @192, cr0 @224, efer @264, bitmap @280; round trip', () => {
    const dv = new DataView(new ArrayBuffer(K.SIZEOF_KVM_SREGS));
    for (let i = 0; i < K.SIZEOF_KVM_SREGS; i++) dv.setUint8(i, (i * 7) & 0xff);
    // Zero the padding bytes so the round trip is byte-exact.
    for (let s = 0; s < 8; s++) dv.setUint8(s * 24 + 23, 0);
    for (const o of [192, 208]) { dv.setUint16(o + 10, 0); dv.setUint32(o + 12, 0); }
    // Keep u64 fields below 2^53 (numbers).
    for (const o of [0, 24, 48, 72, 96, 120, 144, 168, 192, 208, 224, 232, 240, 248, 256, 264, 272]) dv.setUint8(o + 7, 0);
    for (const o of [0, 24, 48, 72, 96, 120, 144, 168, 192, 208, 224, 232, 240, 248, 256, 264, 272]) dv.setUint8(o + 6, 0);
    const before = new Uint8Array(dv.buffer.slice(0));
    const s = K.decodeSregs(dv);
    assert.equal(s.cs.selector, dv.getUint16(12, true));
    assert.equal(s.ds.base, Number(dv.getBigUint64(24, true)));
    assert.equal(s.cr0, Number(dv.getBigUint64(224, true)));
    assert.equal(s.efer, Number(dv.getBigUint64(264, true)));
    assert.equal(s.interruptBitmap[0], dv.getBigUint64(280, true));
    const out = new DataView(new ArrayBuffer(K.SIZEOF_KVM_SREGS));
    K.encodeSregs(out, s);
    assert.deepEqual(new Uint8Array(out.buffer), before);
  });

  it('flatProtectedMode sets 4 GiB flat code/data segments and CR0.PE', () => {
    const dv = new DataView(new ArrayBuffer(K.SIZEOF_KVM_SREGS));
    dv.setUint32(224, 0x60000010, true);
    const s = K.flatProtectedMode(K.decodeSregs(dv));
    assert.equal(s.cr0, 0x60000011);
    assert.deepEqual([s.cs.type, s.cs.db, s.cs.g, s.cs.limit, s.cs.present, s.cs.s], [0xb, 1, 1, 0xffffffff, 1, 1]);
    for (const n of ['ds', 'es', 'fs', 'gs', 'ss'] as const) assert.equal(s[n].type, 3);
  });

  it('decodes an IO exit from a kvm_run page', () => {
    const dv = new DataView(new ArrayBuffer(4096));
    dv.setUint32(8, K.KVM_EXIT.IO, true);
    dv.setUint8(32, K.KVM_EXIT_IO_OUT);
    dv.setUint8(33, 4);
    dv.setUint16(34, 0x3f0, true);
    dv.setUint32(36, 1, true);
    dv.setBigUint64(40, 0x1000n, true);
    assert.deepEqual(K.decodeExit(dv), { reason: 2, name: 'IO', io: { direction: 'out', size: 4, port: 0x3f0, count: 1, dataOffset: 0x1000 } });
    dv.setUint32(8, K.KVM_EXIT.FAIL_ENTRY, true);
    dv.setBigUint64(32, 0x80000021n, true);
    dv.setUint32(40, 1, true);
    assert.deepEqual(K.decodeExit(dv).failEntry, { hardwareEntryFailureReason: 0x80000021, cpu: 1 });
  });

  it('the guest program and the host checksum agree on a known input', () => {
    assert.equal(CHECKSUM_CODE.length, 14);
    assert.equal(CHECKSUM_CODE[10], 0x75); // jnz
    assert.equal((12 + ((CHECKSUM_CODE[11] ?? 0) - 256)), 2, 'jnz goes back to the rol at offset 2');
    const b = new Uint8Array(12);
    new DataView(b.buffer).setUint32(0, 1, true);
    new DataView(b.buffer).setUint32(4, 2, true);
    new DataView(b.buffer).setUint32(8, 0x80000000, true);
    // h = 1; h = rol(1,5)+2 = 34; h = rol(34,5)+0x80000000 = 1088 + 0x80000000
    assert.equal(guestChecksum(b), (1088 + 0x80000000) >>> 0);
    assert.equal(guestChecksum(b, 8), 1, 'one u32 fits a stride of 8 in 12 bytes');
    assert.equal(guestChecksum(b, 8, 2), ((1 << 5) + 0x80000000) >>> 0);
  });
});
