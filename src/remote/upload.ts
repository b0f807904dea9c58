// Puts a memory file into an S3-compatible store with its manifest (size, chunk size,
// SHA-256 per chunk; manifest.ts) beside it, so restores verify every chunk on arrival.
// Large files go up in parts (multipart upload); the manifest is written last, so a
// reader that finds it finds a complete object.
import * as fs from 'node:fs';
import { computeManifest, DEFAULT_CHUNK_SIZE, Manifest, MANIFEST_SUFFIX } from './manifest.js';
import { describeLocation, makeS3Client, StoreLocation } from './store.js';

export interface UploadOptions {
  chunkSize?: number;
  /** Bytes per multipart part (default 64 MiB; files up to one part go in one PUT). */
  partSize?: number;
  onProgress?: (bytes: number, total: number) => void;
}

export interface UploadResult { manifest: Manifest; etag?: string; parts: number }

export async function uploadSnapshot(file: string, loc: Extract<StoreLocation, { kind: 's3' }>, opts: UploadOptions = {}): Promise<UploadResult> {
  const s3 = require('@aws-sdk/client-s3') as typeof import('@aws-sdk/client-s3');
  const manifest = computeManifest(file, opts.chunkSize ?? DEFAULT_CHUNK_SIZE);
  const partSize = opts.partSize ?? 64 * 1024 * 1024;
  if (partSize < 5 * 1024 * 1024) throw new Error(`part size ${partSize} is below S3's 5 MiB minimum`);
  const client = makeS3Client(loc);
  const size = manifest.size;
  const target = { Bucket: loc.bucket, Key: loc.key };
  let etag: string | undefined;
  let parts = 1;
  const fd = fs.openSync(file, 'r');
  try {
    const readPart = (off: number, len: number): Buffer => {
      const buf = Buffer.allocUnsafe(len);
      for (let done = 0; done < len;) {
        const n = fs.readSync(fd, buf, done, len - done, off + done);
        if (n <= 0) throw new Error(`${file} ended at byte ${off + done} during the upload (it changed?)`);
        done += n;
      }
      return buf;
    };
    if (size <= partSize) {
      etag = (await client.send(new s3.PutObjectCommand({ ...target, Body: readPart(0, size), ContentLength: size }))).ETag;
      opts.onProgress?.(size, size);
    } else {
      const { UploadId } = await client.send(new s3.CreateMultipartUploadCommand(target));
      try {
        const done: { ETag?: string; PartNumber: number }[] = [];
        for (let off = 0, n = 1; off < size; off += partSize, n++) {
          const len = Math.min(partSize, size - off);
          const r = await client.send(new s3.UploadPartCommand({ ...target, UploadId, PartNumber: n, Body: readPart(off, len), ContentLength: len }));
          done.push({ ETag: r.ETag, PartNumber: n });
          opts.onProgress?.(off + len, size);
        }
        parts = done.length;
        etag = (await client.send(new s3.CompleteMultipartUploadCommand({ ...target, UploadId, MultipartUpload: { Parts: done } }))).ETag;
      } catch (e) {
        await client.send(new s3.AbortMultipartUploadCommand({ ...target, UploadId })).catch(() => undefined);
        throw e;
      }
    }
    const after = fs.fstatSync(fd).size;
    if (after !== size) throw new Error(`${file} changed size during the upload (${size} → ${after}); upload it again once it is final`);
    await client.send(new s3.PutObjectCommand({
      Bucket: loc.bucket, Key: loc.key + MANIFEST_SUFFIX, Body: JSON.stringify(manifest), ContentType: 'application/json',
    }));
  } catch (e) {
    throw new Error(`upload of ${file} to ${describeLocation(loc)} failed: ${(e as Error).message}`);
  } finally {
    fs.closeSync(fd);
    client.destroy();
  }
  return { manifest, etag, parts };
}

/** Writes FILE.manifest.json beside a memory file (for serving it from a plain HTTP server). */
export function writeManifest(file: string, chunkSize = DEFAULT_CHUNK_SIZE): Manifest {
  const m = computeManifest(file, chunkSize);
  fs.writeFileSync(file + MANIFEST_SUFFIX, JSON.stringify(m) + '\n');
  return m;
}
