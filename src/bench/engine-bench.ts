// The load benchmark: one faulting workload, served by the engine and by the native C
// reference, side by side in the same run.
//
// The faulting threads are always the C program's (src/bench/native/uffd-bench.c): it maps the
// region, faults it with N threads in the chosen pattern, times every first touch on the
// faulting side and afterwards checks every byte. What differs is who serves the faults:
//
//   engine side  the C program runs with --handler external --wait-ack: it registers the
//                region, connects to our Unix socket and sends its userfaultfd with the
//                Firecracker handshake. We accept, validate the handshake, start an Engine
//                over the received uffd (regions from the handshake, the source file the C
//                program verifies against mapped with sources.file), acknowledge, and serve
//                until the program exits; then stop the engine and read its statistics.
//   native side  the same program with --handler native (N handler threads) or fc
//                (Firecracker's page-at-a-time example handler).
//
// Both sides are sampled every 25 ms from /proc/PID/status of the faulting process
// (RssAnon + RssShmem): the same instrument gives the throughput-over-time plot for both.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Engine, EngineStats } from '../engine/engine.js';
import type { EngineThreads } from '../engine/threads.js';
import type { FeatureName } from '../kernel/constants.js';
import { acceptAsync, closeFds, closeSocket, listenUnix, sendWithFds } from '../kernel/socket.js';
import { featureMask, Userfaultfd } from '../kernel/userfaultfd.js';
import { validateHandshake } from '../restore/handshake.js';
import { receiveHandshake } from '../restore/server.js';
import { PageSource, sources } from '../sources/index.js';
import {
  AccessPattern, buildNative, FaultKind, HistogramBucket, MemType, NativeOptions, NativeProcess, NativeResult, PhaseResult,
  runMemcpy, runPlainFaults, startExternal, startNative, writeSource,
} from './native.js';

export type BenchType = 'anon' | 'memfd' | 'hugetlbfs';
export type BenchPattern = 'sequential' | 'random' | 'strided' | 'hot-set';
export type ReferenceHandler = 'native' | 'fc';

