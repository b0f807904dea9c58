// Typed errors: what was attempted, on which range, the errno by name, and a hint a
// person can act on.
import { errnoName } from './libc.js';

export interface UffdErrorInit {
  op: string;
  errno?: number;
  start?: number;
  len?: number;
  hint?: string;
  done?: number;
}

export class UffdError extends Error {
  readonly op: string;
  readonly errno: number;
  readonly code: string;
  readonly start?: number;
  readonly len?: number;
  readonly hint?: string;
  /** Bytes completed before the operation stopped (range operations). */
  readonly done?: number;

  constructor(init: UffdErrorInit, message?: string) {
    const code = init.errno ? errnoName(init.errno) : 'EINVAL';
    const range = init.start !== undefined
      ? ` on [0x${init.start.toString(16)}, +0x${(init.len ?? 0).toString(16)})` : '';
    const msg = message ?? `${init.op}${range} failed: ${code}`;
    super(init.hint ? `${msg}. ${init.hint}` : msg);
    this.name = 'UffdError';
    this.op = init.op;
    this.errno = init.errno ?? 0;
    this.code = code;
    this.start = init.start;
    this.len = init.len;
    this.hint = init.hint;
    this.done = init.done;
  }
}

/** A request the engine refuses before asking the kernel (it would answer EINVAL). */
export class UnsupportedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsupportedError';
  }
}

/** Bad arguments or configuration, caught before any system call. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

// Hints for errno values each operation commonly meets.
export function hintFor(op: string, code: string): string | undefined {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
      if (op === 'userfaultfd') {
        return 'userfaultfd needs root, CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1 or rw access to /dev/userfaultfd; or pass userModeOnly: true';
      }
      return 'permission denied: run as root or check the file mode';
    case 'ENOSYS':
      return 'this kernel was built without userfaultfd (CONFIG_USERFAULTFD)';
    case 'EINVAL':
      if (op === 'register') return 'the range must be page-aligned, inside one mapping of a type that supports the mode, and the mode must be one the kernel advertised';
      if (op === 'api') return 'a userfaultfd accepts UFFDIO_API once, with features the kernel offers; create a new one';
      return 'check that start and length are aligned to the region page size and the mode bits are valid for this operation';
    case 'ENOENT':
      return 'the destination range is not (or no longer) registered with this userfaultfd, or the mapping went away';
    case 'ESRCH':
      return 'the process that owns the memory has exited';
    case 'EEXIST':
      return 'a page is already present there (another fault or a prefetch filled it first)';
    case 'EAGAIN':
      return 'the mappings are changing (an unread REMOVE/REMAP/UNMAP event is pending): read events, then retry';
    case 'EBUSY':
      return 'the range is already registered with other modes or another userfaultfd: unregister it first';
    case 'ENOMEM':
      return 'out of memory (for hugetlb: reserve pages with echo N > /proc/sys/vm/nr_hugepages)';
    case 'EFAULT':
      return 'a source or destination address is not mapped in this process';
    default:
      return undefined;
  }
}
