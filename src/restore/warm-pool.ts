// A spare set of engine threads kept warm for the next VM (src/engine/threads.ts): started
// before any handshake arrives, so thread start-up, module loading and JIT warm-up are off
// the restore's critical path. Each take() hands the spare over and a fresh one is started
// — once the session that took it ends or after refillDelayMs, whichever comes first, so
// starting it does not compete for the CPUs with the restore that just began.
import { EngineThreads } from '../engine/threads.js';

export interface WarmPoolOptions {
  /** Engine workers per set (the sessions' worker count). */
  workers: number;
  /** Start the next spare at most this long after a take (default 1000 ms). */
  refillDelayMs?: number;
  /** One set only, never refilled (an engine process of the supervisor serves one VM, then exits). */
  once?: boolean;
}

export class WarmPool {
  readonly workers: number;
  private readonly refillDelayMs: number;
  private spare: EngineThreads | null = null;
  /** A once-pool's set after take(): reusable, so its engine's stop leaves it idle, not ended; close() ends it. */
  private handedOut: EngineThreads | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly once: boolean;

  constructor(opts: WarmPoolOptions) {
    this.workers = opts.workers;
    this.once = opts.once ?? false;
    this.refillDelayMs = opts.refillDelayMs ?? 1000;
    this.refill();
  }

  /** Resolves when the current spare is warm (for tests and benchmarks). */
  async ready(): Promise<void> {
    await this.spare?.ready;
  }

  /**
   * Runs `fn` with the spare (warm) without handing it over: a rehearsal engine on it, so
   * that the main thread's start path is compiled before the real VM arrives. Only for a
   * once-pool, whose set is reusable for that reason (it serves the rehearsal, then the VM).
   */
  async rehearse(fn: (threads: EngineThreads) => Promise<void>): Promise<void> {
    const t = this.spare;
    if (!this.once || !t) return;
    await t.ready;
    await fn(t);
  }

  /** The spare (warm, or still warming: either beats a cold start), or undefined once closed. */
  take(): EngineThreads | undefined {
    if (this.closed) return undefined;
    const t = this.spare ?? EngineThreads.start(this.workers);
    this.spare = null;
    if (this.once) {
      this.closed = true;
      this.handedOut = t;
    } else if (!this.timer) {
      this.timer = setTimeout(() => this.refill(), this.refillDelayMs);
      this.timer.unref();
    }
    return t;
  }

  /** Starts the next spare now if there is none (a session ended). */
  refill(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.closed || this.spare) return;
    this.spare = EngineThreads.start(this.workers, { reusable: this.once });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const s = this.spare;
    this.spare = null;
    const h = this.handedOut;
    this.handedOut = null;
    await Promise.all([s?.destroy(), h?.destroy()]);
  }
}
