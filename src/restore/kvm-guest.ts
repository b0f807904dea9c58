// A minimal KVM guest that proves, from inside a VM, which bytes its memory holds:
// one vCPU in flat 32-bit protected mode runs 14 bytes of machine code that walks guest
// RAM, folds one u32 every `stride` bytes into a checksum, writes it to an I/O port and
// halts. Guest RAM is an anonymous mapping of this process; register it with a
// userfaultfd and every page the guest touches is served by the handler — the
// checksum then proves the guest saw the snapshot's bytes.
//
// Memory map (guest-physical): slot 0 = the code page at 0x0; slot 1 = RAM at ramGpa.
// Registers in: esi = ramGpa, ecx = number of u32 reads, ebx = stride, edx = port.
//
//   0:  31 c0        xor  eax, eax
//   2:  c1 c0 05     rol  eax, 5        <- loop
//   5:  03 06        add  eax, [esi]
//   7:  01 de        add  esi, ebx
//   9:  49           dec  ecx
//  10:  75 f6        jnz  2
//  12:  ef           out  dx, eax
//  13:  f4           hlt
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as C from '../kernel/constants.js';
import { openKvm, createVm } from '../kernel/kvm.js';
import {
  Vcpu, setUserMemoryRegion, setTssAddr, flatProtectedMode, KVM_EXIT, VcpuExit,
} from '../kernel/kvm-vcpu.js';
import { bytesAt, mapAnonymous, munmap, close as closeFd } from '../kernel/memory.js';

export const CHECKSUM_CODE = Uint8Array.from([
  0x31, 0xc0, 0xc1, 0xc0, 0x05, 0x03, 0x06, 0x01, 0xde, 0x49, 0x75, 0xf6, 0xef, 0xf4,
]);
export const CHECKSUM_PORT = 0x3f0;
export const DEFAULT_RAM_GPA = 0x100000;

/** The guest's checksum computed on the host: h = rol(h, 5) + u32le(bytes[i]) for i = 0, stride, ... */
export function guestChecksum(bytes: Uint8Array, stride = 4, count = Math.floor(bytes.length / stride)): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let h = 0;
  for (let i = 0, off = 0; i < count; i++, off += stride) {
    h = (((h << 5) | (h >>> 27)) + dv.getUint32(off, true)) >>> 0;
  }
  return h;
}

export interface GuestOptions {
  /** Bytes of guest RAM (a multiple of the page size; at most 3 GiB). */
  ramSize: number;
  ramGpa?: number;
  /** Bytes between the u32s the guest reads: 4 = every byte of RAM, 4096 = one u32 per page. */
  stride?: number;
  /** Back RAM with 2 MiB hugetlb pages. */
  hugetlb?: boolean;
}

export interface GuestResult {
  /** Name of the exit that ended the run: HLT when the program finished. */
  exit: string;
  /** The value the guest wrote to CHECKSUM_PORT. */
  checksum?: number;
  /** Every OUT the guest made, in order. */
  outs: { port: number; size: number; value: number }[];
  exits: number;
  ms: number;
  /** Details of an unexpected exit. */
  detail?: VcpuExit;
}

interface RunnerData { role: 'kvm-vcpu-runner'; vcpuFd: number; runAddr: number; runSize: number; maxExits: number }

/** Runs a vCPU until HLT (or an exit the program never makes); returns what it wrote. Blocks the thread. */
export function runUntilHalt(vcpu: Vcpu, maxExits = 1000): GuestResult {
  const t0 = performance.now();
  const outs: GuestResult['outs'] = [];
  for (let exits = 1; exits <= maxExits; exits++) {
    const e = vcpu.runOnce();
    if (e.reason === KVM_EXIT.IO && e.io) {
      if (e.io.direction === 'out') outs.push({ port: e.io.port, size: e.io.size, value: vcpu.ioValue(e.io) });
      else vcpu.setIoValue(e.io, 0);
      continue;
    }
    if (e.reason === KVM_EXIT.INTR) continue;
    const checksum = outs.find((o) => o.port === CHECKSUM_PORT)?.value;
    return { exit: e.name, checksum, outs, exits, ms: performance.now() - t0, detail: e.reason === KVM_EXIT.HLT ? undefined : e };
  }
  return { exit: 'MAX_EXITS', outs, exits: maxExits, ms: performance.now() - t0 };
}

/** One VM, one vCPU, the checksum program, and RAM the caller may register with a userfaultfd. */
export class ChecksumGuest {
  readonly kvmFd: number;
  readonly vmFd: number;
  readonly vcpu: Vcpu;
  /** Host address of guest RAM (register this with a userfaultfd to serve it). */
  readonly ramAddr: number;
  readonly ramSize: number;
  readonly ramGpa: number;
  readonly stride: number;
  readonly pageSize: number;
  private readonly codeAddr: number;
  private closed = false;

