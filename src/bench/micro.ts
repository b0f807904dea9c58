// Micro-benchmarks of the engine's per-fault building blocks, with tinybench:
//   - one FFI call into libc (getpid: the call + the cheapest syscall), one ioctl on a userfaultfd
//     (UFFDIO_WAKE on a registered page nobody waits on; UFFDIO_COPY answered EEXIST),
//     read(2) of an empty non-blocking uffd (EAGAIN): the dispatcher's idle read;
//   - message decode (msgEvent + msgFaultAddress + msgFaultFlags over a MessageBuffer);
//   - the SAB ring: stage + publish + pop of one entry, and of a batch of 64;
//   - the page-state table: one claim (PageStates.transition, a compare-and-swap);
//   - shard routing as the dispatcher does it (region row, global page, stripe, shard);
//   - nowMs() (the per-batch timestamp) and threadCpuSeconds().
// Each task runs an inner loop of `ops` operations per call so that the timer's own cost
// (tens of ns) does not swamp operations of a few ns; figures are ns per operation.
//
//   node dist/bench/micro.js [--time MS] [--json]       or   uffd-engine bench --micro
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, SIZEOF_UFFD_MSG, UFFD_EVENT_PAGEFAULT } from '../kernel/constants.js';
import { getpid, mmap, munmap } from '../kernel/memory.js';
import { msgEvent, msgFaultAddress, msgFaultFlags, writeU64 } from '../kernel/messages.js';
import { threadCpuSeconds } from '../kernel/time.js';
import { MessageBuffer, Userfaultfd } from '../kernel/userfaultfd.js';
import * as L from '../engine/layout.js';
import { Fault, nowUs, Resolver } from '../engine/resolver.js';
import { scratchSetup } from '../engine/warm-up.js';
import { PAGE_FILLING, PAGE_MISSING, PageStates, Ring } from '../engine/shared.js';

export interface MicroResult {
  name: string;
  /** Mean ns per operation. */
  nsPerOp: number;
  /** Median ns per operation (per call, divided by ops). */
  p50NsPerOp: number;
  /** Relative margin of error of the mean, %. */
  rme: number;
  /** Calls measured (each `ops` operations). */
  samples: number;
  ops: number;
}

interface Task { name: string; ops: number; fn: () => void }

