// uffd-bench: the native reference side of uffd-engine's benchmark.
//
// One C program (pthreads) that creates a memory region, makes its pages fault in a
// chosen way (missing / minor / write-protect), runs faulting threads over it with an
// access pattern, and serves the faults with one of:
//   native    N handler threads, poll + batched read (64 msgs) + one ioctl per fault
//   fc        Firecracker's example handler: one thread, one read per message, one
//             UFFDIO_COPY (or CONTINUE) of one page per fault
//   external  no handler here: the uffd is sent to a Unix socket exactly like Firecracker
//             does, and whatever listens there (our TypeScript engine) serves the faults
//   none      no userfaultfd at all: plain kernel page faults (a ceiling)
// Every first-touch access is timed; afterwards every byte of every page is checked.
// Output: one JSON object on stdout. Errors: a message on stderr and a non-zero exit.
//
// Other modes: --memcpy SIZE (memcpy bandwidth), --write-source PATH (write the pattern
// to a file for an external handler), --serve PATH (a native external handler: listen,
// take the Firecracker handshake, serve the faults; the peer of --handler external).
//
// Build: cc -O2 -pthread -o uffd-bench uffd-bench.c
// See docs/native-reference.md for the options and what each figure means.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------
// UAPI. The installed headers are older than the running kernel, so nothing is taken
// from <linux/userfaultfd.h>: the values below are from shared/UAPI.md (x86_64).
// Struct names carry a bu_ prefix so they never collide with a header's.
// ---------------------------------------------------------------------------
#ifndef __NR_userfaultfd
#define __NR_userfaultfd 323
#endif
#ifndef __NR_memfd_create
#define __NR_memfd_create 319
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_API
#define UFFD_API ((uint64_t)0xAA)
#endif
#define BU_UFFDIO 0xAA
#define BU_IOWR(nr, size) _IOC(_IOC_READ | _IOC_WRITE, BU_UFFDIO, (nr), (size))
#define BU_IOR(nr, size) _IOC(_IOC_READ, BU_UFFDIO, (nr), (size))
#define BU_IO(nr) _IOC(_IOC_NONE, BU_UFFDIO, (nr), 0)

#ifndef _UFFDIO_REGISTER
#define _UFFDIO_REGISTER 0x00
#endif
#ifndef _UFFDIO_UNREGISTER
#define _UFFDIO_UNREGISTER 0x01
#endif
#ifndef _UFFDIO_WAKE
#define _UFFDIO_WAKE 0x02
#endif
#ifndef _UFFDIO_COPY
#define _UFFDIO_COPY 0x03
#endif
#ifndef _UFFDIO_ZEROPAGE
#define _UFFDIO_ZEROPAGE 0x04
#endif
#ifndef _UFFDIO_WRITEPROTECT
#define _UFFDIO_WRITEPROTECT 0x06
#endif
#ifndef _UFFDIO_CONTINUE
#define _UFFDIO_CONTINUE 0x07
#endif
#ifndef _UFFDIO_API
#define _UFFDIO_API 0x3F
#endif

struct bu_range { uint64_t start, len; };
struct bu_api { uint64_t api, features, ioctls; };
struct bu_register { struct bu_range range; uint64_t mode, ioctls; };
struct bu_copy { uint64_t dst, src, len, mode; int64_t copy; };
struct bu_zeropage { struct bu_range range; uint64_t mode; int64_t zeropage; };
struct bu_writeprotect { struct bu_range range; uint64_t mode; };
struct bu_continue { struct bu_range range; uint64_t mode; int64_t mapped; };
struct bu_msg {
  uint8_t event, reserved1;
  uint16_t reserved2;
  uint32_t reserved3;
  union {
    struct { uint64_t flags, address; uint32_t ptid; } __attribute__((packed)) pagefault;
    struct { uint64_t a, b, c; } raw;
  } arg;
} __attribute__((packed));
_Static_assert(sizeof(struct bu_api) == 24, "uffdio_api");
_Static_assert(sizeof(struct bu_register) == 32, "uffdio_register");
_Static_assert(sizeof(struct bu_copy) == 40, "uffdio_copy");
_Static_assert(sizeof(struct bu_zeropage) == 32, "uffdio_zeropage");
_Static_assert(sizeof(struct bu_writeprotect) == 24, "uffdio_writeprotect");
_Static_assert(sizeof(struct bu_continue) == 32, "uffdio_continue");
_Static_assert(sizeof(struct bu_msg) == 32, "uffd_msg");

#ifndef UFFDIO_API
#define UFFDIO_API BU_IOWR(_UFFDIO_API, 24)
#endif
#ifndef UFFDIO_REGISTER
#define UFFDIO_REGISTER BU_IOWR(_UFFDIO_REGISTER, 32)
#endif
#ifndef UFFDIO_UNREGISTER
#define UFFDIO_UNREGISTER BU_IOR(_UFFDIO_UNREGISTER, 16)
#endif
#ifndef UFFDIO_WAKE
#define UFFDIO_WAKE BU_IOR(_UFFDIO_WAKE, 16)
#endif
#ifndef UFFDIO_COPY
#define UFFDIO_COPY BU_IOWR(_UFFDIO_COPY, 40)
#endif
#ifndef UFFDIO_ZEROPAGE
#define UFFDIO_ZEROPAGE BU_IOWR(_UFFDIO_ZEROPAGE, 32)
#endif
#ifndef UFFDIO_WRITEPROTECT
#define UFFDIO_WRITEPROTECT BU_IOWR(_UFFDIO_WRITEPROTECT, 24)
#endif
#ifndef UFFDIO_CONTINUE
#define UFFDIO_CONTINUE BU_IOWR(_UFFDIO_CONTINUE, 32)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW BU_IO(0x00)
#endif

#ifndef UFFDIO_REGISTER_MODE_MISSING
#define UFFDIO_REGISTER_MODE_MISSING ((uint64_t)1 << 0)
#endif
#ifndef UFFDIO_REGISTER_MODE_WP
#define UFFDIO_REGISTER_MODE_WP ((uint64_t)1 << 1)
#endif
#ifndef UFFDIO_REGISTER_MODE_MINOR
#define UFFDIO_REGISTER_MODE_MINOR ((uint64_t)1 << 2)
#endif
#ifndef UFFDIO_COPY_MODE_DONTWAKE
#define UFFDIO_COPY_MODE_DONTWAKE ((uint64_t)1 << 0)
#endif
#ifndef UFFDIO_WRITEPROTECT_MODE_WP
#define UFFDIO_WRITEPROTECT_MODE_WP ((uint64_t)1 << 0)
#endif
#ifndef UFFDIO_WRITEPROTECT_MODE_DONTWAKE
#define UFFDIO_WRITEPROTECT_MODE_DONTWAKE ((uint64_t)1 << 1)
#endif

#ifndef UFFD_EVENT_PAGEFAULT
#define UFFD_EVENT_PAGEFAULT 0x12
#endif
#ifndef UFFD_EVENT_REMOVE
#define UFFD_EVENT_REMOVE 0x15
#endif
#ifndef UFFD_PAGEFAULT_FLAG_WRITE
#define UFFD_PAGEFAULT_FLAG_WRITE ((uint64_t)1 << 0)
#endif
#ifndef UFFD_PAGEFAULT_FLAG_WP
#define UFFD_PAGEFAULT_FLAG_WP ((uint64_t)1 << 1)
#endif
#ifndef UFFD_PAGEFAULT_FLAG_MINOR
#define UFFD_PAGEFAULT_FLAG_MINOR ((uint64_t)1 << 2)
#endif

#ifndef UFFD_FEATURE_PAGEFAULT_FLAG_WP
#define UFFD_FEATURE_PAGEFAULT_FLAG_WP ((uint64_t)1 << 0)
#endif
#ifndef UFFD_FEATURE_EVENT_REMOVE
#define UFFD_FEATURE_EVENT_REMOVE ((uint64_t)1 << 3)
#endif
#ifndef UFFD_FEATURE_MISSING_HUGETLBFS
#define UFFD_FEATURE_MISSING_HUGETLBFS ((uint64_t)1 << 4)
#endif
#ifndef UFFD_FEATURE_MISSING_SHMEM
#define UFFD_FEATURE_MISSING_SHMEM ((uint64_t)1 << 5)
#endif
#ifndef UFFD_FEATURE_MINOR_HUGETLBFS
#define UFFD_FEATURE_MINOR_HUGETLBFS ((uint64_t)1 << 9)
#endif
#ifndef UFFD_FEATURE_MINOR_SHMEM
#define UFFD_FEATURE_MINOR_SHMEM ((uint64_t)1 << 10)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM ((uint64_t)1 << 12)
#endif

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << MFD_HUGE_SHIFT)
#endif
#ifndef MFD_HUGE_1GB
#define MFD_HUGE_1GB (30U << MFD_HUGE_SHIFT)
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

// ---------------------------------------------------------------------------
// Errors, time, small helpers
// ---------------------------------------------------------------------------
static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("uffd-bench: error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}
#define DIE_ERRNO(what, ...) die(what ": %s" __VA_OPT__(,) __VA_ARGS__, strerror(errno))

static unsigned timeout_sec = 120;
static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "uffd-bench: error: timed out (--timeout); a fault was probably never served\n";
  ssize_t r = write(2, msg, sizeof msg - 1);
  (void)r;
  _exit(124);
}

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static uint64_t clock_ns(clockid_t c) {
  struct timespec ts;
  if (clock_gettime(c, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static double process_cpu_sec(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}
static long process_minflt(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

static uint64_t parse_size(const char *s, const char *opt) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s) die("%s: \"%s\" is not a size (examples: 4096, 64K, 16M, 1G)", opt, s);
  uint64_t mul = 1;
  switch (*end) {
    case 'k': case 'K': mul = 1ull << 10; end++; break;
    case 'm': case 'M': mul = 1ull << 20; end++; break;
    case 'g': case 'G': mul = 1ull << 30; end++; break;
    case 't': case 'T': mul = 1ull << 40; end++; break;
    default: break;
  }
  if (*end == 'i' || *end == 'I') end++;
  if (*end == 'b' || *end == 'B') end++;
  if (*end) die("%s: \"%s\" is not a size (examples: 4096, 64K, 16M, 1G)", opt, s);
  return (uint64_t)v * mul;
}
static long parse_long(const char *s, const char *opt, long lo, long hi) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) die("%s: \"%s\" must be an integer in [%ld, %ld]", opt, s, lo, hi);
  return v;
}
static double parse_double(const char *s, const char *opt, double lo, double hi) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi)) die("%s: \"%s\" must be a number in [%g, %g]", opt, s, lo, hi);
  return v;
}

