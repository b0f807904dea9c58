// Where a remote memory file lives and how to read byte ranges of it: any HTTP server
// that honours Range (undici), or an S3-compatible object store (AWS SDK v3: AWS S3,
// MinIO, Ceph RGW, ...). A location is plain data so it can be handed to the fetch thread,
// which makes the client there. Every ranged read carries If-Match with the ETag seen at
// open: an object replaced during a restore is an explicit failure, never a mix of two.
import type { Readable } from 'node:stream';
import { MANIFEST_SUFFIX } from './manifest.js';

export interface S3Credentials { accessKeyId: string; secretAccessKey: string; sessionToken?: string }

export type StoreLocation =
  | { kind: 'http'; url: string; headers?: Record<string, string> }
  | {
    kind: 's3'; bucket: string; key: string;
    /** S3-compatible endpoint (http://127.0.0.1:9000); default: AWS (or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL). */
    endpoint?: string;
    /** Default AWS_REGION, else us-east-1. */
    region?: string;
    /** Default: the AWS SDK's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, profiles, ...). */
    credentials?: S3Credentials;
    /** Path-style addressing (default: true when an endpoint is given, as MinIO and most S3-compatible stores want). */
    forcePathStyle?: boolean;
  };

export class StoreError extends Error {
  /** Worth trying again (5xx, 429, timeouts, dropped connections, short bodies). */
  readonly retryable: boolean;
  readonly status?: number;
  constructor(message: string, retryable: boolean, status?: number) {
    super(message);
    this.name = 'StoreError';
    this.retryable = retryable;
    this.status = status;
  }
}

/** "s3://bucket/key" or "http(s)://…" → a location (S3 options from opts). */
export function parseMemUrl(url: string, s3?: Omit<Extract<StoreLocation, { kind: 's3' }>, 'kind' | 'bucket' | 'key'>): StoreLocation {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(url);
  if (m?.[1] && m[2]) return { kind: 's3', bucket: m[1], key: m[2], ...s3 };
  if (/^https?:\/\/[^/]+\/./.test(url)) return { kind: 'http', url };
  throw new StoreError(`memory URL "${url}" is neither s3://BUCKET/KEY nor http(s)://HOST/PATH`, false);
}

export function describeLocation(loc: StoreLocation): string {
  return loc.kind === 's3' ? `s3://${loc.bucket}/${loc.key}${loc.endpoint ? ` at ${loc.endpoint}` : ''}` : loc.url;
}

/** Reads ranges of one object. Made inside the thread that uses it. */
export interface StoreClient {
  /** Size and ETag of the object. */
  head(signal: AbortSignal): Promise<{ size: number; etag?: string }>;
  /** The manifest beside the object, or undefined when there is none (404). */
  manifest(signal: AbortSignal): Promise<string | undefined>;
  /**
   * Reads [offset, offset+len), handing each piece to onData in order; resolves with the
   * bytes read. A short body, another range or a changed object is a StoreError.
   */
  read(offset: number, len: number, etag: string | undefined, signal: AbortSignal, onData: (piece: Buffer) => void): Promise<number>;
  close(): Promise<void>;
}

export function openStore(loc: StoreLocation, connections: number): StoreClient {
  return loc.kind === 's3' ? s3Client(loc, connections) : httpClient(loc, connections);
}

function retryableStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408;
}

async function drain(body: AsyncIterable<Buffer | Uint8Array>, len: number, what: string, onData: (piece: Buffer) => void): Promise<number> {
  let got = 0;
  for await (const p of body) {
    const piece = Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength);
    if (got + piece.length > len) throw new StoreError(`${what}: the server sent more than the ${len} bytes asked for`, false);
    onData(piece);
    got += piece.length;
  }
  if (got !== len) throw new StoreError(`${what}: the body ended after ${got} of ${len} bytes (truncated object or dropped connection)`, true);
  return got;
}

function checkContentRange(value: string | undefined, offset: number, len: number, what: string): void {
  const m = value ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value) : null;
  if (!m || Number(m[1]) !== offset || Number(m[2]) !== offset + len - 1) {
    throw new StoreError(`${what}: the server answered with range "${value ?? '(none)'}", not bytes ${offset}-${offset + len - 1} (truncated object?)`, false);
  }
}

// ---- plain HTTP (undici) ------------------------------------------------------------

