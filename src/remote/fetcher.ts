// The fetch thread of a remote memory file: its own isolate and event loop, so a demand
// fault never waits behind the main thread's JavaScript. It opens the object (size, ETag,
// manifest), then fetches chunks into the cache memfd:
// - demand requests first: workers queue them in shared memory and ring a doorbell
//   (Atomics.waitAsync here), and they may take every request slot;
// - then the prefetch plan (working-set chunks in recorded order, then the rest) with at
//   most maxInFlight - 1 requests, so a demand request always finds a free slot;
// - each request has a timeout; retryable failures (5xx, 429, timeouts, dropped or short
//   bodies, checksum mismatches) are retried with exponential backoff and jitter;
// - bytes go straight from the response into the memfd (pwrite), are hashed on the way and
//   checked against the manifest; only then does the chunk become PRESENT. A chunk that
//   cannot be had becomes FAILED (its pages are poisoned: SIGBUS for whoever touches them)
//   and the main thread is told why.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import {
  CHUNK_ABSENT, CHUNK_FAILED, CHUNK_FETCHING, CHUNK_PRESENT, CHUNK_WANTED, G_DOORBELL, G_FETCHER_ALIVE, G_PUBLISHED,
  G_QUEUE_HEAD, GateSetup,
} from './gate.js';
import { openStore, StoreClient, StoreError, StoreLocation } from './store.js';

export interface FetcherData {
  role: 'remote-fetcher';
  location: StoreLocation;
  maxInFlight: number;
  timeoutMs: number;
  retries: number;
  backoffMs: number;
  /** Float64 counters (F_* below). */
  stats: SharedArrayBuffer;
}

export type ToFetcher =
  | { type: 'start'; gate: GateSetup; fd: number; etag?: string; sha256?: string[]; plan: Int32Array }
  | { type: 'prefetch'; chunks: Int32Array }
  /** The main thread has reported a failed chunk (see chunk-failed). */
  | { type: 'ack'; chunk: number }
  | { type: 'close' };

export type FromFetcher =
  | { type: 'opened'; size: number; etag?: string; manifest?: string }
  | { type: 'open-failed'; message: string }
  | { type: 'chunk-failed'; chunk: number; message: string }
  | { type: 'closed' };

// Counters (Float64Array over FetcherData.stats).
export const F_REQUESTS = 0; // ranged GETs sent (every attempt)
export const F_BYTES = 1; // body bytes received (every attempt)
export const F_CHUNKS = 2; // chunks made PRESENT
export const F_DEMAND = 3; // chunks fetched because a fault asked
export const F_PREFETCH = 4; // chunks fetched from the plan
export const F_RETRIES = 5;
export const F_FAILED = 6; // chunks that became FAILED
export const F_CHECKSUM = 7; // attempts whose bytes did not match the manifest
export const F_FIRST_MS = 8; // wall-clock ms when the first chunk became PRESENT
export const F_WORDS = 16;

interface WaitAsyncResult { async: boolean; value: Promise<string> | string }
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): WaitAsyncResult }).waitAsync;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

