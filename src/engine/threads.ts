// Engine threads started before they are needed: a restore server keeps one set warm
// (threads up, modules loaded, the resolver's hot path compiled by a private warm-up,
// warm-up.ts) so that the engine of a VM that connects serves its first fault within a
// millisecond or two of the handshake instead of after thread start-up.
//
//   const t = EngineThreads.start(2);  await t.ready;
//   const engine = await Engine.start({ ..., workers: 2, threads: t });   // consumes them
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { ConfigError } from '../kernel/errors.js';
import type { EngineSetup } from './layout.js';
import type { WarmData } from './warm-up.js';

export const SHARD_WORKER = path.resolve(__dirname, 'threads/shard-worker.js');
export const DISPATCHER = path.resolve(__dirname, 'threads/dispatcher.js');

/** Engine threads (a piscina pool and a dispatcher) started ahead of the engine that will use them. */
export class EngineThreads {
  readonly workers: number;
  readonly pool: Piscina;
  readonly dispatcher: Worker;
  /** Resolves once every thread has loaded and finished its warm-up. */
  readonly ready: Promise<void>;
  private readonly signal: Int32Array;
  private taken = false;

  private constructor(workers: number) {
    if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new ConfigError(`workers must be an integer from 1 to 64 (got ${workers})`);
    this.workers = workers;
    const data: WarmData = { warm: true, signal: new SharedArrayBuffer(8) };
    const signal = new Int32Array(data.signal);
    this.signal = signal;
    this.pool = new Piscina({
      filename: SHARD_WORKER, minThreads: workers, maxThreads: workers, concurrentTasksPerWorker: 1,
      idleTimeout: 2 ** 31 - 1, workerData: data,
    });
    this.dispatcher = new Worker(DISPATCHER, { workerData: data });
    const failed = new Promise<never>((_, reject) => {
      this.dispatcher.once('error', reject);
      this.dispatcher.once('exit', (code) => { if (!this.taken) reject(new Error(`warm dispatcher exited (${code})`)); });
    });
    failed.catch(() => undefined);
    this.ready = (async () => {
      const deadline = Date.now() + 20_000;
      while (Atomics.load(signal, 1) < workers + 1) {
        if (this.taken) return; // taken by an engine (it waits for its threads itself), or destroyed
        if (Date.now() > deadline) throw new Error('warm engine threads did not start within 20 s');
        await Promise.race([sleep(1), failed]);
      }
    })();
    this.ready.catch(() => undefined);
  }

  static start(workers: number): EngineThreads {
    return new EngineThreads(workers);
  }

  get isReady(): boolean {
    return Atomics.load(this.signal, 1) >= this.workers + 1;
  }

  /** Hands the dispatcher its setup (once); the engine owns the threads from now on. */
  take(setup: EngineSetup): { pool: Piscina; dispatcher: Worker } {
    if (this.taken) throw new Error('these engine threads were already used by an engine');
    this.taken = true;
    this.dispatcher.postMessage(setup);
    Atomics.store(this.signal, 0, 1);
    Atomics.notify(this.signal, 0);
    return { pool: this.pool, dispatcher: this.dispatcher };
  }

  /** Ends threads that no engine took. */
  async destroy(): Promise<void> {
    if (this.taken) return;
    this.taken = true;
    Atomics.store(this.signal, 0, 2);
    Atomics.notify(this.signal, 0);
    await Promise.all([
      new Promise<void>((r) => { if (this.dispatcher.threadId < 0) r(); else this.dispatcher.once('exit', () => r()); }),
      this.pool.destroy(),
    ]);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
