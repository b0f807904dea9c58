// KVM vCPUs and guest memory slots (x86_64): KVM_CREATE_VCPU, the kvm_run mapping,
// KVM_SET_USER_MEMORY_REGION, KVM_GET/SET_REGS and _SREGS, KVM_RUN and the decoding of
// exit reasons. VM and /dev/kvm handling is in kvm.ts.
//
// A Vcpu object is used by one thread. To run a vCPU on another thread (a worker, so a
// fault on guest memory served elsewhere cannot deadlock), pass its fd and kvm_run
// address and wrap them there with Vcpu.fromFd: both are valid process-wide.
import * as C from './constants.js';
import { IO, IOR, IOW, KVMIO } from './constants.js';
import { UffdError } from './errors.js';
import { addressOf, errno, errnoName, libc, viewOf, ERRNO } from './libc.js';
import { u64, writeU64 } from './messages.js';

// ---- ioctl numbers (asm/kvm.h, linux/kvm.h; x86_64 struct sizes) ----
export const SIZEOF_KVM_USERSPACE_MEMORY_REGION = 32;
export const SIZEOF_KVM_REGS = 144;
export const SIZEOF_KVM_SREGS = 312;
export const SIZEOF_KVM_SEGMENT = 24;
export const SIZEOF_KVM_DTABLE = 16;
export const KVM_SET_USER_MEMORY_REGION = IOW(KVMIO, 0x46, SIZEOF_KVM_USERSPACE_MEMORY_REGION); // 0x4020ae46
export const KVM_SET_TSS_ADDR = IO(KVMIO, 0x47); // 0xae47
export const KVM_GET_REGS = IOR(KVMIO, 0x81, SIZEOF_KVM_REGS); // 0x8090ae81
export const KVM_SET_REGS = IOW(KVMIO, 0x82, SIZEOF_KVM_REGS); // 0x4090ae82
export const KVM_GET_SREGS = IOR(KVMIO, 0x83, SIZEOF_KVM_SREGS); // 0x8138ae83
export const KVM_SET_SREGS = IOW(KVMIO, 0x84, SIZEOF_KVM_SREGS); // 0x4138ae84
export { KVM_CREATE_VCPU, KVM_GET_VCPU_MMAP_SIZE, KVM_RUN } from './constants.js';

/** kvm_userspace_memory_region.flags */
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;

// ---- exit reasons (kvm_run.exit_reason) ----
export const KVM_EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, NMI: 16, INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24, IOAPIC_EOI: 26, HYPERV: 27, X86_RDMSR: 29, X86_WRMSR: 30, DIRTY_RING_FULL: 31,
  X86_BUS_LOCK: 33, NOTIFY: 37, MEMORY_FAULT: 39,
} as const;
export type ExitName = keyof typeof KVM_EXIT;
const EXIT_NAMES = new Map<number, ExitName>(Object.entries(KVM_EXIT).map(([k, v]) => [v, k as ExitName]));
export function exitName(reason: number): string {
  return EXIT_NAMES.get(reason) ?? `EXIT_${reason}`;
}
export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

// ---- struct kvm_run (the mmap'd page) offsets ----
export const KVM_RUN_OFFSETS = {
  request_interrupt_window: 0,
  immediate_exit: 1,
  exit_reason: 8,
  ready_for_interrupt_injection: 12,
  if_flag: 13,
  flags: 14,
  cr8: 16,
  apic_base: 24,
  /** The exit union. */
  exit: 32,
} as const;

function fail(op: string, e = errno()): never {
  const code = errnoName(e);
  let hint: string | undefined;
  if (code === 'EEXIST' && op === 'KVM_CREATE_VCPU') hint = 'a vCPU with that id already exists in this VM';
  else if (code === 'EINVAL' && op === 'KVM_SET_USER_MEMORY_REGION') {
    hint = 'guest physical address, size and host address must be page-aligned, and slots must not overlap';
  } else if (code === 'EFAULT' && op === 'KVM_RUN') hint = 'guest memory is not backed by a host mapping (check the memory slots)';
  throw new UffdError({ op, errno: e, hint });
}

// ---- memory slots ----
const memRegion = new Uint8Array(new ArrayBuffer(SIZEOF_KVM_USERSPACE_MEMORY_REGION));
const memRegionDv = new DataView(memRegion.buffer);
const memRegionAddr = addressOf(memRegion);

/** A guest memory slot: guest-physical [gpa, gpa+size) backed by host memory at hostAddr. */
export interface MemorySlot {
  slot: number;
  gpa: number;
  size: number;
  hostAddr: number;
  /** KVM_MEM_* (KVM_MEM_READONLY…); default 0. */
  flags?: number;
}

