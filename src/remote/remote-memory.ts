// A memory file in object storage, served through a local chunk cache. Opening it starts
// the fetch thread (fetcher.ts), which reads the object's size, ETag and manifest; then a
// memfd (or a file) of the object's size is made and mapped read-only here, and its chunk
// gate (gate.ts) is handed to the fetch thread. Engines use `source(offset)`: workers
// UFFDIO_COPY straight from the cache mapping once a chunk is present, so a cached page is
// served exactly as a local file's page is. One RemoteMemory can serve many engines (every
// VM restored from the same snapshot by one `serve` process shares the cache).
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { MAP_SHARED, O_CREAT, O_RDWR, O_TRUNC, PROT_READ } from '../kernel/constants.js';
import { ConfigError } from '../kernel/errors.js';
import { close as closeFd, ftruncate, memfdCreate, mmap, munmap, openFile } from '../kernel/memory.js';
import type { PageSource } from '../sources/index.js';
import { allocateGate, CHUNK_FAILED, CHUNK_PRESENT, G_FETCHER_ALIVE, G_PUBLISHED, GateSetup } from './gate.js';
import {
  F_BYTES, F_CHECKSUM, F_CHUNKS, F_DEMAND, F_FAILED, F_FIRST_MS, F_PREFETCH, F_REQUESTS, F_RETRIES, F_WORDS, FetcherData,
  FromFetcher, ToFetcher,
} from './fetcher.js';
import { checkChunkSize, DEFAULT_CHUNK_SIZE, Manifest, ManifestError, parseManifest } from './manifest.js';
import { describeLocation, StoreLocation } from './store.js';
import { formatBytes } from '../sizes.js';

export interface RemoteOptions {
  /** Bytes per ranged GET and per cache chunk (default: the manifest's, else 4 MiB). */
  chunkSize?: number;
  /** Requests in flight at most (default 8); prefetch uses at most one less, so a demand fault always finds a slot. */
  maxInFlight?: number;
  /** Per request (default 15 s). */
  timeoutMs?: number;
  /** Further attempts after a retryable failure (default 4), with exponential backoff from backoffMs (default 100 ms). */
  retries?: number;
  backoffMs?: number;
  /** The local chunk cache: a memfd (default) or a file created at this path (truncated; removed on close). */
  cacheFile?: string;
  /**
   * 'auto' (default): verify each chunk against the manifest beside the object when there
   * is one; 'required': refuse to open without one; 'off': never verify.
   */
  verify?: 'auto' | 'required' | 'off';
  /**
   * What to fetch before anyone asks: the pages (4 KiB indices into the memory file) of a
   * recorded working set, coalesced into extents, in recorded order; then, with
   * background (default true), every other chunk in address order.
   */
  prefetch?: { workingSet?: ArrayLike<number>; background?: boolean };
}

/** A memory file in object storage and how to fetch it, as plain data (it crosses processes as JSON). */
export interface RemoteConfig {
  location: StoreLocation;
  options: Omit<RemoteOptions, 'prefetch'>;
}

export interface RemoteStats {
  size: number;
  chunkSize: number;
  chunks: number;
  /** Chunks present in the cache. */
  cached: number;
  failed: number;
  demandChunks: number;
  prefetchChunks: number;
  requests: number;
  bytesFetched: number;
  retries: number;
  checksumMismatches: number;
  /** ms from open() to the first chunk present, or null. */
  firstChunkMs: number | null;
  verified: boolean;
}

export type RemoteSource = Extract<PageSource, { kind: 'remote' }>;

const FETCHER = path.resolve(__dirname, 'fetcher.js');

/** Chunk indices covering a working set's pages: extents in recorded order, each chunk once. */
export function planChunks(pages: ArrayLike<number>, chunkSize: number, chunks: number, background: boolean): Int32Array {
  const seen = new Uint8Array(chunks);
  const out: number[] = [];
  const add = (c: number): void => {
    if (c >= 0 && c < chunks && !seen[c]) { seen[c] = 1; out.push(c); }
  };
  const perChunk = chunkSize / 4096;
  for (let i = 0; i < pages.length;) {
    // An extent: a run of consecutive pages in the recorded order.
    let j = i + 1;
    while (j < pages.length && pages[j] === (pages[j - 1] ?? -2) + 1) j++;
    const first = pages[i] ?? 0;
    const last = pages[j - 1] ?? first;
    for (let c = Math.floor(first / perChunk); c <= Math.floor(last / perChunk); c++) add(c);
    i = j;
  }
  if (background) for (let c = 0; c < chunks; c++) add(c);
  return Int32Array.from(out);
}

export class RemoteMemory extends EventEmitter {
  readonly location: StoreLocation;
  readonly size: number;
  readonly chunkSize: number;
  readonly gate: GateSetup;
  readonly manifest: Manifest | undefined;
  readonly etag: string | undefined;
  /** Why a chunk could not be had (by chunk index), as the fetch thread reported it. */
  readonly failures = new Map<number, string>();
  private readonly worker: Worker;
  private readonly stats: Float64Array;
  private readonly fd: number;
  private readonly cacheFile: string | undefined;
  private readonly openedAt: number;
  private closed = false;
  private readonly exited: Promise<void>;

