// Command-line options for memory files in object storage, shared by `serve --mem-url` and
// `snapshot upload`. Credentials come from the environment only (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or the AWS SDK's other sources), never argv.
import { RemoteConfig, RemoteMemory, RemoteOptions } from '../remote/remote-memory.js';

export { formatRemoteStats } from '../remote/remote-memory.js';
import { parseMemUrl, StoreLocation } from '../remote/store.js';
import type { OptionSpec } from './args.js';

export const S3_SPEC: OptionSpec = {
  s3Endpoint: { type: 'string', help: 'S3-compatible endpoint for s3:// URLs, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS S3); credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY' },
  s3Region: { type: 'string', help: 'region for s3:// URLs (default AWS_REGION, else us-east-1)' },
};

export const REMOTE_SPEC: OptionSpec = {
  memUrl: { type: 'string', help: 'memory file in object storage instead of --mem-file: s3://BUCKET/KEY or http(s)://HOST/PATH (any server with Range support)' },
  ...S3_SPEC,
  remoteChunk: { type: 'size', help: 'bytes per ranged GET and cache chunk (default: the manifest\'s, else 4M)' },
  remoteInFlight: { type: 'number', default: 8, help: 'requests in flight at most (demand faults always get a slot)' },
  remoteTimeoutMs: { type: 'number', default: 15000, help: 'time one request may take' },
  remoteRetries: { type: 'number', default: 4, help: 'further attempts after a 5xx, a timeout, a dropped connection or a checksum mismatch' },
  remoteCache: { type: 'string', help: 'keep the chunk cache in this file instead of a memfd (removed on exit)' },
  verify: { type: 'string', default: 'auto', help: 'auto (check chunks against URL.manifest.json when present) | required | off' },
};

export interface RemoteArgs {
  memUrl?: string; s3Endpoint?: string; s3Region?: string; remoteChunk?: number; remoteInFlight: number;
  remoteTimeoutMs: number; remoteRetries: number; remoteCache?: string; verify: string;
}

/** The location a URL names, with the S3 options given. */
export function locationOf(url: string, o: { s3Endpoint?: string; s3Region?: string }): StoreLocation {
  return parseMemUrl(url, {
    endpoint: o.s3Endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL,
    region: o.s3Region,
  });
}

/** Checks the remote options; throws with what is wrong. */
export function checkRemoteArgs(o: RemoteArgs): void {
  if (!['auto', 'required', 'off'].includes(o.verify)) throw new Error(`--verify must be auto, required or off (got "${o.verify}")`);
  if (!Number.isInteger(o.remoteInFlight) || o.remoteInFlight < 1) throw new Error(`--remote-in-flight must be a positive integer (got ${o.remoteInFlight})`);
  if (!(o.remoteTimeoutMs > 0)) throw new Error(`--remote-timeout-ms must be positive (got ${o.remoteTimeoutMs})`);
  if (!Number.isInteger(o.remoteRetries) || o.remoteRetries < 0) throw new Error(`--remote-retries must be 0 or more (got ${o.remoteRetries})`);
  if (o.memUrl) locationOf(o.memUrl, o);
}

/** Where the memory file at --mem-url is and how to fetch it: plain data, so an engine process can be given it. */
export function remoteConfig(o: RemoteArgs & { memUrl: string }): RemoteConfig {
  return {
    location: locationOf(o.memUrl, o),
    options: {
      chunkSize: o.remoteChunk, maxInFlight: o.remoteInFlight, timeoutMs: o.remoteTimeoutMs, retries: o.remoteRetries,
      cacheFile: o.remoteCache, verify: o.verify as RemoteOptions['verify'],
    },
  };
}

/** Opens the memory file at --mem-url with the options given. */
export function openRemote(o: RemoteArgs & { memUrl: string }, prefetch: RemoteOptions['prefetch']): Promise<RemoteMemory> {
  const c = remoteConfig(o);
  return RemoteMemory.open(c.location, { ...c.options, prefetch });
}
