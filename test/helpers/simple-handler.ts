// A deliberately simple single-threaded userfaultfd handler for tests (the shape of
// Firecracker's on_demand example): poll {uffd, stop fd}; read messages in batches;
// apply REMOVEs first; answer each missing fault with one UFFDIO_COPY of its page from
// the memory file. Runs inside a worker thread (startHandler) so the faulting side —
// a vCPU, reader threads or another process — never waits on the thread that serves it.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as C from '../../src/kernel/constants.js';
import { decodeMessage } from '../../src/kernel/messages.js';
import { bytesAt, eventfd, eventfdSignal, mapAnonymous, memcpy, Poller, close } from '../../src/kernel/memory.js';
import { MessageBuffer, RangeResult, Userfaultfd } from '../../src/kernel/userfaultfd.js';
import { ERRNO } from '../../src/kernel/libc.js';

export interface HandlerRegion { base: number; size: number; offset: number; pageSize: number }

export interface HandlerSpec {
  uffdFd: number;
  regions: HandlerRegion[];
  /** Address of the memory file mapped (read-only is fine) in this process. */
  sourceAddr: number;
  /** The handler stops when this eventfd is signalled. */
  stopFd: number;
  /** What to do on UFFD_EVENT_REMOVE: unregister the range (FC v1.14), answer later faults with zeros, or (wrongly) ignore it. */
  onRemove?: 'unregister' | 'zero' | 'ignore';
  /** Test a client's checking: serve the page holding this address with one byte flipped. */
  corruptAt?: number;
}

export interface HandlerStats {
  faults: number;
  copies: number;
  zeroes: number;
  removes: number;
  eexist: number;
  eagain: number;
  bytesCopied: number;
  /** Anything unexpected (empty in a healthy run). */
  errors: string[];
}

/** The handler loop; returns when stopFd is signalled. Blocks the calling thread. */
export function serveFaults(spec: HandlerSpec): HandlerStats {
  const uffd = Userfaultfd.fromFd(spec.uffdFd);
  const msgs = new MessageBuffer(64);
  const copied = new RangeResult();
  const poller = new Poller([spec.uffdFd, spec.stopFd]);
  const stats: HandlerStats = { faults: 0, copies: 0, zeroes: 0, removes: 0, eexist: 0, eagain: 0, bytesCopied: 0, errors: [] };
  const removed: { start: number; end: number }[] = [];
  let pending: number[] = [];
  const maxPage = Math.max(...spec.regions.map((r) => r.pageSize));
  const scratch = mapAnonymous(maxPage); // zero page source / corrupted copy
  const zeros = mapAnonymous(maxPage, 0, C.PROT_READ);

  const resolve = (addr: number): boolean => {
    const r = spec.regions.find((x) => addr >= x.base && addr < x.base + x.size);
    if (!r) {
      stats.errors.push(`fault at 0x${addr.toString(16)} outside every region`);
      return true;
    }
    const page = addr - ((addr - r.base) % r.pageSize);
    let src = spec.sourceAddr + r.offset + (page - r.base);
    const zero = removed.some((x) => page >= x.start && page < x.end);
    if (zero) src = zeros;
    else if (spec.corruptAt !== undefined && spec.corruptAt >= page && spec.corruptAt < page + r.pageSize) {
      memcpy(scratch, src, r.pageSize);
      const b = bytesAt(scratch + (spec.corruptAt - page), 1);
      b[0] = (b[0] ?? 0) ^ 0x5a;
      src = scratch;
    }
    const done = uffd.copy(page, src, r.pageSize, 0, copied);
    if (done === r.pageSize) {
      if (zero) stats.zeroes++; else stats.copies++;
      stats.bytesCopied += r.pageSize;
      return true;
    }
    if (copied.errno === ERRNO.EEXIST) {
      stats.eexist++;
      return true;
    }
    stats.eagain++;
    return false; // EAGAIN: a REMOVE is unread or the mapping changes; retry after reading events
  };

  for (;;) {
    poller.wait(pending.length ? 1 : -1);
    if (poller.revents(1)) break;
    const n = uffd.read(msgs);
    // REMOVEs first (they may precede, causally, faults read in the same batch).
    for (let i = 0; i < n; i++) {
      const ev = decodeMessage(msgs.view, i);
      if (ev.type !== 'remove') continue;
      stats.removes++;
      if (spec.onRemove === 'ignore') continue;
      if (spec.onRemove === 'zero') removed.push({ start: ev.start, end: ev.end });
      else {
        try {
          uffd.unregister(ev.start, ev.end - ev.start);
        } catch (e) {
          stats.errors.push(`unregister after REMOVE: ${(e as Error).message}`);
        }
      }
    }
    for (let i = 0; i < n; i++) {
      const ev = decodeMessage(msgs.view, i);
      if (ev.type === 'pagefault') {
        stats.faults++;
        pending.push(ev.address);
      } else if (ev.type !== 'remove') {
        stats.errors.push(`unexpected event ${ev.type}`);
      }
    }
    const retry: number[] = [];
    for (const addr of pending) {
      try {
        if (!resolve(addr)) retry.push(addr);
      } catch (e) {
        // ENOENT after an unregister of a removed range: the fault is gone (the kernel retries it).
        if (!/ENOENT/.test((e as Error).message)) stats.errors.push((e as Error).message);
      }
    }
    pending = retry;
  }
  return stats;
}

export interface RunningHandler {
  /** Stops the handler and resolves with its statistics. */
  stop(): Promise<HandlerStats>;
  worker: Worker;
}

/** Runs serveFaults in a worker thread. */
export function startHandler(spec: Omit<HandlerSpec, 'stopFd'>): RunningHandler {
  const stopFd = eventfd();
  const worker = new Worker(__filename, { workerData: { role: 'simple-handler', spec: { ...spec, stopFd } } });
  const result = new Promise<HandlerStats>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`handler worker exited (${code}) without a result`)));
  });
  result.catch(() => undefined);
  return {
    worker,
    async stop() {
      eventfdSignal(stopFd);
      try {
        return await result;
      } finally {
        close(stopFd);
      }
    },
  };
}

if (!isMainThread && (workerData as { role?: string } | undefined)?.role === 'simple-handler') {
  parentPort!.postMessage(serveFaults((workerData as { spec: HandlerSpec }).spec));
}