function run(d: FetcherData): void {
  const port = parentPort!;
  const stats = new Float64Array(d.stats);
  /** Adds to one statistics word (F_*, all inside the F_WORDS-long array). */
  const bump = (word: number, by = 1): void => { stats[word] = (stats[word] ?? 0) + by; };
  const closing = new AbortController();
  const client: StoreClient = openStore(d.location, d.maxInFlight);
  const post = (m: FromFetcher): void => port.postMessage(m);

  const open = async (): Promise<void> => {
    try {
      const signal = AbortSignal.any([closing.signal, AbortSignal.timeout(d.timeoutMs)]);
      const h = await client.head(signal);
      const manifest = await client.manifest(AbortSignal.any([closing.signal, AbortSignal.timeout(d.timeoutMs)]));
      post({ type: 'opened', size: h.size, etag: h.etag, manifest });
    } catch (e) {
      post({ type: 'open-failed', message: (e as Error).message });
    }
  };

  let started: Extract<ToFetcher, { type: 'start' }> | undefined;
  let states: Int32Array;
  let ctl: Int32Array;
  let queue: Int32Array;
  let arrivals: Int32Array;
  let plan: Int32Array = new Int32Array(0);
  let planCursor = 0;
  let queueTail = 0;
  let inflight = 0;
  let inflightPrefetch = 0;
  const prefetchLimit = Math.max(1, d.maxInFlight - 1);
  const acks = new Map<number, () => void>();

  const nextDemand = (): number => {
    while (queueTail < Atomics.load(ctl, G_QUEUE_HEAD)) {
      const v = Atomics.load(queue, queueTail);
      if (v === 0) return -1; // reserved, not yet written: its doorbell follows
      queueTail++;
      if (Atomics.compareExchange(states, v - 1, CHUNK_WANTED, CHUNK_FETCHING) === CHUNK_WANTED) return v - 1;
    }
    return -1;
  };
  const nextPlanned = (): number => {
    while (planCursor < plan.length) {
      const c = plan[planCursor++] ?? -1;
      if (c < 0) break;
      if (Atomics.compareExchange(states, c, CHUNK_ABSENT, CHUNK_FETCHING) === CHUNK_ABSENT) return c;
    }
    return -1;
  };

  const finish = (c: number, state: number): void => {
    Atomics.store(states, c, state);
    Atomics.notify(states, c);
    const i = Atomics.load(ctl, G_PUBLISHED);
    Atomics.store(arrivals, i, c);
    Atomics.store(ctl, G_PUBLISHED, i + 1);
    Atomics.notify(ctl, G_PUBLISHED);
  };

  const fetchChunk = async (c: number): Promise<boolean> => {
    const s = started!;
    const off = c * s.gate.chunkSize;
    const len = Math.min(s.gate.chunkSize, s.gate.size - off);
    for (let attempt = 0; ; attempt++) {
      const signal = AbortSignal.any([closing.signal, AbortSignal.timeout(d.timeoutMs)]);
      try {
        const hash = s.sha256 ? crypto.createHash('sha256') : null;
        let pos = off;
        bump(F_REQUESTS);
        await client.read(off, len, s.etag, signal, (piece) => {
          bump(F_BYTES, piece.length);
          for (let done = 0; done < piece.length;) done += fs.writeSync(s.fd, piece, done, piece.length - done, pos + done);
          pos += piece.length;
          hash?.update(piece);
        });
        if (hash && s.sha256) {
          const got = hash.digest('hex');
          if (got !== s.sha256[c]) {
            bump(F_CHECKSUM);
            throw new StoreError(`chunk ${c} (bytes ${off}-${off + len - 1}): SHA-256 ${got} does not match the manifest's ${s.sha256[c]}`, true);
          }
        }
        return true;
      } catch (e) {
        if (closing.signal.aborted) return false;
        const err = e as StoreError;
        if (!(err instanceof StoreError) || !err.retryable || attempt >= d.retries) {
          // The failure is reported before anyone can see its SIGBUS (the main thread
          // acknowledges once its listeners ran; after 1 s we go on without it).
          const acked = new Promise<void>((resolve) => { acks.set(c, resolve); setTimeout(resolve, 1000).unref(); });
          post({ type: 'chunk-failed', chunk: c, message: `${err.message ?? String(e)}${attempt ? ` (after ${attempt + 1} attempts)` : ''}` });
          await acked;
          acks.delete(c);
          return false;
        }
        bump(F_RETRIES);
        await sleep(Math.min(5000, d.backoffMs * 2 ** attempt) * (0.5 + Math.random() / 2), closing.signal);
      }
    }
  };

  const pump = (): void => {
    if (!started || closing.signal.aborted) return;
    while (inflight < d.maxInFlight) {
      let c = nextDemand();
      const demand = c >= 0;
      if (!demand) {
        if (inflightPrefetch >= prefetchLimit) return;
        c = nextPlanned();
        if (c < 0) return;
      }
      inflight++;
      if (!demand) inflightPrefetch++;
      void fetchChunk(c).then((ok) => {
        if (closing.signal.aborted) return;
        if (ok) {
          bump(F_CHUNKS);
          bump(demand ? F_DEMAND : F_PREFETCH);
          if (stats[F_FIRST_MS] === 0) stats[F_FIRST_MS] = performance.timeOrigin + performance.now();
        } else bump(F_FAILED);
        finish(c, ok ? CHUNK_PRESENT : CHUNK_FAILED);
      }).finally(() => {
        inflight--;
        if (!demand) inflightPrefetch--;
        pump();
      });
    }
  };

  const doorbell = async (): Promise<void> => {
    let seen = Atomics.load(ctl, G_DOORBELL);
    while (!closing.signal.aborted) {
      pump();
      const r = waitAsync(ctl, G_DOORBELL, seen);
      if (r.async) await r.value;
      seen = Atomics.load(ctl, G_DOORBELL);
    }
  };

  port.on('message', (m: ToFetcher) => {
    if (m.type === 'start') {
      started = m;
      states = new Int32Array(m.gate.states);
      ctl = new Int32Array(m.gate.control);
      queue = new Int32Array(m.gate.queue);
      arrivals = new Int32Array(m.gate.arrivals);
      plan = m.plan;
      Atomics.store(ctl, G_FETCHER_ALIVE, 1);
      void doorbell();
    } else if (m.type === 'prefetch') {
      // A new plan goes first; what is left of the old one follows.
      const rest = plan.subarray(planCursor);
      const next = new Int32Array(m.chunks.length + rest.length);
      next.set(m.chunks);
      next.set(rest, m.chunks.length);
      plan = next;
      planCursor = 0;
      pump();
    } else if (m.type === 'ack') {
      acks.get(m.chunk)?.();
    } else if (m.type === 'close') {
      closing.abort();
      if (started) {
        Atomics.store(ctl, G_FETCHER_ALIVE, 0);
        Atomics.add(ctl, G_DOORBELL, 1);
        Atomics.notify(ctl, G_DOORBELL);
      }
      void client.close().catch(() => undefined).finally(() => {
        post({ type: 'closed' });
        port.close();
      });
    }
  });
  void open();
}

if (parentPort && (workerData as FetcherData | undefined)?.role === 'remote-fetcher') run(workerData as FetcherData);
