// Page sources: where the bytes of a missing page come from. Each source resolves, on
// the main thread, to something every worker thread can copy from without asking
// anyone: an address in this process (a buffer, a mapped snapshot file), zeros, or —
// for callbacks — bytes the main thread writes into a worker's staging buffer.
import * as fs from 'node:fs';
import { MAP_POPULATE, MAP_PRIVATE, O_RDONLY, PROT_READ } from '../kernel/constants.js';
import { ConfigError } from '../kernel/errors.js';
import { addressOf } from '../kernel/libc.js';
import { close, mmap, munmap, openFile } from '../kernel/memory.js';
import type { GateSetup } from '../remote/gate.js';
import type { RemoteOptions } from '../remote/remote-memory.js';
import { parseMemUrl, S3Credentials, StoreLocation } from '../remote/store.js';

export type PageCallback = (offset: number, length: number) => Uint8Array | Promise<Uint8Array>;

export type PageSource =
  /** Zero-filled pages (UFFDIO_ZEROPAGE; a zero buffer copy on hugetlbfs). */
  | { kind: 'zero' }
  /** Bytes held in memory: a Uint8Array (SharedArrayBuffer-backed or not) kept alive by the engine. */
  | { kind: 'buffer'; data: Uint8Array; offset?: number }
  /** A snapshot file, mapped read-only; pages are copied straight from its page cache. */
  | { kind: 'file'; path: string; offset?: number; populate?: boolean }
  /** Native memory of this process (e.g. a mapping made by the caller). */
  | { kind: 'address'; addr: number; size: number }
  /**
   * The region's own page cache (shmem/memfd, hugetlbfs), filled ahead: minor faults are
   * mapped with UFFDIO_CONTINUE. Missing faults (pages not in the cache) come from `missing`
   * (default zero).
   */
  | { kind: 'pageCache'; missing?: PageSource }
  /** A function of the byte offset and length, run on the main thread (may be async). */
  | { kind: 'callback'; fetch: PageCallback }
  /**
   * A memory file in object storage (sources.s3 / sources.http): Engine.start opens it
   * (a chunk cache and a fetch thread, docs/remote.md) and closes it when the engine stops.
   */
  | { kind: 'remote'; location: StoreLocation; options?: RemoteOptions }
  /** The chunk cache of an open RemoteMemory from byte `offset` (RemoteMemory.source()); not owned by the engine. */
  | { kind: 'chunked'; gate: GateSetup; offset: number; describe: string };

export interface S3SourceOptions extends RemoteOptions {
  bucket: string;
  key: string;
  /** An S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL). */
  endpoint?: string;
  region?: string;
  credentials?: S3Credentials;
  forcePathStyle?: boolean;
}

export const sources = {
  zero: (): PageSource => ({ kind: 'zero' }),
  buffer: (data: Uint8Array, offset = 0): PageSource => ({ kind: 'buffer', data, offset }),
  file: (path: string, offset = 0, populate = false): PageSource => ({ kind: 'file', path, offset, populate }),
  address: (addr: number, size: number): PageSource => ({ kind: 'address', addr, size }),
  pageCache: (missing?: PageSource): PageSource => ({ kind: 'pageCache', missing }),
  callback: (fetch: PageCallback): PageSource => ({ kind: 'callback', fetch }),
  /** A memory file in an S3-compatible store, fetched in chunks on demand (ranged GetObject). */
  s3: (o: S3SourceOptions): PageSource => {
    const { bucket, key, endpoint, region, credentials, forcePathStyle, ...options } = o;
    return { kind: 'remote', location: { kind: 's3', bucket, key, endpoint, region, credentials, forcePathStyle }, options };
  },
  /** A memory file behind any HTTP server that honours Range, fetched in chunks on demand. */
  http: (url: string, options: RemoteOptions = {}): PageSource => {
    const location = parseMemUrl(url);
    if (location.kind !== 'http') throw new ConfigError(`sources.http needs an http(s):// URL (got ${url}); use sources.s3 for s3://`);
    return { kind: 'remote', location, options };
  },
};

