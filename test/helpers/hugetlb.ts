// Reserves 2 MiB hugetlb pages for a test suite (as root) and gives them back afterwards.
// Other suites may reserve at the same time, so it adds its pages to whatever is reserved
// and, on release, takes exactly as many away again.
import * as fs from 'node:fs';

export interface HugePages {
  /** Pages are reserved and free for this suite. */
  ok: boolean;
  /** Why not, when not. */
  reason?: string;
  pageSize: number;
}

function poolFile(sizeKiB: number): string {
  return `/sys/kernel/mm/hugepages/hugepages-${sizeKiB}kB/nr_hugepages`;
}
function read(sizeKiB: number, what: 'nr_hugepages' | 'free_hugepages'): number {
  return Number(fs.readFileSync(`/sys/kernel/mm/hugepages/hugepages-${sizeKiB}kB/${what}`, 'utf8'));
}

/** Adds n pages to the pool now; returns a release function, or why it could not. */
export function reserveHugePages(n: number, sizeKiB = 2048): { ok: true; release: () => void } | { ok: false; reason: string } {
  const file = poolFile(sizeKiB);
  if (!fs.existsSync(file)) return { ok: false, reason: `this machine has no ${sizeKiB} KiB hugetlb pool` };
  let before: number;
  try {
    before = read(sizeKiB, 'nr_hugepages');
    fs.writeFileSync(file, String(before + n));
  } catch (e) {
    return { ok: false, reason: `cannot reserve hugetlb pages (${(e as Error).message}); the test needs root` };
  }
  let added = read(sizeKiB, 'nr_hugepages') - before;
  const release = () => {
    if (added <= 0) return;
    const now = read(sizeKiB, 'nr_hugepages');
    fs.writeFileSync(file, String(Math.max(now - added, 0)));
    added = 0;
  };
  if (added < n) {
    release();
    return { ok: false, reason: `the kernel could reserve only ${Math.max(added, 0)} of ${n} ${sizeKiB} KiB pages (memory too fragmented?)` };
  }
  return { ok: true, release };
}

/**
 * Mocha hooks for a describe block: reserves n 2 MiB pages in before() and restores the pool
 * in after(). Tests check .ok and skip (printing .reason) when the reservation failed.
 */
export function useHugePages(n: number): HugePages {
  const state: HugePages = { ok: false, reason: 'not reserved yet', pageSize: 2 * 1024 * 1024 };
  let release: (() => void) | undefined;
  before(() => {
    const r = reserveHugePages(n);
    if (r.ok) {
      release = r.release;
      state.ok = true;
      state.reason = undefined;
    } else {
      state.reason = r.reason;
      console.log(`      (hugetlb tests will be skipped: ${r.reason})`);
    }
  });
  after(() => {
    release?.();
    release = undefined;
  });
  return state;
}