static void *map_anon(size_t len, const char *what) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap %s (%zu bytes): %s", what, len, strerror(errno));
  return p;
}

// ---------------------------------------------------------------------------
// The deterministic pattern: little-endian u64 words, word w (byte offset 8w) of the
// region = splitmix64(seed * 0x9E3779B97F4A7C15 + w). Every page differs from every
// other, so a page served at the wrong offset is caught by the check.
// ---------------------------------------------------------------------------
static inline uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static void fill_pattern(uint8_t *dst, uint64_t byte_offset, size_t len, uint64_t seed) {
  uint64_t base = seed * 0x9E3779B97F4A7C15ull;
  uint64_t *w = (uint64_t *)dst;
  uint64_t w0 = byte_offset / 8;
  for (size_t i = 0; i < len / 8; i++) w[i] = splitmix64(base + w0 + i);
}

// xorshift64* for shuffles
static inline uint64_t rng_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------
enum mem_type { T_ANON, T_MEMFD, T_HUGETLB };
enum fault_kind { K_MISSING, K_MINOR, K_WP };
enum handler_mode { H_NATIVE, H_FC, H_EXTERNAL, H_NONE };
enum access_pattern { A_SEQ, A_RANDOM, A_STRIDED, A_HOTSET };
enum source_kind { S_PATTERN, S_ZERO, S_FILE };
enum pin_mode { P_NONE, P_SAME, P_SPLIT };
static const char *type_names[] = {"anon", "memfd", "hugetlb"};
static const char *kind_names[] = {"missing", "minor", "wp"};
static const char *handler_names[] = {"native", "fc", "external", "none"};
static const char *access_names[] = {"sequential", "random", "strided", "hotset"};
static const char *source_names[] = {"pattern", "zero", "file"};
static const char *pin_names[] = {"none", "same", "split"};

static struct {
  enum mem_type type;
  enum fault_kind kind;
  enum handler_mode handler;
  enum access_pattern access;
  enum source_kind source;
  enum pin_mode pin;
  uint64_t size, page_size;
  int threads, handlers;
  long stride;
  double hot;
  int bounce;
  uint64_t seed;
  bool touch_write, touch_set;
  const char *socket_path, *source_file, *write_source, *serve_path;
  bool send_memfd, event_remove, wait_ack;
  long spin_us;
  uint64_t memcpy_size;
  bool page_size_set;
  bool no_prewarm;
} cfg = {
  .type = T_ANON, .kind = K_MISSING, .handler = H_NATIVE, .access = A_SEQ, .source = S_PATTERN,
  .pin = P_NONE, .size = 64ull << 20, .page_size = 4096, .threads = 1, .handlers = 1,
  .stride = 16, .hot = 0.1, .bounce = 0, .seed = 1,
};

static int ncpus = 1;
static void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % ncpus, &set);
  int r = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (r) die("pthread_setaffinity_np(cpu %d): %s", cpu, strerror(r));
}
static void pin_faulting(int i) {
  if (cfg.pin == P_SAME) pin_to(0);
  else if (cfg.pin == P_SPLIT) pin_to(ncpus > 1 ? i % (ncpus - 1) : 0);
}
static void pin_handler(int i) {
  (void)i;
  if (cfg.pin == P_SAME) pin_to(0);
  else if (cfg.pin == P_SPLIT) pin_to(ncpus - 1);
}

// ---------------------------------------------------------------------------
// userfaultfd basics
// ---------------------------------------------------------------------------
static int uffd_open(int flags) {
  int fd = (int)syscall(__NR_userfaultfd, flags);
  if (fd >= 0) return fd;
  int sys_err = errno;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    int e = errno;
    close(dev);
    if (fd >= 0) return fd;
    errno = e;
  } else {
    errno = sys_err;
  }
  die("userfaultfd: %s (needs root, CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd)", strerror(errno));
}

static uint64_t uffd_offered_features(void) {
  int fd = uffd_open(O_CLOEXEC | O_NONBLOCK);
  struct bu_api api = {.api = UFFD_API};
  if (ioctl(fd, UFFDIO_API, &api) < 0) DIE_ERRNO("UFFDIO_API (probe)");
  close(fd);
  return api.features;
}

static int uffd_create(uint64_t features) {
  uint64_t offered = uffd_offered_features();
  if (features & ~offered) {
    die("this kernel does not offer userfaultfd features 0x%" PRIx64 " (offers 0x%" PRIx64 ")", features & ~offered, offered);
  }
  int fd = uffd_open(O_CLOEXEC | O_NONBLOCK);
  struct bu_api api = {.api = UFFD_API, .features = features};
  if (ioctl(fd, UFFDIO_API, &api) < 0) DIE_ERRNO("UFFDIO_API(features=0x%" PRIx64 ")", features);
  return fd;
}

// ---------------------------------------------------------------------------
// Fault serving (shared by the in-process handlers and --serve)
// ---------------------------------------------------------------------------
#define MAX_REGIONS 16
struct serve_region { uint64_t base, size; const uint8_t *src; };
struct serve_ctx {
  int uffd, stop_fd;
  uint64_t page_size;
  struct serve_region regions[MAX_REGIONS];
  int nregions;
  bool use_zeropage;          // missing faults with a zero source: UFFDIO_ZEROPAGE
  const uint8_t *zero_src;    // zero-filled page for COPY when the source is zero
  long spin_us;
  volatile int peer_gone;     // (serve) ESRCH: the faulting process exited
};
struct handler_stats {
  uint64_t faults, missing, minor, wp, eexist, eagain, reads, empty_reads, polls, other_events, esrch;
};
struct hthread {
  pthread_t tid;
  int index;
  struct serve_ctx *ctx;
  struct handler_stats st;
  int busy;  // 1 while serving a batch: the counters of a served fault are final once 0
};
#define SET_BUSY(h, v) __atomic_store_n(&(h)->busy, (v), __ATOMIC_RELEASE)
#define STAT_INC(h, f) __atomic_fetch_add(&(h)->st.f, 1, __ATOMIC_RELAXED)
#define STAT_ADD(h, f, n) __atomic_fetch_add(&(h)->st.f, (n), __ATOMIC_RELAXED)
#define STAT_GET(h, f) __atomic_load_n(&(h)->st.f, __ATOMIC_RELAXED)

static void handler_fatal(const char *op, uint64_t addr, int e) __attribute__((noreturn));
static void handler_fatal(const char *op, uint64_t addr, int e) {
  fprintf(stderr, "uffd-bench: error: handler: %s at 0x%" PRIx64 " failed: %s\n", op, addr, strerror(e));
  exit(2);
}

static const uint8_t *source_for(struct serve_ctx *c, uint64_t page) {
  for (int i = 0; i < c->nregions; i++) {
    struct serve_region *r = &c->regions[i];
    if (page >= r->base && page - r->base < r->size) return r->src ? r->src + (page - r->base) : c->zero_src;
  }
  return NULL;
}

static void wake_page(struct serve_ctx *c, uint64_t page) {
  struct bu_range r = {.start = page, .len = c->page_size};
  if (ioctl(c->uffd, UFFDIO_WAKE, &r) < 0 && errno != ESRCH) handler_fatal("UFFDIO_WAKE", page, errno);
}

// Resolves one message with one ioctl. Returns true when done, false when the kernel
// answered EAGAIN (mappings changing: a non-cooperative event is pending) and the fault
// must be retried after reading more events.
static bool resolve_msg(struct hthread *h, const struct bu_msg *m, bool fc_style) {
  struct serve_ctx *c = h->ctx;
  if (m->event != UFFD_EVENT_PAGEFAULT) {
    // REMOVE (with --event-remove) and anything else: reading it is all that is needed.
    STAT_INC(h, other_events);
    return true;
  }
  uint64_t flags = m->arg.pagefault.flags;
  uint64_t page = m->arg.pagefault.address & ~(c->page_size - 1);
  int r;
  const char *op;
  if (flags & UFFD_PAGEFAULT_FLAG_WP) {
    if (fc_style) die("handler fc: Firecracker's handler serves missing and minor faults only, not write-protect faults");
    struct bu_writeprotect wp = {.range = {page, c->page_size}, .mode = 0};
    r = ioctl(c->uffd, UFFDIO_WRITEPROTECT, &wp);
    op = "UFFDIO_WRITEPROTECT(un-protect)";
    if (r == 0) STAT_INC(h, wp);
  } else if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
    struct bu_continue co = {.range = {page, c->page_size}, .mode = 0};
    r = ioctl(c->uffd, UFFDIO_CONTINUE, &co);
    op = "UFFDIO_CONTINUE";
    if (r == 0) STAT_INC(h, minor);
  } else if (c->use_zeropage && !fc_style) {
    struct bu_zeropage z = {.range = {page, c->page_size}, .mode = 0};
    r = ioctl(c->uffd, UFFDIO_ZEROPAGE, &z);
    op = "UFFDIO_ZEROPAGE";
    if (r == 0) STAT_INC(h, missing);
  } else {
    const uint8_t *src = source_for(c, page);
    if (!src) {
      fprintf(stderr, "uffd-bench: error: handler: fault at 0x%" PRIx64 " is outside every region\n", page);
      exit(2);
    }
    struct bu_copy cp = {.dst = page, .src = (uint64_t)(uintptr_t)src, .len = c->page_size, .mode = 0};
    r = ioctl(c->uffd, UFFDIO_COPY, &cp);
    op = "UFFDIO_COPY";
    if (r == 0) STAT_INC(h, missing);
  }
  if (r == 0) {
    STAT_INC(h, faults);
    return true;
  }
  int e = errno;
  if (e == EEXIST) {
    // Already present (a racing fault was served first). The ioctl that failed did not
    // wake anyone; wake in case a thread still waits on this page.
    STAT_INC(h, eexist);
    STAT_INC(h, faults);
    wake_page(c, page);
    return true;
  }
  if (e == EAGAIN) {
    STAT_INC(h, eagain);
    return false;
  }
  if (e == ESRCH) {
    STAT_INC(h, esrch);
    c->peer_gone = 1;
    return true;
  }
  handler_fatal(op, page, e);
}

