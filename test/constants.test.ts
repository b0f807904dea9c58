// Pins every constant of src/kernel/constants.ts to the literal value documented in
// shared/UAPI.md (userfaultfd, PAGEMAP_SCAN, guest_memfd) or in the Linux x86_64 UAPI
// (mmap, madvise, poll, KVM base ioctls). The numbers here are written out by hand, never
// computed with the same helpers, so a wrong encoding cannot agree with itself.
import * as assert from 'node:assert/strict';
import * as C from '../src/kernel/constants.js';

const EXPECTED: Record<string, number> = {
  PAGE_SIZE: 4096,
  HUGE_PAGE_2M: 0x200000,
  HUGE_PAGE_1G: 0x40000000,

  SYS_userfaultfd: 323,
  SYS_memfd_create: 319,
  SYS_pidfd_open: 434,
  SYS_process_madvise: 440,

  O_RDONLY: 0,
  O_WRONLY: 1,
  O_RDWR: 2,
  O_CREAT: 0x40,
  O_TRUNC: 0x200,
  O_NONBLOCK: 0x800,
  O_CLOEXEC: 0x80000,
  UFFD_USER_MODE_ONLY: 1,

  UFFD_API: 0xaa,
  UFFDIO: 0xaa,
  USERFAULTFD_IOC_NEW: 0xaa00,

  _UFFDIO_REGISTER: 0x00,
  _UFFDIO_UNREGISTER: 0x01,
  _UFFDIO_WAKE: 0x02,
  _UFFDIO_COPY: 0x03,
  _UFFDIO_ZEROPAGE: 0x04,
  _UFFDIO_MOVE: 0x05,
  _UFFDIO_WRITEPROTECT: 0x06,
  _UFFDIO_CONTINUE: 0x07,
  _UFFDIO_POISON: 0x08,
  _UFFDIO_RWPROTECT: 0x09,
  _UFFDIO_SET_MODE: 0x0a,
  _UFFDIO_API: 0x3f,

  SIZEOF_UFFDIO_API: 24,
  SIZEOF_UFFDIO_RANGE: 16,
  SIZEOF_UFFDIO_REGISTER: 32,
  SIZEOF_UFFDIO_COPY: 40,
  SIZEOF_UFFDIO_ZEROPAGE: 32,
  SIZEOF_UFFDIO_MOVE: 40,
  SIZEOF_UFFDIO_WRITEPROTECT: 24,
  SIZEOF_UFFDIO_CONTINUE: 32,
  SIZEOF_UFFDIO_POISON: 32,
  SIZEOF_UFFDIO_RWPROTECT: 24,
  SIZEOF_UFFDIO_SET_MODE: 16,
  SIZEOF_UFFD_MSG: 32,

  UFFDIO_API: 0xc018aa3f,
  UFFDIO_REGISTER: 0xc020aa00,
  UFFDIO_UNREGISTER: 0x8010aa01,
  UFFDIO_WAKE: 0x8010aa02,
  UFFDIO_COPY: 0xc028aa03,
  UFFDIO_ZEROPAGE: 0xc020aa04,
  UFFDIO_MOVE: 0xc028aa05,
  UFFDIO_WRITEPROTECT: 0xc018aa06,
  UFFDIO_CONTINUE: 0xc020aa07,
  UFFDIO_POISON: 0xc020aa08,
  UFFDIO_RWPROTECT: 0xc018aa09,
  UFFDIO_SET_MODE: 0x4010aa0a,

  UFFDIO_COPY_MODE_DONTWAKE: 1,
  UFFDIO_COPY_MODE_WP: 2,
  UFFDIO_ZEROPAGE_MODE_DONTWAKE: 1,
  UFFDIO_WRITEPROTECT_MODE_WP: 1,
  UFFDIO_WRITEPROTECT_MODE_DONTWAKE: 2,
  UFFDIO_CONTINUE_MODE_DONTWAKE: 1,
  UFFDIO_CONTINUE_MODE_WP: 2,
  UFFDIO_POISON_MODE_DONTWAKE: 1,
  UFFDIO_MOVE_MODE_DONTWAKE: 1,
  UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: 2,
  UFFDIO_RWPROTECT_MODE_RWP: 1,
  UFFDIO_RWPROTECT_MODE_DONTWAKE: 2,

  UFFDIO_REGISTER_MODE_MISSING: 1,
  UFFDIO_REGISTER_MODE_WP: 2,
  UFFDIO_REGISTER_MODE_MINOR: 4,
  UFFDIO_REGISTER_MODE_RWP: 8,

  UFFD_EVENT_PAGEFAULT: 0x12,
  UFFD_EVENT_FORK: 0x13,
  UFFD_EVENT_REMAP: 0x14,
  UFFD_EVENT_REMOVE: 0x15,
  UFFD_EVENT_UNMAP: 0x16,
  UFFD_PAGEFAULT_FLAG_WRITE: 1,
  UFFD_PAGEFAULT_FLAG_WP: 2,
  UFFD_PAGEFAULT_FLAG_MINOR: 4,
  UFFD_PAGEFAULT_FLAG_RWP: 8,

  SIZEOF_PM_SCAN_ARG: 96,
  SIZEOF_PAGE_REGION: 24,
  PAGEMAP_SCAN: 0xc0606610,
  PM_SCAN_WP_MATCHING: 1,
  PM_SCAN_CHECK_WPASYNC: 2,
  PAGE_IS_WPALLOWED: 0x001,
  PAGE_IS_WRITTEN: 0x002,
  PAGE_IS_FILE: 0x004,
  PAGE_IS_PRESENT: 0x008,
  PAGE_IS_SWAPPED: 0x010,
  PAGE_IS_PFNZERO: 0x020,
  PAGE_IS_HUGE: 0x040,
  PAGE_IS_SOFT_DIRTY: 0x080,
  PAGE_IS_GUARD: 0x100,
  PAGE_IS_ACCESSED: 0x200,

  PROT_NONE: 0,
  PROT_READ: 1,
  PROT_WRITE: 2,
  PROT_EXEC: 4,
  MAP_SHARED: 0x01,
  MAP_PRIVATE: 0x02,
  MAP_FIXED: 0x10,
  MAP_ANONYMOUS: 0x20,
  MAP_NORESERVE: 0x4000,
  MAP_POPULATE: 0x8000,
  MAP_HUGETLB: 0x40000,
  MAP_HUGE_SHIFT: 26,
  MAP_HUGE_2MB: 0x54000000,
  MAP_HUGE_1GB: 0x78000000,
  MADV_NORMAL: 0,
  MADV_DONTNEED: 4,
  MADV_REMOVE: 9,
  MADV_HUGEPAGE: 14,
  MADV_NOHUGEPAGE: 15,
  MADV_COLD: 20,
  MADV_PAGEOUT: 21,
  MADV_POPULATE_READ: 22,
  MADV_POPULATE_WRITE: 23,
  FALLOC_FL_KEEP_SIZE: 1,
  FALLOC_FL_PUNCH_HOLE: 2,
  MFD_CLOEXEC: 1,
  MFD_ALLOW_SEALING: 2,
  MFD_HUGETLB: 4,
  MFD_HUGE_2MB: 0x54000000,
  MFD_HUGE_1GB: 0x78000000,

  POLLIN: 0x001,
  POLLERR: 0x008,
  POLLHUP: 0x010,
  EFD_CLOEXEC: 0x80000,
  EFD_NONBLOCK: 0x800,
  EPOLL_CLOEXEC: 0x80000,
  EPOLL_CTL_ADD: 1,
  EPOLLIN: 0x001,
  EPOLLEXCLUSIVE: 0x10000000,
  SIZEOF_EPOLL_EVENT: 12,

  KVMIO: 0xae,
  KVM_GET_API_VERSION: 0xae00,
  KVM_CREATE_VM: 0xae01,
  KVM_CHECK_EXTENSION: 0xae03,
  KVM_GET_VCPU_MMAP_SIZE: 0xae04,
  KVM_CREATE_VCPU: 0xae41,
  KVM_RUN: 0xae80,
  SIZEOF_KVM_CREATE_GUEST_MEMFD: 64,
  KVM_CREATE_GUEST_MEMFD: 0xc040aed4,
  GUEST_MEMFD_FLAG_MMAP: 1,
  GUEST_MEMFD_FLAG_INIT_SHARED: 2,
  KVM_CAP_GUEST_MEMFD: 234,
};

