// The native reference side of the benchmark: builds src/bench/native/uffd-bench.c with the
// system C compiler, runs it, and returns its JSON result typed.
//
//   buildNative()      compile (cached by source hash) -> binary path, or { skipped } without cc
//   runNative(opts)    one run of the C workload with an in-process handler (native, fc, none)
//   startExternal(o)   the same C workload, its faults served by whoever listens on o.socket
//                      (our engine): returns the child and a promise of its JSON result
//   startServe(o)      the C program as that external handler (the native peer of startExternal)
//   runMemcpy, runPlainFaults, writeSource, runReferenceSuite
//
// Everything is async and bounded in time: a run that does not finish within timeoutMs is
// killed and rejected with an error that says which run and what it printed.
// Command line: node dist/bench/native.js [suite | -- <uffd-bench options>]
import { spawn, ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export type MemType = 'anon' | 'memfd' | 'hugetlb';
export type FaultKind = 'missing' | 'minor' | 'wp';
export type HandlerMode = 'native' | 'fc' | 'external' | 'none';
export type AccessPattern = 'sequential' | 'random' | 'strided' | 'hotset';

export interface NativeWorkload {
  type?: MemType;
  kind?: FaultKind;
  /** Bytes, or a string with a suffix ("16M", "1G"). Default 64M. */
  size?: number | string;
  /** 4K for anon/memfd; 2M (default) or 1G for hugetlb. */
  pageSize?: number | string;
  /** Faulting threads (default 1). */
  threads?: number;
  /** Access order within each thread's share of pages (default sequential). */
  access?: AccessPattern;
  /** Pages between touches with access "strided" (default 16). */
  stride?: number;
  /** Hot fraction of the region with access "hotset" (default 0.1): bounce rounds re-fault only it. */
  hot?: number;
  /** Rounds of zap + re-fault after the initial population (default 0). */
  bounce?: number;
  /** Seed of the pattern and of the shuffles (default 1). */
  seed?: number;
  /** Page contents: the splitmix64 pattern (default) or zeros. */
  source?: 'pattern' | 'zero';
  /** Page contents from this file (e.g. written by writeSource), mmap'd. */
  sourceFile?: string;
  /** First-touch access (default read; forced to write for wp, default write for plain faults). */
  touch?: 'read' | 'write';
  /** Negotiate UFFD_FEATURE_EVENT_REMOVE, as Firecracker does. */
  eventRemove?: boolean;
  /** CPU pinning: same (all on CPU 0), split (faulting on 0..n-2, handlers on n-1). */
  pin?: 'none' | 'same' | 'split';
  /**
   * Touch and free the region's size of memory before mapping it (default true): on a VM
   * with free page reporting, memory idle for a couple of seconds is back with the host and
   * each first touch of it costs ~5 µs more, which would fall on whichever side ran first.
   */
  prewarm?: boolean;
}

export interface NativeOptions extends NativeWorkload {
  handler?: HandlerMode;
  /** Native handler threads (default 1). */
  handlers?: number;
  /** Native handlers spin on read() this long before sleeping in poll(). */
  spinUs?: number;
  /** external: the handler's Unix socket. */
  socket?: string;
  /** external: send [uffd, memfd] (memfd/hugetlb) instead of [uffd]. */
  sendMemfd?: boolean;
  /** external: wait for one byte from the handler before faulting. */
  waitAck?: boolean;
}

export interface RunOptions {
  /** Kill the run after this long (default 60 s). */
  timeoutMs?: number;
  /** A binary to use instead of building one. */
  binary?: string;
}

export interface LatencyUs {
  count: number; p50: number; p90: number; p99: number; max: number; min: number; mean: number;
}
/** Bucket i holds [2^i, 2^(i+1)) µs; bucket 0 holds [0, 2). */
export interface HistogramBucket { loUs: number; hiUs: number; count: number }
export interface HandlerCounters {
  faults: number; missing: number; minor: number; wp: number; eexist: number; eagain: number;
  reads: number; emptyReads: number; polls: number; otherEvents: number; esrch: number;
}
export interface PhaseResult {
  elapsedSec: number;
  pagesTouched: number;
  /** Faults served per second (handler count in process; pages touched otherwise). */
  faultsPerSec: number;
  pagesPerSec: number;
  /** MiB/s of page contents made present. */
  mbPerSec: number;
  latencyUs: LatencyUs;
  histogram: HistogramBucket[];
  /** CPU of the in-process handler threads; null for external and plain runs. */
  handlerCpuSec: number | null;
  faultingCpuSec: number;
  processCpuSec: number;
  /** external: CPU of every thread of the handler process during the phase. */
  peerCpuSec: number | null;
  /** Minor faults of this process (getrusage) during the phase. */
  kernelFaults: number;
  handled: HandlerCounters | null;
}
export interface NativeResult extends PhaseResult {
  mode: HandlerMode;
  type: MemType;
  kind: FaultKind;
  pageSize: number;
  pages: number;
  size: number;
  threads: number;
  handlers: number;
  access: AccessPattern;
  touch: 'read' | 'write';
  pattern: string;
  source: 'pattern' | 'zero' | 'file';
  resolve: 'copy' | 'zeropage' | 'continue' | 'wp-unprotect' | 'none';
  seed: number;
  pin: string;
  spinUs: number;
  features: string;
  bounceRounds: number;
  hotPages: number;
  /** Steady state over the bounce rounds (elapsed = sum of the rounds), null without bounce. */
  steady: (PhaseResult & { rounds: number; pagesPerRound: number }) | null;
  totalHandled: HandlerCounters | null;
  /** Pages whose bytes differ from the pattern (must be 0). */
  mismatches: number;
  mismatchBytes: number;
  firstMismatchOffset: number | null;
  verifiedBytes: number;
  /** CLOCK_MONOTONIC ns (the clock of process.hrtime) when the first round started and the last one ended. */
  phaseStartNs: number;
  /** External handler: from the handshake sent to the first touch served, ns (the VM's first fault). */
  handshakeToFirstTouchNs?: number;
  phaseEndNs: number;
  setupSec: number;
  /** Seconds spent touching and freeing the region's size of memory before mapping it (0: --no-prewarm, or hugetlb). */
  prewarmSec: number;
  verifySec: number;
  peerPid: number | null;
  cpus: number;
  kernel: string;
}
export interface MemcpyResult { mode: 'memcpy'; size: number; runsSec: number[]; bestSec: number; gibPerSec: number }
export interface WriteSourceResult { mode: 'write-source'; path: string; size: number; seed: number; pattern: string }
export interface ServeResult {
  mode: 'serve'; handler: 'native' | 'fc'; handlers: number; regions: number; pageSize: number; fds: number;
  pattern: string; peerPid: number; elapsedSec: number; handlerCpuSec: number; handled: HandlerCounters;
}

export type BuildResult = string | { skipped: string };

/** The binary could not be built because this machine has no C compiler. */
export class NativeSkipped extends Error {
  constructor(readonly reason: string) {
    super(`native benchmark skipped: ${reason}`);
    this.name = 'NativeSkipped';
  }
}

// ---- locating and building ----

const SOURCE_REL = path.join('src', 'bench', 'native', 'uffd-bench.c');
const CFLAGS = ['-O2', '-pthread', '-Wall', '-Wextra'];

/** The repository root: the first ancestor of this module holding src/bench/native/uffd-bench.c. */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, SOURCE_REL))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find ${SOURCE_REL} above ${__dirname}`);
    dir = up;
  }
}
export function nativeSourcePath(): string {
  return path.join(repoRoot(), SOURCE_REL);
}

interface Exec { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

function exec(cmd: string, args: string[], timeoutMs: number): Promise<Exec> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
}

async function findCompiler(): Promise<string | undefined> {
  const candidates = [process.env.CC, 'cc', 'gcc', 'clang'].filter((c): c is string => !!c);
  for (const cc of candidates) {
    try {
      const r = await exec(cc, ['--version'], 10_000);
      if (r.code === 0) return cc;
    } catch {
      // ENOENT: try the next one
    }
  }
  return undefined;
}

function writableDir(dir: string): boolean {
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface BuildOptions {
  /** Where the binary goes (default src/bench/native/build/, else os.tmpdir()). */
  outDir?: string;
  /** Compiler (default $CC, cc, gcc, clang: the first that runs). */
  cc?: string;
  /** Rebuild even when a binary of this source exists. */
  force?: boolean;
  timeoutMs?: number;
}

/**
 * Compiles uffd-bench.c with `cc -O2 -pthread` (plus warnings). The binary's name carries a
 * hash of the source and flags, so an unchanged source is not rebuilt and concurrent builds
 * never see a half-written file (each compiles to a temporary name and renames).
 * Returns the binary path, or { skipped } when no C compiler exists. A source that does not
 * compile is an error, not a skip.
 */
export async function buildNative(opts: BuildOptions = {}): Promise<BuildResult> {
  const src = nativeSourcePath();
  const cc = opts.cc ?? await findCompiler();
  if (!cc) return { skipped: 'no C compiler found (tried $CC, cc, gcc, clang); install one or set CC' };
  const text = fs.readFileSync(src);
  const hash = createHash('sha256').update(text).update(CFLAGS.join(' ')).update(cc).digest('hex').slice(0, 12);
  const preferred = path.join(repoRoot(), 'src', 'bench', 'native', 'build');
  const outDir = opts.outDir ?? (writableDir(preferred) ? preferred : path.join(os.tmpdir(), 'uffd-engine-native'));
  fs.mkdirSync(outDir, { recursive: true });
  const bin = path.join(outDir, `uffd-bench-${hash}`);
  if (!opts.force && fs.existsSync(bin)) return bin;
  const tmp = `${bin}.${process.pid}.${Date.now()}.tmp`;
  let r: Exec;
  try {
    r = await exec(cc, [...CFLAGS, '-o', tmp, src], opts.timeoutMs ?? 120_000);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new Error(`compiling ${src} with ${cc} failed: ${(e as Error).message}`);
  }
  if (r.code !== 0) {
    fs.rmSync(tmp, { force: true });
    throw new Error(`compiling ${src} with ${cc} failed (exit ${r.code}):\n${r.stderr.trim()}`);
  }
  fs.renameSync(tmp, bin);
  // A stable name for people: src/bench/native/build/uffd-bench -> the newest build.
  const link = path.join(outDir, 'uffd-bench');
  try {
    fs.rmSync(link, { force: true });
    fs.symlinkSync(path.basename(bin), link);
  } catch {
    // not important
  }
  return bin;
}

let cachedBuild: Promise<BuildResult> | undefined;
/** buildNative() once per process; throws NativeSkipped when there is no compiler. */
export async function nativeBinary(): Promise<string> {
  cachedBuild ??= buildNative();
  let r: BuildResult;
  try {
    r = await cachedBuild;
  } catch (e) {
    cachedBuild = undefined;
    throw e;
  }
  if (typeof r !== 'string') throw new NativeSkipped(r.skipped);
  return r;
}

// ---- arguments ----

function sizeArg(v: number | string): string {
  return typeof v === 'number' ? String(v) : v;
}

/** The uffd-bench command line for a workload. */
export function nativeArgs(o: NativeOptions): string[] {
  const a: string[] = [];
  const opt = (name: string, v: unknown) => {
    if (v !== undefined && v !== null) a.push(`--${name}`, String(v));
  };
  opt('type', o.type);
  opt('kind', o.kind);
  if (o.size !== undefined) opt('size', sizeArg(o.size));
  if (o.pageSize !== undefined) opt('page-size', sizeArg(o.pageSize));
  opt('threads', o.threads);
  opt('handler', o.handler);
  if (o.handler === undefined || o.handler === 'native') opt('handlers', o.handlers);
  opt('access', o.access);
  opt('stride', o.stride);
  opt('hot', o.hot);
  opt('bounce', o.bounce);
  opt('seed', o.seed);
  opt('source', o.source);
  opt('source-file', o.sourceFile);
  opt('touch', o.touch);
  opt('pin', o.pin);
  opt('spin-us', o.spinUs);
  opt('socket', o.socket);
  if (o.sendMemfd) a.push('--send-memfd');
  if (o.eventRemove) a.push('--event-remove');
  if (o.waitAck) a.push('--wait-ack');
  if (o.prewarm === false) a.push('--no-prewarm');
  return a;
}

// ---- running ----

const DEFAULT_TIMEOUT_MS = 60_000;

export interface NativeProcess<T> {
  child: ChildProcess;
  /** Settles when the process exits: its parsed JSON, or an error with its stderr. */
  result: Promise<T>;
  /** Kills the process (SIGKILL). */
  kill(): void;
}

/**
 * Spawns the binary with args and the C-side --timeout slightly inside timeoutMs (so the
 * program reports the hang itself), kills it at timeoutMs as a backstop, and parses the
 * last line of stdout as JSON. Exit 3 (verification found mismatches) still yields the
 * JSON: the caller decides.
 */
function launch<T>(bin: string, args: string[], timeoutMs: number, label: string,
  onStderr?: (chunk: string) => void): NativeProcess<T> {
  const cSec = Math.max(1, Math.floor(timeoutMs / 1000) - 1);
  const fullArgs = [...args, '--timeout', String(cSec)];
  const child = spawn(bin, fullArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; onStderr?.(d); });
  const cmd = `uffd-bench ${fullArgs.join(' ')}`;
  const result = new Promise<T>((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${label}: cannot run ${bin}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const err = stderr.trim();
      if (timedOut) {
        reject(new Error(`${label}: killed after ${timeoutMs} ms without finishing (${cmd})${err ? `; stderr: ${err}` : ''}`));
        return;
      }
      if (code === 124) {
        reject(new Error(`${label}: timed out after ${cSec} s (${cmd}): ${err}`));
        return;
      }
      if (code !== 0 && code !== 3) {
        reject(new Error(`${label}: exited with ${code ?? signal} (${cmd})${err ? `: ${err}` : ''}`));
        return;
      }
      const line = stdout.trim().split('\n').filter((l) => l.trim()).pop();
      if (!line) {
        reject(new Error(`${label}: printed no result (${cmd})${err ? `; stderr: ${err}` : ''}`));
        return;
      }
      try {
        resolve(JSON.parse(line) as T);
      } catch (e) {
        reject(new Error(`${label}: unparsable output (${(e as Error).message}): ${line.slice(0, 500)}`));
      }
    });
  });
  return { child, result, kill: () => { child.kill('SIGKILL'); } };
}

/** One run of the C workload with an in-process handler (native, fc) or none (plain faults). */
export async function runNative(options: NativeOptions, run: RunOptions = {}): Promise<NativeResult> {
  if (options.handler === 'external') throw new Error('runNative: use startExternal for handler "external"');
  const bin = run.binary ?? await nativeBinary();
  return launch<NativeResult>(bin, nativeArgs(options), run.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'uffd-bench').result;
}

/**
 * runNative, but returning the process as soon as it is spawned (its pid lets a caller
 * sample /proc/PID while it runs; `result` settles as runNative's promise would).
 */
export async function startNative(options: NativeOptions, run: RunOptions = {}): Promise<NativeProcess<NativeResult>> {
  if (options.handler === 'external') throw new Error('startNative: use startExternal for handler "external"');
  const bin = run.binary ?? await nativeBinary();
  return launch<NativeResult>(bin, nativeArgs(options), run.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'uffd-bench');
}

/** Plain kernel page faults without userfaultfd, on the same workload: the ceiling. */
export async function runPlainFaults(options: NativeWorkload, run: RunOptions = {}): Promise<NativeResult> {
  return runNative({ ...options, handler: 'none' }, run);
}

/** memcpy bandwidth (GiB/s, best of 3) on pre-faulted buffers of `size` bytes. */
export async function runMemcpy(size: number | string, run: RunOptions = {}): Promise<MemcpyResult> {
  const bin = run.binary ?? await nativeBinary();
  return launch<MemcpyResult>(bin, ['--memcpy', sizeArg(size)], run.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'uffd-bench --memcpy').result;
}

/**
 * Writes the pattern the C workload uses (size bytes, seed) to a file: the snapshot the
 * engine serves, so that both sides serve identical bytes (pass it as sourceFile).
 */
export async function writeSource(file: string, size: number | string, seed = 1, run: RunOptions = {}): Promise<WriteSourceResult> {
  const bin = run.binary ?? await nativeBinary();
  return launch<WriteSourceResult>(bin, ['--write-source', file, '--size', sizeArg(size), '--seed', String(seed)],
    run.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'uffd-bench --write-source').result;
}

/**
 * Starts the C workload in external mode: it connects to options.socket (retrying for up
 * to 10 s while nobody listens), sends the Firecracker handshake — JSON
 * [{base_host_virt_addr, size, offset: 0, page_size, page_size_kib}] with the uffd
 * (O_NONBLOCK) in SCM_RIGHTS, plus the memfd with sendMemfd — keeps the socket open, and
 * runs its faulting threads. The handler (our engine) serves the faults; the result's
 * peerCpuSec is the handler process's CPU during the run.
 */
export async function startExternal(options: NativeOptions & { socket: string }, run: RunOptions = {}): Promise<NativeProcess<NativeResult>> {
  const bin = run.binary ?? await nativeBinary();
  return launch<NativeResult>(bin, nativeArgs({ ...options, handler: 'external' }), run.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    'uffd-bench --handler external');
}

export interface ServeOptions {
  socket: string;
  /** native (default): `handlers` threads, batched reads; fc: Firecracker's single-thread handler. */
  handler?: 'native' | 'fc';
  handlers?: number;
  /** Serve page contents from this file (else the pattern of `seed`, or zeros). */
  sourceFile?: string;
  seed?: number;
  source?: 'pattern' | 'zero';
  spinUs?: number;
  pin?: 'none' | 'same' | 'split';
}

/**
 * Starts the C program as an external handler listening on options.socket (the native
 * counterpart of the engine in external runs). `listening` resolves once it listens; the
 * result arrives when the faulting process hangs up.
 */
export async function startServe(options: ServeOptions, run: RunOptions = {}): Promise<NativeProcess<ServeResult> & { listening: Promise<void> }> {
  const bin = run.binary ?? await nativeBinary();
  const args = ['--serve', options.socket];
  if (options.handler) args.push('--handler', options.handler);
  if (options.handlers !== undefined) args.push('--handlers', String(options.handlers));
  if (options.sourceFile) args.push('--source-file', options.sourceFile);
  if (options.seed !== undefined) args.push('--seed', String(options.seed));
  if (options.source) args.push('--source', options.source);
  if (options.spinUs !== undefined) args.push('--spin-us', String(options.spinUs));
  if (options.pin) args.push('--pin', options.pin);
  let onListening!: () => void;
  const listening = new Promise<void>((resolve) => { onListening = resolve; });
  let seen = '';
  const p = launch<ServeResult>(bin, args, run.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'uffd-bench --serve', (chunk) => {
    seen += chunk;
    if (seen.includes('listening on')) onListening();
  });
  const failed = p.result.then(() => { throw new Error('uffd-bench --serve exited before listening'); });
  failed.catch(() => undefined);
  return { ...p, listening: Promise.race([listening, failed]) };
}

// ---- the reference suite ----

export interface ReferenceFigures {
  anonRandom8x2: NativeResult;
  serial1x1: NativeResult;
  fcRandom4: NativeResult;
  memcpy: MemcpyResult;
  plainFaults: NativeResult;
}

/**
 * The reference figures the engine's benchmark prints next to its own: native anon
 * missing random 8 threads / 2 handlers, the serial round trip (1 thread, 1 handler),
 * Firecracker's handler (random, 4 threads), memcpy and plain faults. `scale` shrinks or
 * grows the sizes (1 = 256 MiB / 64 MiB / 1 GiB).
 */
export async function runReferenceSuite(scale = 1, run: RunOptions = {}): Promise<ReferenceFigures> {
  const mib = (n: number) => Math.max(4096, Math.round(n * scale) * 1024 * 1024);
  return {
    anonRandom8x2: await runNative({ size: mib(256), threads: 8, handlers: 2, access: 'random' }, run),
    serial1x1: await runNative({ size: mib(64), threads: 1, handlers: 1, access: 'random' }, run),
    fcRandom4: await runNative({ size: mib(1024), threads: 4, handler: 'fc', access: 'random' }, run),
    memcpy: await runMemcpy(mib(256), run),
    plainFaults: await runPlainFaults({ size: mib(256), threads: 2, access: 'random' }, run),
  };
}

function summaryLine(name: string, r: NativeResult): string {
  return `${name.padEnd(14)} ${r.mode}/${r.type}/${r.kind} ${r.access} ${r.threads}t/${r.handlers}h ` +
    `${Math.round(r.faultsPerSec)} faults/s, p50 ${r.latencyUs.p50.toFixed(1)} µs, p99 ${r.latencyUs.p99.toFixed(1)} µs, ` +
    `${r.mbPerSec.toFixed(0)} MiB/s, mismatches ${r.mismatches}`;
}

/** The command line (bench/native.ts): `suite [scale]`, or `-- <uffd-bench options>` to run the binary. */
export async function nativeMain(argv: string[]): Promise<number> {
  const bin = await buildNative();
  if (typeof bin !== 'string') {
    console.error(bin.skipped);
    return 0;
  }
  if (argv[0] === 'suite') {
    const scale = argv[1] ? Number(argv[1]) : 1;
    const f = await runReferenceSuite(scale, { binary: bin, timeoutMs: 300_000 });
    console.log(summaryLine('anon 8x2', f.anonRandom8x2));
    console.log(summaryLine('serial 1x1', f.serial1x1));
    console.log(summaryLine('fc 4 threads', f.fcRandom4));
    console.log(summaryLine('plain faults', f.plainFaults));
    console.log(`${'memcpy'.padEnd(14)} ${f.memcpy.gibPerSec.toFixed(2)} GiB/s`);
    return 0;
  }
  const args = argv[0] === '--' ? argv.slice(1) : argv;
  const child = spawn(bin, args, { stdio: 'inherit' });
  return new Promise((resolve) => child.on('close', (code) => resolve(code ?? 1)));
}
