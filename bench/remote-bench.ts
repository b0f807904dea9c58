// Remote restore benchmark: a memory file restored into an anonymous region by the engine
// from object storage on this machine — nginx (plain HTTP Range) and s3rver (S3 API) on
// 127.0.0.1 — against the local-file source (warm page cache), all in the same run, rounds
// interleaved. The guest is one faulting thread that touches a "working set" (extents of
// pages spread over the file, in a fixed order) while the engine populates the rest in the
// background; each remote store runs without and with working-set prefetch (the same
// pages, recorded order). Every byte of the region is compared with the file at the end.
//
// Reported per configuration (median of rounds): open (HEAD + manifest), time to the first
// fault served (from the start of the restore: open + engine start + first touch), time
// until the working set was touched, time until every page was present, GiB/s over that,
// requests and bytes fetched.
//
//   node dist/bench/remote-bench.js [--size 1G] [--remote-chunk 4M] [--in-flight 8] [--rounds 1]
//        [--extents 32] [--extent-pages 64] [--workers 2] [--no-s3] [--no-nginx] [--json]
// Needs nginx (apt-get install nginx) for the nginx rows; s3rver is a dev dependency.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { OptionSpec, parseArgs } from '../src/cli/args.js';
import { Engine } from '../src/engine/index.js';
import { MAP_PRIVATE, PROT_READ } from '../src/kernel/constants.js';
import { close, memcmp, mmap, munmap, openFile } from '../src/kernel/memory.js';
import { O_RDONLY } from '../src/kernel/constants.js';
import { memoryType } from '../src/memory-types/index.js';
import { RemoteMemory } from '../src/remote/remote-memory.js';
import type { StoreLocation } from '../src/remote/store.js';
import { uploadSnapshot, writeManifest } from '../src/remote/upload.js';
import { PageSource, sources } from '../src/sources/index.js';
import { writeSnapshotFile } from '../src/workload/snapshot.js';
import { runTouchers } from '../src/workload/threads.js';
// The servers the tests use (test-only dependencies: s3rver, and nginx from the system).
import { nginxMissing, startNginx, startS3 } from './remote-servers.js';

const SPEC: OptionSpec = {
  size: { type: 'size', default: '1G', help: 'memory file and guest region' },
  remoteChunk: { type: 'size', default: '4M', help: 'bytes per ranged GET / cache chunk' },
  inFlight: { type: 'number', default: 8, help: 'requests in flight at most' },
  rounds: { type: 'number', default: 1, help: 'runs of each configuration (median reported)' },
  extents: { type: 'number', default: 32, help: 'working-set extents' },
  extentPages: { type: 'number', default: 64, help: '4 KiB pages per working-set extent' },
  workers: { type: 'number', default: 2, help: 'engine workers' },
  s3: { type: 'boolean', default: true, help: 'run the s3rver rows (--no-s3: skip)' },
  nginx: { type: 'boolean', default: true, help: 'run the nginx rows (--no-nginx: skip)' },
  json: { type: 'boolean', default: false, help: 'print the results as JSON' },
};

interface Opts {
  size: number; remoteChunk: number; inFlight: number; rounds: number; extents: number; extentPages: number; workers: number;
  s3: boolean; nginx: boolean; json: boolean;
}

export interface RemoteRun {
  config: string;
  openMs: number;
  firstFaultMs: number;
  workingSetMs: number;
  populatedMs: number;
  gibPerSec: number;
  requests: number;
  bytesFetched: number;
  mismatchedPages: number;
}

/** A working set: extents of consecutive pages at spread, deterministic places, in a shuffled order. */
export function benchWorkingSet(pages: number, extents: number, extentPages: number): number[] {
  let x = 12345;
  const rand = (): number => { x = (x * 1103515245 + 12345) & 0x7fffffff; return x; };
  const out: number[] = [];
  const used = new Set<number>();
  for (let e = 0; e < extents; e++) {
    let start = rand() % Math.max(1, pages - extentPages);
    start -= start % extentPages;
    if (used.has(start)) continue;
    used.add(start);
    for (let p = 0; p < extentPages && start + p < pages; p++) out.push(start + p);
  }
  return out;
}

async function runOne(config: string, o: Opts, fileMap: number, ws: number[], open: () => Promise<{ source: PageSource; remote?: RemoteMemory }>): Promise<RemoteRun> {
  const t0 = performance.now();
  const { source, remote } = await open();
  const openMs = performance.now() - t0;
  const region = memoryType('anon').create({ size: o.size });
  try {
    const engine = await Engine.start({ regions: [{ region, source }], workers: o.workers, prefetch: { readAhead: 1 << 20, background: true, chunk: 1 << 20 } });
    try {
      const upMs = performance.now() - t0;
      const [touch] = await runTouchers([{ addr: region.addr, pageSize: 4096, pages: Float64Array.from(ws), expectAddr: fileMap, write: false }], 600_000);
      const workingSetMs = performance.now() - t0;
      if (!touch) throw new Error(`${config}: the toucher returned no result`);
      if (touch.mismatches) throw new Error(`${config}: ${touch.mismatches} working-set pages differ from the file (first ${touch.firstMismatch})`);
      while (!engine.populated) await new Promise((r) => setTimeout(r, 2));
      const populatedMs = performance.now() - t0;
      let mismatchedPages = 0;
      for (let off = 0; off < o.size; off += 4096) if (memcmp(region.addr + off, fileMap + off, 4096) !== 0) mismatchedPages++;
      const rs = remote?.remoteStats();
      return {
        config, openMs, firstFaultMs: upMs + (touch.latencies[0] ?? NaN) / 1000, workingSetMs, populatedMs,
        gibPerSec: o.size / 2 ** 30 / (populatedMs / 1000), requests: rs?.requests ?? 0, bytesFetched: rs?.bytesFetched ?? 0, mismatchedPages,
      };
    } finally {
      await engine.stop({ mode: 'abandon' });
    }
  } finally {
    region.close();
    await remote?.close();
  }
}