export interface BenchConfig {
  /** A label for tables and reports. */
  name: string;
  type: BenchType;
  kind: FaultKind;
  /** Region bytes (a multiple of pageSize). */
  size: number;
  pageSize: number;
  /** Faulting threads (the C program's). */
  threads: number;
  /** Engine workers; also the native handler threads (--handler native). */
  workers: number;
  /** Engine stripe in bytes (default: the engine's). */
  stripe?: number;
  pattern: BenchPattern;
  stride?: number;
  hot?: number;
  source: 'file' | 'zero';
  /** Engine prefetch: read-ahead up to 1 MiB around sequential faults plus background population. */
  prefetch: boolean;
  /** Engine: who reads the uffd (default: the engine's, 'all'). */
  readers?: 'all' | 'dispatcher';
  /**
   * Engine: compile the fault path on a scratch region before serving (outside the measured
   * phase), as `serve`'s warm threads have; the bench's default is on (runCase), off measures
   * a cold engine, whose JIT compiles in the phase.
   */
  warmUp?: boolean;
  /** Engine: the dispatcher's nice value (default: the engine's, -10; null: leave it). */
  dispatcherNice?: number | null;
  inline?: 'auto' | 'never' | 'always';
  /** With inline auto: the largest batch the dispatcher still resolves itself while workers sleep. */
  inlineBatch?: number;
  /** The largest batch whose threads the dispatcher wakes with one UFFDIO_WAKE (EngineOptions.wakeBatch). */
  wakeBatch?: number;
  spinMicros?: number;
  /** How long the engine's dispatcher keeps reading an empty uffd before sleeping in poll. */
  dispatcherSpinMicros?: number;
  /** Rounds of zap + re-fault after the initial population (steady state). */
  bounce: number;
  repeat: number;
  /** The reference: native (workers handler threads) or fc (one thread, page at a time). Null: engine only. */
  reference: ReferenceHandler | null;
  /** Measure memcpy bandwidth on this many bytes (0: no). */
  memcpy: number;
  /** Also run the same region with plain kernel write faults (no userfaultfd): the kernel's own fill rate. */
  plainFaults?: boolean;
  seed: number;
  /** Per-run limit (default from the size). */
  timeoutMs?: number;
  /**
   * CPU pinning. same: faulting threads and every handler thread on CPU 0; split: faulting
   * threads on CPUs 0..n-2, handler threads on CPU n-1 (for the engine: all its threads).
   * Default none: the scheduler decides, which on 2 vCPUs makes a serial round trip
   * bimodal (about 9 µs on one CPU, 60+ µs across CPUs).
   */
  pin?: 'none' | 'same' | 'split';
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export const DEFAULT_CONFIG: BenchConfig = {
  name: 'bench', type: 'anon', kind: 'missing', size: 256 * MiB, pageSize: 4096, threads: 8, workers: 2,
  pattern: 'random', source: 'file', prefetch: false, bounce: 0, repeat: 3, reference: 'native', memcpy: 0, seed: 1,
};

export interface LatencyFigures { p50: number; p90: number; p99: number; max: number; mean: number; min: number }

/** The figures of one phase (initial population, or the bounce rounds) of one run. */
export interface PhaseFigures {
  elapsedSec: number;
  /** The C program's own elapsed time, when elapsedSec was charged with the engine's head start. */
  rawElapsedSec?: number;
  /** Pages first-touched by the faulting threads. */
  pages: number;
  /** First touches served per second (each is a fault unless prefetch got there first). */
  faultsPerSec: number;
  pagesPerSec: number;
  /** MiB/s of page contents made present. */
  mbPerSec: number;
  latencyUs: LatencyFigures;
  histogram: HistogramBucket[];
  /** CPU of whoever served the faults: native handler threads, or the engine process (measured by the C side). */
  handlerCpuSec: number | null;
  /** handlerCpuSec per page touched, µs. */
  cpuPerFaultUs: number | null;
  faultingCpuSec: number;
  /** Userfaults the handler saw in this phase (native only: the engine counts per run, see EngineInfo). */
  handlerFaults: number | null;
}

export interface EngineInfo {
  /** Engine.start() (threads up, source mapped) in seconds; not part of the measured phase. */
  startSec: number;
  /** From engine ready to the acknowledgement sent (the head start background prefetch had), ms. */
  ackDelayMs: number;
  /** Pages the engine had filled before the workload was told to start (background prefetch). */
  headStartPages: number;
  /** Seconds from the engine's first fill to the workload's go-ahead, added to its initial phase. */
  headStartSec: number;
  faults: EngineStats['faults'];
  pages: EngineStats['pages'];
  inline: number;
  handoffs: number;
  /** Faults workers read from the uffd themselves (readers 'all'). */
  direct: number;
  reads: number;
  ioctls: number;
  eexist: number;
  spurious: number;
  retries: number;
  wakes: number;
  events: number;
  errors: number;
  incidents: string[];
  /** Thread CPU from engine ready to stop (the engine's own clocks). */
  dispatcherCpuSec: number;
  workersCpuSec: number[];
  /** The dispatcher's nice value while it served, and why the one asked for was refused (if it was). */
  dispatcherNice: number;
  dispatcherNiceRefused?: string;
  /** Faults per read(2) of the dispatcher. */
  faultsPerRead: number;
  /** Share of faults the dispatcher resolved itself. */
  inlineShare: number;
  /** Engine-side latency (dispatcher read to resolving ioctl), µs, log2 bucket upper edges. */
  latencyUs: { p50: number; p90: number; p99: number; max: number };
  /** Features the received uffd was wrapped with (what the C program negotiated for this type and kind). */
  features: string;
}

export interface Sample { t: number; bytes: number }

export interface SideRun {
  side: 'engine' | 'native';
  handler: string;
  rep: number;
  initial: PhaseFigures;
  steady: PhaseFigures | null;
  mismatches: number;
  mismatchBytes: number;
  verifiedBytes: number;
  setupSec: number;
  verifySec: number;
  wallSec: number;
  /** Resident anon+shmem bytes of the faulting process over time (t: s since spawn). */
  samples: Sample[];
  /** Estimated window of the measured phases on the samples' clock. */
  phaseWindow: { start: number; end: number };
  engine?: EngineInfo;
  /** The C program's features (hex) and pid. */
  features: string;
  pid: number | null;
}

export interface Spread { median: number; min: number; max: number }

export interface SideSummary {
  runs: number;
  faultsPerSec: Spread;
  pagesPerSec: Spread;
  mbPerSec: Spread;
  p50: Spread;
  p90: Spread;
  p99: Spread;
  max: Spread;
  cpuPerFaultUs: Spread | null;
  mismatches: number;
}

export interface CaseResult {
  config: BenchConfig;
  /** Why the native side did not run, when it did not. */
  nativeSkipped: string | null;
  runs: SideRun[];
  engine: { initial: SideSummary; steady: SideSummary | null } | null;
  native: { initial: SideSummary; steady: SideSummary | null } | null;
  /** median engine / median native, for the phase the case is about (steady with bounce). */
  ratios: {
    phase: 'initial' | 'steady';
    faultsPerSec: number | null;
    pagesPerSec: number | null;
    p50: number | null;
    p99: number | null;
    cpuPerFaultUs: number | null;
    /** Engine MiB/s over memcpy MiB/s (with memcpy). */
    memcpy: number | null;
  };
  memcpy: { size: number; gibPerSec: number; mbPerSec: number } | null;
  /** Plain kernel write faults on the same region and threads (no userfaultfd): pages the kernel allocates itself. */
  plainFaults: { pagesPerSec: number; mbPerSec: number; p50: number } | null;
  notes: string[];
}

export interface Hooks {
  /** A run starts (label like "engine 2/3"). */
  onRunStart?(label: string, index: number, total: number): void;
  /** Progress within the current run, 0..1 (approximate). */
  onRunProgress?(fraction: number): void;
  onRunEnd?(run: SideRun): void;
  onNote?(note: string): void;
  /** The engine of an engine-side run is serving (the soak kills its workers). */
  onEngine?(engine: Engine): void;
  /** Engine threads to serve on (a reusable set kept across runs, as the soak does) instead of fresh ones. */
  threads?: EngineThreads;
}

// ---- workload mapping ----------------------------------------------------------------

const cType = (t: BenchType): MemType => (t === 'hugetlbfs' ? 'hugetlb' : t);
const engineType = (t: BenchType) => (t === 'memfd' ? 'shmem' : t);
const cAccess = (p: BenchPattern): AccessPattern => (p === 'hot-set' ? 'hotset' : p);

/** Sets of pages a bounce round re-faults. */
function bouncePages(cfg: BenchConfig): number {
  const pages = cfg.size / cfg.pageSize;
  if (cfg.pattern !== 'hot-set') return pages;
  return Math.min(pages, Math.max(1, Math.round((cfg.hot ?? 0.1) * pages)));
}

/** Why this configuration cannot run, or null. */
export function checkConfig(cfg: BenchConfig): string | null {
  if (!['anon', 'memfd', 'hugetlbfs'].includes(cfg.type)) return `--type must be anon, memfd or hugetlbfs (got ${cfg.type})`;
  if (!['missing', 'minor', 'wp'].includes(cfg.kind)) return `--kind must be missing, minor or wp (got ${cfg.kind})`;
  if (!['sequential', 'random', 'strided', 'hot-set'].includes(cfg.pattern)) {
    return `--pattern must be sequential, random, strided or hot-set (got ${cfg.pattern})`;
  }
  if (cfg.kind === 'minor' && cfg.type === 'anon') return '--kind minor needs --type memfd or hugetlbfs (anonymous memory has no page cache)';
  if (cfg.type === 'hugetlbfs' ? ![2 * MiB, GiB].includes(cfg.pageSize) : cfg.pageSize !== 4096) {
    return `page size ${cfg.pageSize} does not fit --type ${cfg.type}`;
  }
  if (!Number.isSafeInteger(cfg.size) || cfg.size <= 0 || cfg.size % cfg.pageSize) {
    return `--size must be a positive multiple of the page size ${cfg.pageSize} (got ${cfg.size})`;
  }
  if (!Number.isInteger(cfg.threads) || cfg.threads < 1 || cfg.threads > 4096) return '--threads must be 1..4096';
  if (!Number.isInteger(cfg.workers) || cfg.workers < 1 || cfg.workers > 64) return '--workers must be 1..64';
  if (!Number.isInteger(cfg.repeat) || cfg.repeat < 1) return '--repeat must be at least 1';
  if (!Number.isInteger(cfg.bounce) || cfg.bounce < 0) return '--bounce must be 0 or more';
  if (cfg.bounce > 0 && cfg.kind === 'missing' && cfg.type !== 'anon') {
    // The C program re-faults memfd/hugetlb pages with fallocate(PUNCH_HOLE), which sends no
    // REMOVE event: the engine would still believe those pages present.
    return '--bounce with --kind missing needs --type anon: memfd/hugetlbfs pages are re-faulted with fallocate(PUNCH_HOLE), ' +
      'which sends the handler no REMOVE event (use --kind minor or wp for bounce on memfd/hugetlbfs)';
  }
  if (cfg.kind === 'wp' && cfg.reference === 'fc') return 'the fc reference handler serves missing and minor faults only (use --native-handler native for --kind wp)';
  if (cfg.stripe !== undefined && (cfg.stripe <= 0 || cfg.stripe % cfg.pageSize)) return `--stripe must be a positive multiple of the page size ${cfg.pageSize}`;
  if (cfg.pin !== undefined && !['none', 'same', 'split'].includes(cfg.pin)) return `--pin must be none, same or split (got ${cfg.pin})`;
  return null;
}

/** The features the C program negotiates for its uffd (see uffd-bench.c, run_workload). */
export function externalFeatures(cfg: BenchConfig, eventRemove: boolean): FeatureName[] {
  const f: FeatureName[] = [];
  if (cfg.kind === 'missing') {
    if (cfg.type === 'memfd') f.push('MISSING_SHMEM');
    if (cfg.type === 'hugetlbfs') f.push('MISSING_HUGETLBFS');
  } else if (cfg.kind === 'minor') {
    f.push(cfg.type === 'hugetlbfs' ? 'MINOR_HUGETLBFS' : 'MINOR_SHMEM');
  } else {
    f.push('PAGEFAULT_FLAG_WP');
    if (cfg.type !== 'anon') f.push('WP_HUGETLBFS_SHMEM');
  }
  if (eventRemove) f.push('EVENT_REMOVE');
  return f;
}

/** The engine learns of MADV_DONTNEED (anon bounce) only through REMOVE events. */
function needsEventRemove(cfg: BenchConfig): boolean {
  return cfg.bounce > 0 && cfg.kind === 'missing';
}

function workload(cfg: BenchConfig, sourceFile: string | null): NativeOptions {
  const o: NativeOptions = {
    type: cType(cfg.type), kind: cfg.kind, size: cfg.size, threads: cfg.threads, access: cAccess(cfg.pattern),
    seed: cfg.seed, bounce: cfg.bounce || undefined, eventRemove: needsEventRemove(cfg) || undefined,
    pin: cfg.pin && cfg.pin !== 'none' ? cfg.pin : undefined,
  };
  if (cfg.type === 'hugetlbfs') o.pageSize = cfg.pageSize;
  if (cfg.pattern === 'strided') o.stride = cfg.stride ?? 16;
  if (cfg.pattern === 'hot-set') o.hot = cfg.hot ?? 0.1;
  if (cfg.source === 'zero') o.source = 'zero';
  else if (sourceFile) o.sourceFile = sourceFile;
  return o;
}

function runTimeoutMs(cfg: BenchConfig): number {
  if (cfg.timeoutMs) return cfg.timeoutMs;
  const pages = cfg.size / cfg.pageSize + cfg.bounce * bouncePages(cfg);
  // Assume at least 4k pages/s (a slow, shared machine), plus setup and verification.
  return Math.round(60_000 + pages / 4 + (cfg.size / GiB) * 10_000);
}

// ---- sampling /proc/PID/status -------------------------------------------------------

/** Resident anon + shmem bytes of a process (what faults make present), or -1. */
export function residentBytes(pid: number): number {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return -1;
  }
  let kb = 0;
  const a = /^RssAnon:\s+(\d+) kB/m.exec(text);
  const s = /^RssShmem:\s+(\d+) kB/m.exec(text);
  if (a) kb += Number(a[1]);
  if (s) kb += Number(s[1]);
  return a || s ? kb * 1024 : -1;
}

