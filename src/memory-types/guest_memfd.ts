// guest_memfd: KVM guest memory as a file of its own (KVM_CREATE_GUEST_MEMFD on a VM fd),
// made mmap-able with GUEST_MEMFD_FLAG_MMAP and shared with user space from the start with
// GUEST_MEMFD_FLAG_INIT_SHARED (without it, pages are private to the guest and a user-space
// touch is a SIGBUS). Declared as in the 2026 RFC "mm, kvm: allow uffd support in
// guest_memfd" (missing + minor through vm_uffd_ops); kernels without that series refuse
// userfaultfd registration of it with EINVAL, which probe reports.
import { mapSharedRegion } from './shared-mapping.js';
import * as C from '../kernel/constants.js';
import { UffdError } from '../kernel/errors.js';
import { createGuestMemfd, createVm, guestMemfdSupport, openKvm } from '../kernel/kvm.js';
import { ERRNO } from '../kernel/libc.js';
import { close } from '../kernel/memory.js';
import { checkRegionOptions } from './check.js';
import type { MemoryType, Region, RegionOptions } from './types.js';

export const memoryType: MemoryType = {
  name: 'guest_memfd',
  description: 'KVM guest_memfd (KVM_CREATE_GUEST_MEMFD, MMAP|INIT_SHARED) mapped MAP_SHARED',
  modes: ['missing', 'minor'],
  ops: ['copy', 'continue'],
  pageSizes: [C.PAGE_SIZE],
  modeFeatures: {},
  resolveOp: { missing: 'copy', wp: undefined, minor: 'continue', rwp: undefined },
  modeNotes: {
    wp: 'the guest_memfd userfaultfd series adds missing and minor only',
    rwp: 'the RWP series covers anon, shmem and hugetlbfs only',
  },
  registerRefusal: 'userfaultfd support for guest_memfd (missing and minor faults) comes with the series ' +
    '"mm, kvm: allow uffd support in guest_memfd" (RFC, 2026), not merged in this kernel; ' +
    'serve guest memory from shmem (memfd) or hugetlbfs instead',
  available() {
    return guestMemfdSupport();
  },
  create(opts: RegionOptions): Region {
    const pageSize = checkRegionOptions(memoryType, opts);
    const size = opts.size;
    const kvm = openKvm();
    let vm = -1;
    let fd = -1;
    try {
      vm = createVm(kvm);
      try {
        fd = createGuestMemfd(vm, size, C.GUEST_MEMFD_FLAG_MMAP | C.GUEST_MEMFD_FLAG_INIT_SHARED);
      } catch (e) {
        // A kernel with MMAP but without INIT_SHARED: mappable, but private until converted.
        if (!(e instanceof UffdError && e.errno === ERRNO.EINVAL)) throw e;
        fd = createGuestMemfd(vm, size, C.GUEST_MEMFD_FLAG_MMAP);
      }
    } catch (e) {
      if (vm >= 0) close(vm);
      close(kvm);
      throw e;
    }
    close(kvm); // the VM keeps KVM alive; its fd is not needed any more
    // The region keeps the VM open: the guest_memfd belongs to it.
    return mapSharedRegion('guest_memfd', fd, size, pageSize, opts.noReserve, [vm]);
  },
};

export default memoryType;
