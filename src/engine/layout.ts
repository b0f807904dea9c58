// What the engine hands its threads: the shared buffers and the numbers that say how
// to read them. Built once by the Engine, structured-cloned to each thread. The buffers'
// layouts belong to their classes (tables.ts, shared.ts).
import type { GateSetup } from '../remote/gate.js';
import type { RingBuffers } from './shared.js';

export interface PrefetchSetup {
  readAheadMin: number; // pages
  readAheadMax: number; // pages
  background: boolean;
  chunkPages: number;
  orderLength: number; // entries in the hot-first list
}

export interface EngineSetup {
  uffdFd: number;
  features: string; // granted features (bigint, decimal)
  workers: number;
  stripePages: number; // pages of the smallest page size per stripe
  regionTable: SharedArrayBuffer; // RegionTable
  states: SharedArrayBuffer;
  totalPages: number;
  counters: SharedArrayBuffer;
  control: SharedArrayBuffer; // ControlBlock
  claims: SharedArrayBuffer; // Claims, one record per thread
  rings: RingBuffers[];
  order: SharedArrayBuffer | null; // Float64 global page indices, hot first
  prefetch: PrefetchSetup;
  zeroAddr: number; // a zero-filled buffer of the largest page size
  onSourceError: 'poison' | 'zero';
  afterRemove: 'zero' | 'source';
  /** Who reads the userfaultfd: every engine thread ('all'), or the dispatcher alone, handing faults to rings. */
  readers: 'all' | 'dispatcher';
  /** Each thread runs the fault path on a private region before serving (warm-up.ts). */
  warmUp: boolean;
  inline: 'auto' | 'never' | 'always';
  spinMicros: number;
  dispatcherSpinMicros: number;
  /** The dispatcher's nice value while it serves (EngineOptions.dispatcherNice); null: the thread's own. */
  dispatcherNice: number | null;
  inlineBatch: number;
  /** EngineOptions.wakeBatch: the largest batch read whose threads the dispatcher wakes with one UFFDIO_WAKE. */
  wakeBatch: number;
  wpHook: { module: string; export: string } | null;
  /** Tests: workers honour ControlBlock.armKill (EngineOptions.faultInjection). */
  faultInjection: boolean;
  callbackStaging: SharedArrayBuffer | null; // per worker: maxRunBytes of staging
  callbackControl: SharedArrayBuffer | null; // per worker: a CallbackSlot
  callbackRunBytes: number;
  callbackTimeoutMs: number;
  eventFd: number; // wakes the dispatcher's poll for shutdown
  /** Chunk gates of remote sources (a page is copied only once its chunk is in the cache). */
  gates: GateSetup[];
  /** Int32 per gate: how many of the gate's arrivals this engine's workers have installed. */
  gateCursors: SharedArrayBuffer;
  /** Where REMOVE ranges are journaled before they are applied (remove-journal.ts); -1: nowhere. */
  removeJournalFd?: number;
  /** The dispatcher's thread index in counters/claims is `workers`. */
}