export async function runMicro(opts: { timeMs?: number; filter?: RegExp } = {}): Promise<MicroResult[]> {
  const { Bench } = await import('tinybench');
  const tasks: Task[] = [];
  const cleanup: (() => void)[] = [];
  try {
    // ---- kernel calls ----
    tasks.push({ name: 'FFI call: getpid()', ops: 100, fn: () => { for (let i = 0; i < 100; i++) getpid(); } });
    const uffd = Userfaultfd.create();
    cleanup.push(() => uffd.close());
    const len = 1024 * 1024;
    const region = mmap(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    cleanup.push(() => munmap(region, len));
    const src = mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    cleanup.push(() => munmap(src, 4096));
    uffd.register(region, len, ['missing']);
    uffd.copy(region, src, 4096); // page 0 present: later copies answer EEXIST
    tasks.push({ name: 'ioctl UFFDIO_WAKE (1 page, no waiter)', ops: 50, fn: () => { for (let i = 0; i < 50; i++) uffd.wake(region + 4096, 4096); } });
    tasks.push({
      name: 'ioctl UFFDIO_COPY 4 KiB -> EEXIST', ops: 50,
      fn: () => { for (let i = 0; i < 50; i++) uffd.copy(region, src, 4096); },
    });
    const rbuf = new MessageBuffer(256);
    tasks.push({ name: 'read(2) of an empty uffd (EAGAIN)', ops: 50, fn: () => { for (let i = 0; i < 50; i++) uffd.read(rbuf); } });

    // ---- message decode ----
    const mb = new MessageBuffer(256);
    for (let i = 0; i < 256; i++) {
      mb.view.setUint8(i * SIZEOF_UFFD_MSG, UFFD_EVENT_PAGEFAULT);
      mb.view.setUint32(i * SIZEOF_UFFD_MSG + 8, i & 1, true);
      writeU64(mb.view, i * SIZEOF_UFFD_MSG + 16, 0x7f0000000000 + i * 4096);
    }
    let sink = 0;
    tasks.push({
      name: 'decode uffd_msg (event + address + flags)', ops: 256,
      fn: () => {
        const dv = mb.view;
        for (let i = 0; i < 256; i++) {
          if (msgEvent(dv, i) === UFFD_EVENT_PAGEFAULT) sink += msgFaultAddress(dv, i) + msgFaultFlags(dv, i);
        }
      },
    });

    // ---- ring ----
    const ring = new Ring(Ring.allocate(4096));
    const staged = { addr: 0, flags: 0, readUs: 1 };
    tasks.push({
      name: 'ring: stage + publish + pop (1 entry)', ops: 100,
      fn: () => {
        for (let k = 0; k < 100; k++) {
          staged.addr = 0x7f0000000000 + k * 4096;
          ring.stage(0, staged);
          ring.publish(1);
          const h = ring.head;
          sink += ring.addrAt(h) + ring.flagsAt(h) + ring.timeAt(h);
          ring.commit(h + 1);
        }
      },
    });
    tasks.push({
      name: 'ring: stage 64 + publish + pop 64 (per entry)', ops: 64 * 4,
      fn: () => {
        for (let k = 0; k < 4; k++) {
          for (let j = 0; j < 64; j++) {
            staged.addr = 0x7f0000000000 + j * 4096;
            ring.stage(j, staged);
          }
          ring.publish(64);
          const h = ring.head;
          const t = ring.tail;
          for (let i = h; i !== t; i++) sink += ring.addrAt(i);
          ring.commit(t);
        }
      },
    });

    // ---- page states ----
    const pages = 1 << 20;
    const states = new PageStates(PageStates.allocate(pages), pages);
    let g = 0;
    tasks.push({
      name: 'page state claim: transition MISSING->FILLING (CAS)', ops: 200,
      fn: () => {
        // 100 claims and 100 releases, so the table never runs out of MISSING pages.
        for (let i = 0; i < 100; i++) {
          const p = (g + i * 17) & (pages - 1);
          states.transition(p, PAGE_MISSING, PAGE_FILLING);
          states.transition(p, PAGE_FILLING, PAGE_MISSING);
        }
        g = (g + 1) & (pages - 1);
      },
    });

    // ---- shard routing (as src/engine/threads/dispatcher.ts route()) ----
    const setup = fakeSetup(uffd.fd, 4, 2);
    const resolver = new Resolver(setup, 0, true);
    const starts = [0x7f0000000000, 0x7f1000000000, 0x7f2000000000, 0x7f3000000000];
    const rings = setup.workers;
    let shardSink = 0;
    const f = new Fault();
    tasks.push({
      name: 'shard routing: region row + page + stripe + shard', ops: 256,
      fn: () => {
        for (let i = 0; i < 256; i++) {
          f.addr = (starts[i & 3] ?? 0) + ((i * 7919) & 0xffff) * 4096;
          resolver.table.locate(f);
          shardSink += Math.floor((resolver.table.stateBase(f.row) + f.local) / setup.stripePages) % rings;
        }
      },
    });

    // ---- clocks ----
    tasks.push({ name: 'nowUs() (the per-fault clock: CLOCK_MONOTONIC via FFI, int32 µs)', ops: 100, fn: () => { for (let i = 0; i < 100; i++) sink += nowUs(); } });
    tasks.push({ name: 'performance.now() (for comparison: boxes its result)', ops: 100, fn: () => { for (let i = 0; i < 100; i++) sink += performance.now(); } });
    tasks.push({ name: 'threadCpuSeconds() (clock_gettime via FFI)', ops: 100, fn: () => { for (let i = 0; i < 100; i++) sink += threadCpuSeconds(); } });

    const selected = opts.filter ? tasks.filter((t) => opts.filter?.test(t.name)) : tasks;
    const bench = new Bench({ time: opts.timeMs ?? 300, warmupTime: 50 });
    for (const t of selected) bench.add(t.name, t.fn);
    await bench.run();
    const out: MicroResult[] = [];
    bench.tasks.forEach((task, i) => {
      const t = selected[i];
      const r = task.result;
      if (!t) throw new Error(`tinybench reported a task "${task.name}" that was not added`);
      if (r.state !== 'completed') {
        throw new Error(`micro-benchmark "${t.name}" ${r.state}${r.state === 'errored' ? `: ${r.error.message}` : ''}`);
      }
      out.push({
        name: t.name, ops: t.ops, samples: r.latency.samplesCount ?? 0,
        nsPerOp: (r.latency.mean * 1e6) / t.ops, p50NsPerOp: (r.latency.p50 * 1e6) / t.ops, rme: r.latency.rme,
      });
    });
    void sink;
    void shardSink;
    return out;
  } finally {
    for (const c of cleanup.reverse()) {
      try { c(); } catch { /* best effort */ }
    }
  }
}

/** An EngineSetup with `regions` 64 GiB rows, enough for a Resolver to route (it is never started). */
function fakeSetup(uffdFd: number, regions: number, workers: number): L.EngineSetup {
  const rows = Array.from({ length: regions }, (_, r) => ({ start: 0x7f0000000000 + r * 0x1000000000, size: 64 * 2 ** 30, srcAddr: 0 }));
  return { ...scratchSetup(uffdFd, rows, workers), states: PageStates.allocate(16), totalPages: 16 }; // a table of 16 pages: the benchmark claims none
}

export function formatMicro(results: MicroResult[]): string {
  const w = Math.max(...results.map((r) => r.name.length)) + 2;
  const lines = [`${'operation'.padEnd(w)}${'ns/op'.padStart(10)}${'p50 ns/op'.padStart(12)}${'±%'.padStart(8)}${'calls'.padStart(9)}`];
  for (const r of results) {
    lines.push(`${r.name.padEnd(w)}${r.nsPerOp.toFixed(1).padStart(10)}${r.p50NsPerOp.toFixed(1).padStart(12)}` +
      `${r.rme.toFixed(1).padStart(8)}${String(r.samples).padStart(9)}`);
  }
  return lines.join('\n');
}

export async function mainMicro(argv: string[]): Promise<number> {
  let timeMs = 300;
  let json = false;
  let filter: RegExp | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--time') timeMs = Number(argv[++i]);
    else if (argv[i] === '--json') json = true;
    else if (argv[i] === '--filter') filter = new RegExp(argv[++i] ?? '', 'i');
    else if (argv[i] === '--help' || argv[i] === '-h') {
      console.log('usage: node dist/bench/micro.js [--time MS per task] [--filter REGEX] [--json]');
      return 0;
    } else throw new Error(`unknown option ${argv[i]}`);
  }
  if (!Number.isFinite(timeMs) || timeMs <= 0) throw new Error('--time needs a positive number of milliseconds');
  const results = await runMicro({ timeMs, filter });
  console.log(json ? JSON.stringify(results, null, 2) : formatMicro(results));
  return 0;
}
