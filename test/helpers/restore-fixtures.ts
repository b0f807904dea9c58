// Fixtures for the restore tests: snapshot files with random content, 2 MiB hugetlb
// page reservations that are given back, and a ServeConnection built on the simple
// single-threaded handler.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as C from '../../src/kernel/constants.js';
import { mmap, munmap } from '../../src/kernel/memory.js';
import type { ServeConnection } from '../../src/restore/server.js';
import { HandlerStats, startHandler, HandlerSpec } from './simple-handler.js';

/** Writes `size` random bytes to path (in 1 MiB chunks); returns the content. */
export function writeSnapshot(path: string, size: number): Buffer {
  const data = crypto.randomBytes(size);
  fs.writeFileSync(path, data);
  return data;
}

export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

const HP_DIR = '/sys/kernel/mm/hugepages/hugepages-2048kB';

/**
 * Makes sure `pages` free 2 MiB hugetlb pages exist for fn, reserving extra ones
 * (root) and giving back exactly what was added afterwards. Returns undefined (and does
 * not run fn) with a reason when they cannot be had.
 */
export async function withHugePages<T>(pages: number, fn: () => Promise<T>): Promise<{ value?: T; skipped?: string }> {
  let added = 0;
  try {
    const free = Number(fs.readFileSync(`${HP_DIR}/free_hugepages`, 'utf8'));
    if (free < pages) {
      const total = Number(fs.readFileSync(`${HP_DIR}/nr_hugepages`, 'utf8'));
      added = pages - free;
      fs.writeFileSync(`${HP_DIR}/nr_hugepages`, String(total + added));
      const nowFree = Number(fs.readFileSync(`${HP_DIR}/free_hugepages`, 'utf8'));
      if (nowFree < pages) return { skipped: `only ${nowFree} free 2 MiB hugetlb pages after reserving (need ${pages})` };
    }
  } catch (e) {
    return { skipped: `cannot reserve 2 MiB hugetlb pages: ${(e as Error).message}` };
  }
  try {
    return { value: await fn() };
  } finally {
    if (added > 0) {
      const total = Number(fs.readFileSync(`${HP_DIR}/nr_hugepages`, 'utf8'));
      fs.writeFileSync(`${HP_DIR}/nr_hugepages`, String(Math.max(0, total - added)));
    }
  }
}

export interface SimpleServe {
  serve: ServeConnection;
  /** Statistics of each finished session, in order. */
  sessions: HandlerStats[];
}

/** A ServeConnection that serves a session with the simple handler until the peer hangs up. */
export function simpleServe(opts: Pick<HandlerSpec, 'onRemove' | 'corruptAt'> = {}): SimpleServe {
  const sessions: HandlerStats[] = [];
  const serve: ServeConnection = async (handshake, uffdFd, memFile, ctx) => {
    // MAP_POPULATE, as Firecracker's example handler: UFFDIO_COPY reads the source with page
    // faults disabled, and for hugetlb a source page that is not yet mapped makes the kernel
    // take a temporary huge page (ENOMEM when none is free) to retry the copy.
    const map = mmap(memFile.size, C.PROT_READ, C.MAP_PRIVATE | C.MAP_POPULATE, memFile.fd, 0);
    try {
      const h = startHandler({
        uffdFd,
        regions: handshake.regions.map((r) => ({ base: r.baseHostVirtAddr, size: r.size, offset: r.offset, pageSize: r.pageSize })),
        sourceAddr: map,
        ...opts,
      });
      await ctx.hangup;
      sessions.push(await h.stop());
    } finally {
      munmap(map, memFile.size);
    }
  };
  return { serve, sessions };
}