  private constructor(kvmFd: number, vmFd: number, vcpu: Vcpu, codeAddr: number, ramAddr: number, o: Required<GuestOptions>) {
    this.kvmFd = kvmFd;
    this.vmFd = vmFd;
    this.vcpu = vcpu;
    this.codeAddr = codeAddr;
    this.ramAddr = ramAddr;
    this.ramSize = o.ramSize;
    this.ramGpa = o.ramGpa;
    this.stride = o.stride;
    this.pageSize = o.hugetlb ? C.HUGE_PAGE_2M : C.PAGE_SIZE;
  }

  static create(opts: GuestOptions): ChecksumGuest {
    // With hugetlb RAM, a 2 MiB-aligned guest address lets KVM map it with large pages.
    const o: Required<GuestOptions> = { ramGpa: opts.hugetlb ? C.HUGE_PAGE_2M : DEFAULT_RAM_GPA, stride: 4, hugetlb: false, ...opts };
    const page = o.hugetlb ? C.HUGE_PAGE_2M : C.PAGE_SIZE;
    if (!(o.ramSize > 0) || o.ramSize % page) throw new RangeError(`ramSize must be a positive multiple of ${page}`);
    if (o.ramGpa % C.PAGE_SIZE || o.ramGpa < C.PAGE_SIZE || o.ramGpa + o.ramSize > 0xc0000000) {
      throw new RangeError('ramGpa must be page-aligned, above the code page, and RAM must end below 3 GiB');
    }
    if (o.stride < 4 || o.stride % 4 || o.ramSize / o.stride < 1) throw new RangeError('stride must be a multiple of 4 within RAM');
    const kvmFd = openKvm();
    let vmFd = -1;
    let codeAddr = 0;
    let ramAddr = 0;
    try {
      vmFd = createVm(kvmFd);
      setTssAddr(vmFd);
      codeAddr = mapAnonymous(C.PAGE_SIZE);
      bytesAt(codeAddr, C.PAGE_SIZE).set(CHECKSUM_CODE);
      ramAddr = mapAnonymous(o.ramSize, C.MAP_NORESERVE | (o.hugetlb ? C.MAP_HUGETLB | C.MAP_HUGE_2MB : 0));
      setUserMemoryRegion(vmFd, { slot: 0, gpa: 0, size: C.PAGE_SIZE, hostAddr: codeAddr });
      setUserMemoryRegion(vmFd, { slot: 1, gpa: o.ramGpa, size: o.ramSize, hostAddr: ramAddr });
      const vcpu = Vcpu.create(kvmFd, vmFd, 0);
      vcpu.setSregs(flatProtectedMode(vcpu.getSregs()));
      vcpu.setRegs({
        rip: 0, rflags: 0x2, rsi: o.ramGpa, rcx: Math.floor(o.ramSize / o.stride), rbx: o.stride, rdx: CHECKSUM_PORT, rax: 0,
      });
      return new ChecksumGuest(kvmFd, vmFd, vcpu, codeAddr, ramAddr, o);
    } catch (e) {
      if (ramAddr) munmap(ramAddr, o.ramSize);
      if (codeAddr) munmap(codeAddr, C.PAGE_SIZE);
      if (vmFd >= 0) closeFd(vmFd);
      closeFd(kvmFd);
      throw e;
    }
  }

  /** Fills guest RAM from a buffer (no userfaultfd involved). */
  fill(data: Uint8Array): void {
    bytesAt(this.ramAddr, this.ramSize).set(data.subarray(0, this.ramSize));
  }

  /** Runs the program on this thread (only when nothing served from this thread backs guest RAM). */
  runHere(maxExits = 1000): GuestResult {
    return runUntilHalt(this.vcpu, maxExits);
  }

  /**
   * Runs the program on a worker thread (KVM_RUN blocks while a guest access waits for a
   * userfaultfd handler; the event loop and any handler on this side keep going).
   */
  runInWorker(maxExits = 1000): Promise<GuestResult> {
    const data: RunnerData = {
      role: 'kvm-vcpu-runner', vcpuFd: this.vcpu.fd, runAddr: this.vcpu.runAddr, runSize: this.vcpu.runSize, maxExits,
    };
    return new Promise((resolve, reject) => {
      const w = new Worker(__filename, { workerData: data });
      w.once('message', resolve);
      w.once('error', reject);
      w.once('exit', (code) => reject(new Error(`vCPU worker exited (${code}) without a result`)));
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.vcpu.close();
    closeFd(this.vmFd);
    closeFd(this.kvmFd);
    munmap(this.ramAddr, this.ramSize);
    munmap(this.codeAddr, C.PAGE_SIZE);
  }
}

/** Whether /dev/kvm can run a guest here; the reason when not. */
export function kvmAvailable(): { ok: boolean; reason?: string } {
  try {
    const fd = openKvm();
    closeFd(fd);
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

if (!isMainThread && (workerData as RunnerData | undefined)?.role === 'kvm-vcpu-runner') {
  const d = workerData as RunnerData;
  parentPort!.postMessage(runUntilHalt(Vcpu.fromFd(d.vcpuFd, d.runAddr, d.runSize), d.maxExits));
}
