// Supervised serve (src/restore/supervisor.ts, engine-process.ts): engine processes are
// SIGKILLed at chosen points of real restores — as a session is handed to them, while
// demand faults are served, during background population, with a balloon REMOVE applied,
// read and journaled but not applied, or still unread — and every Firecracker-style client must end with every byte checked
// and no thread waiting (the client's watchdog would exit 2). Then the supervisor itself
// is killed (the documented behaviours: the engine completes the VM, or with
// --on-supervisor-death fail poisons what is missing), metrics and JSON logs through the built CLI.
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnFcClient, FcClientOptions } from '../src/restore/fc-client.js';
import { RestoreServer } from '../src/restore/server.js';
import { Supervisor, SupervisorEvent } from '../src/restore/supervisor.js';
import { mayLeaveIdle } from '../src/kernel/sched.js';
import { SCHED_IDLE, SCHED_OTHER, threadPolicies } from './helpers/sched.js';
import { limit, TIME_SCALE } from './helpers/limits.js';
import { writeSnapshot } from './helpers/restore-fixtures.js';

const MiB = 1 << 20;
const CLI = path.resolve(__dirname, '../src/cli/main.js');
const TOUCH_CLIENT = path.resolve(__dirname, '../src/cli/touch-client.js');

// The kill loops' restore counts. Under emulation (TCG, ~10x slower) a 60-restore loop takes
// half an hour; there each loop runs a fifth of its restores (every kill point still comes
// round at least twice) and its thresholds scale with it. The host runs them all.
const restores = (n: number, cycle: number): number => (TIME_SCALE > 1 ? Math.max(2 * cycle, Math.round(n / 5 / cycle) * cycle) : n);
const RESTORES_OFF = restores(60, 5);
const RESTORES_JOURNAL = restores(12, 2);
const RESTORES_ON = restores(40, 4);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean, what: string, timeoutMs = limit(30_000)): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}
/** Every thread of pid is stopped (SIGSTOP takes effect asynchronously: a thread inside a syscall finishes it first). */
const stopped = (pid: number): boolean => {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).every((t) => /^\d+ \(.*\) [tT] /.test(fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8')));
  } catch {
    return true; // gone
  }
};
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const kill = (pid: number | undefined, sig: NodeJS.Signals = 'SIGKILL'): boolean => {
  if (!pid) return false;
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
};

type KillPoint = 'handshake' | 'demand' | 'remove-applied' | 'remove-unread' | 'remove-read' | 'background';