/** CLOCK_MONOTONIC in ns (as a number): the clock the C program stamps its phases with. */
export function monoNs(): number {
  return Number(process.hrtime.bigint());
}

class Sampler {
  readonly samples: Sample[] = [];
  private timer: NodeJS.Timeout | null = null;
  private readonly t0: number;
  private last = -1;
  private grown = 0;
  constructor(private readonly pid: number, t0: number, private readonly expectBytes: number,
    private readonly onProgress?: (f: number) => void) {
    this.t0 = t0;
  }
  start(intervalMs = 25): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
  }
  sample(): void {
    const b = residentBytes(this.pid);
    if (b < 0) return;
    this.samples.push({ t: (monoNs() - this.t0) / 1e9, bytes: b });
    if (this.last >= 0 && b > this.last) this.grown += b - this.last;
    this.last = b;
    if (this.onProgress && this.expectBytes > 0) this.onProgress(Math.min(1, this.grown / this.expectBytes));
  }
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

// ---- figures -------------------------------------------------------------------------

function phaseFigures(p: PhaseResult, handlerCpuSec: number | null, handlerFaults: number | null): PhaseFigures {
  const l = p.latencyUs;
  return {
    elapsedSec: p.elapsedSec,
    pages: p.pagesTouched,
    faultsPerSec: p.elapsedSec > 0 ? p.pagesTouched / p.elapsedSec : 0,
    pagesPerSec: p.pagesPerSec,
    mbPerSec: p.mbPerSec,
    latencyUs: { p50: l.p50, p90: l.p90, p99: l.p99, max: l.max, mean: l.mean, min: l.min },
    histogram: p.histogram,
    handlerCpuSec,
    cpuPerFaultUs: handlerCpuSec !== null && p.pagesTouched > 0 ? (handlerCpuSec / p.pagesTouched) * 1e6 : null,
    faultingCpuSec: p.faultingCpuSec,
    handlerFaults,
  };
}

