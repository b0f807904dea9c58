// KVM, as far as memory goes: open /dev/kvm, create a VM, query capabilities and create
// guest_memfd files (KVM_CREATE_GUEST_MEMFD). vCPU code lives in kvm-vcpu.ts.
// Like the rest of the kernel layer, structs are written into a preallocated buffer whose
// address is handed to ioctl(2).
import * as C from './constants.js';
import { UffdError } from './errors.js';
import { addressOf, errno, errnoName, libc } from './libc.js';
import { writeU64 } from './messages.js';

function kvmHint(op: string, code: string): string | undefined {
  switch (code) {
    case 'ENOENT':
    case 'ENODEV':
    case 'ENXIO':
      if (op === 'open /dev/kvm') return 'KVM is not available: load kvm_intel or kvm_amd (or enable nested virtualization on the host)';
      return undefined;
    case 'EACCES':
    case 'EPERM':
      return 'no access to /dev/kvm: run as root or add the user to the kvm group';
    case 'EINVAL':
      if (op === 'KVM_CREATE_GUEST_MEMFD') {
        return 'the size must be a positive multiple of the page size and the flags ones this kernel knows ' +
          '(GUEST_MEMFD_FLAG_MMAP and INIT_SHARED need Linux 6.18); check KVM_CAP_GUEST_MEMFD';
      }
      return undefined;
    case 'ENOTTY':
      return 'this KVM does not know the ioctl (kernel too old for it)';
    case 'EMFILE':
    case 'ENFILE':
      return 'out of file descriptors';
    case 'ENOMEM':
      return 'out of memory';
    default:
      return undefined;
  }
}

function fail(op: string): never {
  const e = errno();
  throw new UffdError({ op, errno: e, hint: kvmHint(op, errnoName(e)) });
}

/** Opens /dev/kvm (read-write, close-on-exec); returns the fd. */
export function openKvm(path = '/dev/kvm'): number {
  const fd = libc.open(path, C.O_RDWR | C.O_CLOEXEC, 0);
  if (fd < 0) fail('open /dev/kvm');
  return fd;
}

/** KVM_GET_API_VERSION (12 on every kernel since 2.6.22). */
export function apiVersion(kvmFd: number): number {
  const v = libc.ioctl(kvmFd, C.KVM_GET_API_VERSION, 0);
  if (v < 0) fail('KVM_GET_API_VERSION');
  return v;
}

/** KVM_CREATE_VM with machine type 0 (the default VM type); returns the VM fd. */
export function createVm(kvmFd: number, machineType = 0): number {
  const fd = libc.ioctl(kvmFd, C.KVM_CREATE_VM, machineType);
  if (fd < 0) fail('KVM_CREATE_VM');
  return fd;
}

/**
 * KVM_CHECK_EXTENSION on the /dev/kvm fd or a VM fd: 0 when the capability is absent,
 * otherwise a positive (capability-specific) value.
 */
export function checkExtension(fd: number, cap: number): number {
  const r = libc.ioctl(fd, C.KVM_CHECK_EXTENSION, cap);
  if (r < 0) fail('KVM_CHECK_EXTENSION');
  return r;
}

// struct kvm_create_guest_memfd { __u64 size; __u64 flags; __u64 reserved[6]; }
const gmemArg = new Uint8Array(C.SIZEOF_KVM_CREATE_GUEST_MEMFD);
const gmemDv = new DataView(gmemArg.buffer);
const gmemAddr = addressOf(gmemArg);

/**
 * KVM_CREATE_GUEST_MEMFD on a VM fd: a file of `size` bytes of guest memory. With
 * GUEST_MEMFD_FLAG_MMAP it can be mmap'd MAP_SHARED; with GUEST_MEMFD_FLAG_INIT_SHARED its
 * pages start shared (accessible to user space) rather than private. Returns the fd.
 */
export function createGuestMemfd(vmFd: number, size: number, flags = 0): number {
  gmemArg.fill(0);
  writeU64(gmemDv, 0, size);
  writeU64(gmemDv, 8, flags);
  const fd = libc.ioctl(vmFd, C.KVM_CREATE_GUEST_MEMFD, gmemAddr);
  if (fd < 0) fail('KVM_CREATE_GUEST_MEMFD');
  return fd;
}

/** Whether /dev/kvm can be opened and offers guest_memfd; the reason when not. */
export function guestMemfdSupport(): { ok: boolean; reason?: string } {
  let kvm = -1;
  try {
    kvm = openKvm();
    if (checkExtension(kvm, C.KVM_CAP_GUEST_MEMFD) <= 0) {
      return { ok: false, reason: 'this KVM lacks KVM_CAP_GUEST_MEMFD (guest_memfd needs Linux 6.8; mmap-able guest_memfd 6.18)' };
    }
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: e instanceof Error ? e.message : String(e) };
  } finally {
    if (kvm >= 0) libc.close(kvm);
  }
}
