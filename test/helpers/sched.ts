// Scheduling policy of a process's threads as /proc shows it (read independently of
// src/kernel/sched.ts, which the tests check).
import * as fs from 'node:fs';

export const SCHED_OTHER = 0;
export const SCHED_IDLE = 5;

/** Field `index` (1-based, as in proc(5)) of /proc/PID/task/TID/stat. */
export function taskStatField(pid: number, tid: number | string, index: number): number {
  const st = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[index - 3]); // fields from 3 on follow "(comm) "
}

/** The scheduling policy (field 41) of every thread of pid; [] if it is gone. */
export function threadPolicies(pid: number): number[] {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).map((t) => taskStatField(pid, t, 41));
  } catch {
    return [];
  }
}