// A growable list of deferred messages.
struct msgvec { struct bu_msg *v; size_t n, cap; };
static void msgvec_push(struct msgvec *mv, const struct bu_msg *m) {
  if (mv->n == mv->cap) {
    mv->cap = mv->cap ? mv->cap * 2 : 64;
    mv->v = realloc(mv->v, mv->cap * sizeof *mv->v);
    if (!mv->v) die("out of memory (deferred faults)");
  }
  mv->v[mv->n++] = *m;
}

static bool stop_requested(struct serve_ctx *c) {
  struct pollfd p = {.fd = c->stop_fd, .events = POLLIN};
  return poll(&p, 1, 0) > 0;
}

// (a) native: poll(), then read up to 64 messages per read(2), one ioctl per fault;
// EEXIST = success, EAGAIN = retry after reading more events. Optional spinning on the
// non-blocking read for up to spin_us before sleeping in poll().
#define NATIVE_BATCH 64
static void *native_handler(void *arg) {
  struct hthread *h = arg;
  struct serve_ctx *c = h->ctx;
  pin_handler(h->index);
  struct bu_msg msgs[NATIVE_BATCH];
  struct msgvec deferred = {0};
  struct pollfd pfd[2] = {{.fd = c->uffd, .events = POLLIN}, {.fd = c->stop_fd, .events = POLLIN}};
  uint64_t last_work = now_ns();
  for (;;) {
    ssize_t n = read(c->uffd, msgs, sizeof msgs);
    if (n < 0) {
      int e = errno;
      if (e == EINTR) continue;
      if (e != EAGAIN) handler_fatal("read(uffd)", 0, e);
      STAT_INC(h, empty_reads);
      if (deferred.n) {
        // Faults that met EAGAIN: retry them (the pending event has been read by now,
        // by us or by another handler thread).
        size_t keep = 0;
        for (size_t i = 0; i < deferred.n; i++)
          if (!resolve_msg(h, &deferred.v[i], false)) deferred.v[keep++] = deferred.v[i];
        deferred.n = keep;
        if (keep) sched_yield();
        continue;
      }
      SET_BUSY(h, 0);
      if (c->spin_us > 0 && now_ns() - last_work < (uint64_t)c->spin_us * 1000) {
        if (stop_requested(c)) break;
        continue;
      }
      STAT_INC(h, polls);
      int pr = poll(pfd, 2, -1);
      if (pr < 0 && errno != EINTR) handler_fatal("poll(uffd)", 0, errno);
      if (pr > 0 && (pfd[1].revents & POLLIN)) break;
      continue;
    }
    if (n == 0) break;
    SET_BUSY(h, 1);
    STAT_INC(h, reads);
    size_t nm = (size_t)n / sizeof(struct bu_msg);
    for (size_t i = 0; i < nm; i++)
      if (!resolve_msg(h, &msgs[i], false)) msgvec_push(&deferred, &msgs[i]);
    last_work = now_ns();
  }
  free(deferred.v);
  return NULL;
}

// (b) fc: Firecracker's example on_demand handler (src/firecracker/examples/uffd/):
// one thread; poll(); on readiness read ALL pending events one uffd_msg per read(2)
// (the userfaultfd crate's read_event), then serve each page fault with exactly one
// UFFDIO_COPY of one page (wake = true); EEXIST is success, EAGAIN defers the fault to
// the next pass. REMOVE events are read and ignored (the example would answer later
// faults there with zero pages; our bounce re-faults expect the pattern).
static void *fc_handler(void *arg) {
  struct hthread *h = arg;
  struct serve_ctx *c = h->ctx;
  pin_handler(h->index);
  struct msgvec events = {0}, deferred = {0};
  struct pollfd pfd[2] = {{.fd = c->uffd, .events = POLLIN}, {.fd = c->stop_fd, .events = POLLIN}};
  for (;;) {
    SET_BUSY(h, 0);
    STAT_INC(h, polls);
    int pr = poll(pfd, 2, -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      handler_fatal("poll(uffd)", 0, errno);
    }
    if (pfd[1].revents & POLLIN) break;
    if (!(pfd[0].revents & POLLIN)) continue;
    SET_BUSY(h, 1);
    for (;;) {
      events.n = 0;
      for (size_t i = 0; i < deferred.n; i++) msgvec_push(&events, &deferred.v[i]);
      deferred.n = 0;
      for (;;) {
        struct bu_msg m;
        ssize_t n = read(c->uffd, &m, sizeof m);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno != EAGAIN) handler_fatal("read(uffd)", 0, errno);
          STAT_INC(h, empty_reads);
          break;
        }
        if (n != (ssize_t)sizeof m) die("handler fc: short read from uffd (%zd bytes)", n);
        STAT_INC(h, reads);
        msgvec_push(&events, &m);
      }
      for (size_t i = 0; i < events.n; i++)
        if (!resolve_msg(h, &events.v[i], true)) msgvec_push(&deferred, &events.v[i]);
      if (!deferred.n) break;
    }
  }
  free(events.v);
  free(deferred.v);
  return NULL;
}

static struct hthread *start_handlers(struct serve_ctx *c, enum handler_mode mode, int n) {
  struct hthread *hs = calloc((size_t)n, sizeof *hs);
  if (!hs) die("out of memory");
  for (int i = 0; i < n; i++) {
    hs[i].index = i;
    hs[i].ctx = c;
    int r = pthread_create(&hs[i].tid, NULL, mode == H_FC ? fc_handler : native_handler, &hs[i]);
    if (r) die("pthread_create(handler): %s", strerror(r));
  }
  return hs;
}
static void stop_handlers(struct serve_ctx *c, struct hthread *hs, int n) {
  uint64_t one = 1;
  if (write(c->stop_fd, &one, sizeof one) != sizeof one) DIE_ERRNO("write(eventfd)");
  for (int i = 0; i < n; i++) pthread_join(hs[i].tid, NULL);
}
// Waits until no handler is in the middle of a batch, so that every fault already
// served (its thread woken) is counted. Bounded: a handler stuck elsewhere is reported
// with the counters as they are.
static void quiesce_handlers(struct hthread *hs, int n) {
  uint64_t deadline = now_ns() + 100000000ull;
  for (int i = 0; i < n; i++)
    while (__atomic_load_n(&hs[i].busy, __ATOMIC_ACQUIRE) && now_ns() < deadline) sched_yield();
}
static void sum_stats(struct hthread *hs, int n, struct handler_stats *out) {
  memset(out, 0, sizeof *out);
  for (int i = 0; i < n; i++) {
    out->faults += STAT_GET(&hs[i], faults);
    out->missing += STAT_GET(&hs[i], missing);
    out->minor += STAT_GET(&hs[i], minor);
    out->wp += STAT_GET(&hs[i], wp);
    out->eexist += STAT_GET(&hs[i], eexist);
    out->eagain += STAT_GET(&hs[i], eagain);
    out->reads += STAT_GET(&hs[i], reads);
    out->empty_reads += STAT_GET(&hs[i], empty_reads);
    out->polls += STAT_GET(&hs[i], polls);
    out->other_events += STAT_GET(&hs[i], other_events);
    out->esrch += STAT_GET(&hs[i], esrch);
  }
}
static void stats_delta(struct handler_stats *a, const struct handler_stats *b) {
  uint64_t *pa = (uint64_t *)a;
  const uint64_t *pb = (const uint64_t *)b;
  for (size_t i = 0; i < sizeof *a / sizeof(uint64_t); i++) pa[i] -= pb[i];
}
// CPU time of all handler threads, read from their per-thread CPU clocks.
static double handlers_cpu_sec(struct hthread *hs, int n) {
  uint64_t total = 0;
  for (int i = 0; i < n; i++) {
    clockid_t cid;
    if (pthread_getcpuclockid(hs[i].tid, &cid) == 0) total += clock_ns(cid);
  }
  return total / 1e9;
}

// ---------------------------------------------------------------------------
// JSON output
// ---------------------------------------------------------------------------
static void json_str(const char *s) {
  putchar('"');
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') printf("\\%c", ch);
    else if (ch < 0x20) printf("\\u%04x", ch);
    else putchar(ch);
  }
  putchar('"');
}
static void json_num(double v) {
  if (v != v || v > 1e300 || v < -1e300) printf("null");
  else printf("%.9g", v);
}

struct lat_summary { uint64_t count; double p50, p90, p99, max, min, mean; uint64_t hist[40]; int nhist; };
static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}
// Nearest-rank percentiles over latencies in ns; histogram: bucket i holds
// [2^i, 2^(i+1)) µs, bucket 0 also holds everything below 1 µs.
static void summarize(uint32_t *ns, uint64_t n, struct lat_summary *s) {
  memset(s, 0, sizeof *s);
  s->count = n;
  if (!n) return;
  qsort(ns, n, sizeof *ns, cmp_u32);
  double sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    sum += ns[i];
    double us = ns[i] / 1000.0;
    int b = 0;
    while (b < 39 && us >= (double)(2ull << b)) b++;
    s->hist[b]++;
    if (b + 1 > s->nhist) s->nhist = b + 1;
  }
#define RANK(p) ns[(uint64_t)((p) * n + 0.999999) > 0 ? (uint64_t)((p) * n + 0.999999) - 1 : 0]
  s->p50 = RANK(0.50) / 1000.0;
  s->p90 = RANK(0.90) / 1000.0;
  s->p99 = RANK(0.99) / 1000.0;
