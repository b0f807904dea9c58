// Every userfaultfd / PAGEMAP_SCAN / KVM constant the engine uses, in one place.
// Values come from the kernel UAPI (the project's shared/UAPI.md, from the 7.3 headers);
// the system headers on the machines we run on are older than the kernel, so nothing here
// is read from them.
// test/constants.test.ts pins each value.

export const PAGE_SIZE = 4096;
export const HUGE_PAGE_2M = 2 * 1024 * 1024;
export const HUGE_PAGE_1G = 1024 * 1024 * 1024;

// ioctl number encoding (asm-generic/ioctl.h)
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
function ioc(dir: number, type: number, nr: number, size: number): number {
  // >>> 0 keeps it an unsigned 32-bit number (read/write ioctls have bit 31 set).
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
export const IO = (type: number, nr: number) => ioc(IOC_NONE, type, nr, 0);
export const IOR = (type: number, nr: number, size: number) => ioc(IOC_READ, type, nr, size);
export const IOW = (type: number, nr: number, size: number) => ioc(IOC_WRITE, type, nr, size);
export const IOWR = (type: number, nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, type, nr, size);

// Syscalls (x86_64)
export const SYS_userfaultfd = 323;
export const SYS_memfd_create = 319;
export const SYS_pidfd_open = 434;
export const SYS_process_madvise = 440;

// open(2) / userfaultfd(2) flags
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_TRUNC = 0o1000;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const UFFD_USER_MODE_ONLY = 1;

export const UFFD_API = 0xaa;
export const UFFDIO = 0xaa;
export const USERFAULTFD_IOC_NEW = IO(0xaa, 0x00);

// ioctl numbers ("nr") — the REGISTER/API `ioctls` bitmask has bit nr set for each.
export const _UFFDIO_REGISTER = 0x00;
export const _UFFDIO_UNREGISTER = 0x01;
export const _UFFDIO_WAKE = 0x02;
export const _UFFDIO_COPY = 0x03;
export const _UFFDIO_ZEROPAGE = 0x04;
export const _UFFDIO_MOVE = 0x05;
export const _UFFDIO_WRITEPROTECT = 0x06;
export const _UFFDIO_CONTINUE = 0x07;
export const _UFFDIO_POISON = 0x08;
export const _UFFDIO_RWPROTECT = 0x09;
export const _UFFDIO_SET_MODE = 0x0a;
export const _UFFDIO_API = 0x3f;

// struct sizes in bytes
export const SIZEOF_UFFDIO_API = 24;
export const SIZEOF_UFFDIO_RANGE = 16;
export const SIZEOF_UFFDIO_REGISTER = 32;
export const SIZEOF_UFFDIO_COPY = 40;
export const SIZEOF_UFFDIO_ZEROPAGE = 32;
export const SIZEOF_UFFDIO_MOVE = 40;
export const SIZEOF_UFFDIO_WRITEPROTECT = 24;
export const SIZEOF_UFFDIO_CONTINUE = 32;
export const SIZEOF_UFFDIO_POISON = 32;
export const SIZEOF_UFFDIO_RWPROTECT = 24;
export const SIZEOF_UFFDIO_SET_MODE = 16;
export const SIZEOF_UFFD_MSG = 32;

export const UFFDIO_API = IOWR(UFFDIO, _UFFDIO_API, SIZEOF_UFFDIO_API);
export const UFFDIO_REGISTER = IOWR(UFFDIO, _UFFDIO_REGISTER, SIZEOF_UFFDIO_REGISTER);
export const UFFDIO_UNREGISTER = IOR(UFFDIO, _UFFDIO_UNREGISTER, SIZEOF_UFFDIO_RANGE);
export const UFFDIO_WAKE = IOR(UFFDIO, _UFFDIO_WAKE, SIZEOF_UFFDIO_RANGE);
export const UFFDIO_COPY = IOWR(UFFDIO, _UFFDIO_COPY, SIZEOF_UFFDIO_COPY);
export const UFFDIO_ZEROPAGE = IOWR(UFFDIO, _UFFDIO_ZEROPAGE, SIZEOF_UFFDIO_ZEROPAGE);
export const UFFDIO_MOVE = IOWR(UFFDIO, _UFFDIO_MOVE, SIZEOF_UFFDIO_MOVE);
export const UFFDIO_WRITEPROTECT = IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, SIZEOF_UFFDIO_WRITEPROTECT);
export const UFFDIO_CONTINUE = IOWR(UFFDIO, _UFFDIO_CONTINUE, SIZEOF_UFFDIO_CONTINUE);
export const UFFDIO_POISON = IOWR(UFFDIO, _UFFDIO_POISON, SIZEOF_UFFDIO_POISON);
export const UFFDIO_RWPROTECT = IOWR(UFFDIO, _UFFDIO_RWPROTECT, SIZEOF_UFFDIO_RWPROTECT);
export const UFFDIO_SET_MODE = IOW(UFFDIO, _UFFDIO_SET_MODE, SIZEOF_UFFDIO_SET_MODE);

// Mode bits of each resolve ioctl
export const UFFDIO_COPY_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_COPY_MODE_WP = 1 << 1;
export const UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0;
export const UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1;
export const UFFDIO_CONTINUE_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_CONTINUE_MODE_WP = 1 << 1;
export const UFFDIO_POISON_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_MOVE_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES = 1 << 1;
export const UFFDIO_RWPROTECT_MODE_RWP = 1 << 0;
export const UFFDIO_RWPROTECT_MODE_DONTWAKE = 1 << 1;

