// uffd-engine: serve Linux page faults from user space, in parallel, on worker threads.
//
// The public API (the package's "." export). Layers, bottom up: the kernel layer (the
// userfaultfd object and errors here; everything else under "uffd-engine/kernel"), memory
// types, page sources, the engine, and its uses: snapshot restore, working-set tracking,
// memory in object storage. Internal modules are not reachable from outside the package
// (package.json "exports"); docs/architecture.md draws the layers.

// Kernel: the userfaultfd object (and the { bytes, errno } its range operations fill) and the
// errors every layer throws.
export { RangeResult, Userfaultfd } from './kernel/userfaultfd.js';
export type { UserfaultfdOptions, RegisterMode, IoctlName } from './kernel/userfaultfd.js';
export type { FeatureName } from './kernel/constants.js';
export { UffdError, UnsupportedError, ConfigError } from './kernel/errors.js';

// Memory types: where the memory comes from and how its faults are resolved.
export { MEMORY_TYPES, memoryType, memoryTypes } from './memory-types/index.js';
export type { MemoryType, Region, RegionOptions, ResolveOp, MemoryTypeName, Availability } from './memory-types/index.js';

// Page sources: what fills a page.
export { sources } from './sources/index.js';
export type { PageSource, PageCallback, S3SourceOptions } from './sources/index.js';

// The engine.
export { Engine } from './engine/index.js';
export type {
  DispatcherPriority, EngineOptions, EngineRegion, EngineStats, Incident, LatencySummary, PrefetchOptions, StopOptions,
} from './engine/index.js';

// Snapshot restore: the Firecracker-compatible handshake server and the engine behind it.
export { RestoreServer } from './restore/server.js';
export type { RestoreServerOptions, MemoryFile, SessionContext, ServeConnection, ServerEvent, SessionOutcome } from './restore/server.js';
export { HandshakeError } from './restore/handshake.js';
export type { Handshake, GuestRegion, HandshakeVariant } from './restore/handshake.js';
export { engineSessions } from './restore/engine-session.js';
export type { EngineSessionOptions } from './restore/engine-session.js';

// Working-set tracking.
export { WssTracker } from './wss/tracker.js';
export type { TrackedRegion, TrackerOptions, IntervalStats, EvictResult } from './wss/tracker.js';
export type { AccessMethod, WriteMethod } from './wss/methods.js';

// Memory files in object storage.
export { RemoteMemory } from './remote/remote-memory.js';
export type { RemoteOptions, RemoteStats } from './remote/remote-memory.js';
export { parseMemUrl } from './remote/store.js';
export type { StoreLocation } from './remote/store.js';
export { uploadSnapshot, writeManifest } from './remote/upload.js';
