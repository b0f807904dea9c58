// Recorded working sets for snapshot restore: which pages of the memory file a VM needed
// first, in the order it needed them, so the next restore of the same snapshot can
// populate those pages before anything else (`prefetch.order`, hot-first).
//
// Recording needs no hook in the fault path: a sampler thread watches the engine's
// page-state table (2 bits per page, in a SharedArrayBuffer) and notes each page the
// first time it leaves MISSING (a worker claimed it or filled it). With read-ahead and
// background population off (the recording session serves demand faults only), every
// such page was needed by the guest. The order is exact up to the sampling interval
// (default 0.2 ms); pages first seen in the same pass are listed in address order.
//
// The file (JSON):
//   { "format": "uffd-engine-working-set", "version": 1, "pageSize": 4096,
//     "memFile": { "size": <bytes>, "path": "<informational>" },
//     "recorded": "<ISO date>", "sampleIntervalMs": 0.2,
//     "pages": [ <memory-file page index (byte offset / 4096)>, ... ] }   // first needed first
// Page indices are in the memory file, not in guest addresses, so they stay valid across
// restores (the VMM maps guest memory at new addresses each time).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type { Handshake } from './handshake.js';

export const WS_FORMAT = 'uffd-engine-working-set';
export const WS_VERSION = 1;
export const WS_PAGE_SIZE = 4096;

export interface WorkingSet {
  format: typeof WS_FORMAT;
  version: 1;
  pageSize: number;
  memFile: { size: number; path?: string };
  recorded?: string;
  sampleIntervalMs?: number;
  /** Memory-file page indices (offset / pageSize), in the order they were first needed. */
  pages: number[];
}

export class WorkingSetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkingSetError';
  }
}

/**
 * Parses and validates a working-set file's text. `memFileSize`: the memory file it will
 * be used with (must be the size it was recorded for). `what` names the file in errors.
 */
export function parseWorkingSet(text: string, memFileSize?: number, what = 'working set'): WorkingSet {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new WorkingSetError(`${what}: not JSON (${(e as Error).message}); expected a file written by uffd-engine serve --record-ws`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new WorkingSetError(`${what}: expected a JSON object with "format": "${WS_FORMAT}", got ${Array.isArray(v) ? 'an array' : v === null ? 'null' : typeof v}`);
  }
  const o = v as Record<string, unknown>;
  if (o.format !== WS_FORMAT) {
    throw new WorkingSetError(`${what}: not a working-set file ("format" is ${JSON.stringify(o.format)}, expected "${WS_FORMAT}")`);
  }
  if (o.version !== WS_VERSION) throw new WorkingSetError(`${what}: version ${JSON.stringify(o.version)} is not supported (this build reads version ${WS_VERSION})`);
  if (o.pageSize !== WS_PAGE_SIZE) throw new WorkingSetError(`${what}: "pageSize" must be ${WS_PAGE_SIZE}, got ${JSON.stringify(o.pageSize)}`);
  const mf = o.memFile as Record<string, unknown> | undefined;
  if (typeof mf !== 'object' || mf === null || !Number.isSafeInteger(mf.size) || (mf.size as number) <= 0) {
    throw new WorkingSetError(`${what}: "memFile.size" (the size of the memory file it was recorded for) is missing or not a positive integer`);
  }
  const size = mf.size as number;
  if (memFileSize !== undefined && size !== memFileSize) {
    throw new WorkingSetError(`${what}: recorded for a ${size}-byte memory file, but this memory file has ${memFileSize} bytes (a different snapshot?)`);
  }
  if (!Array.isArray(o.pages)) throw new WorkingSetError(`${what}: "pages" must be an array of page indices`);
  const limit = Math.ceil(size / WS_PAGE_SIZE);
  if (o.pages.length > limit) throw new WorkingSetError(`${what}: ${o.pages.length} pages listed, but the memory file has only ${limit}`);
  const seen = new Uint8Array(limit);
  const pages = o.pages as unknown[];
  for (let i = 0; i < pages.length; i++) {
    const p = pages[i];
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p >= limit) {
      throw new WorkingSetError(`${what}: pages[${i}] = ${JSON.stringify(p)} is not a page index from 0 to ${limit - 1} (the memory file has ${limit} pages of ${WS_PAGE_SIZE} bytes)`);
    }
    if (seen[p]) throw new WorkingSetError(`${what}: page ${p} is listed twice (pages[${i}] repeats an earlier entry)`);
    seen[p] = 1;
  }
  return {
    format: WS_FORMAT, version: WS_VERSION, pageSize: WS_PAGE_SIZE, memFile: { size, path: typeof mf.path === 'string' ? mf.path : undefined },
    recorded: typeof o.recorded === 'string' ? o.recorded : undefined,
    sampleIntervalMs: typeof o.sampleIntervalMs === 'number' ? o.sampleIntervalMs : undefined,
    pages: pages as number[],
  };
}

