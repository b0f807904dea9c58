// The tracker's store and the hand-over of pages between the tracked region, the store and
// the engine that serves the region's faults (docs/wss.md, "Who serves faults").
//
// The store is the engine's source, at the same offsets as the region: an anonymous holding
// area (anon: pages are moved into it with UFFDIO_MOVE, no copy) or a memfd / file (shmem,
// hugetlbfs: pages are pinned with vmsplice through an alias mapping, punched out of the
// file, and read from the pins into the store). Every hand-over is hold -> move the bytes ->
// forget: engine.hold() makes the pages FILLING (a fault on them waits), the bytes go, and
// engine.forget() makes them MISSING (the next fault copies them back from the store) and
// wakes whoever faulted meanwhile. Pages that stay are handed back with markResident().
//
// PageCopies says why the store holds a page: held (the anon access trap moved it aside this
// interval) or evicted (cold). A page the engine served back is PRESENT in its table and keeps
// its store copy until the next sample, which compares bytes to tell reads from writes.
import * as C from '../kernel/constants.js';
import { ERRNO } from '../kernel/libc.js';
import { close as closeFd, madvise, memcmp, memcpy, munmap, punchHole, tryMadvise } from '../kernel/memory.js';
import type { Scanner } from '../kernel/pagemap.js';
import { yieldCpu } from '../kernel/time.js';
import { RangeResult, type Userfaultfd } from '../kernel/userfaultfd.js';
import type { Engine } from '../engine/engine.js';
import { PAGE_DROPPED, PAGE_FILLING, PAGE_MISSING, PAGE_PRESENT } from '../engine/shared.js';
import { COPY_EVICTED, COPY_HELD, COPY_NONE, PageCopies } from './pages.js';
import type { PagePins } from './pins.js';

export interface StoreParts {
  /** Region start, size, page size, and its file (-1: anon). */
  regionAddr: number;
  size: number;
  pageSize: number;
  fd: number;
  uffd: Userfaultfd;
  engine: Engine;
  /** The store mapping (the engine's source), or 0 when nothing is ever evicted or held (minor without eviction). */
  addr: number;
  /** The store's file (-1: the anonymous holding area, or none). */
  storeFd: number;
  /** An unregistered mapping of the region's file, and the pipes that pin through it (file eviction). */
  aliasAddr: number;
  pins?: PagePins;
}

export class PageStore {
  readonly engine: Engine;
  readonly addr: number;
  readonly copies: PageCopies;
  private readonly p: StoreParts;
  private readonly P: number;
  private readonly anon: boolean;
  /** What the last UFFDIO_MOVE did (reused). */
  private readonly moved = new RangeResult();

  constructor(parts: StoreParts) {
    this.p = parts;
    this.engine = parts.engine;
    this.addr = parts.addr;
    this.P = parts.pageSize;
    this.anon = parts.fd < 0;
    this.copies = new PageCopies(parts.size / parts.pageSize);
  }

  /** Whether the store holds a copy of page p (held or evicted). */
  hasCopy(p: number): boolean {
    return this.copies.get(p) !== COPY_NONE;
  }

  /** Whether the bytes of pages [first, last) in the region differ from their store copies. */
  differs(first: number, last: number): boolean {
    const { P } = this;
    return memcmp(this.p.regionAddr + first * P, this.addr + first * P, (last - first) * P) !== 0;
  }

  /** Pages held and evicted now. */
  counts(): { held: number; evicted: number } {
    const c = this.copies.counts();
    return { held: c[COPY_HELD], evicted: c[COPY_EVICTED] };
  }

  // Holds pages of a run the scan saw present. A page present in the region may still be
  // FILLING in the engine's table for a moment (the thread that filled it has not recorded it
  // yet; on a small machine the woken faulting thread can run first): wait for that, briefly.
  private holdPresent(a: number, len: number): number {
    const g = (a - this.p.regionAddr) / this.P;
    const deadline = performance.now() + 20;
    for (;;) {
      const h = this.engine.hold(a, len);
      if (h > 0 || this.engine.pageState(g) !== PAGE_FILLING || performance.now() > deadline) return h;
      yieldCpu();
    }
  }

