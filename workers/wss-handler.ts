// Worker entry of the working-set tracker's small dedicated fault handler (see
// src/wss/handler.ts): polls the userfaultfd and a stop eventfd, reads faults in batches and
// resolves each with TrapServer. Runs on its own thread, so the thread that touches the
// tracked memory never waits on itself.
import { parentPort, workerData } from 'node:worker_threads';
import * as C from '../src/kernel/constants.js';
import { eventfdDrain, Poller } from '../src/kernel/memory.js';
import { msgEvent, msgFaultAddress, msgFaultFlags } from '../src/kernel/messages.js';
import { MessageBuffer } from '../src/kernel/userfaultfd.js';
import { K, TrapConfig, TrapServer } from '../src/wss/serve.js';

interface HandlerData extends TrapConfig {
  stopFd: number;
  /** Microseconds to keep re-reading before sleeping in poll (a wake-up costs ~25-30 us here). */
  spinMicros: number;
}

function run(data: HandlerData): void {
  const server = new TrapServer(data);
  const uffd = server.uffd;
  const buf = new MessageBuffer(64);
  const poller = new Poller([data.uffdFd, data.stopFd]);
  const counters = server.counters;
  Atomics.store(counters, K.ready, 1);
  parentPort?.postMessage({ ready: true });
  for (;;) {
    let n = uffd.read(buf);
    if (n === 0 && data.spinMicros > 0) {
      const until = performance.now() + data.spinMicros / 1000;
      while (n === 0 && performance.now() < until) n = uffd.read(buf);
    }
    if (n === 0) {
      Atomics.add(counters, K.sleeps, 1);
      poller.wait(-1);
      if (poller.revents(1)) break;
      continue;
    }
    const t0 = performance.now();
    Atomics.add(counters, K.batches, 1);
    for (let i = 0; i < n; i++) {
      if (msgEvent(buf.view, i) !== C.UFFD_EVENT_PAGEFAULT) continue; // no events negotiated
      try {
        server.serve(msgFaultAddress(buf.view, i), msgFaultFlags(buf.view, i));
      } catch (e) {
        Atomics.add(counters, K.errors, 1);
        parentPort?.postMessage({ error: e instanceof Error ? e.message : String(e) });
        try { server.wakeAll(); } catch { /* the region may be gone */ }
      }
    }
    Atomics.add(counters, K.busyMicros, Math.round((performance.now() - t0) * 1000));
  }
  eventfdDrain(data.stopFd);
}

run(workerData as HandlerData);