/** The measured phases on the samples' clock (seconds since t0Ns), from the program's own timestamps. */
function phaseWindow(r: NativeResult, t0Ns: number, exitT: number): { start: number; end: number } {
  if (r.phaseStartNs > 0 && r.phaseEndNs >= r.phaseStartNs) {
    return { start: (r.phaseStartNs - t0Ns) / 1e9, end: (r.phaseEndNs - t0Ns) / 1e9 };
  }
  // An older binary without the timestamps: the phases end about verifySec before it exits.
  const end = Math.max(0, exitT - r.verifySec - 0.005);
  const span = r.elapsedSec + (r.steady ? r.steady.elapsedSec : 0);
  return { start: Math.max(0, end - span), end };
}

/** Median, min and max of a list of figures. */
export function spread(xs: number[]): Spread {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  const at = (i: number): number => s[i] ?? NaN;
  const median = n === 0 ? NaN : n % 2 ? at((n - 1) / 2) : (at(n / 2 - 1) + at(n / 2)) / 2;
  return { median, min: at(0), max: at(n - 1) };
}

export function summarize(runs: SideRun[], phase: 'initial' | 'steady'): SideSummary | null {
  const ph = runs.map((r) => (phase === 'initial' ? r.initial : r.steady)).filter((p): p is PhaseFigures => !!p);
  if (ph.length === 0) return null;
  const cpu = ph.map((p) => p.cpuPerFaultUs).filter((v): v is number => v !== null);
  return {
    runs: ph.length,
    faultsPerSec: spread(ph.map((p) => p.faultsPerSec)),
    pagesPerSec: spread(ph.map((p) => p.pagesPerSec)),
    mbPerSec: spread(ph.map((p) => p.mbPerSec)),
    p50: spread(ph.map((p) => p.latencyUs.p50)),
    p90: spread(ph.map((p) => p.latencyUs.p90)),
    p99: spread(ph.map((p) => p.latencyUs.p99)),
    max: spread(ph.map((p) => p.latencyUs.max)),
    cpuPerFaultUs: cpu.length ? spread(cpu) : null,
    mismatches: runs.reduce((s, r) => s + r.mismatches, 0),
  };
}

// ---- the two sides -------------------------------------------------------------------

export interface RunEnv {
  binary: string;
  tmpDir: string;
  /** The snapshot file both sides serve (null for --source zero). */
  sourceFile: string | null;
}

let socketSeq = 0;

/**
 * Pins every thread of this process (the engine's threads are created later and inherit
 * the main thread's mask) as the C program pins its handler threads; returns a function
 * that restores the previous mask. Uses taskset(1); without it, pinning is refused.
 */
export function pinSelf(pin: BenchConfig['pin']): () => void {
  if (!pin || pin === 'none') return () => undefined;
  const cpus = os.cpus().length;
  const cpu = pin === 'same' || cpus < 2 ? 0 : cpus - 1;
  const pid = String(process.pid);
  let before: string;
  try {
    before = /:\s*([0-9a-f]+)\s*$/i.exec(execFileSync('taskset', ['-p', pid], { encoding: 'utf8' }))?.[1] ?? '';
  } catch (e) {
    throw new Error(`--pin needs taskset(1) (util-linux): ${(e as Error).message}`);
  }
  execFileSync('taskset', ['-a', '-p', (1 << cpu).toString(16), pid], { stdio: 'ignore' });
  return () => {
    if (before) execFileSync('taskset', ['-a', '-p', before, pid], { stdio: 'ignore' });
  };
}

function engineSource(cfg: BenchConfig, sourceFile: string | null, offset: number): PageSource {
  if (cfg.kind === 'minor') return sources.pageCache();
  if (cfg.kind === 'wp' || cfg.source === 'zero' || !sourceFile) return sources.zero();
  // Populated like the C program's own mapping of the file, so neither side measures
  // faults on the source.
  return sources.file(sourceFile, offset, true);
}

