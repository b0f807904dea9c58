// A real KVM guest reads its memory and reports a checksum through an OUT instruction.
// First with RAM filled directly; then with RAM registered MISSING on a userfaultfd and
// filled ONLY by a handler on another worker thread from a snapshot file, while the vCPU
// runs on its own worker thread. The checksum the guest computed must equal the one
// computed on the host from the file, and guest RAM must equal the file page by page.
//
// On this machine KVM is kvm_pvm, which runs this (non-PVM) guest slowly (~3.5 us per
// loop iteration, as if emulated): guests here read every byte of small RAM, or one u32
// per page of larger RAM, to keep the run short.
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as C from '../src/kernel/constants.js';
import { memcmp, mmap, munmap, openFile, close } from '../src/kernel/memory.js';
import { Userfaultfd } from '../src/kernel/userfaultfd.js';
import { ChecksumGuest, guestChecksum, kvmAvailable, CHECKSUM_PORT } from '../src/restore/kvm-guest.js';
import { startHandler } from './helpers/simple-handler.js';
import { withHugePages } from './helpers/restore-fixtures.js';
import { limit } from './helpers/limits.js';

const KiB = 1024;
const MiB = 1 << 20;

function firstDifferentPage(a: number, b: number, size: number, pageSize: number): number {
  for (let off = 0; off < size; off += pageSize) if (memcmp(a + off, b + off, pageSize) !== 0) return off;
  return -1;
}

describe('KVM guest checksum runner', function () {
  this.timeout(limit(60000));
  const kvm = kvmAvailable();
  let dir: string;
  before(function () {
    if (!fs.existsSync('/dev/kvm')) {
      console.log(`      (skipped: /dev/kvm is absent: ${kvm.reason ?? 'no KVM'})`);
      this.skip();
    }
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-kvm-'));
  });
  after(() => { if (dir) fs.rmSync(dir, { recursive: true, force: true }); });

  it('a guest with pre-filled RAM (no uffd) reports the checksum of every byte', () => {
    const data = crypto.randomBytes(256 * KiB);
    const g = ChecksumGuest.create({ ramSize: data.length, stride: 4 });
    try {
      g.fill(data);
      const r = g.runHere();
      assert.equal(r.exit, 'HLT', JSON.stringify(r.detail));
      assert.deepEqual(r.outs.map((o) => [o.port, o.size]), [[CHECKSUM_PORT, 4]]);
      assert.equal(r.checksum, guestChecksum(data, 4));
    } finally {
      g.close();
    }
  });

  it('a guest on a worker thread, one u32 per page of 16 MiB, pre-filled', async () => {
    const data = crypto.randomBytes(16 * MiB);
    const g = ChecksumGuest.create({ ramSize: data.length, stride: 4096 });
    try {
      g.fill(data);
      const r = await g.runInWorker();
      assert.equal(r.exit, 'HLT');
      assert.equal(r.checksum, guestChecksum(data, 4096));
      assert.notEqual(r.checksum, guestChecksum(crypto.randomBytes(16 * MiB), 4096), 'the checksum depends on the data');
    } finally {
      g.close();
    }
  });

  async function restoreGuest(ramSize: number, stride: number, hugetlb = false) {
    const pageSize = hugetlb ? C.HUGE_PAGE_2M : C.PAGE_SIZE;
    const file = path.join(dir, `snap-${ramSize}-${stride}.mem`);
    const data = crypto.randomBytes(ramSize);
    fs.writeFileSync(file, data);
    const fd = openFile(file, C.O_RDONLY);
    const src = mmap(ramSize, C.PROT_READ, C.MAP_PRIVATE | C.MAP_POPULATE, fd, 0);
    const g = ChecksumGuest.create({ ramSize, stride, hugetlb });
    // Faults taken inside KVM are kernel-mode faults: the uffd must not be user-mode-only.
    const uffd = Userfaultfd.create({ userModeOnly: false });
    try {
      uffd.register(g.ramAddr, ramSize, ['missing'], pageSize);
      const handler = startHandler({ uffdFd: uffd.fd, regions: [{ base: g.ramAddr, size: ramSize, offset: 0, pageSize }], sourceAddr: src });
      let result;
      let badPage;
      let stats;
      try {
        result = await g.runInWorker();
        // Every page is present now (the guest touched each one): compare them all.
        badPage = firstDifferentPage(g.ramAddr, src, ramSize, pageSize);
      } finally {
        stats = await handler.stop();
      }
      return { result, badPage, stats, expected: guestChecksum(data, stride), pages: ramSize / pageSize };
    } finally {
      uffd.close();
      g.close();
      munmap(src, ramSize);
      close(fd);
    }
  }

  it('guest RAM registered MISSING and served only by a handler thread: one u32 per page of 8 MiB', async () => {
    const { result, badPage, stats, expected, pages } = await restoreGuest(8 * MiB, 4096);
    assert.equal(result.exit, 'HLT', JSON.stringify(result.detail));
    assert.equal(result.checksum, expected, 'the guest read the snapshot');
    assert.equal(badPage, -1, 'guest RAM equals the snapshot, page by page');
    assert.deepEqual(stats.errors, []);
    assert.equal(stats.faults, pages, 'every page faulted to the handler exactly once');
    assert.equal(stats.copies, pages);
  });

  it('guest RAM served by the handler: the guest checksums every byte of 256 KiB', async () => {
    const { result, badPage, stats, expected, pages } = await restoreGuest(256 * KiB, 4);
    assert.equal(result.exit, 'HLT');
    assert.equal(result.checksum, expected);
    assert.equal(badPage, -1);
    assert.equal(stats.copies, pages);
  });

  it('2 MiB hugetlb guest RAM served by the handler (reserved for the test and given back)', async function () {
    const r = await withHugePages(2, () => restoreGuest(4 * MiB, 4096, true));
    if (r.skipped) {
      console.log(`      (skipped: ${r.skipped})`);
      this.skip();
    }
    const { result, badPage, stats, expected } = r.value!;
    assert.equal(result.exit, 'HLT');
    assert.equal(result.checksum, expected);
    assert.equal(badPage, -1);
    assert.equal(stats.copies, 2, 'two 2 MiB copies');
  });
});
