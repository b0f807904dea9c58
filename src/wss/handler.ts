// The main-thread handle of the tracker's fault handler: one worker thread
// (workers/wss-handler.ts) that resolves the faults of the anon access trap, of minor-mode
// tracking and of pages the memory manager evicted (see serve.ts for what it does per fault).
// It is small on purpose and dedicated to one region; the parallel engine (src/engine/) can
// take its place by calling TrapServer.serve from its own workers.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { close, eventfd, eventfdSignal } from '../kernel/memory.js';
import { COUNTER_SLOTS, CounterName, readCounters, TrapConfig } from './serve.js';

export interface HandlerOptions extends Omit<TrapConfig, 'counters'> {
  spinMicros?: number;
}

export class TrapHandler {
  readonly counters: Int32Array;
  private readonly worker: Worker;
  private readonly stopFd: number;
  private exited: Promise<number>;
  private stopped = false;
  /** Errors the worker reported (messages). */
  readonly errors: string[] = [];

  private constructor(worker: Worker, stopFd: number, counters: Int32Array) {
    this.worker = worker;
    this.stopFd = stopFd;
    this.counters = counters;
    this.exited = new Promise((resolve) => worker.once('exit', resolve));
    worker.on('message', (m: { error?: string }) => { if (m.error) this.errors.push(m.error); });
    // An uncaught exception in the handler must not take the process down: record it.
    worker.on('error', (e: Error) => { this.errors.push(e.message); });
  }

  static workerPath(): string {
    return path.resolve(__dirname, '../../workers/wss-handler.js');
  }

  /** Starts the handler thread and waits until it is polling. */
  static async start(opts: HandlerOptions): Promise<TrapHandler> {
    const counters = new SharedArrayBuffer(COUNTER_SLOTS * 4);
    const stopFd = eventfd();
    const worker = new Worker(TrapHandler.workerPath(), {
      workerData: { ...opts, counters, stopFd, spinMicros: opts.spinMicros ?? 50 },
    });
    const h = new TrapHandler(worker, stopFd, new Int32Array(counters));
    try {
      await h.ready(worker);
    } catch (e) {
      await worker.terminate();
      close(stopFd);
      throw e;
    }
    return h;
  }

  private ready(worker: Worker): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onMsg = (m: { ready?: boolean }) => { if (m.ready) { cleanup(); resolve(); } };
      const onErr = (e: Error) => { cleanup(); reject(e); };
      const onExit = (code: number) => { cleanup(); reject(new Error(`wss fault handler exited with code ${code} before it was ready`)); };
      const cleanup = () => { worker.off('message', onMsg); worker.off('error', onErr); worker.off('exit', onExit); };
      worker.on('message', onMsg);
      worker.once('error', onErr);
      worker.once('exit', onExit);
    });
  }

  stats(): Record<CounterName, number> {
    return readCounters(this.counters);
  }

  /** Stops the thread (after the faults it is serving) and waits for it to exit. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    eventfdSignal(this.stopFd);
    await this.exited;
    close(this.stopFd);
  }
}