/** Encodes struct kvm_userspace_memory_region { u32 slot; u32 flags; u64 guest_phys_addr, memory_size, userspace_addr; }. */
export function encodeMemoryRegion(dv: DataView, m: MemorySlot): void {
  dv.setUint32(0, m.slot, true);
  dv.setUint32(4, m.flags ?? 0, true);
  writeU64(dv, 8, m.gpa);
  writeU64(dv, 16, m.size);
  writeU64(dv, 24, m.hostAddr);
}

/**
 * KVM_SET_USER_MEMORY_REGION: guest-physical [gpa, gpa+size) is backed by host memory at
 * hostAddr (any mapping of this process: anonymous, memfd, hugetlb — and it may be
 * registered with a userfaultfd, so guest accesses fault to the handler). Size 0 deletes the slot.
 */
export function setUserMemoryRegion(vmFd: number, m: MemorySlot): void {
  encodeMemoryRegion(memRegionDv, m);
  if (libc.ioctl(vmFd, KVM_SET_USER_MEMORY_REGION, memRegionAddr) < 0) fail('KVM_SET_USER_MEMORY_REGION');
}

/** KVM_SET_TSS_ADDR: three pages of guest-physical space Intel VMX needs for real-mode emulation. */
export function setTssAddr(vmFd: number, gpa = 0xfffbd000): void {
  if (libc.ioctl(vmFd, KVM_SET_TSS_ADDR, gpa) < 0) fail('KVM_SET_TSS_ADDR');
}

/** KVM_GET_VCPU_MMAP_SIZE (on the /dev/kvm fd): bytes of the kvm_run mapping. */
export function vcpuMmapSize(kvmFd: number): number {
  const n = libc.ioctl(kvmFd, C.KVM_GET_VCPU_MMAP_SIZE, 0);
  if (n < 0) fail('KVM_GET_VCPU_MMAP_SIZE');
  return n;
}

// ---- registers ----
export const REG_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11',
  'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
export type RegName = typeof REG_NAMES[number];
/** struct kvm_regs: 18 u64, in REG_NAMES order. Values above 2^53 lose precision (use the raw bytes). */
export type Regs = Record<RegName, number>;

export function decodeRegs(dv: DataView): Regs {
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => { r[n] = u64(dv, i * 8); });
  return r;
}
export function encodeRegs(dv: DataView, r: Partial<Regs>): void {
  REG_NAMES.forEach((n, i) => {
    const v = r[n];
    if (v !== undefined) writeU64(dv, i * 8, v);
  });
}

export interface Segment {
  base: number; limit: number; selector: number; type: number;
  present: number; dpl: number; db: number; s: number; l: number; g: number; avl: number; unusable: number;
}
export interface DTable { base: number; limit: number }
export const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export type SegmentName = typeof SEGMENT_NAMES[number];
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: DTable; idt: DTable;
  cr0: number; cr2: number; cr3: number; cr4: number; cr8: number; efer: number; apicBase: number;
  /** 256 bits, as 4 u64 (BigInt), pending external interrupts. */
  interruptBitmap: bigint[];
}
// struct kvm_sregs offsets: 8 segments of 24 bytes, gdt @192, idt @208, cr0 @224 ... apic_base @272, bitmap @280.
export const SREGS_OFFSETS = {
  segments: 0, gdt: 192, idt: 208, cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apicBase: 272,
  interruptBitmap: 280,
} as const;