/** Reads and validates a working-set file (see parseWorkingSet). */
export function loadWorkingSet(file: string, memFileSize?: number): WorkingSet {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new WorkingSetError(`cannot read working set ${file}: ${(e as Error).message}`);
  }
  return parseWorkingSet(text, memFileSize, `working set ${file}`);
}

/** Writes a working set atomically (temporary file + rename). */
export function saveWorkingSet(file: string, ws: WorkingSet): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, JSON.stringify(ws) + '\n');
  fs.renameSync(tmp, file);
}

/** Where each region's pages start in the engine's page-state table (regions in handshake order). */
export function stateBases(h: Handshake): number[] {
  const bases: number[] = [];
  let b = 0;
  for (const r of h.regions) {
    bases.push(b);
    b += r.size / r.pageSize;
  }
  return bases;
}

/** Engine page indices → memory-file page indices (the first 4 KiB page of a huge page). */
export function toFilePages(globalPages: ArrayLike<number>, h: Handshake): number[] {
  const bases = stateBases(h);
  const out: number[] = [];
  for (let i = 0; i < globalPages.length; i++) {
    const g = globalPages[i] ?? -1;
    let r = bases.length - 1;
    while (r > 0 && (bases[r] ?? 0) > g) r--;
    const reg = h.regions[r];
    const base = bases[r];
    if (!reg || base === undefined) continue;
    const local = g - base;
    if (local < 0 || local >= reg.size / reg.pageSize) continue;
    out.push((reg.offset + local * reg.pageSize) / WS_PAGE_SIZE);
  }
  return out;
}

/**
 * Memory-file page indices → engine page indices for this handshake's regions (several
 * 4 KiB indices inside one huge page give that page once). Pages no region covers are
 * counted in `outside` and dropped.
 */
export function toEngineOrder(ws: WorkingSet, h: Handshake): { order: number[]; outside: number } {
  const bases = stateBases(h);
  const regions = h.regions.map((r, i) => ({ start: r.offset, end: r.offset + r.size, ps: r.pageSize, base: bases[i] })).sort((a, b) => a.start - b.start);
  const lastBase = bases[bases.length - 1];
  const last = h.regions[h.regions.length - 1];
  const total = lastBase !== undefined && last ? lastBase + last.size / last.pageSize : 0;
  const used = new Uint8Array(total);
  const order: number[] = [];
  let outside = 0;
  for (const p of ws.pages) {
    const off = p * WS_PAGE_SIZE;
    let lo = 0;
    let hi = regions.length - 1;
    let hit = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const m = regions[mid];
      if (!m) break;
      if (off < m.start) hi = mid - 1;
      else if (off >= m.end) lo = mid + 1;
      else { hit = mid; break; }
    }
    if (hit < 0) { outside++; continue; }
    const r = regions[hit];
    if (!r || r.base === undefined) { outside++; continue; }
    const g = r.base + Math.floor((off - r.start) / r.ps);
    if (used[g]) continue;
    used[g] = 1;
    order.push(g);
  }
  return { order, outside };
}

// ---- the sampler ------------------------------------------------------------------

interface SamplerData { role: 'ws-sampler'; flag: SharedArrayBuffer; intervalMs: number }
interface SamplerAttach { states: SharedArrayBuffer; totalPages: number }

