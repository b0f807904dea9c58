// The table of memory types. Adding a type is one module that exports a MemoryType and one
// line in MEMORY_TYPES below (its place there is its place in every listing).
import { ConfigError } from '../kernel/errors.js';
import anon from './anon.js';
import file from './file.js';
import guestMemfd from './guest_memfd.js';
import hugetlbfs from './hugetlbfs.js';
import shmem from './shmem.js';
import type { MemoryType } from './types.js';

export type { MemoryType, Region, RegionOptions, ResolveOp, MemoryTypeName, Availability } from './types.js';

/** Every memory type, the built-in ones in the order the kernel grew them. */
export const MEMORY_TYPES: readonly MemoryType[] = Object.freeze([anon, shmem, hugetlbfs, guestMemfd, file]);

const BY_NAME = new Map<string, MemoryType>();
for (const t of MEMORY_TYPES) {
  if (BY_NAME.has(t.name)) throw new Error(`two memory types in MEMORY_TYPES are named "${t.name}"`);
  BY_NAME.set(t.name, t);
}

/** All memory types, in a stable order (a copy: callers may sort or filter it). */
export function memoryTypes(): MemoryType[] {
  return [...MEMORY_TYPES];
}

/** The memory type of that name; a ConfigError listing the known names otherwise. */
export function memoryType(name: string): MemoryType {
  const t = BY_NAME.get(name);
  if (!t) throw new ConfigError(`unknown memory type "${name}"; known: ${MEMORY_TYPES.map((x) => x.name).join(', ')}`);
  return t;
}
