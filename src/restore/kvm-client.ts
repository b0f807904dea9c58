// A real KVM guest restored from a snapshot the way Firecracker restores one: this process
// creates the VM (one vCPU, the checksum program of kvm-guest.ts), registers guest RAM
// MISSING on a userfaultfd (not user-mode-only: the guest's accesses are faults taken in
// KVM), connects to the handler's socket and sends the v1.12 handshake plus the uffd, then
// runs the vCPU. Every RAM page the guest reads is served by the handler from the memory
// file; the guest writes its checksum to an I/O port, which must equal the checksum of the
// file's bytes. Afterwards guest RAM is compared with the file page by page. This module is
// the library (runKvmClient); the process entry is src/cli/kvm-client.ts (KVM_CLIENT_SCRIPT):
//
//   node dist/src/cli/kvm-client.js --socket S --mem-file M --ram-size 16M \
//        [--stride 4096] [--file-offset 0] [--hugetlb]
//
// Prints one JSON line ({"ok":true,"checksum":...,"expected":...}); exit 0, 1 on a wrong
// checksum or page, 2 on an error.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as C from '../kernel/constants.js';
import { bytesAt, memcmp, mmap, openFile } from '../kernel/memory.js';
import { connectUnix, sendWithFds } from '../kernel/socket.js';
import { Userfaultfd } from '../kernel/userfaultfd.js';
import { encodeHandshake } from './handshake.js';
import { ChecksumGuest, guestChecksum } from './kvm-guest.js';

/** The process entry: node KVM_CLIENT_SCRIPT --socket S --mem-file M ... */
export const KVM_CLIENT_SCRIPT = path.resolve(__dirname, '../cli/kvm-client.js');

export interface KvmClientOptions {
  socket: string;
  memFile: string;
  ramSize: number;
  /** Bytes between the u32s the guest folds into its checksum. */
  stride: number;
  /** Where guest RAM starts in the memory file. */
  fileOffset: number;
  /** Back guest RAM with 2 MiB hugetlb pages. */
  hugetlb: boolean;
}

export interface KvmClientResult {
  ok: boolean;
  exit: string;
  checksum?: number;
  expected: number;
  /** First RAM offset (page) that differs from the file, or -1. */
  badPage: number;
  pageSize: number;
  guestMs: number;
  ms: number;
}

/** Creates the guest, hands its RAM to the handler, runs it and checks the result. */
export async function runKvmClient(o: KvmClientOptions): Promise<KvmClientResult> {
  const pageSize = o.hugetlb ? C.HUGE_PAGE_2M : C.PAGE_SIZE;
  const fileSize = fs.statSync(o.memFile).size;
  if (o.fileOffset + o.ramSize > fileSize) throw new Error('guest RAM extends past the end of the memory file');
  const fd = openFile(o.memFile, C.O_RDONLY);
  const file = mmap(fileSize, C.PROT_READ, C.MAP_PRIVATE, fd, 0);
  const src = file + o.fileOffset;
  const g = ChecksumGuest.create({ ramSize: o.ramSize, stride: o.stride, hugetlb: o.hugetlb });
  const uffd = Userfaultfd.create({ nonBlocking: true, closeOnExec: true, userModeOnly: false, features: ['EVENT_REMOVE'] });
  uffd.register(g.ramAddr, o.ramSize, ['missing'], pageSize);
  const t0 = performance.now();
  const sock = connectUnix(o.socket);
  sendWithFds(sock, Buffer.from(encodeHandshake([{ baseHostVirtAddr: g.ramAddr, size: o.ramSize, offset: o.fileOffset, pageSize }])), [uffd.fd]);
  // Keep the socket and the uffd open until we exit, as Firecracker does.
  const run = await g.runInWorker();
  const expected = guestChecksum(bytesAt(src, o.ramSize), o.stride);
  let badPage = -1;
  for (let off = 0; off < o.ramSize; off += pageSize) {
    if (memcmp(g.ramAddr + off, src + off, pageSize) !== 0) { badPage = off; break; }
  }
  return {
    ok: run.exit === 'HLT' && run.checksum === expected && badPage === -1,
    exit: run.exit, checksum: run.checksum, expected, badPage, pageSize,
    guestMs: Math.round(run.ms * 10) / 10, ms: Math.round((performance.now() - t0) * 10) / 10,
  };
}