// Features: bit n means 1 << n (UAPI.md "Features").
const EXPECTED_FEATURE_BITS: Record<string, number> = {
  PAGEFAULT_FLAG_WP: 0, EVENT_FORK: 1, EVENT_REMAP: 2, EVENT_REMOVE: 3, MISSING_HUGETLBFS: 4,
  MISSING_SHMEM: 5, EVENT_UNMAP: 6, SIGBUS: 7, THREAD_ID: 8, MINOR_HUGETLBFS: 9, MINOR_SHMEM: 10,
  EXACT_ADDRESS: 11, WP_HUGETLBFS_SHMEM: 12, WP_UNPOPULATED: 13, POISON: 14, WP_ASYNC: 15, MOVE: 16,
  RWP: 17, RWP_ASYNC: 18,
};

// Exports that are not numbers: checked by their own tests below.
const NON_NUMERIC = new Set(['IO', 'IOR', 'IOW', 'IOWR', 'FEATURE_BITS', 'FEATURE_NAMES', 'featureBit']);

describe('UAPI constants', () => {
  const exported = C as unknown as Record<string, unknown>;

  it('every exported constant is pinned here (add new ones to EXPECTED)', () => {
    const unpinned = Object.keys(exported).filter((k) => !(k in EXPECTED) && !NON_NUMERIC.has(k));
    assert.deepEqual(unpinned, [], `constants without a pinned value: ${unpinned.join(', ')}`);
    const gone = Object.keys(EXPECTED).filter((k) => !(k in exported));
    assert.deepEqual(gone, [], `pinned constants that constants.ts no longer exports: ${gone.join(', ')}`);
  });

  for (const [name, value] of Object.entries(EXPECTED)) {
    it(`${name} = 0x${value.toString(16)}`, () => {
      assert.equal(exported[name], value, `${name} is 0x${Number(exported[name]).toString(16)}, documented 0x${value.toString(16)}`);
    });
  }

  it('ioctl numbers are unsigned 32-bit (read/write ioctls have bit 31 set, not a negative int)', () => {
    for (const name of ['UFFDIO_API', 'UFFDIO_COPY', 'UFFDIO_UNREGISTER', 'PAGEMAP_SCAN', 'KVM_CREATE_GUEST_MEMFD']) {
      assert.ok((exported[name] as number) > 0x7fffffff, name);
    }
  });

  it('IO/IOR/IOW/IOWR encode (dir<<30)|(size<<16)|(type<<8)|nr', () => {
    assert.equal(C.IO(0xaa, 0x00), 0xaa00);
    assert.equal(C.IO(0xae, 0x01), 0xae01);
    assert.equal(C.IOR(0xaa, 0x02, 16), 0x8010aa02);
    assert.equal(C.IOW(0xaa, 0x0a, 16), 0x4010aa0a);
    assert.equal(C.IOWR(0xaa, 0x09, 24), 0xc018aa09);
    assert.equal(C.IOWR(0x66, 16, 96), 0xc0606610);
  });

  it('the `ioctls` mask bit of each ioctl is its nr (register mask 0x17c = wake copy zeropage move wp poison)', () => {
    const m = (1 << C._UFFDIO_WAKE) | (1 << C._UFFDIO_COPY) | (1 << C._UFFDIO_ZEROPAGE) | (1 << C._UFFDIO_MOVE) |
      (1 << C._UFFDIO_WRITEPROTECT) | (1 << C._UFFDIO_POISON);
    assert.equal(m, 0x17c);
    assert.equal(m | (1 << C._UFFDIO_CONTINUE), 0x1fc);
  });

  it('FEATURE_BITS match the documented bit numbers, in order', () => {
    assert.deepEqual({ ...C.FEATURE_BITS }, EXPECTED_FEATURE_BITS);
    assert.deepEqual(C.FEATURE_NAMES, Object.keys(EXPECTED_FEATURE_BITS));
  });

  it('featureBit(name) is 1n << bit', () => {
    assert.equal(C.featureBit('PAGEFAULT_FLAG_WP'), 0x1n);
    assert.equal(C.featureBit('MISSING_SHMEM'), 0x20n);
    assert.equal(C.featureBit('WP_ASYNC'), 0x8000n);
    assert.equal(C.featureBit('MOVE'), 0x10000n);
    assert.equal(C.featureBit('RWP'), 0x20000n);
    assert.equal(C.featureBit('RWP_ASYNC'), 0x40000n);
    // Everything up to MOVE: what a 6.18 kernel offers.
    let all = 0n;
    for (const n of C.FEATURE_NAMES) if (n !== 'RWP' && n !== 'RWP_ASYNC') all |= C.featureBit(n);
    assert.equal(all, 0x1ffffn);
  });
});
