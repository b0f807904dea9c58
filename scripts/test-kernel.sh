#!/usr/bin/env bash
# Run this checkout's mocha suites (dist/test) inside another Linux kernel, booted under QEMU
# with the host's root shared over virtiofs. Prints the guest's output live and exits with the
# guest's mocha status. See README.md "Testing on another kernel".
#
#   scripts/test-kernel.sh [--kernel PATH] [--grep PATTERN] [--files GLOB...]
#                          [--accel auto|kvm|tcg] [--mem MiB] [--smp N] [--timeout SECONDS]
#                          [--mocha-timeout MS] [--run COMMAND] [-- MOCHA-ARGS...]
#
# --run COMMAND runs a shell command in the checkout instead of mocha (e.g. a benchmark).
# Exit status: mocha's status inside the guest; 2 for bad usage; 3 when something needed is
# missing (QEMU, virtiofsd, a kernel image); 124 when the guest timed out; 125 when the guest
# ended without reporting a status (crash, panic).
set -uo pipefail

checkout=$(cd "$(dirname "$0")/.." && pwd)
kernel=""
accel=auto
mem_mib=8192 # the wss scale tests and hugetlb reservations want more than 4 GiB
smp=2
timeout_s="" # default: 3 h for every suite (TCG), 1 h for a selection
mocha_timeout=600000 # TCG runs node ~10x slower than the host: scale mocha's per-test limit
grep_pattern=""
run_cmd=""
files=()
extra=()

die() { echo "test-kernel: $1" >&2; exit "${2:-2}"; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=${2:?--kernel needs a path}; shift 2 ;;
    --grep) grep_pattern=${2:?--grep needs a pattern}; shift 2 ;;
    --files) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do files+=("$1"); shift; done
             [ ${#files[@]} -gt 0 ] || die "--files needs at least one file or glob" ;;
    --accel) accel=${2:?--accel needs auto, kvm or tcg}; shift 2 ;;
    --mem) mem_mib=${2:?--mem needs MiB}; shift 2 ;;
    --smp) smp=${2:?--smp needs a CPU count}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
    --run) run_cmd=${2:?--run needs a command}; shift 2 ;;
    --mocha-timeout) mocha_timeout=${2:?--mocha-timeout needs milliseconds}; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage 0 ;;
    *) echo "test-kernel: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
