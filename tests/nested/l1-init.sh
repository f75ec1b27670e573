#!/bin/busybox sh
# PID 1 of the nested-KVM harness's L1 guest (see build-l1.sh). It loads kvm_amd and the other
# modules, mounts the host's root read-only over 9p (tag "host") with tmpfs where writes are
# needed, mounts the harness's scratch directory (tag "scratch") writable at the same path as
# on the host, runs $scratch/l1-command.sh chrooted into the host's root, stores its output and
# exit status in the scratch directory, and powers off.
#
# Kernel command line: veil_l1.scratch=<absolute host path of the scratch directory>.
# Lines starting with "veil-l1:" on the console are for the harness: "veil-l1: error: ..."
# says why the command could not run, "veil-l1: ready" that it is about to run.

/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "veil-l1: error: $*" >/dev/console
    poweroff -f
}

scratch=
for arg in $(cat /proc/cmdline); do
    case $arg in
    veil_l1.scratch=*) scratch=${arg#veil_l1.scratch=} ;;
    esac
done
[ -n "$scratch" ] || fail "no veil_l1.scratch= on the kernel command line"

grep -qw svm /proc/cpuinfo ||
    fail "the virtual CPU has no svm flag: run QEMU with -accel tcg -cpu max"
for module in $(cat /modules/order); do
    out=$(insmod "/modules/$module" 2>&1) || fail "insmod $module failed: $out"
done
[ -c /dev/kvm ] || fail "kvm_amd is loaded but /dev/kvm is missing"

mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host ||
    fail "mounting the host's root over 9p failed"
for dir in run tmp var/tmp dev/shm; do
    mount -t tmpfs -o mode=1777 tmpfs "/host/$dir" || fail "tmpfs on /$dir failed"
done
mount -o bind /proc /host/proc
mount -o bind /sys /host/sys
mount -o bind /dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
mkdir -p "/host$scratch" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L scratch "/host$scratch" ||
    fail "mounting the scratch directory $scratch over 9p failed"
ip link set lo up 2>/dev/null
hostname veil-l1

# Hold one KVM VM (with an in-kernel irqchip and one vCPU) open for L1's whole life, made
# while L1 runs on one CPU. The first VM and vCPU flip static keys (the scheduler's
# preempt-notifier key, the LAPIC keys), which rewrites live code, in __schedule among other
# places; under QEMU's multi-threaded TCG another vCPU can then still run the int3 of a
# finished patch, and L1 oopses ("Oops: int3" at __schedule, seen in the nested benchmark and
# tests). Without a second CPU online nothing can race the patch, and with the VM held the
# keys never flip back, however many VMs the command starts and stops. (L1 has one CPU unless
# the harness is asked for more; with one, there is nothing to take offline.)
held=/run/veil-l1-kvm-held
others=$(ls -d /sys/devices/system/cpu/cpu[1-9]* 2>/dev/null)
for cpu in $others; do echo 0 >"$cpu/online" 2>/dev/null; done
if [ -x /host/usr/bin/python3 ]; then
    chroot /host /usr/bin/python3 -c '
import fcntl, os, signal, sys
kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, 0xAE01, 0)  # KVM_CREATE_VM
fcntl.ioctl(vm, 0xAE60, 0)  # KVM_CREATE_IRQCHIP
fcntl.ioctl(vm, 0xAE41, 0)  # KVM_CREATE_VCPU 0
open(sys.argv[1], "w").close()
signal.pause()  # the descriptors stay open until L1 powers off
' "$held" </dev/null >/dev/console 2>&1 &
    waited=0
    while [ ! -e "/host$held" ] && [ $waited -lt 300 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    [ -e "/host$held" ] || echo "veil-l1: warning: the KVM VM to hold was not made in 30 s" >/dev/console
else
    echo "veil-l1: warning: no python3 to hold a KVM VM open; L1 may oops under TCG" >/dev/console
fi
for cpu in $others; do echo 1 >"$cpu/online" 2>/dev/null; done

# A heartbeat the harness watches (tests/src/nested.rs): L1, or the 9p link to the scratch
# directory, now and then stops under QEMU's TCG with nothing on the console; the harness
# then runs the command again instead of waiting out its limit. Every 5 s, and with no program
# started (a `read` that times out on a FIFO nobody writes, not `sleep`): L1's emulated CPUs
# are the nested guests' too.
mkfifo /heartbeat-wait
(
    exec 3<>/heartbeat-wait
    while :; do
        : >"/host$scratch/l1-heartbeat"
        read -t 5 -u 3 _
    done
) &
echo "veil-l1: ready" >/dev/console
chroot /host /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    VEIL_L1=1 /bin/sh -c 'cd "$1" && exec /bin/sh ./l1-command.sh' sh "$scratch" \
    </dev/null >"/host$scratch/l1-stdout" 2>"/host$scratch/l1-stderr"
echo $? >"/host$scratch/l1-status"
sync
poweroff -f
