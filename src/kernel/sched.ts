// Scheduling priority of the calling thread. On Linux a nice value belongs to a thread
// (setpriority(PRIO_PROCESS, tid)), so one engine thread can be favoured over the rest.
// And the scheduling policy of a whole process (every thread of it): a spare engine process
// starts up on SCHED_IDLE, so it takes only CPU time nobody else wants.
import * as fs from 'node:fs';
import { addressOf, errno, ERRNO, libc, setErrno } from './libc.js';

const PRIO_PROCESS = 0;
const SCHED_OTHER = 0;
const SCHED_IDLE = 5;
const CAP_SYS_NICE = 23;
// struct sched_param { int sched_priority }: 0, what both policies take. Written before each
// call: a typed array nothing reads after its address was taken is garbage, and its memory
// reused (sched_setscheduler then read a nonzero priority: EINVAL).
const schedParam = new Int32Array(1);
const schedParamAddr = addressOf(schedParam);

/** The calling thread's nice value (-20 .. 19). */
export function threadNice(): number {
  setErrno(0); // getpriority(2) returns -1 for nice -1 as well as for an error
  const nice = libc.getpriority(PRIO_PROCESS, libc.gettid());
  const e = errno();
  if (nice === -1 && e !== 0) throw new Error(`getpriority: errno ${e}`);
  return nice;
}

/**
 * Sets the calling thread's nice value. Returns 0, or the errno that refused it: lowering a
 * nice value needs root, CAP_SYS_NICE or a high enough RLIMIT_NICE (EACCES/EPERM otherwise).
 */
export function setThreadNice(nice: number): number {
  return libc.setpriority(PRIO_PROCESS, libc.gettid(), nice) === 0 ? 0 : errno();
}

/** The thread ids of a process (its /proc/PID/task), its main thread first; [] if it is gone. */
function threadIds(pid: number): number[] {
  try {
    // The main thread first: it starts the others, and one it starts after the change inherits it.
    return fs.readdirSync(`/proc/${pid}/task`).map(Number).filter((t) => t > 0).sort((a, b) => (a === pid ? -1 : b === pid ? 1 : a - b));
  } catch {
    return [];
  }
}

/**
 * Puts every thread of process `pid` on SCHED_IDLE (it runs only on CPU time no other
 * thread wants) or back on SCHED_OTHER; each thread keeps its nice value, and a thread a
 * SCHED_IDLE thread starts inherits the policy. Returns how many threads refused (EPERM:
 * leaving SCHED_IDLE takes CAP_SYS_NICE or RLIMIT_NICE, see mayLeaveIdle); a thread that
 * ended meanwhile is not counted.
 */
export function setProcessIdle(pid: number, idle: boolean): number {
  let refused = 0;
  for (const tid of threadIds(pid)) {
    schedParam[0] = 0;
    if (libc.sched_setscheduler(tid, idle ? SCHED_IDLE : SCHED_OTHER, schedParamAddr) === 0) continue;
    if (errno() !== ERRNO.ESRCH) refused++; // ESRCH: the thread ended meanwhile
  }
  return refused;
}

/** Whether the calling thread is on SCHED_IDLE. */
export function threadIdle(): boolean {
  return libc.sched_getscheduler(0) === SCHED_IDLE;
}

/**
 * Whether this process may leave SCHED_IDLE for SCHED_OTHER again: CAP_SYS_NICE, or an
 * RLIMIT_NICE that allows nice 0 (20 or more). Without either, going idle is one way.
 */
export function mayLeaveIdle(): boolean {
  try {
    const status = fs.readFileSync('/proc/self/status', 'latin1');
    const cap = /^CapEff:\s*([0-9a-f]+)/m.exec(status);
    if (cap && (BigInt(`0x${cap[1]}`) >> BigInt(CAP_SYS_NICE)) & 1n) return true;
    const limits = fs.readFileSync('/proc/self/limits', 'latin1');
    const nice = /^Max nice priority\s+(\S+)/m.exec(limits);
    return !!nice && (nice[1] === 'unlimited' || Number(nice[1]) >= 20);
  } catch {
    return false;
  }
}
