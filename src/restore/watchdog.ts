// A thread that ends the whole process (_exit) if a client's restore does not finish in
// time: a fault nobody serves blocks its thread in the kernel, so only another thread can
// end the process. startWatchdog() runs this module as that thread.
import * as fs from 'node:fs';
import { isMainThread, Worker, workerData } from 'node:worker_threads';

interface WatchdogData {
  role: 'restore-watchdog';
  /** One Int32 word: set to 1 (and notified) when the restore finished. */
  sab: SharedArrayBuffer;
  timeoutMs: number;
  /** Prefix of the message (the client's name). */
  name: string;
}

/** Starts the watchdog; cancel() before timeoutMs has passed keeps the process alive. */
export function startWatchdog(timeoutMs: number, name: string): { cancel(): void } {
  const sab = new SharedArrayBuffer(4);
  const data: WatchdogData = { role: 'restore-watchdog', sab, timeoutMs, name };
  const w = new Worker(__filename, { workerData: data });
  w.unref();
  return {
    cancel() {
      const flag = new Int32Array(sab);
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
    },
  };
}

function watch(d: WatchdogData): void {
  const flag = new Int32Array(d.sab);
  if (Atomics.wait(flag, 0, 0, d.timeoutMs) !== 'timed-out') return;
  fs.writeSync(2, `${d.name}: timed out after ${d.timeoutMs} ms (faults not served?)\n`);
  // The kernel layer (its FFI library) is loaded only now: a thread torn down by the process's
  // exit while it loads the FFI aborts the process (napi_throw), and a restore that ends early must not.
  try {
    const { exitImmediately } = require('../kernel/memory.js') as typeof import('../kernel/memory.js');
    exitImmediately(2);
  } catch (e) {
    fs.writeSync(2, `${d.name} watchdog: ${String(e)}\n`);
  }
  process.kill(process.pid, 'SIGKILL');
}

if (!isMainThread && (workerData as WatchdogData | undefined)?.role === 'restore-watchdog') {
  watch(workerData as WatchdogData);
}