#undef RANK
  s->min = ns[0] / 1000.0;
  s->max = ns[n - 1] / 1000.0;
  s->mean = sum / n / 1000.0;
}
static void json_latency(const struct lat_summary *s) {
  printf("\"latencyUs\":{\"count\":%" PRIu64 ",\"p50\":", s->count);
  json_num(s->p50);
  printf(",\"p90\":");
  json_num(s->p90);
  printf(",\"p99\":");
  json_num(s->p99);
  printf(",\"max\":");
  json_num(s->max);
  printf(",\"min\":");
  json_num(s->min);
  printf(",\"mean\":");
  json_num(s->mean);
  printf("},\"histogram\":[");
  for (int b = 0; b < s->nhist; b++) {
    printf("%s{\"loUs\":%llu,\"hiUs\":%llu,\"count\":%" PRIu64 "}", b ? "," : "", b ? 1ull << b : 0ull, 2ull << b, s->hist[b]);
  }
  printf("]");
}
static void json_stats(const struct handler_stats *st) {
  printf("{\"faults\":%" PRIu64 ",\"missing\":%" PRIu64 ",\"minor\":%" PRIu64 ",\"wp\":%" PRIu64 ",\"eexist\":%" PRIu64
         ",\"eagain\":%" PRIu64 ",\"reads\":%" PRIu64 ",\"emptyReads\":%" PRIu64 ",\"polls\":%" PRIu64
         ",\"otherEvents\":%" PRIu64 ",\"esrch\":%" PRIu64 "}",
         st->faults, st->missing, st->minor, st->wp, st->eexist, st->eagain, st->reads, st->empty_reads, st->polls,
         st->other_events, st->esrch);
}

// ---------------------------------------------------------------------------
// Peer CPU (external mode): the sum of every thread's run time of the peer process,
// from /proc/PID/task/*/schedstat (ns).
// ---------------------------------------------------------------------------
static double peer_cpu_sec(pid_t pid) {
  if (pid <= 0) return -1;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR *d = opendir(path);
  if (!d) return -1;
  uint64_t total = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char p2[320];
    snprintf(p2, sizeof p2, "/proc/%d/task/%s/schedstat", (int)pid, de->d_name);
    FILE *f = fopen(p2, "r");
    if (!f) continue;
    unsigned long long run = 0;
    if (fscanf(f, "%llu", &run) == 1) total += run;
    fclose(f);
  }
  closedir(d);
  return total / 1e9;
}

// ---------------------------------------------------------------------------
// Source of page contents
// ---------------------------------------------------------------------------
static const uint8_t *source_buf;   // NULL: zeros
static const uint8_t *zero_page;    // page_size zero bytes
static char pattern_desc[512];

static const uint8_t *map_source_file(const char *path, uint64_t need, uint64_t *len_out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("--source-file %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) < 0) DIE_ERRNO("fstat %s", path);
  if ((uint64_t)st.st_size < need)
    die("--source-file %s holds %lld bytes; the region needs %" PRIu64 " (write it with --write-source and the same --size)",
        path, (long long)st.st_size, need);
  uint64_t len = need ? need : (uint64_t)st.st_size;
  if (len == 0) die("--source-file %s is empty", path);
  // Like Firecracker's example: private, read-only, populated, so the benchmark measures
  // fault serving and not faults on the source mapping.
  void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) die("mmap --source-file %s: %s", path, strerror(errno));
  close(fd);
  if (len_out) *len_out = len;
  return p;
}

static void setup_source(uint64_t len) {
  uint8_t *z = map_anon(cfg.page_size, "zero page");
  memset(z, 0, cfg.page_size);
  zero_page = z;
  switch (cfg.source) {
    case S_ZERO:
      source_buf = NULL;
      snprintf(pattern_desc, sizeof pattern_desc, "zero");
      break;
    case S_FILE:
      source_buf = map_source_file(cfg.source_file, len, NULL);
      snprintf(pattern_desc, sizeof pattern_desc, "file:%s", cfg.source_file);
      break;
    case S_PATTERN: {
      uint8_t *b = map_anon(len, "source buffer");
      fill_pattern(b, 0, len, cfg.seed);
      source_buf = b;
      snprintf(pattern_desc, sizeof pattern_desc, "splitmix64:seed=%" PRIu64, cfg.seed);
      break;
    }
  }
}

// ---------------------------------------------------------------------------
// The faulting workload
// ---------------------------------------------------------------------------
static uint8_t *region;          // the registered mapping the threads touch
static uint8_t *alias;           // minor: a second, unregistered mapping of the memfd
static int memfd = -1;
static uint64_t npages, hot_pages;
static int uffd = -1;
static bool expect_zero;         // verification expects zeros (zero source, or plain missing faults)

struct share { uint64_t start, len; uint32_t *order; };  // contiguous page range + touch order
static struct share *full_shares, *hot_shares;

static void build_order(struct share *s, uint64_t start, uint64_t len, enum access_pattern ap, uint64_t rng_seed) {
  s->start = start;
  s->len = len;
  s->order = malloc((len ? len : 1) * sizeof(uint32_t));
  if (!s->order) die("out of memory (page order)");
  switch (ap) {
    case A_SEQ:
      for (uint64_t i = 0; i < len; i++) s->order[i] = (uint32_t)(start + i);
      break;
    case A_STRIDED: {
      uint64_t k = 0;
      for (uint64_t first = 0; first < (uint64_t)cfg.stride && first < len; first++)
        for (uint64_t i = first; i < len; i += (uint64_t)cfg.stride) s->order[k++] = (uint32_t)(start + i);
      break;
    }
    case A_RANDOM:
    case A_HOTSET: {
      for (uint64_t i = 0; i < len; i++) s->order[i] = (uint32_t)(start + i);
      uint64_t st = rng_seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
      if (!st) st = 1;
      for (uint64_t i = len; i > 1; i--) {
        uint64_t j = rng_next(&st) % i;
        uint32_t t = s->order[i - 1];
        s->order[i - 1] = s->order[j];
        s->order[j] = t;
      }
      break;
    }
  }
}

static void build_shares(void) {
  int n = cfg.threads;
  full_shares = calloc((size_t)n, sizeof *full_shares);
  hot_shares = calloc((size_t)n, sizeof *hot_shares);
  if (!full_shares || !hot_shares) die("out of memory");
  for (int s = 0; s < n; s++) {
    uint64_t a = npages * (uint64_t)s / (uint64_t)n, b = npages * (uint64_t)(s + 1) / (uint64_t)n;
    build_order(&full_shares[s], a, b - a, cfg.access, cfg.seed * 1000003ull + (uint64_t)s);
    if (cfg.access == A_HOTSET) {
      uint64_t ha = hot_pages * (uint64_t)s / (uint64_t)n, hb = hot_pages * (uint64_t)(s + 1) / (uint64_t)n;
      build_order(&hot_shares[s], ha, hb - ha, A_RANDOM, cfg.seed * 1000033ull + (uint64_t)s);
    }
  }
}

// Latency samples (ns, u32) of the initial population (lat0, one per page) and of all
// bounce rounds (latb, rounds x bounce_pages).
static uint32_t *lat0, *latb;
static uint64_t bounce_pages;  // pages re-faulted per bounce round

struct fthread {
  pthread_t tid;
  int index;
  uint64_t round_start, round_end;  // this round's first and last timestamps
  uint64_t first_done;              // when this thread's first touch of round 0 returned
  uint64_t cpu_ns[2];               // thread CPU: [0] initial population, [1] bounce rounds
  uint64_t sink;
};
static pthread_barrier_t bar_start, bar_end;

static void *faulting_thread(void *arg) {
  struct fthread *f = arg;
  pin_faulting(f->index);
  const uint64_t ps = cfg.page_size;
  const int n = cfg.threads;
  uint64_t sink = 0;
  for (int r = 0; r <= cfg.bounce; r++) {
    pthread_barrier_wait(&bar_start);
    // Round r: this thread touches share (index + r) % n, so after a bounce every page is
    // re-faulted by another thread than the one that touched it last round.
    int s = (f->index + r) % n;
    const struct share *sh = (r > 0 && cfg.access == A_HOTSET) ? &hot_shares[s] : &full_shares[s];
    uint32_t *lat = r == 0 ? lat0 + sh->start : latb + (uint64_t)(r - 1) * bounce_pages + sh->start;
    uint64_t c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t t_begin = now_ns();
    for (uint64_t i = 0; i < sh->len; i++) {
      uint64_t pg = sh->order[i];
      volatile uint8_t *p = region + pg * ps;
      uint8_t want = expect_zero ? 0 : source_buf[pg * ps];
      struct timespec a, b;
      clock_gettime(CLOCK_MONOTONIC, &a);
      if (cfg.touch_write) *p = want;
      else sink += *p;
      clock_gettime(CLOCK_MONOTONIC, &b);
      int64_t d = (int64_t)(b.tv_sec - a.tv_sec) * 1000000000ll + (b.tv_nsec - a.tv_nsec);
      lat[i] = d < 0 ? 0 : d > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)d;
      if (r == 0 && i == 0) f->first_done = (uint64_t)b.tv_sec * 1000000000ull + (uint64_t)b.tv_nsec;
    }
    uint64_t t_end = now_ns();
    uint64_t c1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    f->round_start = t_begin;
    f->round_end = t_end;
    f->cpu_ns[r == 0 ? 0 : 1] += c1 - c0;
    pthread_barrier_wait(&bar_end);
  }
  f->sink = sink;
  return NULL;
}

