// Clocks: the per-fault path's µs clock, monotonic ms, and thread CPU time for the per-fault
// CPU figures of the engine and the benchmark. One preallocated timespec, no BigInt.
import { addressOf, libc } from './libc.js';

const CLOCK_MONOTONIC = 1;
const CLOCK_THREAD_CPUTIME_ID = 3;
// struct timespec as four u32 (tv_sec low, high; tv_nsec; padding), read without BigInt.
const clock = new Uint32Array(4);
const clockAddr = addressOf(clock);

/**
 * CLOCK_MONOTONIC in µs, modulo 2^32, as an int32: a small integer, which V8 never boxes
 * (a larger number crossing a call it did not inline becomes a fresh heap object). The
 * clock is system-wide, so stamps compare across threads; `(later - earlier) | 0` is the
 * interval for any interval under 35 minutes. The per-fault path's clock.
 */
export function monoMicros32(): number {
  libc.clock_gettime(CLOCK_MONOTONIC, clockAddr);
  return (Math.imul(clock[0] as number, 1000000) + (((clock[2] as number) / 1000) | 0)) | 0;
}

/** Monotonic ms (CLOCK_MONOTONIC), for deadlines; a double, so not for the per-fault path (see monoMicros32). */
export function monotonicMs(): number {
  libc.clock_gettime(CLOCK_MONOTONIC, clockAddr);
  return (clock[1] as number * 4294967296 + (clock[0] as number)) * 1000 + (clock[2] as number) / 1e6;
}

/** CPU time consumed by the calling thread, in seconds. */
export function threadCpuSeconds(): number {
  libc.clock_gettime(CLOCK_THREAD_CPUTIME_ID, clockAddr);
  return (clock[1] as number) * 4294967296 + (clock[0] as number) + (clock[2] as number) / 1e9;
}

/** Yields the CPU (used between EAGAIN retries). */
export function yieldCpu(): void {
  libc.sched_yield();
}