async function main(): Promise<void> {
  const o = parseArgs<Opts & Record<string, unknown>>(process.argv.slice(2), SPEC);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-remote-bench-'));
  fs.chmodSync(dir, 0o755); // nginx's workers run unprivileged
  const file = path.join(dir, 'vm.mem');
  const log = (s: string): void => { if (!o.json) process.stderr.write(`${s}\n`); };
  log(`writing a ${o.size / 2 ** 20} MiB memory file and its manifest (${o.remoteChunk / 2 ** 20} MiB chunks)...`);
  writeSnapshotFile(file, o.size, 11);
  writeManifest(file, o.remoteChunk);
  const ws = benchWorkingSet(o.size / 4096, o.extents, o.extentPages);
  const fd = openFile(file, O_RDONLY);
  const fileMap = mmap(o.size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  const cleanups: (() => Promise<void>)[] = [];
  const configs: [string, () => Promise<{ source: PageSource; remote?: RemoteMemory }>][] = [
    ['local file (page cache)', async () => ({ source: sources.file(file) })],
  ];
  const remoteConfig = (name: string, loc: StoreLocation): void => {
    for (const withWs of [false, true]) {
      configs.push([`${name}${withWs ? ' + working-set prefetch' : ''}`, async () => {
        const remote = await RemoteMemory.open(loc, { maxInFlight: o.inFlight, prefetch: { workingSet: withWs ? ws : undefined, background: true } });
        return { source: remote.source(0), remote };
      }]);
    }
  };
  try {
    if (o.nginx) {
      const missing = nginxMissing();
      if (missing) log(`nginx rows skipped: ${missing}`);
      else {
        const nginx = await startNginx(dir);
        cleanups.push(() => nginx.close());
        remoteConfig('nginx (HTTP Range)', { kind: 'http', url: nginx.url('vm.mem') });
      }
    }
    if (o.s3) {
      const store = await startS3();
      cleanups.push(() => store.close());
      const loc = { kind: 's3' as const, bucket: store.bucket, key: 'vm.mem', endpoint: store.endpoint, credentials: store.credentials };
      log('uploading to s3rver...');
      await uploadSnapshot(file, loc, { chunkSize: o.remoteChunk });
      remoteConfig('s3rver (S3 API)', loc);
    }
    const runs = new Map<string, RemoteRun[]>();
    for (let round = 0; round < o.rounds; round++) {
      for (const [name, open] of configs) {
        const r = await runOne(name, o, fileMap, ws, open);
        log(`round ${round + 1}: ${name}: first fault ${r.firstFaultMs.toFixed(1)} ms, working set ${r.workingSetMs.toFixed(0)} ms, ` +
          `populated ${r.populatedMs.toFixed(0)} ms (${r.gibPerSec.toFixed(2)} GiB/s), ${r.requests} requests, ${r.mismatchedPages} wrong pages`);
        runs.set(name, [...(runs.get(name) ?? []), r]);
      }
    }
    const med = (xs: number[]): number => {
      const v = [...xs].sort((a, b) => a - b);
      const m = v.length >> 1;
      return v.length % 2 ? v[m] ?? NaN : ((v[m - 1] ?? NaN) + (v[m] ?? NaN)) / 2;
    };
    const rows = [...runs.entries()].map(([config, rs]) => ({
      config, openMs: med(rs.map((r) => r.openMs)), firstFaultMs: med(rs.map((r) => r.firstFaultMs)), workingSetMs: med(rs.map((r) => r.workingSetMs)),
      populatedMs: med(rs.map((r) => r.populatedMs)), gibPerSec: o.size / 2 ** 30 / (med(rs.map((r) => r.populatedMs)) / 1000), requests: med(rs.map((r) => r.requests)),
      bytesFetched: med(rs.map((r) => r.bytesFetched)), mismatchedPages: Math.max(...rs.map((r) => r.mismatchedPages)),
    }));
    if (o.json) {
      console.log(JSON.stringify({ size: o.size, chunkSize: o.remoteChunk, inFlight: o.inFlight, workingSetPages: ws.length, rounds: o.rounds, rows }));
      return;
    }
    const base = rows[0];
    console.log(`\n${o.size / 2 ** 30} GiB restore, ${o.remoteChunk / 2 ** 20} MiB chunks, ${o.inFlight} requests in flight, working set ${ws.length} pages ` +
      `in ${o.extents} extents, ${o.workers} engine workers, median of ${o.rounds} round(s)\n`);
    console.log('| source | open | first fault served | working set touched | all present | GiB/s | vs local file | requests | fetched | wrong pages |');
    console.log('|---|---|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      console.log(`| ${r.config} | ${r.openMs.toFixed(1)} ms | ${r.firstFaultMs.toFixed(1)} ms | ${r.workingSetMs.toFixed(0)} ms | ${r.populatedMs.toFixed(0)} ms | ` +
        `${r.gibPerSec.toFixed(2)} | ${base ? (r.gibPerSec / base.gibPerSec).toFixed(2) : "?"}x | ${r.requests} | ${(r.bytesFetched / 2 ** 20).toFixed(0)} MiB | ${r.mismatchedPages} |`);
    }
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    munmap(fileMap, o.size);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e: unknown) => {
  console.error(`remote-bench: ${(e as Error).stack ?? String(e)}`);
  process.exit(1);
});