// Make the pages of [0, len_pages) fault again (between bounce rounds).
static void refault_range(uint64_t len_pages) {
  uint64_t len = len_pages * cfg.page_size;
  if (!len) return;
  if (cfg.kind == K_WP && cfg.handler != H_NONE) {
    struct bu_writeprotect wp = {.range = {(uint64_t)(uintptr_t)region, len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) DIE_ERRNO("UFFDIO_WRITEPROTECT (re-protect for bounce)");
    return;
  }
  if (cfg.type == T_ANON) {
    if (madvise(region, len, MADV_DONTNEED) < 0) DIE_ERRNO("madvise(MADV_DONTNEED) for bounce");
    return;
  }
  // memfd / hugetlb: punch the pages out of the page cache (this also zaps the PTEs);
  // for minor faults re-fill the cache through the unregistered alias mapping.
  if (fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)len) < 0) DIE_ERRNO("fallocate(PUNCH_HOLE) for bounce");
  if (cfg.kind == K_MINOR) {
    if (source_buf) memcpy(alias, source_buf, len);
    else memset(alias, 0, len);
  }
}

struct phase_result {
  double elapsed, faulting_cpu, handler_cpu, process_cpu;
  uint64_t pages;
  long kernel_faults;
  struct handler_stats st;
  struct lat_summary lat;
};

static void print_phase(const struct phase_result *p, bool have_handlers, double peer_cpu) {
  double el = p->elapsed > 0 ? p->elapsed : 1e-9;
  double faults = have_handlers ? (double)p->st.faults : (double)p->pages;
  printf("\"elapsedSec\":");
  json_num(p->elapsed);
  printf(",\"pagesTouched\":%" PRIu64 ",\"faultsPerSec\":", p->pages);
  json_num(faults / el);
  printf(",\"pagesPerSec\":");
  json_num(p->pages / el);
  printf(",\"mbPerSec\":");
  json_num(p->pages * (double)cfg.page_size / el / (1 << 20));
  printf(",");
  json_latency(&p->lat);
  printf(",\"handlerCpuSec\":");
  if (have_handlers) json_num(p->handler_cpu);
  else printf("null");
  printf(",\"faultingCpuSec\":");
  json_num(p->faulting_cpu);
  printf(",\"processCpuSec\":");
  json_num(p->process_cpu);
  printf(",\"peerCpuSec\":");
  if (peer_cpu >= 0) json_num(peer_cpu);
  else printf("null");
  printf(",\"kernelFaults\":%ld,\"handled\":", p->kernel_faults);
  if (have_handlers) json_stats(&p->st);
  else printf("null");
}

// Connect (retrying while nobody listens yet) and send the Firecracker handshake.
static uint64_t t_handshake;  // CLOCK_MONOTONIC when the handshake was sent (external handler)

static int external_handshake(pid_t *peer_pid) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) DIE_ERRNO("socket(AF_UNIX)");
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(cfg.socket_path) >= sizeof sa.sun_path) die("--socket %s: path too long (max %zu bytes)", cfg.socket_path, sizeof sa.sun_path - 1);
  strcpy(sa.sun_path, cfg.socket_path);
  uint64_t deadline = now_ns() + 10ull * 1000000000ull;
  while (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
    if ((errno == ENOENT || errno == ECONNREFUSED) && now_ns() < deadline) {
      usleep(10000);
      continue;
    }
    die("connect %s: %s (is the external handler listening?)", cfg.socket_path, strerror(errno));
  }
  struct ucred cred;
  socklen_t cl = sizeof cred;
  *peer_pid = getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 ? cred.pid : -1;

  char body[512];
  int len = snprintf(body, sizeof body,
                     "[{\"base_host_virt_addr\":%" PRIu64 ",\"size\":%" PRIu64 ",\"offset\":0,\"page_size\":%" PRIu64
                     ",\"page_size_kib\":%" PRIu64 "}]",
                     (uint64_t)(uintptr_t)region, cfg.size, cfg.page_size, cfg.page_size);
  int fds[2] = {uffd, memfd};
  int nfds = cfg.send_memfd ? 2 : 1;
  union { char buf[CMSG_SPACE(sizeof(int) * 2)]; struct cmsghdr align; } ctrl;
  memset(&ctrl, 0, sizeof ctrl);
  struct iovec iov = {.iov_base = body, .iov_len = (size_t)len};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.buf, .msg_controllen = CMSG_SPACE(sizeof(int) * nfds)};
  struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
  memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
  ssize_t n = sendmsg(s, &mh, MSG_NOSIGNAL);
  t_handshake = now_ns();
  if (n < 0) DIE_ERRNO("sendmsg (handshake) to %s", cfg.socket_path);
  if (n != len) die("sendmsg (handshake): sent %zd of %d bytes", n, len);
  if (cfg.wait_ack) {
    char ack;
    ssize_t r;
    do r = read(s, &ack, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1) die("--wait-ack: the handler closed the socket or failed before acknowledging (%s)", r < 0 ? strerror(errno) : "EOF");
  }
  // Like Firecracker, keep the socket open for the life of the process: the handler
  // sees it hang up when we exit.
  return s;
}

