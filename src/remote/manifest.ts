// The manifest stored beside a memory file in object storage: its size, the chunk size it
// is fetched in, and the SHA-256 of each chunk, so every chunk is verified on arrival.
//
//   { "format": "uffd-engine-remote-manifest", "version": 1, "size": <bytes>,
//     "chunkSize": <bytes>, "sha256": ["<hex of chunk 0>", ...], "created": "<ISO date>" }
//
// It lives at "<object key or URL>.manifest.json" (manifestLocation).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

export const MANIFEST_FORMAT = 'uffd-engine-remote-manifest';
export const MANIFEST_VERSION = 1;
export const MANIFEST_SUFFIX = '.manifest.json';
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: 1;
  size: number;
  chunkSize: number;
  /** Hex SHA-256 of each chunk (the last one may be short). */
  sha256: string[];
  created?: string;
}

export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ManifestError';
  }
}

/** Checks a chunk size: a positive multiple of 4096 (so pages never straddle a short read), at most 1 GiB. */
export function checkChunkSize(chunkSize: number, what = 'chunkSize'): void {
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 4096 || chunkSize % 4096 !== 0 || chunkSize > 2 ** 30) {
    throw new ManifestError(`${what} must be a multiple of 4096 from 4 KiB to 1 GiB (got ${chunkSize})`);
  }
}

/** Reads a file chunk by chunk and hashes each chunk. */
export function computeManifest(file: string, chunkSize = DEFAULT_CHUNK_SIZE): Manifest {
  checkChunkSize(chunkSize);
  const size = fs.statSync(file).size;
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(Math.min(chunkSize, Math.max(size, 1)));
  const sha256: string[] = [];
  try {
    for (let off = 0; off < size; off += chunkSize) {
      const len = Math.min(chunkSize, size - off);
      const h = crypto.createHash('sha256');
      let done = 0;
      while (done < len) {
        const n = fs.readSync(fd, buf, 0, Math.min(buf.length, len - done), off + done);
        if (n <= 0) throw new ManifestError(`${file} ended at byte ${off + done} while hashing (it shrank?)`);
        h.update(buf.subarray(0, n));
        done += n;
      }
      sha256.push(h.digest('hex'));
    }
  } finally {
    fs.closeSync(fd);
  }
  return { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, size, chunkSize, sha256, created: new Date().toISOString() };
}

/** Parses and validates a manifest's text; `what` names it in errors. */
export function parseManifest(text: string, what = 'manifest'): Manifest {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ManifestError(`${what}: not JSON (${(e as Error).message}); expected a file written by uffd-engine snapshot upload`);
  }
  const o = (typeof v === 'object' && v !== null && !Array.isArray(v) ? v : {}) as Record<string, unknown>;
  if (o.format !== MANIFEST_FORMAT) throw new ManifestError(`${what}: "format" is ${JSON.stringify(o.format)}, expected "${MANIFEST_FORMAT}"`);
  if (o.version !== MANIFEST_VERSION) throw new ManifestError(`${what}: version ${JSON.stringify(o.version)} is not supported (this build reads ${MANIFEST_VERSION})`);
  if (!Number.isSafeInteger(o.size) || (o.size as number) <= 0) throw new ManifestError(`${what}: "size" must be a positive integer`);
  checkChunkSize(o.chunkSize as number, `${what}: "chunkSize"`);
  const size = o.size as number;
  const chunkSize = o.chunkSize as number;
  const chunks = Math.ceil(size / chunkSize);
  if (!Array.isArray(o.sha256) || o.sha256.length !== chunks) {
    throw new ManifestError(`${what}: "sha256" must list ${chunks} chunk hashes for ${size} bytes in ${chunkSize}-byte chunks (got ${Array.isArray(o.sha256) ? o.sha256.length : typeof o.sha256})`);
  }
  o.sha256.forEach((h, i) => {
    if (typeof h !== 'string' || !/^[0-9a-f]{64}$/.test(h)) throw new ManifestError(`${what}: sha256[${i}] is not 64 lowercase hex digits`);
  });
  return {
    format: MANIFEST_FORMAT, version: MANIFEST_VERSION, size, chunkSize, sha256: o.sha256 as string[],
    created: typeof o.created === 'string' ? o.created : undefined,
  };
}