// Registration modes
export const UFFDIO_REGISTER_MODE_MISSING = 1 << 0;
export const UFFDIO_REGISTER_MODE_WP = 1 << 1;
export const UFFDIO_REGISTER_MODE_MINOR = 1 << 2;
export const UFFDIO_REGISTER_MODE_RWP = 1 << 3;

// Features (UFFDIO_API .features): bit n means 1 << n.
export const FEATURE_BITS = {
  PAGEFAULT_FLAG_WP: 0,
  EVENT_FORK: 1,
  EVENT_REMAP: 2,
  EVENT_REMOVE: 3,
  MISSING_HUGETLBFS: 4,
  MISSING_SHMEM: 5,
  EVENT_UNMAP: 6,
  SIGBUS: 7,
  THREAD_ID: 8,
  MINOR_HUGETLBFS: 9,
  MINOR_SHMEM: 10,
  EXACT_ADDRESS: 11,
  WP_HUGETLBFS_SHMEM: 12,
  WP_UNPOPULATED: 13,
  POISON: 14,
  WP_ASYNC: 15,
  MOVE: 16,
  RWP: 17,
  RWP_ASYNC: 18,
} as const;
export type FeatureName = keyof typeof FEATURE_BITS;
export const FEATURE_NAMES = Object.keys(FEATURE_BITS) as FeatureName[];
export function featureBit(name: FeatureName): bigint {
  return 1n << BigInt(FEATURE_BITS[name]);
}

// uffd_msg
export const UFFD_EVENT_PAGEFAULT = 0x12;
export const UFFD_EVENT_FORK = 0x13;
export const UFFD_EVENT_REMAP = 0x14;
export const UFFD_EVENT_REMOVE = 0x15;
export const UFFD_EVENT_UNMAP = 0x16;
export const UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0;
export const UFFD_PAGEFAULT_FLAG_WP = 1 << 1;
export const UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2;
export const UFFD_PAGEFAULT_FLAG_RWP = 1 << 3;

// PAGEMAP_SCAN (Linux 6.7+), on an fd of /proc/PID/pagemap
export const SIZEOF_PM_SCAN_ARG = 96;
export const SIZEOF_PAGE_REGION = 24;
export const PAGEMAP_SCAN = IOWR(0x66, 16, SIZEOF_PM_SCAN_ARG);
export const PM_SCAN_WP_MATCHING = 1 << 0;
export const PM_SCAN_CHECK_WPASYNC = 1 << 1;
export const PAGE_IS_WPALLOWED = 1 << 0;
export const PAGE_IS_WRITTEN = 1 << 1;
export const PAGE_IS_FILE = 1 << 2;
export const PAGE_IS_PRESENT = 1 << 3;
export const PAGE_IS_SWAPPED = 1 << 4;
export const PAGE_IS_PFNZERO = 1 << 5;
export const PAGE_IS_HUGE = 1 << 6;
export const PAGE_IS_SOFT_DIRTY = 1 << 7;
export const PAGE_IS_GUARD = 1 << 8;
export const PAGE_IS_ACCESSED = 1 << 9;

// mmap / madvise / fallocate / memfd
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;
export const MAP_HUGE_SHIFT = 26;
export const MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT;
export const MAP_HUGE_1GB = 30 << MAP_HUGE_SHIFT;
export const MADV_NORMAL = 0;
export const MADV_DONTNEED = 4;
export const MADV_REMOVE = 9;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_COLD = 20;
export const MADV_PAGEOUT = 21;
export const MADV_POPULATE_READ = 22;
export const MADV_POPULATE_WRITE = 23;
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const MFD_CLOEXEC = 0x0001;
export const MFD_ALLOW_SEALING = 0x0002;
export const MFD_HUGETLB = 0x0004;
export const MFD_HUGE_2MB = 21 << 26;
export const MFD_HUGE_1GB = 30 << 26;

// poll / eventfd
export const POLLIN = 0x001;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
// epoll: EPOLLEXCLUSIVE wakes one of the threads waiting on an fd, not all of them.
export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLLIN = 0x001;
export const EPOLLEXCLUSIVE = 1 << 28;
export const SIZEOF_EPOLL_EVENT = 12; // packed on x86_64: u32 events, u64 data

// KVM (for guest_memfd and the guest runner)
export const KVMIO = 0xae;
export const KVM_GET_API_VERSION = IO(KVMIO, 0x00);
export const KVM_CREATE_VM = IO(KVMIO, 0x01);
export const KVM_CHECK_EXTENSION = IO(KVMIO, 0x03);
export const KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04);
export const KVM_CREATE_VCPU = IO(KVMIO, 0x41);
export const KVM_RUN = IO(KVMIO, 0x80);
export const SIZEOF_KVM_CREATE_GUEST_MEMFD = 64;
export const KVM_CREATE_GUEST_MEMFD = IOWR(KVMIO, 0xd4, SIZEOF_KVM_CREATE_GUEST_MEMFD);
export const GUEST_MEMFD_FLAG_MMAP = 1 << 0;
export const GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1;
export const KVM_CAP_GUEST_MEMFD = 234;