/** One run with the engine serving the C program's faults (received over a Unix socket). */
export async function runEngineSide(cfg: BenchConfig, env: RunEnv, rep: number, hooks: Hooks = {}): Promise<SideRun> {
  const sock = path.join(env.tmpDir, `engine-${++socketSeq}.sock`);
  const listenFd = listenUnix(sock);
  const eventRemove = needsEventRemove(cfg);
  const features = externalFeatures(cfg, eventRemove);
  const t0 = monoNs();
  let proc: NativeProcess<NativeResult> | null = null;
  let engine: Engine | null = null;
  let conn = -1;
  let fds: number[] = [];
  let sampler: Sampler | null = null;
  let watch: NodeJS.Timeout | null = null;
  const stop = new AbortController();
  const unpin = pinSelf(cfg.pin);
  try {
    proc = await startExternal({ ...workload(cfg, env.sourceFile), socket: sock, waitAck: true },
      { binary: env.binary, timeoutMs: runTimeoutMs(cfg) });
    const child = proc;
    // The program may fail before it connects: do not wait for a connection then.
    const died = child.result.then(() => { throw new Error('uffd-bench exited before connecting'); });
    died.catch(() => stop.abort());
    conn = await Promise.race([acceptAsync(listenFd, 20_000, stop.signal), died]);
    if (conn < 0) {
      await died; // throws the program's own error when it failed
      throw new Error('the C workload did not connect within 20 s');
    }
    const received = await receiveHandshake(conn, 10_000);
    fds = received.fds;
    const hs = validateHandshake(received.payload, fds.length,
      { memFileSize: cfg.source === 'file' && cfg.kind === 'missing' && env.sourceFile ? fs.statSync(env.sourceFile).size : undefined });
    // A received uffd cannot be asked what it negotiated (a second UFFDIO_API is refused):
    // wrap it with the features the C program asks for this type and kind. Its ioctls
    // are unknown (0): the engine registers nothing for regions it is handed.
    const uffdFd = fds[0];
    if (uffdFd === undefined) throw new Error('the C workload sent its handshake without a userfaultfd');
    const uffd = Userfaultfd.fromFd(uffdFd, featureMask(features), 0n, true);
    fds = fds.slice(1);
    const tStart = performance.now();
    // Background prefetch starts as soon as a worker is up, before the engine is ready and
    // before the workload is told to go: watch for the first fill, to charge that head start.
    let firstFill = 0;
    const watchFills = (e: Engine) => {
      watch = setInterval(() => {
        if (!firstFill && e.stats().pages.total > 0) firstFill = performance.now();
      }, 1);
    };
    engine = await Engine.start({
      beforeLaunch: cfg.prefetch ? watchFills : undefined,
      regions: hs.regions.map((r) => ({
        start: r.baseHostVirtAddr, size: r.size, pageSize: r.pageSize, type: engineType(cfg.type),
        source: engineSource(cfg, env.sourceFile, r.offset),
      })),
      uffd, ownsUffd: true, workers: cfg.workers, stripe: cfg.stripe, prefetch: cfg.prefetch,
      readers: cfg.readers, warmUp: cfg.warmUp ?? true, inline: cfg.inline, inlineBatch: cfg.inlineBatch, wakeBatch: cfg.wakeBatch, spinMicros: cfg.spinMicros,
      dispatcherSpinMicros: cfg.dispatcherSpinMicros, dispatcherNice: cfg.dispatcherNice, afterRemove: 'source',
      faultInjection: hooks.onEngine !== undefined, // the soak kills workers (killWorker 'throw')
      threads: hooks.threads,
    });
    const tReady = performance.now();
    hooks.onEngine?.(engine);
    const before = engine.stats();
    const expect = cfg.size + cfg.bounce * bouncePages(cfg) * cfg.pageSize;
    sampler = new Sampler(child.child.pid ?? -1, t0, cfg.kind === 'wp' ? 0 : expect, hooks.onRunProgress);
    sampler.start();
    const atAck = engine.stats();
    sendWithFds(conn, Uint8Array.of(1));
    const tAck = performance.now();
    const ackDelayMs = tAck - tReady;
    if (watch) clearInterval(watch);
    if (!firstFill && atAck.pages.total > 0) firstFill = tStart;
    const result = await child.result;
    const exitT = (monoNs() - t0) / 1e9;
    sampler.stop();
    const stats = await engine.stop({ mode: 'abandon' });
    engine = null;
    const info = engineInfo(before, stats, (tReady - tStart) / 1000, ackDelayMs, features);
    info.headStartPages = atAck.pages.total;
    // Charge the time from the first fill (seen within ~1 ms) to the go-ahead to the
    // engine's initial phase, so pages filled before the workload started are not free.
    info.headStartSec = firstFill ? (tAck - firstFill + 1) / 1000 : 0;
    // The engine process's CPU during each phase, measured by the C program from
    // /proc/PID/task/*/schedstat; the engine's own thread clocks when that is unavailable.
    const threadCpu = info.dispatcherCpuSec + info.workersCpuSec.reduce((s, v) => s + v, 0);
    const initialCpu = result.peerCpuSec ?? (result.steady ? null : threadCpu);
    const initial = phaseFigures(result, initialCpu, result.steady ? null : stats.faults.total);
    if (info.headStartSec > 0) chargeHeadStart(initial, info.headStartSec, cfg.pageSize);
    const run: SideRun = {
      side: 'engine', handler: `engine (${cfg.workers} worker${cfg.workers > 1 ? 's' : ''})`, rep,
      initial,
      steady: result.steady ? phaseFigures(result.steady, result.steady.peerCpuSec, null) : null,
      mismatches: result.mismatches, mismatchBytes: result.mismatchBytes, verifiedBytes: result.verifiedBytes,
      setupSec: result.setupSec, verifySec: result.verifySec, wallSec: exitT,
      samples: sampler.samples, phaseWindow: phaseWindow(result, t0, exitT), engine: info,
      features: result.features, pid: child.child.pid ?? null,
    };
    if (BigInt(result.features) !== featureMask(features)) {
      hooks.onNote?.(`the C program negotiated features ${result.features}, the engine assumed 0x${featureMask(features).toString(16)}`);
    }
    return run;
  } finally {
    if (watch) clearInterval(watch);
    sampler?.stop();
    stop.abort();
    if (engine) await engine.stop({ mode: 'abandon' }).catch(() => undefined);
    unpin();
    closeFds(fds);
    if (conn >= 0) closeSocket(conn);
    closeSocket(listenFd);
    fs.rmSync(sock, { force: true });
    if (proc && proc.child.exitCode === null && proc.child.signalCode === null) {
      proc.kill();
      await proc.result.catch(() => undefined);
    }
  }
}

/** Adds `sec` to a phase's elapsed time and recomputes its rates. */
function chargeHeadStart(p: PhaseFigures, sec: number, pageSize: number): void {
  p.rawElapsedSec = p.elapsedSec;
  p.elapsedSec += sec;
  p.faultsPerSec = p.pages / p.elapsedSec;
  p.pagesPerSec = p.pages / p.elapsedSec;
  p.mbPerSec = (p.pages * pageSize) / p.elapsedSec / MiB;
}

/**
 * The engine's counters over its whole life (it was made for this run), thread CPU
 * from `a` (engine ready: excludes thread start-up) to `b` (stopped).
 */
function engineInfo(a: EngineStats, b: EngineStats, startSec: number, ackDelayMs: number, features: FeatureName[]): EngineInfo {
  const d = (_x: number, y: number) => y;
  const faults = {
    missing: d(a.faults.missing, b.faults.missing), minor: d(a.faults.minor, b.faults.minor), wp: d(a.faults.wp, b.faults.wp),
    rwp: d(a.faults.rwp, b.faults.rwp), total: d(a.faults.total, b.faults.total),
  };
  const pages = {
    demand: d(a.pages.demand, b.pages.demand), readahead: d(a.pages.readahead, b.pages.readahead),
    background: d(a.pages.background, b.pages.background), total: d(a.pages.total, b.pages.total),
    zeroFilled: d(a.pages.zeroFilled, b.pages.zeroFilled),
  };
  const reads = d(a.reads, b.reads);
  const inline = d(a.inline, b.inline);
  const handoffs = d(a.handoffs, b.handoffs);
  return {
    startSec, ackDelayMs, faults, pages, inline, handoffs, direct: d(a.direct, b.direct), reads,
    ioctls: d(a.ioctls, b.ioctls), eexist: d(a.eexist, b.eexist), spurious: d(a.spurious, b.spurious),
    retries: d(a.retries, b.retries), wakes: d(a.wakes, b.wakes), events: d(a.events, b.events), errors: d(a.errors, b.errors),
    incidents: [],
    dispatcherCpuSec: b.dispatcher.cpuSec - a.dispatcher.cpuSec,
    workersCpuSec: b.workers.map((w, i) => w.cpuSec - (a.workers[i]?.cpuSec ?? 0)),
    headStartPages: 0, headStartSec: 0,
    dispatcherNice: b.dispatcher.nice,
    ...(b.dispatcher.niceRefused ? { dispatcherNiceRefused: b.dispatcher.niceRefused } : {}),
    faultsPerRead: reads > 0 ? faults.total / reads : 0,
    inlineShare: inline + handoffs > 0 ? inline / (inline + handoffs) : 0,
    latencyUs: { p50: b.latencyUs.p50, p90: b.latencyUs.p90, p99: b.latencyUs.p99, max: b.latencyUs.max },
    features: '0x' + featureMask(features).toString(16),
  };
}

