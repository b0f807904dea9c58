// The user-space mirror of the kernel's vm_uffd_ops: what each kind of memory can be
// registered for and resolved with. One module per memory type implements MemoryType.
import type { FeatureName } from '../kernel/constants.js';
import type { FaultKind } from '../kernel/messages.js';
import type { RegisterMode } from '../kernel/userfaultfd.js';

export type ResolveOp = 'copy' | 'zeropage' | 'continue' | 'writeprotect' | 'poison' | 'move' | 'rwprotect';
export const RESOLVE_OPS: readonly ResolveOp[] = ['copy', 'zeropage', 'continue', 'writeprotect', 'poison', 'move', 'rwprotect'];

// The built-in names, open to more: a new memory type is one new module plus its line in
// MEMORY_TYPES (index.ts).
export type MemoryTypeName = 'anon' | 'shmem' | 'hugetlbfs' | 'guest_memfd' | 'file' | (string & {});

export interface RegionOptions {
  /** Bytes; rounded up to the page size by nobody: must be a multiple of it. */
  size: number;
  /** Page size in bytes (hugetlbfs: 2 MiB or 1 GiB). Default: the type's first page size. */
  pageSize?: number;
  /** MAP_NORESERVE, for large sparse regions. */
  noReserve?: boolean;
  /** file type: the path of the file to map. */
  path?: string;
}

/** A mapping of one memory type, ready to register. */
export interface Region {
  readonly type: MemoryTypeName;
  readonly addr: number;
  readonly size: number;
  readonly pageSize: number;
  /** The backing file (memfd, hugetlbfs file, guest_memfd, file), or -1 for anon. */
  readonly fd: number;
  /**
   * A second mapping of the same backing pages that is never registered: writing there
   * fills the page cache without faulting (minor faults are then resolved with CONTINUE).
   * 0 when the type has no page cache (anon).
   */
  readonly aliasAddr: number;
  close(): void;
}

export interface Availability {
  ok: boolean;
  /** Why a region cannot be created here, and what to do about it. */
  reason?: string;
}

export interface MemoryType {
  readonly name: MemoryTypeName;
  readonly description: string;
  /** Registration modes this type supports (declared, like vm_uffd_ops). */
  readonly modes: readonly RegisterMode[];
  /** Resolve ioctls this type supports. */
  readonly ops: readonly ResolveOp[];
  /** Page sizes a region of this type may use, in bytes. */
  readonly pageSizes: readonly number[];
  /** Userfaultfd features a registration mode needs on this type (e.g. shmem missing: MISSING_SHMEM). */
  readonly modeFeatures: Partial<Record<RegisterMode, readonly FeatureName[]>>;
  /** The operation that resolves each fault kind on this type (undefined: that kind cannot happen). */
  readonly resolveOp: Readonly<Record<FaultKind, ResolveOp | undefined>>;
  /**
   * Optional: why a mode this type does not declare is impossible, and what to use instead
   * (check.ts puts it in the error, e.g. anon minor: "it has no page cache; use shmem or hugetlbfs").
   */
  readonly modeNotes?: Partial<Record<RegisterMode, string>>;
  /**
   * Optional: what it means when the running kernel refuses (EINVAL) a registration this type
   * declares, e.g. guest_memfd before the userfaultfd series for it is merged.
   */
  readonly registerRefusal?: string;
  /** Whether a region can be created on this machine now. */
  available(pageSize?: number): Availability;
  create(opts: RegionOptions): Region;
}
