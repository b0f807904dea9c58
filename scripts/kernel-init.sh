#!/bin/bash
# init (PID 1) of the guest booted by scripts/test-kernel.sh: the root is the host's / over
# virtiofs. Mount the kernel file systems, give the guest its own /tmp, /dev/shm and hugetlbfs,
# run mocha (or --run's command) in the checkout, print "<marker>=<status>" and power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
. "$tk_conf" || { echo "kernel-init: cannot read $tk_conf"; exit 1; }

if [ -n "${tk_probe:-}" ]; then # the KVM probe: did we get this far?
  echo "$marker=0"; poweroff -f; exit 0
fi

mount -t proc proc /proc
mount -t sysfs sys /sys
# cgroup2: rwp-fork and rwp-fork-pin clone their child into a frozen cgroup.
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "kernel-init: no cgroup2; the rwp-fork tests will skip"
mount -t devtmpfs dev /dev
mkdir -p /dev/shm /dev/pts /dev/hugepages
mount -t tmpfs shm /dev/shm
mount -t devpts devpts /dev/pts
mount -t hugetlbfs hugetlbfs /dev/hugepages
# /var/tmp: test-kernel.sh's cache=auto share, where files map MAP_SHARED (file regions).
mount -t virtiofs files /var/tmp || echo "kernel-init: no 'files' share; file regions will be unavailable"
# A guest-private /tmp (MAP_SHARED of virtiofs files fails with ENODEV on the root share, and the host's
# /tmp stays untouched). If the checkout lives under /tmp, keep it reachable at its path.
mount -t tmpfs run /run
case "$checkout" in
  /tmp/*)
    mkdir -p /run/host-tmp && mount --bind /tmp /run/host-tmp
    mount -t tmpfs tmp /tmp
    mkdir -p "$checkout" && mount --bind "/run/host-tmp/${checkout#/tmp/}" "$checkout" ;;
  *) mount -t tmpfs tmp /tmp ;;
esac

# Loopback: the remote-source suites serve chunks over HTTP on 127.0.0.1 (a fresh kernel has lo down).
ip link set lo up || echo "kernel-init: cannot bring up lo; tests that listen on 127.0.0.1 will fail"

echo "kernel-init: $(uname -r), $(nproc) CPUs, THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
cd "$checkout" || { echo "$marker=1"; poweroff -f; }
if [ -n "$run_cmd" ]; then
  bash -c "$run_cmd"
else
  "$node" node_modules/mocha/bin/mocha.js "${mocha_args[@]}"
fi
status=$?
sync
echo "$marker=$status"
poweroff -f
