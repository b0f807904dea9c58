// Engine threads started before they are needed: a restore server keeps one set warm
// (threads up, modules loaded, the resolver's hot path compiled by a private warm-up,
// warm-up.ts) so that the engine of a VM that connects serves its first fault within a
// millisecond or two of the handshake instead of after thread start-up.
//
//   const t = EngineThreads.start(2);  await t.ready;
//   const engine = await Engine.start({ ..., workers: 2, threads: t });   // consumes them
//
// A reusable set (EngineThreads.start(2, { reusable: true })) serves one engine after
// another: each engine's stop hands the threads back idle; the owner ends them with destroy().
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { ConfigError } from '../kernel/errors.js';
import { BufferRecycler } from './buffer-recycler.js';
import type { EngineSetup } from './layout.js';
import type { WarmData } from './warm-up.js';

export const SHARD_WORKER = path.resolve(__dirname, 'threads/shard-worker.js');
export const DISPATCHER = path.resolve(__dirname, 'threads/dispatcher.js');

export interface EngineThreadsOptions {
  /**
   * Serve one engine after another (default false: the engine that takes them ends them at
   * its stop). A reusable set goes back to idle when its engine stops — the pool threads
   * wait for the next task, the dispatcher for the next setup — and its owner ends it with
   * destroy(). New threads are not free: each one leaves resident memory behind when it
   * ends (bench/thread-churn.ts), so a long-lived user that runs engine after engine (the
   * soak) keeps one set; a restore server still gives each VM a fresh set (isolation).
   */
  reusable?: boolean;
}

/**
 * How long engine threads may take to start: about a second normally, far longer under
 * emulation (QEMU TCG), where UFFD_ENGINE_START_TIMEOUT_MS raises it (scripts/test-kernel.sh).
 */
export function startLimitMs(): number {
  return Number(process.env.UFFD_ENGINE_START_TIMEOUT_MS) || 20_000;
}

/** Engine threads (a piscina pool and a dispatcher) started ahead of the engine(s) that will use them. */
export class EngineThreads {
  readonly workers: number;
  readonly reusable: boolean;
  /** A reusable set's engines hand their per-thread tables on to the next (buffer-recycler.ts). */
  readonly buffers: BufferRecycler | null;
  readonly pool: Piscina;
  /** Resolves once every thread has loaded and finished its warm-up. */
  readonly ready: Promise<void>;
  #dispatcher: Worker;
  #dispatcherAlive = true;
  private readonly data: WarmData;
  private readonly signal: Int32Array;
  /** An engine holds these threads now. */
  #inUse = false;
  /** Taken by an engine (a set that is not reusable cannot be taken again), or destroyed. */
  private taken = false;
  #destroyed = false;
  #startFailed = false;

  private constructor(workers: number, opts: EngineThreadsOptions) {
    if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new ConfigError(`workers must be an integer from 1 to 64 (got ${workers})`);
    this.workers = workers;
    this.reusable = opts.reusable ?? false;
    this.buffers = this.reusable ? new BufferRecycler() : null;
    const data: WarmData = { warm: true, signal: new SharedArrayBuffer(8) };
    this.data = data;
    const signal = new Int32Array(data.signal);
    this.signal = signal;
    this.pool = new Piscina({
      filename: SHARD_WORKER, minThreads: workers, maxThreads: workers, concurrentTasksPerWorker: 1,
      idleTimeout: 2 ** 31 - 1, workerData: data,
      // Tasks arrive as messages, so a thread's event loop turns between two shard tasks.
      // With 'sync' a piscina thread waits for its next task in Atomics.wait inside the
      // last task's promise job: its loop never turns again, and the immediates and the
      // finalizers Node defers to the loop (one set per thrown task) pile up for good.
      atomics: 'disabled',
    });
    this.#dispatcher = this.#startDispatcher();
    const first = this.#dispatcher;
    const failed = new Promise<never>((_, reject) => {
      first.once('error', reject);
      first.once('exit', (code) => { if (!this.taken) reject(new Error(`warm dispatcher exited (${code})`)); });
    });
    failed.catch(() => { this.#startFailed = true; });
    this.ready = (async () => {
      const limitMs = startLimitMs();
      const deadline = Date.now() + limitMs;
      while (Atomics.load(signal, 1) < workers + 1) {
        if (this.taken) return; // taken by an engine (it waits for its threads itself), or destroyed
        if (Date.now() > deadline) throw new Error(`warm engine threads did not start within ${limitMs / 1000} s (set UFFD_ENGINE_START_TIMEOUT_MS on a slow machine)`);
        await Promise.race([sleep(1), failed]);
      }
    })();
    this.ready.catch(() => undefined);
  }

  static start(workers: number, opts: EngineThreadsOptions = {}): EngineThreads {
    return new EngineThreads(workers, opts);
  }

  #startDispatcher(): Worker {
    const w = new Worker(DISPATCHER, { workerData: this.data });
    this.#dispatcherAlive = true;
    w.once('exit', () => { if (this.#dispatcher === w) this.#dispatcherAlive = false; });
    return w;
  }

  get isReady(): boolean {
    return Atomics.load(this.signal, 1) >= this.workers + 1;
  }

  /** An engine serves on these threads now. */
  get inUse(): boolean {
    return this.#inUse;
  }

  /** Hands the dispatcher its setup; the engine uses the threads until it calls release(). */
  take(setup: EngineSetup): { pool: Piscina; dispatcher: Worker } {
    if (this.taken && !this.reusable) throw new Error('these engine threads were already used by an engine (start them with reusable: true to serve one engine after another)');
    if (this.#destroyed) throw new Error('these engine threads were destroyed');
    if (this.#inUse) throw new Error('these engine threads are serving another engine');
    this.taken = true;
    this.#inUse = true;
    this.#dispatcher.postMessage(setup);
    Atomics.store(this.signal, 0, 1);
    Atomics.notify(this.signal, 0);
    return { pool: this.pool, dispatcher: this.#dispatcher };
  }

  /**
   * The engine that took the threads stopped (its shard tasks returned, its dispatcher is
   * done with its setup). A reusable set is idle again; any other set is ended.
   */
  async release(): Promise<void> {
    if (!this.#inUse) return;
    this.#inUse = false;
    if (!this.reusable) {
      await this.#end();
      return;
    }
    // The dispatcher died while serving (the engine ran a cold one in its place): start a
    // new warm one for the next engine.
    if (!this.#dispatcherAlive) this.#dispatcher = this.#startDispatcher();
  }

  /** Ends the threads. Not while an engine serves on them (stop it first); a set an engine took and ended is left as it is. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    if (this.taken && !this.reusable) return; // its engine ends them
    if (this.#inUse) throw new Error('these engine threads are serving an engine: stop it first');
    this.taken = true;
    await this.#end();
  }

  async #end(): Promise<void> {
    this.#destroyed = true;
    // A thread terminated while the FFI library (src/kernel) initialises its native module aborts the whole process
    // (seen under QEMU TCG, where loading takes seconds): let the threads finish loading.
    const deadline = Date.now() + 60_000;
    while (!this.isReady && !this.#startFailed && Date.now() < deadline) await sleep(5);
    Atomics.store(this.signal, 0, 2);
    Atomics.notify(this.signal, 0);
    const d = this.#dispatcher;
    await Promise.all([
      new Promise<void>((r) => { if (!this.#dispatcherAlive || d.threadId < 0) r(); else d.once('exit', () => r()); }),
      this.pool.destroy(),
    ]);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
