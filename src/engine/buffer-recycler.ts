// Shared buffers passed from a stopped engine to the next one on the same reusable threads
// (threads.ts). Every new SharedArrayBuffer that crosses into another thread costs a little
// native memory that Node never gives back (~1.4 KiB per buffer here, whatever its size:
// a worker that is sent 10 new buffers per message grows by ~14 KiB per message, one sent
// the same buffers again does not grow; docs/performance.md, "Soak"). An engine on a
// reusable set takes all its tables (rings, claims, counters, gate cursors, control block,
// region table, page states) from here, zeroed, instead of new ones; at its stop it copies
// what it still answers from (control block, region table, page states) into buffers no
// thread has seen, and page states handed out by pageStateBuffer are never recycled.
export const RECYCLE_MAX_BYTES = 1 << 20; // larger ones: zeroing would cost more (and make them resident)
const KEEP_PER_SIZE = 32;

export class BufferRecycler {
  readonly #free = new Map<number, SharedArrayBuffer[]>();

  /** A zeroed buffer of `fresh`'s length that threads have seen before, or `fresh` itself (never sent anywhere yet). */
  swap(fresh: SharedArrayBuffer): SharedArrayBuffer {
    const old = this.#free.get(fresh.byteLength)?.pop();
    if (!old) return fresh;
    new Uint8Array(old).fill(0);
    return old;
  }

  /** Buffers no thread uses any more (their engine stopped). */
  giveBack(buffers: SharedArrayBuffer[]): void {
    for (const b of buffers) {
      if (b.byteLength > RECYCLE_MAX_BYTES) continue;
      let list = this.#free.get(b.byteLength);
      if (!list) this.#free.set(b.byteLength, (list = []));
      if (list.length < KEEP_PER_SIZE && !list.includes(b)) list.push(b);
    }
  }
}
