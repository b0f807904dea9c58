// What the engine hands its threads: the shared buffers and the numbers that say how
// to read them. Built once by the Engine, structured-cloned to each thread.
import type { GateSetup } from '../remote/gate.js';
import type { RingBuffers } from './shared.js';

// Region table: one row of float64 per region (rows may be added when a mremap moves
// part of a region). Rows partition the page-state index space.
export const RT_START = 0; // current start address
export const RT_SIZE = 1; // bytes
export const RT_PAGE_SIZE = 2;
export const RT_STATE_BASE = 3; // index of its first page in the page-state table
export const RT_MISSING_OP = 4; // MISS_* below
export const RT_SRC_ADDR = 5; // address of the source bytes of its first page (memory sources)
export const RT_SOURCE = 6; // index of the region's source spec (callback routing)
export const RT_ALIVE = 7; // 0 once unmapped
export const RT_SRC_OFFSET = 8; // byte offset of its first page within its source
export const RT_MINOR = 9; // 1: a page-cache source (minor faults, CONTINUE)
export const RT_OWN = 10; // 1: memory of this process (the engine registered it)
export const RT_PEER_PID = 11; // the process owning the memory, when known (for /proc/PID/mem)
export const RT_GATE = 12; // 1 + index into EngineSetup.gates of the source's chunk gate (remote sources); 0: none

/** Ring flag (beside the kernel's fault flags): make this page read zeros again (see Resolver.rezero). */
export const FAULT_REZERO = 0x40000000;
export const RT_WORDS = 13;
export const MAX_REGION_ROWS = 256;

// How a missing fault is resolved.
export const MISS_ZEROPAGE = 0; // UFFDIO_ZEROPAGE
export const MISS_COPY = 1; // UFFDIO_COPY from RT_SRC_ADDR
export const MISS_COPY_ZERO = 2; // UFFDIO_COPY from a zero buffer (hugetlbfs has no ZEROPAGE)
export const MISS_CALLBACK = 3; // UFFDIO_COPY from bytes a user callback returned

// Control words (Int32Array over `control`).
export const CT_STOP = 0; // 1: stop now
export const CT_COMPLETE = 1; // 1: fill every remaining page (stop in 'complete' mode), demand first
export const CT_BG_CURSOR = 2; // next global page index for background population
export const CT_ORDER_CURSOR = 3; // next index into the hot-first order list
export const CT_REGION_ROWS = 4; // rows in the region table
export const CT_READY = 5; // threads that started
export const CT_BG_DONE = 6; // background population passed the end
export const CT_DISPATCHER_DONE = 7;
export const CT_PEER_GONE = 8; // the process owning the memory exited (ESRCH)
export const CT_EPOCH = 9; // bumped after each REMOVE/UNMAP/REMAP applied
export const CT_READ_LOCK = 10; // 1 while a thread reads the uffd and applies the batch's events (see reader.ts)
export const CT_DISPATCHER_IDLE = 11; // 1 while the dispatcher sleeps without watching the uffd (readers 'all')
export const CT_RWP_HOLD = 12; // 1: an RWP window is open: RWP faults wait (see Engine.holdRwp)
export const CT_THREAD_IDS = 16; // threadId of worker i at CT_THREAD_IDS + i
export const CT_KILL = 48; // test hook: worker i exits at its next fill when CT_KILL + i is 1
export const CT_HELP = 96; // readers 'all': 1 at CT_HELP + i while worker i is busy away from the uffd (the dispatcher reads then)
export const CT_WORDS = 160;

// Claim records: per thread, the pages it has claimed and not yet finished, so the
// replacement of a thread that died can finish them.
export const CL_ROW = 0;
export const CL_FIRST = 1;
export const CL_COUNT = 2;
export const CL_WORDS = 4;

// Callback staging: per worker, a request/response slot.
export const CB_STATE = 0; // 0 idle, 1 requested, 2 ready, 3 failed
export const CB_ID = 1; // request number: a late answer to an abandoned request is dropped
export const CB_WORDS = 16;

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
  regionTable: SharedArrayBuffer;
  states: SharedArrayBuffer;
  totalPages: number;
  counters: SharedArrayBuffer;
  control: SharedArrayBuffer;
  claims: SharedArrayBuffer;
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
  inlineBatch: number;
  wpHook: { module: string; export: string } | null;
  callbackStaging: SharedArrayBuffer | null; // per worker: maxRunBytes of staging
  callbackControl: SharedArrayBuffer | null; // per worker: CB_WORDS int32
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