  /**
   * The anon access trap (move): moves the present run [s, e) into the store, page by page
   * claimed from the engine first; the next touch of each is a missing fault the engine
   * serves from the store. A page that cannot move stays, write-protected again when writes
   * are tracked.
   */
  moveAside(s: number, e: number, tracksWrites: boolean): void {
    const { P, engine } = this;
    let a = s;
    while (a < e) {
      const h = this.holdPresent(a, e - a);
      if (h === 0) { a += P; continue; } // the engine is still filling this page: leave it for the next sample
      const pf = (a - this.p.regionAddr) / P;
      const { done, failed } = this.moveIntoStore(a, h);
      if (done > 0) {
        this.copies.setRange(pf, pf + done / P, COPY_HELD);
        engine.forget(a, done);
      }
      if (done < h) {
        this.copies.setRange(pf + done / P, pf + h / P, COPY_NONE);
        engine.markResident(a + done, h - done);
        if (tracksWrites) this.p.uffd.writeprotect(a + done, h - done, true);
      }
      if (failed) return;
      a += h;
    }
  }

  /**
   * Evicts pages [first, last) of an idle run, at most `budget` pages; returns the pages
   * evicted and whether to stop (a page that cannot move). Anon pages the access trap already
   * moved into the store (held, MISSING) are only marked; other anon pages are moved into the
   * store (under RWP un-protected first, without waking anyone: a protnone PTE would arrive in
   * the store still protected); file pages are pinned, punched out of the file and read from
   * the pins into the store (a write up to the punch is in the pinned pages, a touch after it
   * is a missing fault the engine holds until forget()).
   */
  evictRun(first: number, last: number, budget: number, rwp: boolean): { pages: number; stop: boolean } {
    const { P, engine, copies } = this;
    const base = this.p.regionAddr;
    const chunk = this.p.pins ? Math.max(1, Math.floor(this.p.pins.capacity / P)) : Infinity;
    let pages = 0;
    let p = first;
    while (p < last && pages < budget) {
      const st = copies.get(p);
      if (st === COPY_HELD && engine.pageState(p) === PAGE_MISSING) {
        // Moved aside by the access trap and not touched since: it is in the store already.
        let q = p + 1;
        while (q < last && pages + (q - p) < budget && copies.get(q) === COPY_HELD && engine.pageState(q) === PAGE_MISSING) q++;
        copies.setRange(p, q, COPY_EVICTED);
        tryMadvise(this.addr + p * P, (q - p) * P, C.MADV_PAGEOUT);
        pages += q - p;
        p = q;
        continue;
      }
      if (st !== COPY_NONE) { p++; continue; }
      let q = p + 1;
      while (q < last && q - p < chunk && pages + (q - p) < budget && copies.get(q) === COPY_NONE) q++;
      const a = base + p * P;
      const held = engine.hold(a, (q - p) * P);
      if (held === 0) { p++; continue; } // being served right now: it is not cold any more
      const done = this.anon ? this.moveOut(a, held, rwp) : this.pinAndPunch(a, held);
      if (done > 0) {
        copies.setRange(p, p + done / P, COPY_EVICTED);
        engine.forget(a, done);
        pages += done / P;
      }
      if (done < held) return { pages, stop: true };
      p += held / P;
    }
    return { pages, stop: false };
  }

  // Anon: moves a held run into the store; what cannot move stays (protected again under RWP).
  private moveOut(a: number, len: number, rwp: boolean): number {
    const uffd = this.p.uffd;
    if (rwp) uffd.rwprotect(a, len, false, true);
    const { done } = this.moveIntoStore(a, len);
    if (done > 0) tryMadvise(this.addr + (a - this.p.regionAddr), done, C.MADV_PAGEOUT);
    if (done < len) {
      if (rwp) uffd.rwprotect(a + done, len - done, true);
      this.engine.markResident(a + done, len - done);
    }
    return done;
  }

  // Files: pins a held run through the alias, punches it out of the file, reads the pins into the store.
  private pinAndPunch(a: number, len: number): number {
    const pins = this.p.pins;
    const off = a - this.p.regionAddr;
    if (!pins) throw new Error('file eviction needs the page pins (the tracker opens them with { evict: true })');
    try {
      pins.pin(this.p.aliasAddr + off, len);
    } catch (e) {
      this.engine.markResident(a, len);
      throw e;
    }
    try {
      punchHole(this.p.fd, off, len);
    } finally {
      pins.drainTo(this.addr + off, len);
    }
    return len;
  }