case "$accel" in auto|kvm|tcg) ;; *) die "--accel must be auto, kvm or tcg, not '$accel'" ;; esac
if [ -z "$timeout_s" ]; then
  if [ ${#files[@]} -eq 0 ] && [ -z "$grep_pattern" ] && [ -z "$run_cmd" ]; then timeout_s=10800; else timeout_s=3600; fi
fi
[[ "$mem_mib" =~ ^[0-9]+$ ]] || die "--mem takes MiB as a number, not '$mem_mib'"
[[ "$timeout_s" =~ ^[0-9]+$ ]] || die "--timeout takes seconds as a number, not '$timeout_s'"

# --- what we need on the host (installed by the user, never silently) ---
qemu=$(command -v qemu-system-x86_64) ||
  die "qemu-system-x86_64 is missing: install it with 'apt-get install qemu-system-x86'" 3
virtiofsd=${VIRTIOFSD:-}
if [ -z "$virtiofsd" ]; then
  for c in /usr/lib/qemu/virtiofsd /usr/libexec/virtiofsd /usr/lib/virtiofsd; do
    [ -x "$c" ] && { virtiofsd=$c; break; }
  done
fi
[ -z "$virtiofsd" ] || [ -x "$virtiofsd" ] || die "VIRTIOFSD=$virtiofsd is not an executable" 3
[ -n "$virtiofsd" ] ||
  die "virtiofsd is missing (looked in /usr/lib/qemu, /usr/libexec, /usr/lib; or set VIRTIOFSD): Debian 12 ships it in 'apt-get install qemu-system-x86', later releases in 'apt-get install virtiofsd'" 3
if [ -z "$kernel" ]; then
  kernel=$(ls -1 "$checkout"/../shared/kernels/vmlinuz-* 2>/dev/null | sort -V | tail -1)
  [ -n "$kernel" ] || die "no kernel image: none in $checkout/../shared/kernels/; pass --kernel PATH" 3
fi
[ -r "$kernel" ] || die "kernel image '$kernel' is not readable" 3
kernel=$(cd "$(dirname "$kernel")" && pwd)/$(basename "$kernel")
node=$(command -v node) || die "node is not on PATH" 3
[ -f "$checkout/node_modules/mocha/bin/mocha.js" ] || die "mocha is not installed in $checkout: run 'npm ci'" 3
[ -d "$checkout/dist/test" ] || die "$checkout/dist/test is missing: run 'npm run build'" 3
case "$checkout" in *[[:space:]]*) die "the checkout path '$checkout' has a space; the kernel command line cannot carry it" ;; esac

# --- per-run state: virtiofsd socket, guest config, console log ---
state=$(mktemp -d /tmp/test-kernel.XXXXXX)
qemu_pid=""; vfsd_pid=""; files_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
  [ -n "$vfsd_pid" ] && kill "$vfsd_pid" 2>/dev/null
  [ -n "$files_pid" ] && kill "$files_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The guest's init (scripts/kernel-init.sh) sources this before it covers /tmp with a tmpfs.
mocha_args=(--no-color --timeout "$mocha_timeout")
[ -n "$grep_pattern" ] && mocha_args+=(--grep "$grep_pattern")
# Files on mocha's command line add to .mocharc.json's spec; --no-config makes them replace it.
[ ${#files[@]} -gt 0 ] && mocha_args+=(--no-config --exit)
mocha_args+=("${extra[@]}" "${files[@]}")
marker="test-kernel-status-$$" # the guest's last line: "$marker=<mocha's status>"
{
  printf 'checkout=%q\nnode=%q\nmarker=%q\nrun_cmd=%q\n' "$checkout" "$node" "$marker" "$run_cmd"
  printf 'mocha_args=('; printf '%q ' "${mocha_args[@]}"; printf ')\n'
} > "$state/conf"

# serve_dir NAME SOURCE CACHE: start a virtiofsd sharing SOURCE for one boot (it serves one
# VM and exits) and wait for its socket $state/NAME.sock; its pid in $last_pid.
serve_dir() {
  rm -f "$state/$1.sock"
  "$virtiofsd" --socket-path="$state/$1.sock" -o source="$2" -o cache="$3" -o sandbox=chroot \
    >"$state/$1.log" 2>&1 &
  last_pid=$!
  for _ in $(seq 100); do [ -S "$state/$1.sock" ] && return 0; sleep 0.1; done
  echo "test-kernel: virtiofsd did not create its socket:" >&2; cat "$state/$1.log" >&2
  exit 3
}
# The root: cache=always (the guest keeps what it read: node, node_modules and dist do not
# change during a run, and under TCG re-reading them through virtiofsd made an engine take
# ~60 s to start instead of ~10 s); MAP_SHARED of its files fails with ENODEV.
start_virtiofsd() {
  serve_dir vfsd / always; vfsd_pid=$last_pid
}

# qemu_cmd ACCEL [CMDLINE...]: the QEMU command line for one boot (in $cmd).
qemu_cmd() {
  local cpu=max; [ "$1" = kvm ] && cpu=host
  local accel_opt=kvm; [ "$1" = tcg ] && accel_opt=tcg,thread=multi
  cmd=("$qemu" -accel "$accel_opt" -cpu "$cpu" -m "$mem_mib" -smp "$smp" -nographic -no-reboot
       -nic none
       -object "memory-backend-memfd,id=mem,size=${mem_mib}M,share=on" -numa node,memdev=mem
       -chardev "socket,id=char0,path=$state/vfsd.sock"
       -device vhost-user-fs-pci,chardev=char0,tag=rootfs
       -kernel "$kernel"
       -append "console=ttyS0 panic=-1 quiet no_timer_check rootfstype=virtiofs root=rootfs rw init=$checkout/scripts/kernel-init.sh tk_conf=$state/conf ${*:2}")
}

# KVM only where it can boot a stock kernel: try a boot that just reports and powers off.
# (A PVM /dev/kvm, for one, stops with "KVM internal error" in the decompressor.)
if [ "$accel" = auto ]; then
  accel=tcg
  if [ -w /dev/kvm ]; then
    exec 3>&2 2>/dev/null # bash reports the probe's abort ("Aborted ...") on stderr
    start_virtiofsd
    qemu_cmd kvm tk_probe=1
    "${cmd[@]}" </dev/null >"$state/probe.log" 2>&1 &
    qemu_pid=$!
    for _ in $(seq 300); do
      grep -q "$marker=0" "$state/probe.log" 2>/dev/null && { accel=kvm; break; }
      grep -q "KVM internal error\|kvm run failed" "$state/probe.log" 2>/dev/null && break
      kill -0 "$qemu_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; qemu_pid=""
    kill "$vfsd_pid" 2>/dev/null; wait "$vfsd_pid" 2>/dev/null; vfsd_pid=""
    exec 2>&3 3>&-
    [ "$accel" = tcg ] && echo "test-kernel: /dev/kvm cannot boot this kernel here; using TCG (slow: node starts in ~2 s)"
  fi
fi

# Under TCG everything runs ~10x slower: scale the tests' hang guards and the engine's start limit.
if [ "$accel" = tcg ]; then
  echo 'export UFFD_TEST_TIME_SCALE=10 UFFD_ENGINE_START_TIMEOUT_MS=300000 UFFD_ENGINE_SILENCE_MS=150000' >> "$state/conf"
fi
echo "test-kernel: booting $kernel under QEMU ($accel, ${mem_mib} MiB, $smp CPUs, timeout ${timeout_s}s)"
start_virtiofsd
# An empty directory with cache=auto, the guest's /var/tmp: a disk-like filesystem whose files
# map MAP_SHARED, for file regions.
mkdir -p "$state/files"
serve_dir files "$state/files" auto; files_pid=$last_pid
qemu_cmd "$accel"
cmd+=(-chardev "socket,id=char1,path=$state/files.sock" -device vhost-user-fs-pci,chardev=char1,tag=files)
# timeout(1) kills QEMU if the guest hangs; its status 124 says so.
timeout -k 10 "$timeout_s" "${cmd[@]}" </dev/null > >(tee "$state/console.log") 2>&1 &
qemu_pid=$!
wait "$qemu_pid"; qemu_status=$?; qemu_pid=""
sleep 0.2 # let tee drain
if [ "$qemu_status" -eq 124 ]; then
  echo "test-kernel: the guest was still running after ${timeout_s}s; QEMU killed" >&2
  exit 124
fi

status=$(tr -d '\r' < "$state/console.log" | sed -n "s/^$marker=\([0-9]*\)\$/\1/p" | tail -1)
if [ -z "$status" ]; then
  echo "test-kernel: the guest ended without reporting a status (see the console output above)" >&2
  exit 125
fi
exit "$status"