// flag[0]: 1 = stop; flag[1]: 1 = thread up and waiting for a table, 2 = sampling.
/** The sampler loop (runs in its own thread): returns engine page indices in first-seen order. */
function samplePages(d: SamplerData, a: SamplerAttach): Uint32Array {
  const words = new Int32Array(a.states);
  const nWords = Math.min(words.length, Math.ceil(a.totalPages / 16));
  const prev = new Int32Array(nWords);
  const seen = new Uint8Array(a.totalPages);
  const flag = new Int32Array(d.flag);
  let out = new Uint32Array(1024);
  let n = 0;
  let first = true;
  for (;;) {
    const stop = Atomics.load(flag, 0) !== 0;
    let changed = false;
    for (let w = 0; w < nWords; w++) {
      const v = Atomics.load(words, w);
      if (v === prev[w]) continue;
      prev[w] = v;
      changed = true;
      const base = w * 16;
      for (let k = 0; k < 16; k++) {
        const st = (v >>> (k * 2)) & 3;
        // 1 = FILLING, 2 = PRESENT (3 = DROPPED by a REMOVE: not a need).
        if ((st === 1 || st === 2) && base + k < a.totalPages && !seen[base + k]) {
          seen[base + k] = 1;
          if (n === out.length) {
            const bigger = new Uint32Array(out.length * 2);
            bigger.set(out);
            out = bigger;
          }
          out[n++] = base + k;
        }
      }
    }
    if (first) {
      first = false;
      Atomics.store(flag, 1, 2);
    }
    if (stop) break;
    if (!changed) Atomics.wait(flag, 0, 0, d.intervalMs);
  }
  return out.slice(0, n);
}

export interface PageSampler {
  /**
   * Starts watching a page-state table (an engine's `setup.states`); resolves after the
   * first pass. Attach before the engine's threads start (EngineOptions.beforeLaunch) to
   * see every fill from the first.
   */
  attach(states: SharedArrayBuffer, totalPages: number): Promise<void>;
  /** Stops sampling (after one last pass) and returns engine page indices in first-seen order. */
  stop(): Promise<Uint32Array>;
}

function pollUntil(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = (): void => {
      if (cond()) resolve();
      else if (Date.now() > deadline) reject(new Error(`${what} within ${timeoutMs} ms`));
      else setTimeout(poll, 1);
    };
    poll();
  });
}

/**
 * Starts a thread that will list pages in the order they first leave MISSING in a
 * page-state table (see attach). Resolves once the thread is up.
 */
export async function startPageSampler(intervalMs = 0.2): Promise<PageSampler> {
  const flag = new SharedArrayBuffer(8);
  const f = new Int32Array(flag);
  const data: SamplerData = { role: 'ws-sampler', flag, intervalMs };
  const w = new Worker(__filename, { workerData: data });
  let failed: Error | undefined;
  const result = new Promise<Uint32Array>((resolve, reject) => {
    w.once('message', (m: Uint32Array) => resolve(m));
    w.once('error', (e) => { failed = e; reject(e); });
    w.once('exit', (code) => { failed ??= new Error(`working-set sampler exited (${code}) without a result`); reject(failed); });
  });
  result.catch(() => undefined);
  let attached = false;
  const stop = async (): Promise<Uint32Array> => {
    Atomics.store(f, 0, 1);
    Atomics.notify(f, 0);
    if (!attached) {
      await w.terminate();
      return new Uint32Array(0);
    }
    return result;
  };
  try {
    await pollUntil(() => Atomics.load(f, 1) >= 1 || !!failed, 10_000, 'the working-set sampler did not start');
    if (failed) throw failed;
  } catch (e) {
    await w.terminate();
    throw e;
  }
  return {
    async attach(states, totalPages) {
      attached = true;
      const msg: SamplerAttach = { states, totalPages };
      w.postMessage(msg);
      await pollUntil(() => Atomics.load(f, 1) === 2 || !!failed, 10_000, 'the working-set sampler did not attach');
      if (failed) throw failed;
    },
    stop,
  };
}

if (!isMainThread && (workerData as SamplerData | undefined)?.role === 'ws-sampler') {
  const d = workerData as SamplerData;
  parentPort!.once('message', (a: SamplerAttach) => {
    const pages = samplePages(d, a);
    parentPort!.postMessage(pages, [pages.buffer as ArrayBuffer]);
  });
  Atomics.store(new Int32Array(d.flag), 1, 1);
}