static int run_workload(void) {
  const uint64_t ps = cfg.page_size;
  uint64_t t_setup = now_ns();
  npages = cfg.size / ps;
  hot_pages = cfg.access == A_HOTSET ? (uint64_t)(cfg.hot * (double)npages + 0.5) : npages;
  if (hot_pages < 1) hot_pages = 1;
  if (hot_pages > npages) hot_pages = npages;
  bounce_pages = cfg.access == A_HOTSET ? hot_pages : npages;
  if (npages > UINT32_MAX) die("--size: at most 2^32 pages");
  expect_zero = cfg.source == S_ZERO || (cfg.handler == H_NONE && cfg.kind == K_MISSING);
  if (cfg.handler == H_NONE && cfg.kind == K_MISSING && cfg.source != S_ZERO) {
    cfg.source = S_ZERO;  // plain faults give zero pages
  }
  setup_source(cfg.size);

  // Pre-warm (not for hugetlb: its pages come from the reserved pool): touch and free as much
  // memory as the region needs, right before mapping it, so that the fills get pages the guest
  // kernel has just freed. On a VM with free page reporting (virtio-balloon
  // VIRTIO_BALLOON_F_REPORTING, as this project's machine has), memory that stayed free for a
  // couple of seconds goes back to the host, and the next first touch of it costs ~5 us per
  // 4 KiB page more (the kernel's own first touches: 0.6 GiB/s instead of 2.1-2.8): whichever
  // side of a comparison ran first after a pause paid for it.
  double prewarm_sec = 0;
  if (!cfg.no_prewarm && cfg.type != T_HUGETLB) {
    uint64_t t_warm = now_ns();
    uint8_t *w = mmap(NULL, cfg.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (w == MAP_FAILED) DIE_ERRNO("mmap pre-warm (%" PRIu64 " bytes)", cfg.size);
    madvise(w, cfg.size, MADV_NOHUGEPAGE);
    for (uint64_t off = 0; off < cfg.size; off += 4096) w[off] = 1;
    munmap(w, cfg.size);
    prewarm_sec = (now_ns() - t_warm) / 1e9;
  }

  // The region.
  if (cfg.type == T_ANON) {
    region = mmap(NULL, cfg.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED) DIE_ERRNO("mmap anon region (%" PRIu64 " bytes)", cfg.size);
    // 4 KiB pages everywhere (a THP would turn 512 faults into one, or get split by WP).
    madvise(region, cfg.size, MADV_NOHUGEPAGE);
  } else {
    unsigned flags = MFD_CLOEXEC;
    if (cfg.type == T_HUGETLB) flags |= MFD_HUGETLB | (ps == (1ull << 30) ? MFD_HUGE_1GB : MFD_HUGE_2MB);
    memfd = (int)syscall(__NR_memfd_create, "uffd-bench", flags);
    if (memfd < 0) DIE_ERRNO("memfd_create(%s)", type_names[cfg.type]);
    if (ftruncate(memfd, (off_t)cfg.size) < 0) DIE_ERRNO("ftruncate memfd to %" PRIu64, cfg.size);
    region = mmap(NULL, cfg.size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (region == MAP_FAILED) {
      if (cfg.type == T_HUGETLB)
        die("mmap hugetlb memfd: %s (reserve huge pages first: echo %" PRIu64 " > /proc/sys/vm/nr_hugepages)", strerror(errno), npages);
      DIE_ERRNO("mmap memfd region");
    }
  }

  // Pre-fill.
  if (cfg.kind == K_MINOR) {
    if (cfg.type == T_ANON) die("--kind minor needs --type memfd or hugetlb (anonymous memory has no page cache)");
    alias = mmap(NULL, cfg.size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (alias == MAP_FAILED) DIE_ERRNO("mmap alias of the memfd");
    if (source_buf) memcpy(alias, source_buf, cfg.size);
    else memset(alias, 0, cfg.size);
  } else if (cfg.kind == K_WP) {
    if (source_buf) memcpy(region, source_buf, cfg.size);
    else memset(region, 0, cfg.size);
  }

  // userfaultfd.
  const char *resolve = "none";
  uint64_t features = 0;
  if (cfg.handler != H_NONE) {
    uint64_t mode = 0, need_ioctl = 0;
    switch (cfg.kind) {
      case K_MISSING:
        mode = UFFDIO_REGISTER_MODE_MISSING;
        if (cfg.type == T_MEMFD) features |= UFFD_FEATURE_MISSING_SHMEM;
        if (cfg.type == T_HUGETLB) features |= UFFD_FEATURE_MISSING_HUGETLBFS;
        if (cfg.source == S_ZERO && cfg.type != T_HUGETLB && cfg.handler == H_NATIVE) {
          resolve = "zeropage";
          need_ioctl = 1ull << _UFFDIO_ZEROPAGE;
        } else {
          resolve = "copy";
          need_ioctl = 1ull << _UFFDIO_COPY;
        }
        break;
      case K_MINOR:
        mode = UFFDIO_REGISTER_MODE_MINOR;
        features |= cfg.type == T_HUGETLB ? UFFD_FEATURE_MINOR_HUGETLBFS : UFFD_FEATURE_MINOR_SHMEM;
        resolve = "continue";
        need_ioctl = 1ull << _UFFDIO_CONTINUE;
        break;
      case K_WP:
        if (cfg.handler == H_FC) die("--handler fc: Firecracker's handler serves missing and minor faults only; use --handler native for --kind wp");
        mode = UFFDIO_REGISTER_MODE_WP;
        features |= UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        if (cfg.type != T_ANON) features |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        resolve = "wp-unprotect";
        need_ioctl = 1ull << _UFFDIO_WRITEPROTECT;
        break;
    }
    if (cfg.event_remove) features |= UFFD_FEATURE_EVENT_REMOVE;
    uffd = uffd_create(features);
    struct bu_register reg = {.range = {(uint64_t)(uintptr_t)region, cfg.size}, .mode = mode};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
      die("UFFDIO_REGISTER(%s on %s): %s", kind_names[cfg.kind], type_names[cfg.type], strerror(errno));
    if ((reg.ioctls & need_ioctl) != need_ioctl)
      die("the kernel does not offer the %s ioctl for %s memory registered for %s faults (ioctls 0x%" PRIx64 ")", resolve,
          type_names[cfg.type], kind_names[cfg.kind], (uint64_t)reg.ioctls);
    if (cfg.kind == K_WP) {
      struct bu_writeprotect wp = {.range = {(uint64_t)(uintptr_t)region, cfg.size}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
      if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) DIE_ERRNO("UFFDIO_WRITEPROTECT(protect)");
    }
  }

  // Handlers.
  struct serve_ctx ctx = {.uffd = uffd, .page_size = ps, .nregions = 1, .zero_src = zero_page, .spin_us = cfg.spin_us};
  ctx.regions[0] = (struct serve_region){.base = (uint64_t)(uintptr_t)region, .size = cfg.size, .src = source_buf};
  ctx.use_zeropage = strcmp(resolve, "zeropage") == 0;
  ctx.stop_fd = eventfd(0, EFD_CLOEXEC);
  if (ctx.stop_fd < 0) DIE_ERRNO("eventfd");
  int nh = cfg.handler == H_NATIVE ? cfg.handlers : cfg.handler == H_FC ? 1 : 0;
  struct hthread *hs = nh ? start_handlers(&ctx, cfg.handler, nh) : NULL;
  int sock = -1;
  pid_t peer = -1;

  // Faulting threads.
  build_shares();
  lat0 = calloc(npages ? npages : 1, sizeof *lat0);
  latb = calloc(cfg.bounce ? (size_t)cfg.bounce * bounce_pages : 1, sizeof *latb);
  if (!lat0 || !latb) die("out of memory (latency samples)");
  struct fthread *fs = calloc((size_t)cfg.threads, sizeof *fs);
  if (!fs) die("out of memory");
  pthread_barrier_init(&bar_start, NULL, (unsigned)cfg.threads + 1);
  pthread_barrier_init(&bar_end, NULL, (unsigned)cfg.threads + 1);
  for (int i = 0; i < cfg.threads; i++) {
    fs[i].index = i;
    int r = pthread_create(&fs[i].tid, NULL, faulting_thread, &fs[i]);
    if (r) die("pthread_create(faulting): %s", strerror(r));
  }
  // External handler: the handshake goes out with the faulting threads ready, as Firecracker
  // resumes its vCPUs right after sending it.
  if (cfg.handler == H_EXTERNAL) sock = external_handshake(&peer);
  double setup_sec = (now_ns() - t_setup) / 1e9;

  struct phase_result ph[2];
  memset(ph, 0, sizeof ph);
  double peer_cpu[2] = {-1, -1};
  uint64_t first_start = 0, last_end = 0;  // CLOCK_MONOTONIC: the first round's start, the last round's end
  for (int r = 0; r <= cfg.bounce; r++) {
    int p = r == 0 ? 0 : 1;
    if (r > 0) refault_range(bounce_pages);
    struct handler_stats before;
    sum_stats(hs, nh, &before);
    double hcpu0 = nh ? handlers_cpu_sec(hs, nh) : 0, pcpu0 = process_cpu_sec();
    double peer0 = peer_cpu_sec(peer);
    long flt0 = process_minflt();
    pthread_barrier_wait(&bar_start);
    pthread_barrier_wait(&bar_end);
    // The round lasts from the first thread's start to the last thread's end.
    uint64_t s0 = UINT64_MAX, e0 = 0;
    for (int i = 0; i < cfg.threads; i++) {
      if (fs[i].round_start < s0) s0 = fs[i].round_start;
      if (fs[i].round_end > e0) e0 = fs[i].round_end;
    }
    if (e0 > s0) ph[p].elapsed += (e0 - s0) / 1e9;
    if (r == 0) first_start = s0;
    last_end = e0;
    quiesce_handlers(hs, nh);
    struct handler_stats after;
    sum_stats(hs, nh, &after);
    stats_delta(&after, &before);
    uint64_t *a = (uint64_t *)&ph[p].st, *b = (uint64_t *)&after;
    for (size_t i = 0; i < sizeof after / sizeof(uint64_t); i++) a[i] += b[i];
    if (nh) ph[p].handler_cpu += handlers_cpu_sec(hs, nh) - hcpu0;
    ph[p].process_cpu += process_cpu_sec() - pcpu0;
    ph[p].kernel_faults += process_minflt() - flt0;
    double peer1 = peer_cpu_sec(peer);
    if (peer0 >= 0 && peer1 >= 0) peer_cpu[p] = (peer_cpu[p] < 0 ? 0 : peer_cpu[p]) + peer1 - peer0;
  }
  uint64_t sink = 0;
  for (int i = 0; i < cfg.threads; i++) {
    pthread_join(fs[i].tid, NULL);
    sink += fs[i].sink;
  }
  for (int p = 0; p < 2; p++)
    for (int i = 0; i < cfg.threads; i++) ph[p].faulting_cpu += fs[i].cpu_ns[p] / 1e9;
  ph[0].pages = npages;
  ph[1].pages = (uint64_t)cfg.bounce * bounce_pages;
  summarize(lat0, npages, &ph[0].lat);
  if (cfg.bounce) summarize(latb, ph[1].pages, &ph[1].lat);

  // Verify every byte of every page (handlers still running: a page that was never
  // faulted in is served now rather than hanging the check).
  uint64_t t_verify = now_ns();
  uint64_t mismatches = 0, mismatch_bytes = 0;
  int64_t first_bad = -1;
  for (uint64_t pg = 0; pg < npages; pg++) {
    const uint8_t *got = region + pg * ps;
    const uint8_t *want = expect_zero ? zero_page : source_buf + pg * ps;
    if (memcmp(got, want, ps) != 0) {
      mismatches++;
      if (first_bad < 0) first_bad = (int64_t)(pg * ps);
      for (uint64_t i = 0; i < ps; i++) mismatch_bytes += got[i] != want[i];
    }
  }
  double verify_sec = (now_ns() - t_verify) / 1e9;
  struct handler_stats total;
  sum_stats(hs, nh, &total);
  if (nh) stop_handlers(&ctx, hs, nh);

  // Output.
  struct utsname un;
  uname(&un);
  printf("{\"mode\":");
  json_str(handler_names[cfg.handler]);
  printf(",\"type\":");
  json_str(type_names[cfg.type]);
  printf(",\"kind\":");
  json_str(kind_names[cfg.kind]);
  printf(",\"pageSize\":%" PRIu64 ",\"pages\":%" PRIu64 ",\"size\":%" PRIu64 ",\"threads\":%d,\"handlers\":%d,\"access\":",
         ps, npages, cfg.size, cfg.threads, nh);
  json_str(access_names[cfg.access]);
  printf(",\"touch\":");
  json_str(cfg.touch_write ? "write" : "read");
  printf(",\"pattern\":");
  json_str(pattern_desc);
  printf(",\"source\":");
  json_str(source_names[cfg.source]);
  printf(",\"resolve\":");
  json_str(resolve);
  printf(",\"seed\":%" PRIu64 ",\"pin\":", cfg.seed);
  json_str(pin_names[cfg.pin]);
  printf(",\"spinUs\":%ld,\"features\":\"0x%" PRIx64 "\",", cfg.spin_us, features);
  print_phase(&ph[0], nh > 0, peer_cpu[0]);
  printf(",\"bounceRounds\":%d,\"hotPages\":%" PRIu64 ",\"steady\":", cfg.bounce, cfg.access == A_HOTSET ? hot_pages : npages);
  if (cfg.bounce) {
    // Steady state: elapsedSec is the sum of the rounds' own times (the zapping between
    // rounds is not counted).
    printf("{\"rounds\":%d,\"pagesPerRound\":%" PRIu64 ",", cfg.bounce, bounce_pages);
    print_phase(&ph[1], nh > 0, peer_cpu[1]);
    printf("}");
  } else {
    printf("null");
  }
  printf(",\"totalHandled\":");
  if (nh) json_stats(&total);
  else printf("null");
  printf(",\"mismatches\":%" PRIu64 ",\"mismatchBytes\":%" PRIu64 ",\"firstMismatchOffset\":", mismatches, mismatch_bytes);
  if (first_bad >= 0) printf("%" PRId64, first_bad);
  else printf("null");
  printf(",\"phaseStartNs\":%" PRIu64 ",\"phaseEndNs\":%" PRIu64, first_start, last_end);
  // External handler: from the handshake sent to the first touch served (the VM's first fault).
  uint64_t first_done = UINT64_MAX;
  for (int i = 0; i < cfg.threads; i++)
    if (fs[i].first_done && fs[i].first_done < first_done) first_done = fs[i].first_done;
  if (t_handshake && first_done != UINT64_MAX && first_done >= t_handshake)
    printf(",\"handshakeAtNs\":%" PRIu64 ",\"firstTouchAtNs\":%" PRIu64 ",\"handshakeToFirstTouchNs\":%" PRIu64,
           t_handshake, first_done, first_done - t_handshake);
  printf(",\"verifiedBytes\":%" PRIu64 ",\"setupSec\":", npages * ps);
  json_num(setup_sec);
  printf(",\"prewarmSec\":");
  json_num(prewarm_sec);
  printf(",\"verifySec\":");
  json_num(verify_sec);
  printf(",\"peerPid\":");
  if (peer > 0) printf("%d", (int)peer);
  else printf("null");
  printf(",\"cpus\":%d,\"kernel\":", ncpus);
  json_str(un.release);
  printf(",\"sink\":%" PRIu64 "}\n", sink & 1);
  fflush(stdout);
  if (sock >= 0) close(sock);
  return mismatches ? 3 : 0;
}

// ---------------------------------------------------------------------------
// --memcpy SIZE: memcpy bandwidth on pre-faulted buffers, best of 3.
// ---------------------------------------------------------------------------
static int run_memcpy(void) {
  uint64_t n = cfg.memcpy_size;
  uint8_t *a = map_anon(n, "memcpy source"), *b = map_anon(n, "memcpy destination");
  memset(a, 0x5a, n);
  memset(b, 0xa5, n);
  double best = 1e30, runs[3];
  for (int i = 0; i < 3; i++) {
    uint64_t t0 = now_ns();
    memcpy(b, a, n);
    uint64_t t1 = now_ns();
    runs[i] = (t1 - t0) / 1e9;
    if (runs[i] < best) best = runs[i];
  }
  if (memcmp(a, b, n) != 0) die("memcpy: destination differs from source");
  printf("{\"mode\":\"memcpy\",\"size\":%" PRIu64 ",\"runsSec\":[", n);
  for (int i = 0; i < 3; i++) {
    if (i) putchar(',');
    json_num(runs[i]);
  }
  printf("],\"bestSec\":");
  json_num(best);
  printf(",\"gibPerSec\":");
  json_num(n / best / (double)(1ull << 30));
  printf("}\n");
  return 0;
}

// ---------------------------------------------------------------------------
// --write-source PATH: the pattern of --size bytes (--seed) into a file.
// ---------------------------------------------------------------------------
static int run_write_source(void) {
  int fd = open(cfg.write_source, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die("--write-source %s: %s", cfg.write_source, strerror(errno));
  const size_t chunk = 1 << 20;
  uint8_t *buf = map_anon(chunk, "write buffer");
  for (uint64_t off = 0; off < cfg.size; off += chunk) {
    size_t len = cfg.size - off < chunk ? (size_t)(cfg.size - off) : chunk;
    if (cfg.source == S_ZERO) memset(buf, 0, len);
    else fill_pattern(buf, off, len, cfg.seed);
    size_t done = 0;
    while (done < len) {
      ssize_t w = pwrite(fd, buf + done, len - done, (off_t)(off + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        die("--write-source %s: write: %s", cfg.write_source, strerror(errno));
      }
      done += (size_t)w;
    }
  }
  if (fsync(fd) < 0 && errno != EINVAL) DIE_ERRNO("fsync %s", cfg.write_source);
  close(fd);
  printf("{\"mode\":\"write-source\",\"path\":");
  json_str(cfg.write_source);
  printf(",\"size\":%" PRIu64 ",\"seed\":%" PRIu64 ",\"pattern\":", cfg.size, cfg.seed);
  if (cfg.source == S_ZERO) json_str("zero");
  else printf("\"splitmix64:seed=%" PRIu64 "\"", cfg.seed);
  printf("}\n");
  return 0;
}

// ---------------------------------------------------------------------------
// --serve PATH: a native external handler (the peer of --handler external, and a
// Firecracker-compatible handler): listen, accept one connection, receive the JSON
// regions + fds, serve faults until the peer hangs up, print JSON stats.
// ---------------------------------------------------------------------------
static bool json_u64_field(const char *obj, const char *end, const char *key, uint64_t *out) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  size_t pl = strlen(pat);
  for (const char *p = obj; p && p < end; p++) {
    p = strstr(p, pat);
    if (!p || p >= end) return false;
    const char *q = p + pl;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (*q != ':') continue;
    q++;
    char *e;
    errno = 0;
    unsigned long long v = strtoull(q, &e, 10);
    if (e == q || errno) return false;
    *out = v;
    return true;
  }
  return false;
}

static int run_serve(void) {
  int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ls < 0) DIE_ERRNO("socket(AF_UNIX)");
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(cfg.serve_path) >= sizeof sa.sun_path) die("--serve %s: path too long", cfg.serve_path);
  strcpy(sa.sun_path, cfg.serve_path);
  unlink(cfg.serve_path);
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) DIE_ERRNO("bind %s", cfg.serve_path);
  if (listen(ls, 4) < 0) DIE_ERRNO("listen %s", cfg.serve_path);
  // Tell a supervising process that we listen (it may start the faulting side now).
  fprintf(stderr, "uffd-bench: listening on %s\n", cfg.serve_path);
  int s = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
  if (s < 0) DIE_ERRNO("accept %s", cfg.serve_path);
  uint64_t t0 = now_ns();
  struct ucred cred;
  socklen_t cl = sizeof cred;
  pid_t peer = getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 ? cred.pid : -1;

  char body[4097];
  union { char buf[CMSG_SPACE(sizeof(int) * 4)]; struct cmsghdr align; } ctrl;
  struct iovec iov = {.iov_base = body, .iov_len = sizeof body - 1};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.buf, .msg_controllen = sizeof ctrl.buf};
  ssize_t n;
  do n = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) DIE_ERRNO("recvmsg (handshake)");
  if (n == 0) die("the peer closed the socket without sending the handshake");
  body[n] = 0;
  int fds[4], nfds = 0;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
      int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < k && nfds < 4; i++) memcpy(&fds[nfds++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
    }
  }
  if (nfds < 1) die("handshake carried no file descriptor (expected the userfaultfd in SCM_RIGHTS); body: %s", body);

  struct serve_ctx ctx = {.uffd = fds[0], .spin_us = cfg.spin_us};
  uint64_t total = 0;
  const char *p = body, *end = body + n;
  while (ctx.nregions < MAX_REGIONS && (p = strchr(p, '{')) != NULL) {
    const char *e = strchr(p, '}');
    if (!e) break;
    struct serve_region *r = &ctx.regions[ctx.nregions];
    uint64_t off = 0, pgs = 0;
    if (!json_u64_field(p, e, "base_host_virt_addr", &r->base) || !json_u64_field(p, e, "size", &r->size))
      die("handshake: a region lacks base_host_virt_addr or size: %.*s", (int)(e - p + 1), p);
    json_u64_field(p, e, "offset", &off);
    if (!json_u64_field(p, e, "page_size", &pgs)) json_u64_field(p, e, "page_size_kib", &pgs);
    if (!pgs) pgs = 4096;
    if (pgs & (pgs - 1)) die("handshake: page_size %" PRIu64 " is not a power of two", pgs);
    ctx.page_size = pgs;
    r->src = (const uint8_t *)(uintptr_t)off;  // offset for now
    if (off + r->size > total) total = off + r->size;
    ctx.nregions++;
    p = e + 1;
  }
  (void)end;
  if (!ctx.nregions) die("handshake: no regions in body: %s", body);
  cfg.page_size = ctx.page_size;
  setup_source(total);
  for (int i = 0; i < ctx.nregions; i++) {
    uint64_t off = (uint64_t)(uintptr_t)ctx.regions[i].src;
    ctx.regions[i].src = source_buf ? source_buf + off : NULL;
  }
  ctx.zero_src = zero_page;
  ctx.use_zeropage = cfg.source == S_ZERO && ctx.page_size == 4096;
  ctx.stop_fd = eventfd(0, EFD_CLOEXEC);
  if (ctx.stop_fd < 0) DIE_ERRNO("eventfd");
  enum handler_mode hm = cfg.handler == H_FC ? H_FC : H_NATIVE;
  int nh = hm == H_FC ? 1 : cfg.handlers;
  struct hthread *hs = start_handlers(&ctx, hm, nh);
  char ack = 'A';
  if (send(s, &ack, 1, MSG_NOSIGNAL) < 0) { /* the peer may not read it; not an error */ }

  // Serve until the peer hangs up (it keeps the socket open for its lifetime).
  for (;;) {
    struct pollfd pf = {.fd = s, .events = POLLIN | POLLRDHUP};
    int pr = poll(&pf, 1, -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      DIE_ERRNO("poll(socket)");
    }
    if (pf.revents & (POLLHUP | POLLRDHUP | POLLERR)) break;
    if (pf.revents & POLLIN) {
      char junk[256];
      ssize_t r = recv(s, junk, sizeof junk, MSG_DONTWAIT);
      if (r == 0) break;
    }
  }
  double elapsed = (now_ns() - t0) / 1e9;
  double hcpu = handlers_cpu_sec(hs, nh);
  stop_handlers(&ctx, hs, nh);
  struct handler_stats st;
  sum_stats(hs, nh, &st);
  printf("{\"mode\":\"serve\",\"handler\":");
  json_str(handler_names[hm]);
  printf(",\"handlers\":%d,\"regions\":%d,\"pageSize\":%" PRIu64 ",\"fds\":%d,\"pattern\":", nh, ctx.nregions, ctx.page_size, nfds);
  json_str(pattern_desc);
  printf(",\"peerPid\":%d,\"elapsedSec\":", (int)peer);
  json_num(elapsed);
  printf(",\"handlerCpuSec\":");
  json_num(hcpu);
  printf(",\"handled\":");
  json_stats(&st);
  printf("}\n");
  for (int i = 0; i < nfds; i++) close(fds[i]);
  close(s);
  close(ls);
  unlink(cfg.serve_path);
  return 0;
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------
static void usage(FILE *f) {
  fputs(
      "usage: uffd-bench [options]\n"
      "  --type anon|memfd|hugetlb     memory type (default anon)\n"
      "  --kind missing|minor|wp       fault kind (default missing)\n"
      "  --size SIZE                   region size (default 64M)\n"
      "  --page-size SIZE              4K (anon, memfd) or 2M/1G (hugetlb, default 2M)\n"
      "  --threads N                   faulting threads (default 1)\n"
      "  --handler native|fc|external|none   who serves faults (default native)\n"
      "  --handlers N                  native handler threads (default 1)\n"
      "  --plain-faults                same as --handler none (kernel faults, no userfaultfd)\n"
      "  --access sequential|random|strided|hotset  (default sequential)\n"
      "  --stride N                    pages between touches for strided (default 16)\n"
      "  --hot FRACTION                hot-set fraction for hotset (default 0.1)\n"
      "  --bounce R                    after population, R rounds of zap + re-fault\n"
      "  --seed N                      pattern and shuffle seed (default 1)\n"
      "  --source pattern|zero         page contents (default pattern)\n"
      "  --source-file PATH            page contents from a file (mmap'd)\n"
      "  --touch read|write            first-touch access (default read; wp: write)\n"
      "  --socket PATH                 (external) Unix socket of the handler\n"
      "  --send-memfd                  (external) send [uffd, memfd] instead of [uffd]\n"
      "  --event-remove                negotiate UFFD_FEATURE_EVENT_REMOVE (as Firecracker does)\n"
      "  --wait-ack                    (external) wait for one byte from the handler before faulting\n"
      "  --no-prewarm                  do not touch and free the region's size of memory before mapping it\n"
      "                                (pre-warm: memory the guest kernel freed seconds ago may be back with\n"
      "                                the host, free page reporting, and slow to touch again)\n"
      "  --pin none|same|split         CPU pinning of faulting/handler threads (default none)\n"
      "  --spin-us N                   native handlers spin on read() N us before sleeping\n"
      "  --timeout SEC                 give up after SEC seconds (default 120, 0: never)\n"
      "  --memcpy SIZE                 measure memcpy bandwidth and exit\n"
      "  --write-source PATH           write the pattern (--size, --seed) to PATH and exit\n"
      "  --serve PATH                  act as the external handler listening on PATH\n",
      f);
}