  private constructor(a: {
    location: StoreLocation; size: number; chunkSize: number; gate: GateSetup; manifest?: Manifest; etag?: string;
    worker: Worker; stats: Float64Array; fd: number; cacheFile?: string; openedAt: number; exited: Promise<void>;
  }) {
    super();
    this.location = a.location; this.size = a.size; this.chunkSize = a.chunkSize; this.gate = a.gate;
    this.manifest = a.manifest; this.etag = a.etag; this.worker = a.worker; this.stats = a.stats; this.fd = a.fd;
    this.cacheFile = a.cacheFile; this.openedAt = a.openedAt; this.exited = a.exited;
  }

  /** Opens a remote memory file: reads its size, ETag and manifest, makes the cache, starts fetching. */
  static async open(location: StoreLocation, opts: RemoteOptions = {}): Promise<RemoteMemory> {
    const what = describeLocation(location);
    const maxInFlight = opts.maxInFlight ?? 8;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 256) throw new ConfigError(`maxInFlight must be 1 to 256 (got ${maxInFlight})`);
    if (opts.chunkSize !== undefined) checkChunkSize(opts.chunkSize);
    const openedAt = performance.timeOrigin + performance.now();
    const stats = new SharedArrayBuffer(F_WORDS * 8);
    const data: FetcherData = {
      role: 'remote-fetcher', location, maxInFlight, timeoutMs: opts.timeoutMs ?? 15_000, retries: opts.retries ?? 4,
      backoffMs: opts.backoffMs ?? 100, stats,
    };
    const worker = new Worker(FETCHER, { workerData: data });
    let onMessage: ((m: FromFetcher) => void) | undefined;
    let failed: string | undefined;
    const exited = new Promise<void>((resolve) => {
      worker.on('error', (e) => { failed = `the fetch thread failed: ${e.message}`; onMessage?.({ type: 'open-failed', message: failed }); });
      worker.on('exit', () => { failed ??= 'the fetch thread exited'; onMessage?.({ type: 'open-failed', message: failed }); resolve(); });
    });
    const opened = await new Promise<Extract<FromFetcher, { type: 'opened' | 'open-failed' }>>((resolve) => {
      onMessage = (m) => { if (m.type === 'opened' || m.type === 'open-failed') resolve(m); };
      worker.on('message', (m: FromFetcher) => onMessage?.(m));
    });
    onMessage = undefined;
    const fail = async (message: string): Promise<never> => {
      worker.postMessage({ type: 'close' } satisfies ToFetcher);
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      await worker.terminate();
      throw new ConfigError(message);
    };
    if (opened.type === 'open-failed') return fail(`cannot open ${what}: ${opened.message}`);
    let manifest: Manifest | undefined;
    if (opened.manifest !== undefined && opts.verify !== 'off') {
      try {
        manifest = parseManifest(opened.manifest, `manifest of ${what}`);
      } catch (e) {
        return fail((e as ManifestError).message);
      }
      if (manifest.size !== opened.size) {
        return fail(`${what} has ${opened.size} bytes but its manifest says ${manifest.size} (truncated or replaced object?)`);
      }
      if (opts.chunkSize !== undefined && opts.chunkSize !== manifest.chunkSize) {
        return fail(`chunk size ${opts.chunkSize} differs from the ${manifest.chunkSize} of ${what}'s manifest: leave it out (the manifest's is used) or upload again with that chunk size`);
      }
    } else if (opts.verify === 'required') {
      return fail(`${what} has no manifest (${what}.manifest.json) and verification is required: upload it with uffd-engine snapshot upload`);
    }
    const size = opened.size;
    if (size <= 0) return fail(`${what} is empty`);
    const chunkSize = manifest?.chunkSize ?? opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const mapLen = Math.ceil(size / 4096) * 4096;
    let fd = -1;
    let base = 0;
    try {
      fd = opts.cacheFile ? openFile(opts.cacheFile, O_RDWR | O_CREAT | O_TRUNC) : memfdCreate('uffd-engine-remote-cache');
      ftruncate(fd, mapLen);
      base = mmap(mapLen, PROT_READ, MAP_SHARED, fd, 0);
    } catch (e) {
      if (fd >= 0) closeFd(fd);
      return fail(`cannot make the chunk cache for ${what} (${mapLen} bytes${opts.cacheFile ? ` at ${opts.cacheFile}` : ' in a memfd'}): ${(e as Error).message}`);
    }
    const gate = allocateGate(base, size, chunkSize);
    const plan = planChunks(opts.prefetch?.workingSet ?? [], chunkSize, gate.chunks, opts.prefetch?.background ?? true);
    const mem = new RemoteMemory({
      location, size, chunkSize, gate, manifest, etag: opened.etag, worker, stats: new Float64Array(stats), fd,
      cacheFile: opts.cacheFile, openedAt, exited,
    });
    worker.on('message', (m: FromFetcher) => {
      if (m.type === 'chunk-failed') {
        mem.failures.set(m.chunk, m.message);
        try {
          mem.emit('chunk-failed', { chunk: m.chunk, offset: m.chunk * chunkSize, message: m.message });
        } finally {
          worker.postMessage({ type: 'ack', chunk: m.chunk } satisfies ToFetcher);
        }
      }
    });
    void exited.then(() => mem.fetcherGone());
    // Alive from now on (it answered 'opened'; fetcherGone says otherwise if it exits): a
    // fault that comes before the thread has taken its start message waits for its chunk.
    // Set by the thread itself, that moment used to fail the chunk (a SIGBUS under load).
    Atomics.store(new Int32Array(gate.control), G_FETCHER_ALIVE, 1);
    worker.postMessage({ type: 'start', gate, fd, etag: opened.etag, sha256: manifest?.sha256, plan } satisfies ToFetcher);
    return mem;
  }

  /** A page source serving the memory file from byte `offset` (a region's offset in it). */
  source(offset = 0): PageSource {
    if (offset % 4096 || offset < 0 || offset >= this.size) throw new ConfigError(`remote source offset ${offset} must be page-aligned and inside the ${this.size}-byte memory file`);
    return { kind: 'chunked', gate: this.gate, offset, describe: describeLocation(this.location) };
  }

  /** Fetch these memory-file pages (4 KiB indices) next, before the rest of the plan (e.g. one VM's working set). */
  prefetch(pages: ArrayLike<number>): void {
    this.worker.postMessage({ type: 'prefetch', chunks: planChunks(pages, this.chunkSize, this.gate.chunks, false) } satisfies ToFetcher);
  }

  remoteStats(): RemoteStats {
    const st = this.stats;
    const s = (word: number): number => st[word] ?? 0;
    return {
      size: this.size, chunkSize: this.chunkSize, chunks: this.gate.chunks, cached: s(F_CHUNKS), failed: s(F_FAILED),
      demandChunks: s(F_DEMAND), prefetchChunks: s(F_PREFETCH), requests: s(F_REQUESTS), bytesFetched: s(F_BYTES),
      retries: s(F_RETRIES), checksumMismatches: s(F_CHECKSUM), firstChunkMs: s(F_FIRST_MS) ? s(F_FIRST_MS) - this.openedAt : null,
      verified: this.manifest !== undefined,
    };
  }

  /** The fetch thread is gone: every chunk not yet present fails, so no fault waits for it. */
  private fetcherGone(): void {
    const ctl = new Int32Array(this.gate.control);
    Atomics.store(ctl, G_FETCHER_ALIVE, 0);
    if (this.closed) return;
    const states = new Int32Array(this.gate.states);
    const arrivals = new Int32Array(this.gate.arrivals);
    for (let c = 0; c < states.length; c++) {
      const s = Atomics.load(states, c);
      if (s === CHUNK_PRESENT || s === CHUNK_FAILED) continue;
      Atomics.store(states, c, CHUNK_FAILED);
      this.failures.set(c, 'the fetch thread exited');
      const i = Atomics.load(ctl, G_PUBLISHED);
      Atomics.store(arrivals, i, c);
      Atomics.store(ctl, G_PUBLISHED, i + 1);
      Atomics.notify(states, c);
    }
    Atomics.notify(ctl, G_PUBLISHED);
    this.emit('chunk-failed', { chunk: -1, offset: -1, message: 'the fetch thread exited: pages not yet fetched will be poisoned' });
  }

  /** Stops fetching and frees the cache. Engines using it must be stopped first. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.worker.postMessage({ type: 'close' } satisfies ToFetcher);
    const t = setTimeout(() => void this.worker.terminate(), 5000);
    await this.exited;
    clearTimeout(t);
    munmap(this.gate.base, Math.ceil(this.size / 4096) * 4096);
    closeFd(this.fd);
    if (this.cacheFile) fs.rmSync(this.cacheFile, { force: true });
  }
}

/** Opens a remote source spec (sources.s3 / sources.http) for an engine that will own it. */
export function openRemoteSource(src: RemoteSource): Promise<RemoteMemory> {
  return RemoteMemory.open(src.location, src.options);
}

/** One line for people: how much of the memory file came over the network, and how. */
export function formatRemoteStats(s: RemoteStats): string {
  return `remote: ${s.cached}/${s.chunks} chunks of ${formatBytes(s.chunkSize)} cached (${s.demandChunks} on demand, ${s.prefetchChunks} prefetched)` +
    `, ${s.requests} requests, ${formatBytes(s.bytesFetched)} fetched, ${s.retries} retries, ${s.failed} failed` +
    `${s.verified ? ', every chunk verified against the manifest' : ', not verified (no manifest)'}` +
    `${s.firstChunkMs !== null ? `, first chunk after ${s.firstChunkMs.toFixed(0)} ms` : ''}`;
}