function decodeSegment(dv: DataView, o: number): Segment {
  return {
    base: u64(dv, o), limit: dv.getUint32(o + 8, true), selector: dv.getUint16(o + 12, true), type: dv.getUint8(o + 14),
    present: dv.getUint8(o + 15), dpl: dv.getUint8(o + 16), db: dv.getUint8(o + 17), s: dv.getUint8(o + 18),
    l: dv.getUint8(o + 19), g: dv.getUint8(o + 20), avl: dv.getUint8(o + 21), unusable: dv.getUint8(o + 22),
  };
}
function encodeSegment(dv: DataView, o: number, s: Segment): void {
  writeU64(dv, o, s.base);
  dv.setUint32(o + 8, s.limit >>> 0, true);
  dv.setUint16(o + 12, s.selector, true);
  dv.setUint8(o + 14, s.type);
  dv.setUint8(o + 15, s.present);
  dv.setUint8(o + 16, s.dpl);
  dv.setUint8(o + 17, s.db);
  dv.setUint8(o + 18, s.s);
  dv.setUint8(o + 19, s.l);
  dv.setUint8(o + 20, s.g);
  dv.setUint8(o + 21, s.avl);
  dv.setUint8(o + 22, s.unusable);
  dv.setUint8(o + 23, 0);
}
export function decodeSregs(dv: DataView): Sregs {
  const seg = {} as Record<SegmentName, Segment>;
  SEGMENT_NAMES.forEach((n, i) => { seg[n] = decodeSegment(dv, i * SIZEOF_KVM_SEGMENT); });
  const O = SREGS_OFFSETS;
  return {
    ...seg,
    gdt: { base: u64(dv, O.gdt), limit: dv.getUint16(O.gdt + 8, true) },
    idt: { base: u64(dv, O.idt), limit: dv.getUint16(O.idt + 8, true) },
    cr0: u64(dv, O.cr0), cr2: u64(dv, O.cr2), cr3: u64(dv, O.cr3), cr4: u64(dv, O.cr4), cr8: u64(dv, O.cr8),
    efer: u64(dv, O.efer), apicBase: u64(dv, O.apicBase),
    interruptBitmap: [0, 1, 2, 3].map((i) => dv.getBigUint64(O.interruptBitmap + 8 * i, true)),
  };
}
export function encodeSregs(dv: DataView, s: Sregs): void {
  SEGMENT_NAMES.forEach((n, i) => encodeSegment(dv, i * SIZEOF_KVM_SEGMENT, s[n]));
  const O = SREGS_OFFSETS;
  for (const [off, t] of [[O.gdt, s.gdt], [O.idt, s.idt]] as const) {
    writeU64(dv, off, t.base);
    dv.setUint16(off + 8, t.limit, true);
    dv.setUint16(off + 10, 0, true);
    dv.setUint32(off + 12, 0, true);
  }
  writeU64(dv, O.cr0, s.cr0);
  writeU64(dv, O.cr2, s.cr2);
  writeU64(dv, O.cr3, s.cr3);
  writeU64(dv, O.cr4, s.cr4);
  writeU64(dv, O.cr8, s.cr8);
  writeU64(dv, O.efer, s.efer);
  writeU64(dv, O.apicBase, s.apicBase);
  s.interruptBitmap.forEach((v, i) => dv.setBigUint64(O.interruptBitmap + 8 * i, v, true));
}

/** Flat 32-bit protected mode (no paging): CS/DS/ES/FS/GS/SS with base 0 and a 4 GiB limit, CR0.PE. */
export function flatProtectedMode(s: Sregs): Sregs {
  const code: Segment = { base: 0, limit: 0xffffffff, selector: 0x08, type: 0xb, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 };
  const data: Segment = { ...code, selector: 0x10, type: 0x3 };
  return { ...s, cs: code, ds: data, es: data, fs: data, gs: data, ss: data, cr0: (s.cr0 | 1) >>> 0 };
}

// ---- exits ----
export interface IoExit { direction: 'in' | 'out'; size: number; port: number; count: number; dataOffset: number }
export interface VcpuExit {
  reason: number;
  name: string;
  io?: IoExit;
  mmio?: { physAddr: number; len: number; isWrite: boolean };
  failEntry?: { hardwareEntryFailureReason: number; cpu: number };
  internal?: { suberror: number; ndata: number };
  systemEvent?: { type: number };
}

/** Decodes the exit union of a kvm_run page for the common reasons. */
export function decodeExit(dv: DataView): VcpuExit {
  const reason = dv.getUint32(KVM_RUN_OFFSETS.exit_reason, true);
  const x = KVM_RUN_OFFSETS.exit;
  const e: VcpuExit = { reason, name: exitName(reason) };
  switch (reason) {
    case KVM_EXIT.IO:
      e.io = {
        direction: dv.getUint8(x) === KVM_EXIT_IO_OUT ? 'out' : 'in', size: dv.getUint8(x + 1),
        port: dv.getUint16(x + 2, true), count: dv.getUint32(x + 4, true), dataOffset: u64(dv, x + 8),
      };
      break;
    case KVM_EXIT.MMIO:
      e.mmio = { physAddr: u64(dv, x), len: dv.getUint32(x + 16, true), isWrite: dv.getUint8(x + 20) !== 0 };
      break;
    case KVM_EXIT.FAIL_ENTRY:
      e.failEntry = { hardwareEntryFailureReason: u64(dv, x), cpu: dv.getUint32(x + 8, true) };
      break;
    case KVM_EXIT.INTERNAL_ERROR:
      e.internal = { suberror: dv.getUint32(x, true), ndata: dv.getUint32(x + 4, true) };
      break;
    case KVM_EXIT.SYSTEM_EVENT:
      e.systemEvent = { type: dv.getUint32(x, true) };
      break;
    default:
      break;
  }
  return e;
}

