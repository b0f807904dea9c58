// Decoding of struct uffd_msg (32 bytes each; read(2) returns many at once).
// The hot path uses the field readers (no allocation); decodeMessage builds a typed
// event object for everything else.
import {
  SIZEOF_UFFD_MSG, UFFD_EVENT_FORK, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMAP, UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP, UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_RWP, UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
} from './constants.js';

export type FaultKind = 'missing' | 'wp' | 'minor' | 'rwp';

export interface PagefaultEvent {
  type: 'pagefault';
  kind: FaultKind;
  write: boolean;
  address: number;
  flags: number;
  /** Faulting thread id (with UFFD_FEATURE_THREAD_ID), else 0. */
  tid: number;
}
export interface ForkEvent { type: 'fork'; ufd: number }
export interface RemapEvent { type: 'remap'; from: number; to: number; len: number }
export interface RemoveEvent { type: 'remove'; start: number; end: number }
export interface UnmapEvent { type: 'unmap'; start: number; end: number }
export interface UnknownEvent { type: 'unknown'; event: number }
export type UffdEvent = PagefaultEvent | ForkEvent | RemapEvent | RemoveEvent | UnmapEvent | UnknownEvent;

/** Reads a u64 that holds an address or length (< 2^53) as a number, without BigInt. */
export function u64(dv: DataView, off: number): number {
  return dv.getUint32(off + 4, true) * 0x100000000 + dv.getUint32(off, true);
}
export function writeU64(dv: DataView, off: number, v: number): void {
  dv.setUint32(off, v >>> 0, true);
  dv.setUint32(off + 4, Math.floor(v / 0x100000000) >>> 0, true);
}
/** Reads an s64 out-field (bytes done, or -errno). */
export function s64(dv: DataView, off: number): number {
  const hi = dv.getInt32(off + 4, true);
  return hi * 0x100000000 + dv.getUint32(off, true);
}

export function msgEvent(dv: DataView, i: number): number {
  return dv.getUint8(i * SIZEOF_UFFD_MSG);
}
export function msgFaultFlags(dv: DataView, i: number): number {
  return dv.getUint32(i * SIZEOF_UFFD_MSG + 8, true);
}
export function msgFaultAddress(dv: DataView, i: number): number {
  return u64(dv, i * SIZEOF_UFFD_MSG + 16);
}
/**
 * Whether fault message i's address is target.addr + delta. The per-fault path compares
 * here rather than taking the address back: a number that large would be boxed in a fresh
 * heap object if it crossed a call V8 did not inline.
 */
export function msgFaultAddressIs(dv: DataView, i: number, target: { addr: number }, delta: number): boolean {
  const off = i * SIZEOF_UFFD_MSG + 16;
  return dv.getUint32(off + 4, true) * 0x100000000 + dv.getUint32(off, true) === target.addr + delta;
}
/** Writes fault message i's address into target.addr (see msgFaultAddressIs). */
export function loadFaultAddress(dv: DataView, i: number, target: { addr: number }): void {
  const off = i * SIZEOF_UFFD_MSG + 16;
  target.addr = dv.getUint32(off + 4, true) * 0x100000000 + dv.getUint32(off, true);
}
/** Writes a page-fault message at slot i (what read(2) of a userfaultfd would put there): for rehearsals. */
export function writeFaultMessage(dv: DataView, i: number, addr: number, flags: number): void {
  const off = i * SIZEOF_UFFD_MSG;
  for (let k = 0; k < SIZEOF_UFFD_MSG; k += 4) dv.setUint32(off + k, 0, true);
  dv.setUint8(off, UFFD_EVENT_PAGEFAULT);
  dv.setUint32(off + 8, flags, true);
  writeU64(dv, off + 16, addr);
}
export function msgFaultTid(dv: DataView, i: number): number {
  return dv.getUint32(i * SIZEOF_UFFD_MSG + 24, true);
}

export function faultKind(flags: number): FaultKind {
  if (flags & UFFD_PAGEFAULT_FLAG_WP) return 'wp';
  if (flags & UFFD_PAGEFAULT_FLAG_MINOR) return 'minor';
  if (flags & UFFD_PAGEFAULT_FLAG_RWP) return 'rwp';
  return 'missing';
}

/** Decodes message i of a read buffer into a typed event. */
export function decodeMessage(dv: DataView, i: number): UffdEvent {
  const base = i * SIZEOF_UFFD_MSG;
  const event = dv.getUint8(base);
  switch (event) {
    case UFFD_EVENT_PAGEFAULT: {
      const flags = msgFaultFlags(dv, i);
      return {
        type: 'pagefault', kind: faultKind(flags), write: (flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0,
        address: msgFaultAddress(dv, i), flags, tid: msgFaultTid(dv, i),
      };
    }
    case UFFD_EVENT_FORK:
      return { type: 'fork', ufd: dv.getUint32(base + 8, true) };
    case UFFD_EVENT_REMAP:
      return { type: 'remap', from: u64(dv, base + 8), to: u64(dv, base + 16), len: u64(dv, base + 24) };
    case UFFD_EVENT_REMOVE:
      return { type: 'remove', start: u64(dv, base + 8), end: u64(dv, base + 16) };
    case UFFD_EVENT_UNMAP:
      return { type: 'unmap', start: u64(dv, base + 8), end: u64(dv, base + 16) };
    default:
      return { type: 'unknown', event };
  }
}
