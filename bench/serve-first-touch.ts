// Handshake -> first touch served through a real `uffd-engine serve` (the supervisor and
// its engine processes), VM after VM. restore-bench runs the session code inside its own
// process, warm after its first round; a VM of `serve` meets an engine process whose
// session code has never run, behind a supervisor that hands it over. This measures that.
//
//   node dist/bench/serve-first-touch.js [--vms 12] [--size 64M] [--gap-ms 1000] [--fc] [--json] [-- SERVE OPTIONS]
//
// Each VM is the C workload in external mode (4 random faulting threads, every byte checked)
// connecting to one `serve`; the figures are the client's own clock from sending the
// handshake to its first touch served, and the region's size over the workload's wall time
// (the restore rate through `serve`, e.g. with --size 1G).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { helpText, OptionSpec, parseArgs } from '../src/cli/args.js';
import { spread } from '../src/bench/engine-bench.js';
import { nativeBinary, startExternal, startServe, writeSource } from '../src/bench/native.js';

const CLI = path.resolve(__dirname, '../src/cli/main.js');

const SPEC: OptionSpec = {
  vms: { type: 'number', default: 12, help: 'VMs, one after the other' },
  size: { type: 'size', default: '64M', help: 'guest region of each VM' },
  threads: { type: 'number', default: 4, help: 'faulting threads per VM (random order, every page once)' },
  gapMs: { type: 'number', default: 1000, help: 'pause between two VMs (the next spare engine process starts meanwhile)' },
  fc: { type: 'boolean', default: false, help: "after each VM, the same restore served by Firecracker's example handler (C, one page per fault): the reference, in the same run" },
  json: { type: 'boolean', default: false, help: 'print the results as JSON' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

interface Opts { vms: number; size: number; threads: number; gapMs: number; fc: boolean; json: boolean; help: boolean }

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function main(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const serveArgs = dash >= 0 ? argv.slice(dash + 1) : [];
  const o = parseArgs<Opts & Record<string, unknown>>(dash >= 0 ? argv.slice(0, dash) : argv, SPEC);
  if (o.help) {
    console.log(helpText('serve-first-touch (node dist/bench/serve-first-touch.js [options] [-- SERVE OPTIONS])',
      'Handshake -> first touch served through a real `uffd-engine serve`, VM after VM; every byte checked.', SPEC));
    return 0;
  }
  if (!Number.isInteger(o.vms) || o.vms < 1) throw new Error(`--vms must be a positive integer (got ${o.vms})`);
  await nativeBinary();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-serve-first-touch-'));
  const file = path.join(dir, 'snapshot.mem');
  const sock = path.join(dir, 'serve.sock');
  const log = (s: string): void => { if (!o.json) console.error(s); };
  await writeSource(file, o.size, 7, { timeoutMs: 120_000 });
  const serve = spawn(process.execPath, [CLI, 'serve', '--socket', sock, '--mem-file', file, ...serveArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  let serveErr = '';
  serve.stderr.on('data', (d: Buffer) => { serveErr += d.toString(); });
  const exited = new Promise<void>((r) => serve.once('exit', () => r()));
  try {
    for (let i = 0; !fs.existsSync(sock); i++) {
      if (serve.exitCode !== null || i > 500) throw new Error(`serve did not start listening: ${serveErr.trim()}`);
      await sleep(20);
    }
    await sleep(o.gapMs); // its first spare engine process starts and rehearses
    log(`serve first touch: ${o.vms} VMs of ${o.size / 2 ** 20} MiB, ${o.threads} faulting threads each, ${o.gapMs} ms apart, ${os.cpus().length} CPUs` +
      (serveArgs.length ? `, serve ${serveArgs.join(' ')}` : ''));
    const ms: number[] = [];
    const gib: number[] = [];
    const fcGib: number[] = [];
    let mismatches = 0;
    const workload = { size: o.size, sourceFile: file, seed: 7, threads: o.threads, access: 'random' as const, eventRemove: true };
    /** The same restore served by Firecracker's example handler (uffd-bench --serve --handler fc) on a socket of its own. */
    const fcRestore = async (): Promise<number> => {
      const fcSock = path.join(dir, 'fc.sock');
      const h = await startServe({ socket: fcSock, handler: 'fc', sourceFile: file }, { timeoutMs: 300_000 });
      await h.listening;
      const c = await startExternal({ ...workload, socket: fcSock }, { timeoutMs: 300_000 });
      const [r] = await Promise.all([c.result, h.result]);
      mismatches += r.mismatches;
      return o.size / 2 ** 30 / r.elapsedSec;
    };
    for (let v = 0; v < o.vms; v++) {
      const p = await startExternal({ ...workload, socket: sock }, { timeoutMs: 120_000 });
      const r = await p.result.catch((e: Error) => { throw new Error(`${e.message}\nserve's log:\n${serveErr.trim()}`); });
      const t = (r.handshakeToFirstTouchNs ?? NaN) / 1e6;
      ms.push(t);
      gib.push(o.size / 2 ** 30 / r.elapsedSec);
      mismatches += r.mismatches;
      log(`  VM ${v + 1}: handshake -> first touch served ${t.toFixed(2)} ms, restored ${(gib[v] as number).toFixed(2)} GiB/s ` +
        `(the workload's wall time ${(r.elapsedSec * 1000).toFixed(0)} ms), mismatching pages ${r.mismatches}`);
      await sleep(o.gapMs);
      if (o.fc) {
        fcGib.push(await fcRestore());
        log(`         the same restore by Firecracker's handler: ${(fcGib[v] as number).toFixed(2)} GiB/s`);
        await sleep(o.gapMs);
      }
    }
    const { median, min, max } = spread(ms);
    const rate = spread(gib);
    const fc = fcGib.length ? spread(fcGib) : null;
    const result = {
      vms: o.vms, sizeBytes: o.size, firstTouchMs: ms, medianMs: median, minMs: min, maxMs: max, gibPerSec: gib, medianGibPerSec: rate.median,
      fcGibPerSec: fc ? fcGib : null, medianFcGibPerSec: fc?.median ?? null, vsFc: fc ? rate.median / fc.median : null, mismatches,
    };
    if (o.json) console.log(JSON.stringify(result));
    else {
      console.log(`handshake -> first touch served through serve: median ${median.toFixed(2)} ms (${min.toFixed(2)}–${max.toFixed(2)}) ` +
        `over ${o.vms} VMs; target <= 5 ms ${median <= 5 ? 'met' : 'MISSED'}; mismatching pages ${mismatches}`);
      console.log(`restore (the workload's wall time): median ${rate.median.toFixed(2)} GiB/s (${rate.min.toFixed(2)}–${rate.max.toFixed(2)})` +
        (fc ? `; Firecracker's handler ${fc.median.toFixed(2)} GiB/s (${fc.min.toFixed(2)}–${fc.max.toFixed(2)}): ${(rate.median / fc.median).toFixed(1)}x` : ''));
    }
    return mismatches > 0 ? 1 : 0;
  } finally {
    serve.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: Error) => {
    console.error(`serve-first-touch: ${e.message}`);
    process.exitCode = 1;
  });
}