function httpClient(loc: Extract<StoreLocation, { kind: 'http' }>, connections: number): StoreClient {
  const undici = require('undici') as typeof import('undici');
  const agent = new undici.Agent({ connections, pipelining: 1, keepAliveTimeout: 30_000 });
  const call = async (url: string, method: 'GET' | 'HEAD', headers: Record<string, string>, signal: AbortSignal) => {
    try {
      return await undici.request(url, { method, headers: { ...loc.headers, ...headers }, signal, dispatcher: agent });
    } catch (e) {
      if (signal.aborted) throw new StoreError(`${method} ${url}: no answer in time (${(signal.reason as Error)?.message ?? 'aborted'})`, true);
      throw new StoreError(`${method} ${url}: ${(e as Error).message}`, true);
    }
  };
  const fail = async (res: { statusCode: number; body: { dump(): Promise<void> } }, what: string): Promise<never> => {
    await res.body.dump().catch(() => undefined);
    const hint = res.statusCode === 412 ? ' (the object changed since the restore started: its ETag no longer matches)' : '';
    throw new StoreError(`${what}: HTTP ${res.statusCode}${hint}`, retryableStatus(res.statusCode), res.statusCode);
  };
  return {
    async head(signal) {
      const res = await call(loc.url, 'HEAD', {}, signal);
      if (res.statusCode !== 200) await fail(res, `HEAD ${loc.url}`);
      await res.body.dump();
      const size = Number(res.headers['content-length']);
      if (!Number.isSafeInteger(size)) throw new StoreError(`HEAD ${loc.url}: no Content-Length; the server must say how large the memory file is`, false);
      if (!/bytes/.test(String(res.headers['accept-ranges'] ?? ''))) {
        throw new StoreError(`HEAD ${loc.url}: the server does not advertise Accept-Ranges: bytes; it cannot serve ranged reads`, false);
      }
      const etag = res.headers.etag;
      return { size, etag: typeof etag === 'string' && !etag.startsWith('W/') ? etag : undefined };
    },
    async manifest(signal) {
      const url = loc.url + MANIFEST_SUFFIX;
      const res = await call(url, 'GET', {}, signal);
      if (res.statusCode === 404) { await res.body.dump(); return undefined; }
      if (res.statusCode !== 200) await fail(res, `GET ${url}`);
      return res.body.text();
    },
    async read(offset, len, etag, signal, onData) {
      const what = `GET ${loc.url} bytes ${offset}-${offset + len - 1}`;
      const res = await call(loc.url, 'GET', { range: `bytes=${offset}-${offset + len - 1}`, ...(etag ? { 'if-match': etag } : {}) }, signal);
      if (res.statusCode !== 206) {
        if (res.statusCode === 200) {
          await res.body.dump().catch(() => undefined);
          throw new StoreError(`${what}: the server ignored the Range header (HTTP 200)`, false, 200);
        }
        await fail(res, what);
      }
      checkContentRange(res.headers['content-range'] as string | undefined, offset, len, what);
      try {
        return await drain(res.body, len, what, onData);
      } catch (e) {
        if (e instanceof StoreError) throw e;
        throw new StoreError(`${what}: ${signal.aborted ? 'no complete answer in time' : (e as Error).message}`, true);
      }
    },
    close: () => agent.close(),
  };
}

// ---- S3-compatible (AWS SDK v3) ------------------------------------------------------

function s3Client(loc: Extract<StoreLocation, { kind: 's3' }>, connections: number): StoreClient {
  const s3 = require('@aws-sdk/client-s3') as typeof import('@aws-sdk/client-s3');
  const client = makeS3Client(loc, connections);
  const name = `s3://${loc.bucket}/${loc.key}`;
  const wrap = (e: unknown, what: string, signal: AbortSignal): StoreError => {
    if (e instanceof StoreError) return e;
    const err = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    const status = err.$metadata?.httpStatusCode;
    if (signal.aborted) return new StoreError(`${what}: no complete answer in time`, true);
    if (status === undefined) return new StoreError(`${what}: ${err.message ?? String(e)}`, true);
    const hint = status === 412 ? ' (the object changed since the restore started: its ETag no longer matches)'
      : status === 403 ? ' (check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --s3-access-key)' : '';
    return new StoreError(`${what}: ${err.name ?? 'error'} (HTTP ${status})${hint}`, retryableStatus(status), status);
  };
  const notFound = (e: unknown): boolean => {
    const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
    return err.$metadata?.httpStatusCode === 404 || err.name === 'NoSuchKey' || err.name === 'NotFound';
  };
  return {
    async head(signal) {
      try {
        const h = await client.send(new s3.HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key }), { abortSignal: signal });
        if (h.ContentLength === undefined) throw new StoreError(`HEAD ${name}: no ContentLength`, false);
        return { size: h.ContentLength, etag: h.ETag };
      } catch (e) {
        throw wrap(e, `HEAD ${name}`, signal);
      }
    },
    async manifest(signal) {
      try {
        const g = await client.send(new s3.GetObjectCommand({ Bucket: loc.bucket, Key: loc.key + MANIFEST_SUFFIX }), { abortSignal: signal });
        return await (g.Body as { transformToString(): Promise<string> }).transformToString();
      } catch (e) {
        if (notFound(e)) return undefined;
        throw wrap(e, `GET ${name}${MANIFEST_SUFFIX}`, signal);
      }
    },
    async read(offset, len, etag, signal, onData) {
      const what = `GET ${name} bytes ${offset}-${offset + len - 1}`;
      try {
        const g = await client.send(new s3.GetObjectCommand({
          Bucket: loc.bucket, Key: loc.key, Range: `bytes=${offset}-${offset + len - 1}`, IfMatch: etag,
        }), { abortSignal: signal });
        checkContentRange(g.ContentRange, offset, len, what);
        return await drain(g.Body as Readable, len, what, onData);
      } catch (e) {
        throw wrap(e, what, signal);
      }
    },
    async close() { client.destroy(); },
  };
}

/** An S3 client for a location: path-style for custom endpoints, no SDK retries (we retry per chunk), checksums only where required. */
export function makeS3Client(loc: Extract<StoreLocation, { kind: 's3' }>, connections = 16): import('@aws-sdk/client-s3').S3Client {
  // The SDK warns that its releases after January 2027 need Node 22; this build pins its version.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const s3 = require('@aws-sdk/client-s3') as typeof import('@aws-sdk/client-s3');
  return new s3.S3Client({
    endpoint: loc.endpoint,
    region: loc.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
    forcePathStyle: loc.forcePathStyle ?? (loc.endpoint !== undefined),
    credentials: loc.credentials,
    maxAttempts: 1,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: { httpAgent: { keepAlive: true, maxSockets: connections }, httpsAgent: { keepAlive: true, maxSockets: connections } },
  });
}
