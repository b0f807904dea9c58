// Thread CPU time, for the per-fault CPU figures of the engine and the benchmark.
import { addressOf, libc } from './libc.js';

const CLOCK_THREAD_CPUTIME_ID = 3;
const ts = new BigInt64Array(2);
const tsAddr = addressOf(ts);

/** CPU time consumed by the calling thread, in seconds. */
export function threadCpuSeconds(): number {
  libc.clock_gettime(CLOCK_THREAD_CPUTIME_ID, tsAddr);
  return Number(ts[0]) + Number(ts[1]) / 1e9;
}

/** Yields the CPU (used between EAGAIN retries). */
export function yieldCpu(): void {
  libc.sched_yield();
}