describe('supervised serve: engine processes die, the VM goes on', function () {
  this.timeout(limit(600_000));
  let dir: string;
  let memPath: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-sup-'));
    memPath = path.join(dir, 'snapshot.mem');
    writeSnapshot(memPath, 16 * MiB);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /**
   * Runs `n` restores (4 at a time) through one supervisor, killing each session's engine
   * process at the point `pointOf(i)` names; every client must verify every byte.
   */
  async function killLoop(prefetch: 'off' | 'on', n: number, pointOf: (i: number) => KillPoint, client: Partial<FcClientOptions>,
    remove?: string, engineEnv?: Record<string, string>): Promise<Supervisor> {
    const sock = path.join(dir, `k-${prefetch}.sock`);
    const events: SupervisorEvent[] = [];
    const listeners = new Set<(e: SupervisorEvent) => void>();
    const sup = new Supervisor({
      engine: { workers: 1, prefetch, memFileSize: 16 * MiB, record: false, detachWhenPopulated: true },
      spares: 3, maxRestarts: 5, engineEnv,
      onEvent: (e) => {
        if (e.type !== 'engine-log') events.push(e);
        for (const l of listeners) l(e);
      },
    });
    const server = RestoreServer.listen({ socketPath: sock, memFilePath: memPath, serveConnection: sup.serve });
    const running = server.run();
    const next = (pred: (e: SupervisorEvent) => boolean): Promise<SupervisorEvent> => new Promise((resolve) => {
      const l = (e: SupervisorEvent): void => { if (pred(e)) { listeners.delete(l); resolve(e); } };
      listeners.add(l);
    });
    const failures: string[] = [];
    const one = async (i: number): Promise<void> => {
      const point = pointOf(i);
      const gate = point === 'remove-unread' ? path.join(dir, `gate-${prefetch}-${i}`) : undefined;
      const pid = (): number | undefined => (id === undefined ? undefined : sup.enginePid(id));
      let id: number | undefined;
      // 'remove-read': the engine process kills itself (a failpoint) right after it journaled
      // the REMOVE it read, before applying it.
      const c = spawnFcClient({ socket: sock, memFile: memPath, timeoutMs: limit(60_000), removeGate: gate, ...client,
        remove: point.startsWith('remove') ? remove : undefined });
      const peer = c.child.pid;
      const assigned = next((e) => e.type === 'engine-assigned' && e.generation === 1 && sup.snapshot().live.some((l) => l.id === e.id && l.peerPid === peer));
      const started = (sid: number) => next((e) => e.type === 'engine-started' && e.id === sid);
      const a = await Promise.race([assigned, c.done.then(() => null)]);
      if (a && a.type === 'engine-assigned') {
        id = a.id;
        if (point === 'handshake') kill(a.pid);
        else if (point === 'demand' || point === 'background') {
          await Promise.race([started(a.id), c.done]);
          await sleep(Math.random() * (point === 'demand' ? 150 : 60));
          kill(pid());
        } else if (point === 'remove-applied') {
          await Promise.race([next((e) => e.type === 'removed' && e.id === a.id), c.done]);
          await sleep(Math.random() * 10);
          kill(pid());
        } else if (point === 'remove-read') {
          // Nothing to do here: the failpoint kills the engine once it reads the REMOVE.
        } else if (gate) {
          await Promise.race([waitFor(() => fs.existsSync(`${gate}.ready`), 'the client to reach its REMOVE', limit(60_000)), c.done]);
          const p = pid();
          kill(p, 'SIGSTOP'); // the REMOVE the client sends now stays unread
          if (p) await waitFor(() => stopped(p), 'the engine process to stop');
          fs.writeFileSync(gate, '');
          await sleep(30);
          kill(p);
          kill(p, 'SIGCONT');
        }
      }
      const r = await c.done;
      if (r.code !== 0 || !r.result?.ok) failures.push(`run ${i} (${point}): exit ${r.code} ${r.signal ?? ''} ${r.stderr.trim()} ${r.stdout.trim()}`);
    };
    try {
      for (let i = 0; i < n; i += 4) await Promise.all(Array.from({ length: Math.min(4, n - i) }, (_, k) => one(i + k)));
      await waitFor(() => sup.snapshot().sessionsActive === 0, 'every session to end');
    } finally {
      await sup.shutdown('abandon');
      await server.close();
      await sup.close();
      await running;
    }
    assert.deepEqual(failures, [], failures.join('\n'));
    // Every death here is one of ours: an engine killed for silence would be counted too.
    const silent = events.filter((e) => e.type === 'engine-unresponsive');
    assert.equal(silent.length, 0, `engine processes killed as unresponsive: ${JSON.stringify(silent)}`);
    const s = sup.summaries;
    assert.equal(s.length, n, 'one summary per restore');
    for (const x of s) assert.equal(x.errors, 0, `session ${x.id}: ${x.errors} fill errors`);
    return sup;
  }

  it(`SIGKILL of the engine process at the hand-over, during demand faults, with a REMOVE applied or unread (${RESTORES_OFF} restores, prefetch off)`, async () => {
    const n = RESTORES_OFF;
    const points: KillPoint[] = ['handshake', 'demand', 'remove-applied', 'remove-unread', 'demand'];
    const sup = await killLoop('off', n, (i) => points[i % points.length] ?? 'demand', { regionSize: 4 * MiB, threads: 2 }, '0:1M:256K');
    const snap = sup.snapshot();
    // Kills at the hand-over and at a REMOVE always hit a live engine (3 points in 5); the demand ones nearly always.
    const sure = (n / 5) * 3;
    assert.ok(snap.restarts >= sure, `only ${snap.restarts} engine deaths in ${n} restores`);
    // A death after the VM hung up (a demand kill as the client exits) ends the session instead.
    assert.ok(snap.handovers <= snap.restarts && snap.handovers >= sure, `${snap.handovers} hand-overs for ${snap.restarts} deaths`);
    assert.ok(sup.summaries.filter((x) => x.pages.zeroFilled > 0).length >= n / 5, 'removed ranges read zeros (zero-filled by the engine that took over)');
  });

  it(`SIGKILL of the engine process with a REMOVE read and journaled but not applied: the next engine serves that range zeros (${RESTORES_JOURNAL} restores)`, async () => {
    const n = RESTORES_JOURNAL;
    const sup = await killLoop('off', n, () => 'remove-read', { regionSize: 4 * MiB, threads: 2 }, '0:1M:256K',
      { UFFD_ENGINE_FAILPOINT: 'kill-after-remove-journal' });
    const snap = sup.snapshot();
    // Every engine that read a REMOVE died at the failpoint; the one after it reads none.
    assert.equal(snap.restarts, n, `${snap.restarts} engine deaths in ${n} restores`);
    assert.equal(snap.handovers, n);
    for (const x of sup.summaries) {
      assert.equal(x.engineRestarts, 1, `session ${x.id}`);
      // 256 KiB removed: the next engine zero-fills what the client touches there (the
      // client checks those pages read zeros), and never copies the snapshot into them.
      assert.ok(x.pages.zeroFilled > 0, `session ${x.id}: the removed range was not zero-filled`);
    }
  });

  it(`SIGKILL of the engine process at the hand-over and during background population (${RESTORES_ON} restores, prefetch on)`, async () => {
    const n = RESTORES_ON;
    const points: KillPoint[] = ['background', 'handshake', 'background', 'background'];
    const sup = await killLoop('on', n, (i) => points[i % points.length] ?? 'background', { regionSize: 16 * MiB, threads: 2 });
    const snap = sup.snapshot();
    // The hand-over kills (1 in 4) always hit a live engine.
    assert.ok(snap.restarts >= n / 4, `only ${snap.restarts} engine deaths in ${n} restores`);
    assert.ok(sup.summaries.some((x) => x.engineRestarts && x.eexist + x.pages.total > 0));
  });

  it('--max-restarts exceeded: the session is given up and the connection closed, so a watching client fails loudly', async () => {
    const sock = path.join(dir, 'giveup.sock');
    const events: SupervisorEvent[] = [];
    const sup = new Supervisor({
      engine: { workers: 1, prefetch: 'off', memFileSize: 16 * MiB, record: false, detachWhenPopulated: true },
      maxRestarts: 0, onEvent: (e) => events.push(e),
    });
    const server = RestoreServer.listen({ socketPath: sock, memFilePath: memPath, serveConnection: sup.serve });
    const running = server.run();
    try {
      // At its start gate the client has touched nothing: it cannot finish before the kill
      // (it once did, in 146 ms), and every page is left to the engine that is killed.
      const gate = path.join(dir, 'giveup-gate');
      const c = spawnFcClient({ socket: sock, memFile: memPath, regionSize: 8 * MiB, threads: 1, timeoutMs: limit(60_000), onHandlerHangup: 'fail', startGate: gate });
      await waitFor(() => events.some((e) => e.type === 'engine-started') && fs.existsSync(`${gate}.ready`), 'the engine to serve, the client at its gate');
      kill(sup.enginePid(1));
      const r = await c.done;
      assert.equal(r.code, 3, `${r.stderr}${r.stdout}`);
      assert.match(r.stderr, /hung up with \d+ page\(s\) never served/);
      assert.ok(events.some((e) => e.type === 'gave-up' && e.restarts === 1));
      assert.match(sup.summaries[0]?.error ?? '', /gave up after 1 engine process deaths/);
      assert.equal(sup.snapshot().gaveUp, 1);
    } finally {
      await sup.shutdown('abandon');
      await server.close();
      await sup.close();
      await running;
    }
  });

  it('a spare warms up on SCHED_IDLE and is back on SCHED_OTHER once warm; the spare that replaces one a VM took starts after that VM is populated', async function () {
    if (!mayLeaveIdle()) this.skip(); // (root here) without CAP_SYS_NICE spares start at normal priority
    const big = path.join(dir, 'idle-spares.mem');
    writeSnapshot(big, 128 * MiB); // populated in ~50-100 ms here: longer than the refill delay below
    const sock = path.join(dir, 'idle.sock');
    const events: { e: SupervisorEvent; at: number; policies?: number[] }[] = [];
    const sup = new Supervisor({
      engine: { workers: 1, prefetch: 'on', memFileSize: 128 * MiB, record: false, detachWhenPopulated: true, warm: true }, // as serve runs them
      spares: 1, spareDelayMs: 0,
      // Read at the event itself: the supervisor puts a spare on SCHED_IDLE as it spawns it.
      onEvent: (e) => { if (e.type !== 'engine-log') events.push({ e, at: Date.now(), policies: e.type === 'engine-spawned' ? threadPolicies(e.pid) : undefined }); },
    });
    const server = RestoreServer.listen({ socketPath: sock, memFilePath: big, serveConnection: sup.serve });
    const running = server.run();
    try {
      await waitFor(() => events.some((x) => x.e.type === 'engine-spawned'), 'the first spare');
      const first = events.find((x) => x.e.type === 'engine-spawned') as { e: { pid: number }; policies: number[] };
      assert.ok(first.policies.length > 0 && first.policies.every((p) => p === SCHED_IDLE), `the spare's threads at spawn: policies ${first.policies}`);
      // Warm: its pool threads up (more threads than Node's own), every one of them back on SCHED_OTHER.
      await waitFor(() => { const ps = threadPolicies(first.e.pid); return ps.length > 8 && ps.every((p) => p === SCHED_OTHER); },
        'the spare to be warm and back on SCHED_OTHER');
      const c = spawnFcClient({ socket: sock, memFile: big, regionSize: 128 * MiB, threads: 2, timeoutMs: limit(60_000) });
      const r = await c.done;
      assert.equal(r.code, 0, `${r.stderr}${r.stdout}`);
      assert.ok(r.result?.ok, 'every byte checked');
      await waitFor(() => events.filter((x) => x.e.type === 'engine-spawned').length >= 2, 'the replacement spare');
      const assigned = events.findIndex((x) => x.e.type === 'engine-assigned');
      const populated = events.findIndex((x) => x.e.type === 'populated');
      const replacement = events.findIndex((x, i) => i > assigned && x.e.type === 'engine-spawned');
      assert.ok(assigned >= 0 && populated > assigned, `events: ${events.map((x) => x.e.type).join(', ')}`);
      assert.ok(replacement > populated, `the replacement spare started before the VM was populated: ${events.map((x) => x.e.type).join(', ')}`);
      const rep = events[replacement] as { policies: number[] };
      assert.ok(rep.policies.every((p) => p === SCHED_IDLE), `the replacement's threads at spawn: policies ${rep.policies}`);
    } finally {
      await sup.shutdown('abandon');
      await server.close();
      await sup.close();
      await running;
      fs.rmSync(big, { force: true });
    }
  });

  const clis: ChildProcess[] = [];
  afterEach(() => {
    // A failed assertion must not leave a server (and its engine processes) running.
    for (const c of clis.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });

  /** The built CLI with JSON logs; resolves the stderr lines as they come. */
  function runServe(args: string[]): { child: ChildProcess; lines: () => Record<string, unknown>[]; err: () => string; done: Promise<number | null> } {
    const child = spawn(process.execPath, [CLI, 'serve', '--log-format', 'json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    clis.push(child);
    let err = '';
    child.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
    child.stdout!.resume();
    const done = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    const lines = (): Record<string, unknown>[] => err.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    return { child, lines, err: () => err, done };
  }
  const eventOf = (lines: Record<string, unknown>[], type: string): Record<string, unknown> | undefined => lines.find((l) => l.event === type);

  it('supervisor SIGKILLed: the engine process completes the restore by itself; supervisor and engine SIGKILLed: a client watching its socket fails loudly', async () => {
    const sock = path.join(dir, 'cli.sock');
    // 1. Only the supervisor dies: its engine process fills what is left, then exits.
    let cli = runServe(['--socket', sock, '--mem-file', memPath, '--prefetch', 'off']);
    await waitFor(() => /"listening"/.test(cli.err()), 'the CLI to listen');
    let c = spawnFcClient({ socket: sock, memFile: memPath, regionSize: 8 * MiB, threads: 2, timeoutMs: limit(60_000), onHandlerHangup: 'fail' });
    await waitFor(() => !!eventOf(cli.lines(), 'engine-started'), 'the engine to serve');
    const engine = eventOf(cli.lines(), 'engine-assigned')!.pid as number;
    cli.child.kill('SIGKILL');
    let r = await c.done;
    assert.equal(r.code, 0, `${r.stderr}${r.stdout}`);
    assert.equal(r.result!.pagesChecked, 2048);
    await waitFor(() => !alive(engine), 'the orphaned engine process to exit after completing');
    await cli.done;

    // 2. Supervisor and engine die: nobody can serve. The VMM's uffd keeps the ranges
    // registered, so its threads would wait forever; the connection's hang-up is the
    // only signal, and a client that watches it fails at once instead of waiting.
    // The client waits at a gate after its handshake, every page still missing: it cannot
    // have finished before the kill (it once did, in the ~0.4 s the test took to see the
    // engine start), and the hang-up is what it must see.
    fs.rmSync(sock, { force: true });
    cli = runServe(['--socket', sock, '--mem-file', memPath, '--prefetch', 'off']);
    await waitFor(() => /"listening"/.test(cli.err()), 'the CLI to listen');
    const gate = path.join(dir, 'start-gate');
    c = spawnFcClient({ socket: sock, memFile: memPath, regionSize: 8 * MiB, threads: 2, timeoutMs: limit(60_000), onHandlerHangup: 'fail', startGate: gate });
    await waitFor(() => !!eventOf(cli.lines(), 'engine-started') && fs.existsSync(`${gate}.ready`), 'the engine to serve, the client at its gate');
    const pid = eventOf(cli.lines(), 'engine-assigned')!.pid as number;
    const spares = cli.lines().filter((l) => l.event === 'engine-spawned').map((l) => l.pid as number);
    const t0 = Date.now();
    cli.child.kill('SIGKILL');
    kill(pid);
    r = await c.done;
    assert.equal(r.code, 3, `${r.stderr}${r.stdout}`);
    assert.match(r.stderr, /hung up with 2048 page\(s\) never served/, 'every page was still missing');
    assert.ok(Date.now() - t0 < limit(30_000), 'failed at the hang-up, not at the watchdog');
    await cli.done;
    await waitFor(() => spares.every((p) => !alive(p)), 'the spare engine processes to exit with their supervisor');
  });

  it('--on-supervisor-death fail: the supervisor SIGKILLed, its engine poisons what the VM does not have and detaches: a touch there is SIGBUS, not a hang', async () => {
    const sock = path.join(dir, 'fail.sock');
    const cli = runServe(['--socket', sock, '--mem-file', memPath, '--prefetch', 'off', '--on-supervisor-death', 'fail']);
    await waitFor(() => /"listening"/.test(cli.err()), 'the CLI to listen');
    // The client registers 8 MiB, sends the handshake, then waits for a line on stdin
    // before it touches anything: every page is still missing when the supervisor dies.
    const client = spawn(process.execPath, [TOUCH_CLIENT, '--socket', sock, '--mem-file', memPath, '--region-size', '8M',
      '--wait-stdin', '--touch', '[[5]]', '--timeout-ms', String(limit(60_000))], { stdio: ['pipe', 'pipe', 'pipe'] });
    clis.push(client);
    let out = '';
    let err = '';
    client.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    client.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => client.on('close', (code, signal) => r({ code, signal })));
    await waitFor(() => /"ready"/.test(out) && !!eventOf(cli.lines(), 'engine-started'), 'the client to be served');
    const engine = eventOf(cli.lines(), 'engine-assigned')!.pid as number;
    cli.child.kill('SIGKILL');
    await cli.done;
    await waitFor(() => !alive(engine), 'the engine process to poison, detach and exit');
    const t0 = Date.now();
    client.stdin!.end('go\n');
    const r = await exited;
    assert.equal(r.signal, 'SIGBUS', `the touch of a page never served: exit ${r.code} ${r.signal} ${err}${out}`);
    assert.ok(Date.now() - t0 < limit(30_000), 'failed at the touch, not at a watchdog');
  });

  it('--metrics serves Prometheus text (sessions, faults, pages by cause, latency histogram, restarts); --log-format json; SIGTERM drains', async () => {
    const sock = path.join(dir, 'm.sock');
    const msock = path.join(dir, 'metrics.sock');
    // 32768 pages, one faulting thread: the restore outlasts the engine's first statistics
    // report (250 ms), so the kill lands mid-restore (16 MiB could end before it).
    const bigMem = path.join(dir, 'metrics.mem');
    writeSnapshot(bigMem, 128 * MiB);
    const cli = runServe(['--socket', sock, '--mem-file', bigMem, '--prefetch', 'off', '--metrics', msock]);
    await waitFor(() => /"listening"/.test(cli.err()), 'the CLI to listen');
    const once = (): Promise<string> => new Promise((resolve, reject) => {
      http.get({ socketPath: msock, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => { body += d.toString(); });
        res.on('end', () => resolve(body));
      }).on('error', reject);
    });
    // A scrape can meet a connection the server is closing (EPIPE/ECONNRESET once seen inside
    // 7.3 under TCG): scrape again; a server that is gone fails with its log.
    const get = async (): Promise<string> => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await once();
        } catch (e) {
          if (attempt >= 5) throw new Error(`metrics scrape failed ${attempt} times (${(e as Error).message}); serve's log:\n${cli.err()}`);
          await sleep(100);
        }
      }
    };
    const c = spawnFcClient({ socket: sock, memFile: bigMem, regionSize: 128 * MiB, threads: 1, timeoutMs: limit(60_000) });
    // Kill the engine once it has reported faults (every 250 ms), so its counts survive it.
    let text = await get();
    while (!/^uffd_serve_faults_total\{kind="missing"\} [1-9]/m.test(text)) {
      await sleep(20);
      text = await get();
    }
    kill(eventOf(cli.lines(), 'engine-assigned')!.pid as number);
    const r = await c.done;
    assert.equal(r.code, 0, `${r.stderr}${r.stdout}`);
    for (let i = 0; i < 600 && !/^uffd_serve_sessions_active 0$/m.test(text); i++) {
      await sleep(50);
      text = await get();
    }
    const value = (name: string): number => {
      const m = new RegExp(`^${name.replace(/[{}"=+.]/g, (ch) => `\\${ch}`)} (\\S+)$`, 'm').exec(text);
      assert.ok(m, `${name} in:\n${text}`);
      return Number(m[1]);
    };
    assert.equal(value('uffd_serve_sessions_active'), 0);
    assert.equal(value('uffd_serve_sessions_started_total'), 1);
    assert.equal(value('uffd_serve_engine_restarts_total'), 1);
    assert.equal(value('uffd_serve_handovers_total'), 1);
    // The dead engine's faults count up to its last report; the pages it filled after it are
    // found present by the next one (EEXIST or the pagemap scan), not counted twice.
    assert.ok(value('uffd_serve_faults_total{kind="missing"}') > 0);
    assert.ok(value('uffd_serve_pages_total{cause="demand"}') > 0 && value('uffd_serve_pages_total{cause="demand"}') <= 32768);
    assert.equal(value('uffd_serve_pages_total{cause="background"}'), 0);
    assert.ok(value('uffd_serve_fault_latency_seconds_count') > 0);
    assert.equal(value('uffd_serve_fault_latency_seconds_bucket{le="+Inf"}'), value('uffd_serve_fault_latency_seconds_count'));
    assert.match(text, /# TYPE uffd_serve_fault_latency_seconds histogram/);
    cli.child.kill('SIGTERM');
    assert.equal(await cli.done, 0, cli.err());
    const lines = cli.lines(); // every stderr line is one JSON object
    for (const e of ['listening', 'metrics', 'accepted', 'session-start', 'engine-assigned', 'engine-started', 'engine-died', 'handover', 'signal', 'exit']) {
      assert.ok(eventOf(lines, e), `a ${e} event in the JSON log:\n${cli.err()}`);
    }
    assert.ok(!fs.existsSync(msock), 'the metrics socket is removed on exit');
  });

  it('refuses a --metrics address that is not a Unix socket or loopback', async () => {
    const cli = runServe(['--socket', path.join(dir, 'x.sock'), '--mem-file', memPath, '--metrics', '0.0.0.0:9000']);
    assert.equal(await cli.done, 2);
    assert.match(cli.err(), /--metrics wants a Unix socket path .* or a loopback address/);
  });
});
