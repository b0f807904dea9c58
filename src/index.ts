// uffd-engine: serve Linux page faults from user space, in parallel, on worker threads.
export * from './kernel/index.js';
export * from './engine/index.js';
export * from './sources/index.js';
export { memoryType, memoryTypes } from './memory-types/index.js';
export type { MemoryType, Region, RegionOptions, ResolveOp, MemoryTypeName } from './memory-types/types.js';
export { RemoteMemory } from './remote/remote-memory.js';
export type { RemoteOptions, RemoteStats } from './remote/remote-memory.js';
export { parseMemUrl } from './remote/store.js';
export type { StoreLocation } from './remote/store.js';
export { uploadSnapshot, writeManifest } from './remote/upload.js';
