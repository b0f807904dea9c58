// Scheduling priority of the calling thread. On Linux a nice value belongs to a thread
// (setpriority(PRIO_PROCESS, tid)), so one engine thread can be favoured over the rest.
import { errno, libc, setErrno } from './libc.js';

const PRIO_PROCESS = 0;

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