/** What a source became on the main thread: how workers fill from it. */
export interface OpenedSource {
  /** 'copy' from addr, 'zero', or 'callback'. */
  mode: 'copy' | 'zero' | 'callback';
  addr: number;
  /** Bytes available from addr (or Infinity for zero/callback). */
  size: number;
  /** Minor faults resolved with UFFDIO_CONTINUE. */
  minor: boolean;
  fetch?: PageCallback;
  /** Keeps JS memory alive while the engine runs. */
  keep?: unknown;
  /** A chunk cache: copy a page only once its chunk is present (remote sources). */
  gate?: GateSetup;
  close(): void;
}

export function openSource(src: PageSource, need: number, what: string): OpenedSource {
  const none = () => { /* nothing to release */ };
  switch (src.kind) {
    case 'zero':
      return { mode: 'zero', addr: 0, size: Infinity, minor: false, close: none };
    case 'buffer': {
      const off = src.offset ?? 0;
      if (!(src.data instanceof Uint8Array)) throw new ConfigError(`${what}: buffer source needs a Uint8Array`);
      const size = src.data.byteLength - off;
      if (size < need) {
        throw new ConfigError(`${what}: the buffer source holds ${size} bytes after offset ${off}, less than the region's ${need}; give a buffer at least as large as the region`);
      }
      return { mode: 'copy', addr: addressOf(src.data) + off, size, minor: false, keep: src.data, close: none };
    }
    case 'address':
      if (src.size < need) throw new ConfigError(`${what}: the address source holds ${src.size} bytes, less than the region's ${need}`);
      return { mode: 'copy', addr: src.addr, size: src.size, minor: false, close: none };
    case 'file': {
      const off = src.offset ?? 0;
      let st: fs.Stats;
      try {
        st = fs.statSync(src.path);
      } catch (e) {
        throw new ConfigError(`${what}: cannot read snapshot file ${src.path}: ${(e as Error).message}`);
      }
      if (off % 4096) throw new ConfigError(`${what}: file offset ${off} is not a multiple of 4096`);
      if (st.size - off < need) {
        throw new ConfigError(`${what}: snapshot file ${src.path} has ${st.size} bytes; ${need} are needed from offset ${off} (the file is smaller than the region)`);
      }
      const fd = openFile(src.path, O_RDONLY);
      const len = need;
      let addr: number;
      try {
        addr = mmap(len, PROT_READ, MAP_PRIVATE | (src.populate ? MAP_POPULATE : 0), fd, off);
      } finally {
        close(fd);
      }
      return { mode: 'copy', addr, size: len, minor: false, close: () => munmap(addr, len) };
    }
    case 'pageCache': {
      const miss = src.missing ? openSource(src.missing, need, what) : openSource({ kind: 'zero' }, need, what);
      if (miss.minor) throw new ConfigError(`${what}: pageCache cannot take another pageCache as its missing source`);
      return { ...miss, minor: true };
    }
    case 'callback':
      if (typeof src.fetch !== 'function') throw new ConfigError(`${what}: callback source needs a fetch function`);
      return { mode: 'callback', addr: 0, size: Infinity, minor: false, fetch: src.fetch, close: none };
    case 'chunked': {
      const size = src.gate.size - src.offset;
      if (size < need) throw new ConfigError(`${what}: ${src.describe} holds ${size} bytes from offset ${src.offset}, less than the region's ${need}`);
      return { mode: 'copy', addr: src.gate.base + src.offset, size, minor: false, gate: src.gate, close: none };
    }
    case 'remote':
      throw new ConfigError(`${what}: a remote source is opened by Engine.start (or RemoteMemory.open for one shared by several engines)`);
    default:
      throw new ConfigError(`${what}: unknown source kind "${(src as { kind: string }).kind}"; use zero, buffer, file, address, pageCache, callback, s3 or http`);
  }
}
