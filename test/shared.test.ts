// The engine's shared-memory structures: ring, page-state table, counters, histogram.
import * as assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as path from 'node:path';
import {
  Counters, histogramPercentile, PAGE_DROPPED, PAGE_FILLING, PAGE_MISSING, PAGE_PRESENT, PageStates,
  Ring, C_HIST, COUNTER_WORDS,
} from '../src/engine/shared.js';

describe('shared: ring', () => {
  it('passes entries in order through many wrap-arounds and refuses to overfill', () => {
    const ring = new Ring(Ring.allocate(8));
    let produced = 0;
    let consumed = 0;
    for (let round = 0; round < 100; round++) {
      let staged = 0;
      while (ring.stage(staged, { addr: produced + staged, flags: (produced + staged) * 2, readUs: 5 })) staged++;
      assert.equal(staged, ring.capacity - ring.size(), 'stages exactly the free slots');
      ring.publish(staged);
      produced += staged;
      const take = 1 + (round % ring.size());
      let i = ring.head;
      for (let k = 0; k < take; k++, i++) {
        assert.equal(ring.addrAt(i), consumed);
        assert.equal(ring.flagsAt(i), consumed * 2);
        consumed++;
      }
      ring.commit(i);
    }
    assert.ok(consumed > 300);
  });

  it('wakes a sleeping consumer on another thread', async () => {
    const buffers = Ring.allocate(16);
    const ring = new Ring(buffers);
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { Ring } = require(${JSON.stringify(path.resolve(__dirname, '../src/engine/shared.js'))});
      const ring = new Ring(workerData);
      let got = 0;
      while (got < 1000) {
        const tail = ring.tail;
        if (ring.head === tail) { ring.sleep(tail, 1000); continue; }
        for (let i = ring.head; i !== tail; i++) { if (ring.addrAt(i) !== got) throw new Error('order ' + ring.addrAt(i) + ' ' + got); got++; }
        ring.commit(tail);
      }
      parentPort.postMessage(got);`;
    const w = new Worker(code, { eval: true, workerData: buffers });
    const done = new Promise<number>((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
    for (let n = 0; n < 1000;) {
      if (ring.stage(0, { addr: n, flags: 0, readUs: 0 })) { ring.publish(1); n++; } else await new Promise((r) => setImmediate(r));
    }
    assert.equal(await done, 1000);
    await w.terminate();
  });
});

describe('shared: page-state table', () => {
  it('claims with compare-and-swap; counts and finds states a word at a time', () => {
    const s = new PageStates(PageStates.allocate(100), 100);
    assert.equal(s.countBelow(PAGE_PRESENT), 100);
    assert.ok(s.transition(5, PAGE_MISSING, PAGE_FILLING));
    assert.ok(!s.transition(5, PAGE_MISSING, PAGE_FILLING), 'a claimed page cannot be claimed again');
    assert.ok(s.transition(5, PAGE_FILLING, PAGE_PRESENT));
    for (let p = 0; p < 40; p++) if (p !== 5) s.set(p, p % 2 ? PAGE_PRESENT : PAGE_DROPPED);
    assert.equal(s.get(5), PAGE_PRESENT);
    assert.equal(s.get(4), PAGE_DROPPED);
    assert.equal(s.nextMissing(0, 100), 40);
    assert.equal(s.nextMissing(41, 100), 41);
    assert.equal(s.nextMissing(0, 40), -1);
    assert.equal(s.countBelow(PAGE_PRESENT), 60);
    s.set(99, PAGE_FILLING);
    assert.equal(s.countBelow(PAGE_PRESENT), 60, 'FILLING counts as not yet filled');
    assert.equal(s.countBelow(PAGE_FILLING), 59);
  });

  it('a 1 TiB region of 4 KiB pages needs 96 MiB of table (64 MiB of states, 32 MiB of drop marks)', () => {
    assert.equal(PageStates.allocate(2 ** 40 / 4096).byteLength, 96 * 1024 * 1024);
    assert.equal(PageStates.stateBytes(2 ** 40 / 4096), 64 * 1024 * 1024);
  });

  it('drop(): a page being filled is marked until its claimer lets go; any other page is just DROPPED', () => {
    const s = new PageStates(PageStates.allocate(70), 70);
    for (const p of [0, 31, 32, 69]) assert.ok(s.transition(p, PAGE_MISSING, PAGE_FILLING));
    s.set(33, PAGE_PRESENT);
    for (let p = 0; p < 70; p++) s.drop(p);
    for (let p = 0; p < 70; p++) {
      assert.equal(s.get(p), PAGE_DROPPED, `page ${p}`);
      assert.equal(s.isDroppedUnderClaim(p), [0, 31, 32, 69].includes(p), `page ${p}'s mark`);
    }
    s.drop(31); // dropped again before its claimer let go: still marked
    assert.ok(s.isDroppedUnderClaim(31));
    s.clearDroppedUnderClaim(31);
    assert.ok(!s.isDroppedUnderClaim(31) && s.isDroppedUnderClaim(0) && s.isDroppedUnderClaim(32));
    assert.equal(s.countBelow(PAGE_PRESENT), 0, 'the marks are not states');
  });

  it('under contention from 4 threads each page is claimed exactly once', async () => {
    const pages = 20000;
    const buf = PageStates.allocate(pages);
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { PageStates } = require(${JSON.stringify(path.resolve(__dirname, '../src/engine/shared.js'))});
      const s = new PageStates(workerData, ${pages});
      let won = 0;
      for (let p = 0; p < ${pages}; p++) if (s.transition(p, 0, 1)) won++;
      parentPort.postMessage(won);`;
    const wins = await Promise.all(Array.from({ length: 4 }, () => new Promise<number>((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: buf });
      w.once('message', (n: number) => { resolve(n); void w.terminate(); });
      w.once('error', reject);
    })));
    assert.equal(wins.reduce((a, b) => a + b, 0), pages);
  });
});

describe('shared: counters and latency histogram', () => {
  it('sums per-thread blocks and reports percentiles as bucket upper edges', () => {
    const c = new Counters(Counters.allocate(3));
    const b0 = c.block(0);
    const b2 = c.block(2);
    b0.set(1, 5); b2.set(1, 7);
    assert.equal(c.sum(1), 12);
    for (let i = 0; i < 90; i++) b0.recordLatency(3); // bucket 1: [2, 4)
    for (let i = 0; i < 10; i++) b2.recordLatency(100); // bucket 6: [64, 128)
    const hist = Array.from({ length: 32 }, (_, k) => c.sum(C_HIST + k));
    assert.equal(histogramPercentile(hist, 0.5), 4);
    assert.equal(histogramPercentile(hist, 0.95), 128);
    assert.equal(c.all.length, 3 * COUNTER_WORDS);
  });
});
