// Scheduling policy of a whole process (src/kernel/sched.ts): a spare engine process starts
// on SCHED_IDLE and comes back to SCHED_OTHER. Checked on real processes through /proc.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { mayLeaveIdle, setProcessIdle, threadIdle } from '../src/kernel/sched.js';
import { SCHED_IDLE, SCHED_OTHER, taskStatField, threadPolicies as policies } from './helpers/sched.js';

describe('kernel/sched: a process on SCHED_IDLE and back', function () {
  this.timeout(30_000);

  it('setProcessIdle moves every thread of another process (a Node with its threads) to SCHED_IDLE and back, nice values kept', async function () {
    if (!mayLeaveIdle()) this.skip(); // (root here; a user without CAP_SYS_NICE: see the test below)
    // A Node child with worker threads: several threads, one of them at nice 5.
    const child = spawn(process.execPath, ['-e', `
      const { Worker } = require('node:worker_threads');
      const w = new Worker('setInterval(() => {}, 1000)', { eval: true });
      w.on('online', () => process.stdout.write('up\\n'));
      setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      const pid = child.pid as number;
      const tids = fs.readdirSync(`/proc/${pid}/task`).map(Number);
      assert.ok(tids.length >= 3, `a Node process has several threads (${tids.length})`);
      spawnSync('renice', ['-n', '5', '-p', String(tids[tids.length - 1])]);
      assert.deepEqual(new Set(policies(pid)), new Set([SCHED_OTHER]));
      assert.equal(setProcessIdle(pid, true), 0, 'no thread refused');
      assert.deepEqual(new Set(policies(pid)), new Set([SCHED_IDLE]), 'every thread on SCHED_IDLE');
      assert.equal(setProcessIdle(pid, false), 0);
      assert.deepEqual(new Set(policies(pid)), new Set([SCHED_OTHER]), 'every thread back on SCHED_OTHER');
      assert.equal(taskStatField(pid, tids[tids.length - 1] as number, 19), 5, 'the thread at nice 5 kept it');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a thread started by a thread on SCHED_IDLE inherits it; threadIdle says so; a process that is gone is no error', async function () {
    if (!mayLeaveIdle()) this.skip();
    assert.equal(threadIdle(), false);
    const child = spawn(process.execPath, ['-e', `
      process.stdin.once('data', () => {
        const { Worker } = require('node:worker_threads');
        const w = new Worker('setInterval(() => {}, 1000)', { eval: true });
        w.on('online', () => process.stdout.write('up\\n'));
      });
      setInterval(() => {}, 1000);`], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const pid = child.pid as number;
      await new Promise((r) => setTimeout(r, 300)); // its start-up threads are up
      setProcessIdle(pid, true);
      const before = fs.readdirSync(`/proc/${pid}/task`).length;
      child.stdin.write('go\n');
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      assert.ok(fs.readdirSync(`/proc/${pid}/task`).length > before, 'the worker started threads');
      assert.deepEqual(new Set(policies(pid)), new Set([SCHED_IDLE]), 'the threads started later inherited SCHED_IDLE');
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    assert.equal(setProcessIdle(child.pid as number, false), 0, 'a process that is gone: nothing refused');
  });

  it('mayLeaveIdle: root (CAP_SYS_NICE) may; a user without it and with RLIMIT_NICE 0 may not', function () {
    if (process.getuid?.() !== 0) this.skip();
    assert.equal(mayLeaveIdle(), true);
    const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
    if (!setpriv) {
      console.log('      (skipped the unprivileged half: no setpriv(1) on this machine)');
      return;
    }
    const r = spawnSync(setpriv, ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all',
      'prlimit', '--nice=0', process.execPath, '-e',
      `const s = require(${JSON.stringify(require.resolve('../src/kernel/sched.js'))}); process.stdout.write(String(s.mayLeaveIdle()));`],
    { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'false');
  });
});