static int pick(const char *v, const char *opt, const char *const *names, int n) {
  for (int i = 0; i < n; i++)
    if (strcmp(v, names[i]) == 0) return i;
  if (strcmp(opt, "--access") == 0) {
    if (strcmp(v, "seq") == 0) return A_SEQ;
    if (strcmp(v, "hot-set") == 0) return A_HOTSET;
  }
  fprintf(stderr, "uffd-bench: error: %s: \"%s\" is not one of:", opt, v);
  for (int i = 0; i < n; i++) fprintf(stderr, " %s", names[i]);
  fputc('\n', stderr);
  exit(1);
}

int main(int argc, char **argv) {
  enum {
    O_TYPE = 256, O_KIND, O_SIZE, O_PAGE, O_THREADS, O_HANDLERS, O_HANDLER, O_SOCKET, O_SENDMEMFD, O_ACCESS, O_STRIDE,
    O_HOT, O_BOUNCE, O_SEED, O_SOURCE, O_SRCFILE, O_WRITESRC, O_TOUCH, O_PIN, O_SPIN, O_TIMEOUT, O_MEMCPY, O_PLAIN,
    O_SERVE, O_EVREMOVE, O_WAITACK, O_NOPREWARM, O_HELP
  };
  static const struct option opts[] = {
      {"type", required_argument, 0, O_TYPE},        {"kind", required_argument, 0, O_KIND},
      {"size", required_argument, 0, O_SIZE},        {"page-size", required_argument, 0, O_PAGE},
      {"threads", required_argument, 0, O_THREADS},  {"handlers", required_argument, 0, O_HANDLERS},
      {"handler", required_argument, 0, O_HANDLER},  {"socket", required_argument, 0, O_SOCKET},
      {"send-memfd", no_argument, 0, O_SENDMEMFD},   {"access", required_argument, 0, O_ACCESS},
      {"stride", required_argument, 0, O_STRIDE},    {"hot", required_argument, 0, O_HOT},
      {"bounce", required_argument, 0, O_BOUNCE},    {"seed", required_argument, 0, O_SEED},
      {"source", required_argument, 0, O_SOURCE},    {"source-file", required_argument, 0, O_SRCFILE},
      {"write-source", required_argument, 0, O_WRITESRC}, {"touch", required_argument, 0, O_TOUCH},
      {"pin", required_argument, 0, O_PIN},          {"spin-us", required_argument, 0, O_SPIN},
      {"timeout", required_argument, 0, O_TIMEOUT},  {"memcpy", required_argument, 0, O_MEMCPY},
      {"plain-faults", no_argument, 0, O_PLAIN},     {"serve", required_argument, 0, O_SERVE},
      {"event-remove", no_argument, 0, O_EVREMOVE},  {"wait-ack", no_argument, 0, O_WAITACK},
      {"no-prewarm", no_argument, 0, O_NOPREWARM},
      {"help", no_argument, 0, O_HELP},              {0, 0, 0, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case O_TYPE: cfg.type = pick(optarg, "--type", type_names, 3); break;
      case O_KIND: cfg.kind = pick(optarg, "--kind", kind_names, 3); break;
      case O_SIZE: cfg.size = parse_size(optarg, "--size"); break;
      case O_PAGE: cfg.page_size = parse_size(optarg, "--page-size"); cfg.page_size_set = true; break;
      case O_THREADS: cfg.threads = (int)parse_long(optarg, "--threads", 1, 4096); break;
      case O_HANDLERS: cfg.handlers = (int)parse_long(optarg, "--handlers", 1, 1024); break;
      case O_HANDLER: cfg.handler = pick(optarg, "--handler", handler_names, 4); break;
      case O_SOCKET: cfg.socket_path = optarg; break;
      case O_SENDMEMFD: cfg.send_memfd = true; break;
      case O_ACCESS: cfg.access = pick(optarg, "--access", access_names, 4); break;
      case O_STRIDE: cfg.stride = parse_long(optarg, "--stride", 1, 1L << 30); break;
      case O_HOT: cfg.hot = parse_double(optarg, "--hot", 0.0, 1.0); break;
      case O_BOUNCE: cfg.bounce = (int)parse_long(optarg, "--bounce", 0, 1000000); break;
      case O_SEED: cfg.seed = (uint64_t)parse_long(optarg, "--seed", 0, LONG_MAX); break;
      case O_SOURCE: {
        static const char *const src2[] = {"pattern", "zero"};
        cfg.source = pick(optarg, "--source", src2, 2);
        break;
      }
      case O_SRCFILE: cfg.source_file = optarg; cfg.source = S_FILE; break;
      case O_WRITESRC: cfg.write_source = optarg; break;
      case O_TOUCH: {
        static const char *const t2[] = {"read", "write"};
        cfg.touch_write = pick(optarg, "--touch", t2, 2) == 1;
        cfg.touch_set = true;
        break;
      }
      case O_PIN: cfg.pin = pick(optarg, "--pin", pin_names, 3); break;
      case O_SPIN: cfg.spin_us = parse_long(optarg, "--spin-us", 0, 10000000); break;
      case O_TIMEOUT: timeout_sec = (unsigned)parse_long(optarg, "--timeout", 0, 86400); break;
      case O_MEMCPY: cfg.memcpy_size = parse_size(optarg, "--memcpy"); break;
      case O_PLAIN: cfg.handler = H_NONE; break;
      case O_NOPREWARM: cfg.no_prewarm = true; break;
      case O_SERVE: cfg.serve_path = optarg; break;
      case O_EVREMOVE: cfg.event_remove = true; break;
      case O_WAITACK: cfg.wait_ack = true; break;
      case 'h': case O_HELP: usage(stdout); return 0;
      default: usage(stderr); return 1;
    }
  }
  if (optind < argc) die("unexpected argument \"%s\" (see --help)", argv[optind]);
  ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (ncpus < 1) ncpus = 1;
  if (timeout_sec) {
    signal(SIGALRM, on_alarm);
    alarm(timeout_sec);
  }

  if (cfg.memcpy_size) {
    if (cfg.memcpy_size < 4096) die("--memcpy: size must be at least 4K");
    return run_memcpy();
  }
  if (cfg.write_source) {
    if (!cfg.size || cfg.size % 8) die("--size must be a positive multiple of 8 for --write-source");
    return run_write_source();
  }
  if (cfg.serve_path) {
    if (cfg.handler != H_NATIVE && cfg.handler != H_FC) die("--serve: --handler must be native or fc");
    return run_serve();
  }

  // Validate the workload.
  if (cfg.type == T_HUGETLB) {
    if (!cfg.page_size_set) cfg.page_size = 2ull << 20;
    if (cfg.page_size != (2ull << 20) && cfg.page_size != (1ull << 30)) die("--type hugetlb: --page-size must be 2M or 1G");
  } else if (cfg.page_size != 4096) {
    die("--type %s: --page-size must be 4K (got %" PRIu64 ")", type_names[cfg.type], cfg.page_size);
  }
  if (!cfg.size || cfg.size % cfg.page_size) die("--size %" PRIu64 " must be a positive multiple of the page size %" PRIu64, cfg.size, cfg.page_size);
  if (cfg.kind == K_WP) {
    if (cfg.handler == H_NONE) die("--kind wp needs userfaultfd (not --plain-faults)");
    if (cfg.touch_set && !cfg.touch_write) die("--kind wp: only writes fault on write-protected pages; use --touch write");
    cfg.touch_write = true;
  }
  if (cfg.handler == H_NONE && cfg.kind == K_MISSING && !cfg.touch_set) cfg.touch_write = true;  // allocate, don't map the zero page
  if (cfg.kind == K_MINOR && cfg.type == T_ANON) die("--kind minor needs --type memfd or hugetlb (anonymous memory has no page cache)");
  if (cfg.handler == H_EXTERNAL && !cfg.socket_path) die("--handler external needs --socket PATH");
  if (cfg.handler != H_EXTERNAL && (cfg.socket_path || cfg.send_memfd || cfg.wait_ack))
    die("--socket, --send-memfd and --wait-ack go with --handler external");
  if (cfg.send_memfd && cfg.type == T_ANON) die("--send-memfd needs --type memfd or hugetlb");
  if (cfg.handler == H_FC && cfg.handlers != 1) cfg.handlers = 1;
  if (cfg.access == A_HOTSET && !cfg.bounce)
    fprintf(stderr, "uffd-bench: note: --access hotset only differs from random with --bounce\n");
  return run_workload();
}
