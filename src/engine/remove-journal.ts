// The REMOVE journal: a file (a memfd the serve supervisor holds) to which the engine
// thread that read a balloon REMOVE appends the range before it applies the event. The
// supervisor reads it when the engine process dies, so the next engine treats those pages
// as removed (zeros on fault, never filled from the snapshot) even if the dead process
// read the event and died before it could say so. The write is one write(2) of 16 bytes
// (start, end: u64 LE) at the file's position: a SIGKILL cannot tear it, and threads that
// read the uffd append one at a time (under the engine's read lock).
//
// What no user-space handler can close: read(2) of the uffd consumes the event, so a
// process killed between that read returning and this write loses it (the kernel acts on
// a pending SIGKILL when read(2) returns). That window is the same thread's next few
// instructions, with no event loop or message hop in it.
import * as fs from 'node:fs';

export const REMOVE_RECORD_BYTES = 16;

// Test-only failpoint: die right after journaling a REMOVE, before applying it (the window
// "read, not applied" the supervisor tests kill in). Read once, when the module loads.
const KILL_AFTER_JOURNAL = process.env.UFFD_ENGINE_FAILPOINT === 'kill-after-remove-journal';

/** Appends one removed range [start, end) to the journal fd. */
export function appendRemove(fd: number, start: number, end: number): void {
  const rec = Buffer.alloc(REMOVE_RECORD_BYTES); // REMOVE is rare (a balloon): not the fault path
  rec.writeBigUInt64LE(BigInt(start), 0);
  rec.writeBigUInt64LE(BigInt(end), 8);
  fs.writeSync(fd, rec);
  if (KILL_AFTER_JOURNAL) process.kill(process.pid, 'SIGKILL');
}

/** Every range in the journal, oldest first (pread: the file position is not moved). */
export function readRemoveJournal(fd: number): [number, number][] {
  const size = fs.fstatSync(fd).size;
  const n = Math.floor(size / REMOVE_RECORD_BYTES);
  const buf = Buffer.alloc(n * REMOVE_RECORD_BYTES);
  let got = 0;
  while (got < buf.length) {
    const r = fs.readSync(fd, buf, got, buf.length - got, got);
    if (r === 0) break;
    got += r;
  }
  const ranges: [number, number][] = [];
  for (let i = 0; i + REMOVE_RECORD_BYTES <= got; i += REMOVE_RECORD_BYTES) {
    ranges.push([Number(buf.readBigUInt64LE(i)), Number(buf.readBigUInt64LE(i + 8))]);
  }
  return ranges;
}