/** One run of the same workload served by the C program's own handler (native or fc). */
export async function runNativeSide(cfg: BenchConfig, env: RunEnv, rep: number, hooks: Hooks = {}): Promise<SideRun> {
  const handler = cfg.reference ?? 'native';
  const t0 = monoNs();
  const proc = await startNative({
    ...workload(cfg, env.sourceFile), handler, handlers: handler === 'native' ? cfg.workers : undefined,
  }, { binary: env.binary, timeoutMs: runTimeoutMs(cfg) });
  const expect = cfg.size + cfg.bounce * bouncePages(cfg) * cfg.pageSize;
  const sampler = new Sampler(proc.child.pid ?? -1, t0, cfg.kind === 'wp' ? 0 : expect, hooks.onRunProgress);
  sampler.start();
  let result: NativeResult;
  try {
    result = await proc.result;
  } finally {
    sampler.stop();
  }
  const exitT = (monoNs() - t0) / 1e9;
  return {
    side: 'native',
    handler: handler === 'fc' ? 'native fc (Firecracker example, 1 thread, page at a time)' : `native (${cfg.workers} handler thread${cfg.workers > 1 ? 's' : ''})`,
    rep,
    initial: phaseFigures(result, result.handlerCpuSec, result.handled?.faults ?? null),
    steady: result.steady ? phaseFigures(result.steady, result.steady.handlerCpuSec, result.steady.handled?.faults ?? null) : null,
    mismatches: result.mismatches, mismatchBytes: result.mismatchBytes, verifiedBytes: result.verifiedBytes,
    setupSec: result.setupSec, verifySec: result.verifySec, wallSec: exitT,
    samples: sampler.samples, phaseWindow: phaseWindow(result, t0, exitT), features: result.features, pid: proc.child.pid ?? null,
  };
}

// ---- a case: both sides, repeated --------------------------------------------------------

export interface CaseOptions {
  /** Skip the native side. */
  noNative?: boolean;
  /** A binary to use (else built). */
  binary?: string;
  hooks?: Hooks;
  /** Keep source files between cases (the suite reuses them); caller removes the dir. */
  tmpDir?: string;
  /** c (default): the C program faults; js: JavaScript faulting threads, engine side only (automatic without a C compiler). */
  workload?: 'c' | 'js';
}

const sourceCache = new Map<string, string>();

/** Writes (once per tmpDir, size and seed) the pattern file both sides serve and verify. */
export async function sourceFileFor(cfg: BenchConfig, tmpDir: string, binary: string): Promise<string | null> {
  // Minor and wp runs pre-fill their pages from the C program's own pattern; only missing
  // faults copy from a source.
  if (cfg.source === 'zero' || cfg.kind !== 'missing') return null;
  const key = `${tmpDir}:${cfg.size}:${cfg.seed}`;
  const have = sourceCache.get(key);
  if (have && fs.existsSync(have)) return have;
  const file = path.join(tmpDir, `source-${cfg.size}-${cfg.seed}.bin`);
  await writeSource(file, cfg.size, cfg.seed, { binary, timeoutMs: 120_000 + (cfg.size / GiB) * 60_000 });
  sourceCache.set(key, file);
  return file;
}

export async function resolveBinary(binary?: string): Promise<{ binary: string | null; skipped: string | null }> {
  if (binary) return { binary, skipped: null };
  const b = await buildNative();
  return typeof b === 'string' ? { binary: b, skipped: null } : { binary: null, skipped: b.skipped };
}

/**
 * Runs a configuration: the native side and the engine side `repeat` times each,
 * alternating which goes first, then summarizes.
 */