  /**
   * Moves [a, a+len) of the region into the store at the same offset (UFFDIO_MOVE, holes
   * allowed), after freeing stale store copies there (MOVE needs its destination empty).
   * Stops at a page that cannot move (EBUSY: pinned, KSM, shared; EEXIST).
   */
  private moveIntoStore(a: number, len: number): { done: number; failed: boolean } {
    const uffd = this.p.uffd;
    const dst = this.addr + (a - this.p.regionAddr);
    madvise(dst, len, C.MADV_DONTNEED);
    const res = this.moved;
    let done = 0;
    for (let tries = 0; done < len && tries < 100; tries++) {
      try {
        done += uffd.move(dst + done, a + done, len - done, C.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, res);
        if (res.errno === ERRNO.EEXIST) return { done, failed: true };
        if (res.errno === ERRNO.EAGAIN) yieldCpu(); // an event (REMOVE) not read yet
      } catch {
        return { done, failed: true };
      }
    }
    return { done, failed: false };
  }

  /** Frees the store copies of pages [first, last) (the region has the bytes). */
  private dropCopies(first: number, last: number): void {
    const { P } = this;
    const off = first * P;
    const len = (last - first) * P;
    if (this.p.storeFd >= 0) punchHole(this.p.storeFd, off, len);
    else madvise(this.addr + off, len, C.MADV_DONTNEED);
    this.copies.setRange(first, last, COPY_NONE);
  }

  /** Files (zap, minor): evicted pages of a run seen present came back; their copies go, the engine lets them be. */
  settleReturned(first: number, last: number): void {
    const { copies, P } = this;
    let p = first;
    while (p < last) {
      if (copies.get(p) !== COPY_EVICTED) { p++; continue; }
      let q = p + 1;
      while (q < last && copies.get(q) === COPY_EVICTED) q++;
      this.dropCopies(p, q);
      this.engine.markResident(this.p.regionAddr + p * P, (q - p) * P);
      p = q;
    }
  }

  /**
   * After a sample: pages the engine served back since the scan are handed back to the
   * region (DROPPED; their copy stays for the next sample's comparison, unless `dropReturned`:
   * under RWP their writes were told in this sample's window), and copies of pages that came
   * back earlier but are gone from the region now are freed.
   */
  reconcile(dropReturned: boolean): void {
    const eng = this.engine;
    const { P } = this;
    const base = this.p.regionAddr;
    let bs = -1, be = -1, gs = -1, ge = -1;
    const flushBack = () => { if (bs >= 0) eng.markResident(base + bs * P, (be - bs) * P); bs = -1; };
    const flushGone = () => { if (gs >= 0) this.dropCopies(gs, ge); gs = -1; };
    this.copies.forEachSet((p) => {
      const es = eng.pageState(p);
      if (es === PAGE_PRESENT) {
        if (bs >= 0 && be === p) be++;
        else { flushBack(); bs = p; be = p + 1; }
      }
      if (es === PAGE_DROPPED || (es === PAGE_PRESENT && dropReturned)) {
        if (gs >= 0 && ge === p) ge++;
        else { flushGone(); gs = p; ge = p + 1; }
      }
    });
    flushBack();
    flushGone();
  }

  /**
   * Only if the engine gave up filling (its stop timed out and unregistered the region): copy
   * every page it still held from the store by hand, unless the region has it already.
   */
  rescueAfterStop(scanner: Scanner): void {
    const eng = this.engine;
    if (eng.pagesMissing() === 0) return;
    const { P } = this;
    this.copies.forEachSet((p) => {
      const es = eng.pageState(p);
      if (es === PAGE_PRESENT || es === PAGE_DROPPED) return;
      const a = this.p.regionAddr + p * P;
      if (scanner.countBytes(a, a + P, { categoryMask: C.PAGE_IS_PRESENT }) === 0) memcpy(a, this.addr + p * P, P);
    });
  }

  /** Unmaps the store and the alias, closes the store file and the pins (the uffd and engine are the tracker's). */
  close(): void {
    const { size } = this.p;
    if (this.addr) munmap(this.addr, size);
    if (this.p.storeFd >= 0) closeFd(this.p.storeFd);
    if (this.p.aliasAddr) munmap(this.p.aliasAddr, size);
    this.p.pins?.close();
  }
}
