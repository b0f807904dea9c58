// Remote sources given straight to Engine.start (sources.s3 / sources.http): opened before
// the engine is built (their size and manifest come over the network), replaced by their
// chunk caches, and closed after the engine stops. Regions naming the same spec object
// share one cache.
import type { PageSource } from '../sources/index.js';
import { openRemoteSource, RemoteMemory, RemoteSource } from './remote-memory.js';

export interface OpenedRemotes {
  regions: { source: PageSource }[];
  close(): Promise<void>;
}

export async function openRemoteRegions<R extends { source: PageSource }>(regions: R[]): Promise<OpenedRemotes & { regions: R[] }> {
  const opened = new Map<RemoteSource, RemoteMemory>();
  const close = async (): Promise<void> => {
    await Promise.all([...opened.values()].map((m) => m.close()));
  };
  const resolve = async (src: PageSource): Promise<PageSource> => {
    if (src.kind === 'pageCache' && src.missing) return { ...src, missing: await resolve(src.missing) };
    if (src.kind !== 'remote') return src;
    let mem = opened.get(src);
    if (!mem) {
      mem = await openRemoteSource(src);
      opened.set(src, mem);
    }
    return mem.source(0);
  };
  if (!Array.isArray(regions) || !regions.some((r) => r?.source?.kind === 'remote' || r?.source?.kind === 'pageCache')) {
    return { regions, close };
  }
  try {
    const out: R[] = [];
    for (const r of regions) out.push({ ...r, source: await resolve(r.source) });
    return { regions: out, close };
  } catch (e) {
    await close();
    throw e;
  }
}