export async function runCase(cfg: BenchConfig, opts: CaseOptions = {}): Promise<CaseResult> {
  const problem = checkConfig(cfg);
  if (problem) throw new Error(problem);
  const hooks = opts.hooks ?? {};
  const notes: string[] = [];
  const note = (n: string) => { notes.push(n); hooks.onNote?.(n); };
  let { binary, skipped } = opts.workload === 'js' ? { binary: null, skipped: 'the JavaScript workload was asked for (--workload js)' }
    : await resolveBinary(opts.binary);
  if (!binary) {
    // The faulting workload is the C program: without it, the engine side runs with
    // JavaScript faulting threads and there is no native side.
    const { jsWorkloadProblem } = await import('./js-workload.js');
    const why = jsWorkloadProblem(cfg);
    if (why) throw new Error(`the C workload cannot be used (${skipped}), and ${why}`);
    note(`native side skipped: ${skipped}. The engine side ran with JavaScript faulting threads in its own process ` +
      '(src/workload/threads/toucher.ts), which is not the C workload: compare these figures with nothing but each other');
    binary = null;
    skipped = `skipped: ${skipped}`;
  }
  const ownDir = !opts.tmpDir;
  const tmpDir = opts.tmpDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-bench-'));
  const hooksWithNotes: Hooks = { ...hooks, onNote: note };
  try {
    const sourceFile = binary ? await sourceFileFor(cfg, tmpDir, binary) : null;
    const env: RunEnv = { binary: binary ?? '', tmpDir, sourceFile };
    const nativeOn = !!binary && !opts.noNative && cfg.reference !== null;
    const nativeSkipped = nativeOn ? null : !binary ? skipped : opts.noNative ? 'skipped (--no-native)' : 'no reference handler for this case';
    const runEngine = async (rep: number): Promise<SideRun> => {
      if (binary) return runEngineSide(cfg, env, rep, hooksWithNotes);
      const { runEngineJsSide } = await import('./js-workload.js');
      return runEngineJsSide(cfg, rep);
    };
    const runs: SideRun[] = [];
    const total = cfg.repeat * (nativeOn ? 2 : 1);
    let index = 0;
    for (let rep = 1; rep <= cfg.repeat; rep++) {
      // Alternate the order so slow drift on a shared machine does not favour one side.
      const order: ('native' | 'engine')[] = !nativeOn ? ['engine'] : rep % 2 ? ['native', 'engine'] : ['engine', 'native'];
      for (const side of order) {
        hooks.onRunStart?.(`${cfg.name}: ${side} ${rep}/${cfg.repeat}`, ++index, total);
        const run = side === 'engine' ? await runEngine(rep) : await runNativeSide(cfg, env, rep, hooksWithNotes);
        runs.push(run);
        hooks.onRunEnd?.(run);
        if (run.mismatches) note(`${side} run ${rep}: ${run.mismatches} page(s) did not verify (first bad byte count ${run.mismatchBytes})`);
      }
    }
    let memcpy: CaseResult['memcpy'] = null;
    if (cfg.memcpy > 0 && binary) {
      hooks.onRunStart?.(`${cfg.name}: memcpy ${formatBytes(cfg.memcpy)}`, index, total);
      const m = await runMemcpy(cfg.memcpy, { binary, timeoutMs: 120_000 });
      memcpy = { size: m.size, gibPerSec: m.gibPerSec, mbPerSec: m.gibPerSec * 1024 };
    }
    let plainFaults: CaseResult['plainFaults'] = null;
    if (cfg.plainFaults && binary && cfg.kind === 'missing') {
      hooks.onRunStart?.(`${cfg.name}: plain kernel faults ${formatBytes(cfg.size)}`, index, total);
      const p = await runPlainFaults({ type: cType(cfg.type), size: cfg.size, pageSize: cfg.type === 'hugetlbfs' ? cfg.pageSize : undefined,
        threads: cfg.threads, access: cAccess(cfg.pattern), touch: 'write', seed: cfg.seed }, { binary, timeoutMs: runTimeoutMs(cfg) });
      plainFaults = { pagesPerSec: p.pagesPerSec, mbPerSec: p.mbPerSec, p50: p.latencyUs.p50 };
    }
    const eng = runs.filter((r) => r.side === 'engine');
    const nat = runs.filter((r) => r.side === 'native');
    const engine = eng.length ? { initial: summarize(eng, 'initial') as SideSummary, steady: summarize(eng, 'steady') } : null;
    const native = nat.length ? { initial: summarize(nat, 'initial') as SideSummary, steady: summarize(nat, 'steady') } : null;
    const phase: 'initial' | 'steady' = cfg.bounce > 0 ? 'steady' : 'initial';
    const e = engine ? engine[phase] : null;
    const n = native ? native[phase] : null;
    const ratio = (f: (s: SideSummary) => Spread | null): number | null => {
      const a = e ? f(e) : null;
      const b = n ? f(n) : null;
      return a && b && b.median > 0 ? a.median / b.median : null;
    };
    const loadavg = os.loadavg()[0] ?? 0;
    if (loadavg > os.cpus().length) note(`load average ${loadavg.toFixed(1)} on ${os.cpus().length} CPUs: other work shared the machine during this run`);
    return {
      config: cfg, nativeSkipped, runs, engine, native,
      ratios: {
        phase,
        faultsPerSec: ratio((s) => s.faultsPerSec),
        pagesPerSec: ratio((s) => s.pagesPerSec),
        p50: ratio((s) => s.p50),
        p99: ratio((s) => s.p99),
        cpuPerFaultUs: ratio((s) => s.cpuPerFaultUs),
        memcpy: memcpy && e ? e.mbPerSec.median / memcpy.mbPerSec : null,
      },
      memcpy, plainFaults, notes,
    };
  } finally {
    if (ownDir) {
      for (const k of [...sourceCache.keys()]) if (k.startsWith(`${tmpDir}:`)) sourceCache.delete(k);
      fs.rmSync(tmpDir, { recursive: true, force: true });
    }
  }
}

// ---- formatting ----------------------------------------------------------------------

export function formatBytes(n: number): string {
  if (n >= 2 ** 40 && n % 2 ** 40 === 0) return `${n / 2 ** 40} TiB`;
  if (n >= GiB && n % GiB === 0) return `${n / GiB} GiB`;
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}

export function formatRate(v: number): string {
  if (!Number.isFinite(v)) return '-';
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return v.toFixed(0);
}

export function formatNum(v: number, digits = 1): string {
  if (!Number.isFinite(v)) return '-';
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  return v.toFixed(digits);
}

export function describeConfig(cfg: BenchConfig): string {
  const pages = cfg.size / cfg.pageSize;
  const parts = [
    `${cfg.type} ${cfg.kind} ${formatBytes(cfg.pageSize)} pages`,
    `${formatBytes(cfg.size)} (${pages} pages)`,
    `${cfg.threads} faulting thread${cfg.threads > 1 ? 's' : ''}`,
    cfg.pattern + (cfg.pattern === 'strided' ? ` (stride ${cfg.stride ?? 16})` : cfg.pattern === 'hot-set' ? ` (hot ${cfg.hot ?? 0.1})` : ''),
    `source ${cfg.kind === 'minor' ? 'page cache' : cfg.kind === 'wp' ? 'present pages' : cfg.source}`,
    `prefetch ${cfg.prefetch ? 'on' : 'off'}`,
  ];
  if (cfg.bounce) parts.push(`${cfg.bounce} bounce round${cfg.bounce > 1 ? 's' : ''}`);
  if (cfg.pin && cfg.pin !== 'none') parts.push(`pinned ${cfg.pin === 'same' ? 'all on CPU 0' : 'faulting threads and handlers on different CPUs'}`);
  return parts.join(', ');
}

function cell(s: Spread | null, f: (v: number) => string): string {
  if (!s) return '-';
  if (s.min === s.max) return f(s.median);
  return `${f(s.median)} [${f(s.min)}–${f(s.max)}]`;
}

