// `uffd-engine snapshot`: put a memory file where `serve --mem-url` can restore from it.
//   snapshot upload FILE s3://BUCKET/KEY   the file and KEY.manifest.json (size, chunk size, SHA-256 per chunk)
//   snapshot manifest FILE                 FILE.manifest.json beside it, for a plain HTTP server
import { DEFAULT_CHUNK_SIZE, MANIFEST_SUFFIX } from '../remote/manifest.js';
import { describeLocation } from '../remote/store.js';
import { uploadSnapshot, writeManifest } from '../remote/upload.js';
import { helpText, OptionSpec, parseArgs } from './args.js';
import { formatBytes } from './format.js';
import { locationOf, S3_SPEC } from './remote.js';

const SPEC: OptionSpec = {
  chunkSize: { type: 'size', default: '4M', help: 'bytes per chunk: the unit a restore fetches and verifies' },
  partSize: { type: 'size', default: '64M', help: 'bytes per multipart upload part (upload)' },
  ...S3_SPEC,
  help: { type: 'boolean', default: false, help: 'show this help' },
};

interface SnapshotOptions { chunkSize: number; partSize: number; s3Endpoint?: string; s3Region?: string; help: boolean }

const SUMMARY = 'Puts a memory file where `uffd-engine serve --mem-url` restores from:\n' +
  '  snapshot upload FILE s3://BUCKET/KEY   uploads FILE and KEY.manifest.json (size, chunk size, SHA-256 of each chunk)\n' +
  '  snapshot manifest FILE                 writes FILE.manifest.json beside FILE (serve both from any HTTP server with Range support)';

export async function run(args: string[]): Promise<number> {
  let o: SnapshotOptions & { _: string[] };
  try {
    o = parseArgs<SnapshotOptions & Record<string, unknown>>(args, SPEC);
  } catch (e) {
    console.error(`uffd-engine snapshot: ${(e as Error).message}`);
    return 2;
  }
  if (o.help) {
    console.log(helpText('snapshot upload|manifest', SUMMARY, SPEC));
    return 0;
  }
  const [verb, file, url, ...extra] = o._;
  const fail = (msg: string, code = 2): number => {
    console.error(`uffd-engine snapshot: ${msg}`);
    return code;
  };
  if (extra.length) return fail(`unexpected argument "${extra[0]}"`);
  if (verb === 'manifest') {
    if (!file || url) return fail('usage: uffd-engine snapshot manifest FILE');
    try {
      const m = writeManifest(file, o.chunkSize ?? DEFAULT_CHUNK_SIZE);
      console.log(`${file}${MANIFEST_SUFFIX}: ${formatBytes(m.size)} in ${m.sha256.length} chunks of ${formatBytes(m.chunkSize)}`);
      return 0;
    } catch (e) {
      return fail((e as Error).message, 1);
    }
  }
  if (verb !== 'upload') return fail(`unknown or missing verb "${verb ?? ''}": use upload or manifest (--help)`);
  if (!file || !url) return fail('usage: uffd-engine snapshot upload FILE s3://BUCKET/KEY');
  let loc;
  try {
    loc = locationOf(url, o);
  } catch (e) {
    return fail((e as Error).message);
  }
  if (loc.kind !== 's3') return fail(`upload needs an s3:// URL (got ${url}); for a plain HTTP server, copy the file there and run snapshot manifest FILE`);
  const t0 = performance.now();
  try {
    const r = await uploadSnapshot(file, loc, {
      chunkSize: o.chunkSize, partSize: o.partSize,
      onProgress: process.stderr.isTTY ? (done, total) => process.stderr.write(`\r${formatBytes(done)} / ${formatBytes(total)}`) : undefined,
    });
    if (process.stderr.isTTY) process.stderr.write('\r\x1b[K');
    const sec = (performance.now() - t0) / 1000;
    console.log(`${describeLocation(loc)}: ${formatBytes(r.manifest.size)} in ${r.parts} part(s), ${r.manifest.sha256.length} chunks of ` +
      `${formatBytes(r.manifest.chunkSize)} with their SHA-256 in ${loc.key}${MANIFEST_SUFFIX}; ${sec.toFixed(1)} s`);
    return 0;
  } catch (e) {
    return fail((e as Error).message, 1);
  }
}