export class Vcpu {
  readonly fd: number;
  readonly id: number;
  /** Address and size of this vCPU's kvm_run mapping. */
  readonly runAddr: number;
  readonly runSize: number;
  readonly run: DataView;
  private readonly buf = new ArrayBuffer(SIZEOF_KVM_SREGS + 8);
  private readonly dv = new DataView(this.buf);
  private readonly bufAddr: number;
  private readonly owned: boolean;
  private closed = false;

  /** `run`: the kvm_run mapping; `owned`: close the fd and unmap it on close(). */
  private constructor(fd: number, id: number, run: { addr: number; size: number }, owned: boolean) {
    this.fd = fd;
    this.id = id;
    this.runAddr = run.addr;
    this.runSize = run.size;
    this.run = new DataView(viewOf(run.addr, run.size));
    this.bufAddr = addressOf(new Uint8Array(this.buf));
    this.owned = owned;
  }

  /** KVM_CREATE_VCPU on the VM, then mmap of its kvm_run page (size from KVM_GET_VCPU_MMAP_SIZE). */
  static create(kvmFd: number, vmFd: number, id = 0): Vcpu {
    const size = vcpuMmapSize(kvmFd);
    const fd = libc.ioctl(vmFd, C.KVM_CREATE_VCPU, id);
    if (fd < 0) fail('KVM_CREATE_VCPU');
    const addr = libc.mmap(0, size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0);
    if (addr === 2 ** 64 - 1 || addr < 0) {
      const e = errno();
      libc.close(fd);
      fail('mmap kvm_run', e);
    }
    return new Vcpu(fd, id, { addr, size }, true);
  }

  /** Wraps a vCPU created elsewhere (another thread): its fd and kvm_run mapping. Does not own them. */
  static fromFd(fd: number, runAddr: number, runSize: number, id = 0): Vcpu {
    return new Vcpu(fd, id, { addr: runAddr, size: runSize }, false);
  }

  getRegs(): Regs {
    if (libc.ioctl(this.fd, KVM_GET_REGS, this.bufAddr) < 0) fail('KVM_GET_REGS');
    return decodeRegs(this.dv);
  }
  /** Sets the given registers, keeping the others as they are. */
  setRegs(r: Partial<Regs>): void {
    if (libc.ioctl(this.fd, KVM_GET_REGS, this.bufAddr) < 0) fail('KVM_GET_REGS');
    encodeRegs(this.dv, r);
    if (libc.ioctl(this.fd, KVM_SET_REGS, this.bufAddr) < 0) fail('KVM_SET_REGS');
  }
  getSregs(): Sregs {
    if (libc.ioctl(this.fd, KVM_GET_SREGS, this.bufAddr) < 0) fail('KVM_GET_SREGS');
    return decodeSregs(this.dv);
  }
  setSregs(s: Sregs): void {
    encodeSregs(this.dv, s);
    if (libc.ioctl(this.fd, KVM_SET_SREGS, this.bufAddr) < 0) fail('KVM_SET_SREGS');
  }

  /**
   * One KVM_RUN: enters the guest until the next exit and returns it. EINTR (a signal)
   * comes back as an INTR exit. Blocks the calling thread — including while a guest
   * access waits for a userfaultfd handler.
   */
  runOnce(): VcpuExit {
    if (libc.ioctl(this.fd, C.KVM_RUN, 0) < 0) {
      const e = errno();
      if (e === ERRNO.EINTR || e === ERRNO.EAGAIN) return { reason: KVM_EXIT.INTR, name: 'INTR' };
      fail('KVM_RUN', e);
    }
    return decodeExit(this.run);
  }

  /** The data of an IO exit, as an unsigned number of io.size bytes (first of io.count). */
  ioValue(io: IoExit): number {
    const o = io.dataOffset;
    return io.size === 1 ? this.run.getUint8(o) : io.size === 2 ? this.run.getUint16(o, true) : this.run.getUint32(o, true);
  }
  /** Supplies the value an IN instruction reads. */
  setIoValue(io: IoExit, v: number): void {
    const o = io.dataOffset;
    if (io.size === 1) this.run.setUint8(o, v);
    else if (io.size === 2) this.run.setUint16(o, v, true);
    else this.run.setUint32(o, v >>> 0, true);
  }

  close(): void {
    if (this.closed || !this.owned) return;
    this.closed = true;
    libc.munmap(this.runAddr, this.runSize);
    libc.close(this.fd);
  }
}