/** The side-by-side table of a case. */
export function formatCase(r: CaseResult): string {
  const cfg = r.config;
  const lines: string[] = [];
  lines.push(`${cfg.name}: ${describeConfig(cfg)}`);
  const eng = r.runs.find((x) => x.side === 'engine');
  const nat = r.runs.find((x) => x.side === 'native');
  lines.push(`engine: ${cfg.workers} worker${cfg.workers > 1 ? 's' : ''}, stripe ${cfg.stripe ? formatBytes(cfg.stripe) : 'default'}, ` +
    `inline ${cfg.inline ?? 'auto'}${cfg.inlineBatch !== undefined ? ` (batch <= ${cfg.inlineBatch})` : ''}` +
    `${cfg.wakeBatch !== undefined ? `, wake batch ${cfg.wakeBatch}` : ''}` +
    `${cfg.spinMicros !== undefined ? `, worker spin ${cfg.spinMicros} µs` : ''}` +
    `${cfg.dispatcherSpinMicros !== undefined ? `, dispatcher spin ${cfg.dispatcherSpinMicros} µs` : ''}` +
    `, JIT ${cfg.warmUp === false ? 'cold' : 'warmed up'}; ` +
    `reference: ${nat ? nat.handler : r.nativeSkipped ?? 'none'}`);
  lines.push(`${cfg.repeat} repetition${cfg.repeat > 1 ? 's' : ''} per side${r.native ? ', alternating order' : ''}; median [min–max]`);
  const phases: ('initial' | 'steady')[] = cfg.bounce > 0 ? ['initial', 'steady'] : ['initial'];
  for (const phase of phases) {
    const e = r.engine ? r.engine[phase] : null;
    const n = r.native ? r.native[phase] : null;
    if (phases.length > 1) lines.push(`-- ${phase === 'initial' ? 'initial population' : `steady state (${cfg.bounce} bounce rounds)`}`);
    const rows: [string, (s: SideSummary) => Spread | null, (v: number) => string, 'hi' | 'lo'][] = [
      ['faults/s', (s) => s.faultsPerSec, formatRate, 'hi'],
      ['MiB/s', (s) => s.mbPerSec, (v) => formatNum(v, 0), 'hi'],
      ['latency p50 µs', (s) => s.p50, (v) => formatNum(v), 'lo'],
      ['latency p90 µs', (s) => s.p90, (v) => formatNum(v), 'lo'],
      ['latency p99 µs', (s) => s.p99, (v) => formatNum(v), 'lo'],
      ['latency max µs', (s) => s.max, (v) => formatNum(v, 0), 'lo'],
      ['handler CPU µs/fault', (s) => s.cpuPerFaultUs, (v) => formatNum(v, 2), 'lo'],
    ];
    const w0 = 22;
    const w1 = 30;
    lines.push(`${''.padEnd(w0)}${(nat ? 'native' : '').padEnd(w1)}${'engine'.padEnd(w1)}engine/native`);
    for (const [label, get, fmt] of rows) {
      const nv = n ? get(n) : null;
      const ev = e ? get(e) : null;
      const ratio = nv && ev && nv.median > 0 ? `${(ev.median / nv.median).toFixed(2)}x` : '';
      lines.push(`${label.padEnd(w0)}${(n ? cell(nv, fmt) : '').padEnd(w1)}${cell(ev, fmt).padEnd(w1)}${ratio}`);
    }
    lines.push(`${'pages verified'.padEnd(w0)}${(n ? `mismatches ${n.mismatches}` : '').padEnd(w1)}${(e ? `mismatches ${e.mismatches}` : '').padEnd(w1)}`);
  }
  if (eng?.engine) {
    const engRuns = r.runs.filter((x) => x.side === 'engine' && x.engine);
    const med = (f: (i: EngineInfo) => number) => spread(engRuns.map((x) => f(x.engine as EngineInfo))).median;
    lines.push(`engine internals (median per run): ${formatRate(med((i) => i.faults.total))} userfaults, ` +
      `${(100 * med((i) => i.inlineShare)).toFixed(0)}% resolved inline by the dispatcher, ${med((i) => i.faultsPerRead).toFixed(2)} faults per read(2), ` +
      `${formatRate(med((i) => i.ioctls))} ioctls, pages demand/readahead/background ` +
      `${formatRate(med((i) => i.pages.demand))}/${formatRate(med((i) => i.pages.readahead))}/${formatRate(med((i) => i.pages.background))}, ` +
      `thread CPU dispatcher ${med((i) => i.dispatcherCpuSec).toFixed(2)} s + workers ${med((i) => i.workersCpuSec.reduce((s, v) => s + v, 0)).toFixed(2)} s, ` +
      `dispatcher nice ${med((i) => i.dispatcherNice)}${eng.engine?.dispatcherNiceRefused ? ` (${eng.engine.dispatcherNiceRefused})` : ''}, ` +
      `start ${(med((i) => i.startSec) * 1000).toFixed(0)} ms` +
      (cfg.prefetch ? `, head start ${(med((i) => i.headStartSec) * 1000).toFixed(1)} ms / ${formatRate(med((i) => i.headStartPages))} pages ` +
        'filled before the workload started (charged to the engine\'s elapsed time)' : ''));
  }
  if (r.memcpy) {
    lines.push(`memcpy ${formatBytes(r.memcpy.size)}: ${r.memcpy.gibPerSec.toFixed(2)} GiB/s` +
      (r.ratios.memcpy !== null ? `; engine MiB/s / memcpy = ${r.ratios.memcpy.toFixed(2)}` : ''));
  }
  if (r.plainFaults) {
    lines.push(`plain kernel write faults on the same region (no userfaultfd, the kernel allocates zeroed pages itself): ` +
      `${formatRate(r.plainFaults.pagesPerSec)} pages/s, ${formatNum(r.plainFaults.mbPerSec, 0)} MiB/s`);
  }
  const ratioLine: string[] = [];
  if (r.ratios.faultsPerSec !== null) ratioLine.push(`throughput ${r.ratios.faultsPerSec.toFixed(2)}x`);
  if (r.ratios.p50 !== null) ratioLine.push(`p50 latency ${r.ratios.p50.toFixed(2)}x`);
  if (r.ratios.cpuPerFaultUs !== null) ratioLine.push(`CPU per fault ${r.ratios.cpuPerFaultUs.toFixed(2)}x`);
  if (ratioLine.length) lines.push(`engine/native (${r.ratios.phase}): ${ratioLine.join(', ')}`);
  if (r.nativeSkipped) lines.push(`native: ${r.nativeSkipped}`);
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join('\n');
}

/** JSON-friendly copy of a case (samples and histograms kept; they are what a report plots). */
export function caseJson(r: CaseResult): unknown {
  return r;
}
