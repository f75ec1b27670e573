#!/usr/bin/env bash
# Builds the "L1" image of the nested-KVM harness: Debian's own 6.12 kernel (as packaged, never
# installed on this host) and a small busybox initramfs that loads kvm_amd and the modules the
# tests need, mounts this host's root file system read-only over 9p and runs a command from it.
# QEMU's software CPU emulates AMD SVM with nested paging, so /dev/kvm inside L1 is the real
# kvm_amd: see ../shared/HOST-KVM.md, "A real hardware-style KVM here".
#
# Output (relative to the repository root):
#   target/nested-l1/vmlinuz        Debian's kernel image, as shipped
#   target/nested-l1/l1.cpio.gz     the initramfs (busybox, modules, tests/nested/l1-init.sh)
#   target/nested-l1/KERNEL         the kernel package name and version
#   target/nested-l1/KEY            cache key of the build that produced the files above
# On success the directory is printed on stdout; progress and errors go to stderr.
#
# The kernel package is VEIL_L1_KERNEL_PACKAGE when set, else the newest
# linux-image-6.12.*+deb12-amd64-unsigned that apt knows. The key covers that package name and
# version, this script, the init script and the busybox version; with a matching KEY nothing
# is downloaded or rebuilt.
set -euo pipefail

readonly PACKAGES="busybox-static kmod xz-utils cpio gzip qemu-system-x86"
# Modules L1 loads, each with its dependencies (from the package's modules.dep):
# 9p for the host's root, kvm_amd for /dev/kvm, and what containerd, runc, images,
# taps and pod networking use.
readonly MODULES="9pnet_virtio 9p kvm-amd overlay loop tun veth dm-verity ext4 \
sch_ingress cls_u32 act_mirred vhost_vsock"

script_path=$(readlink -f "${BASH_SOURCE[0]}")
nested_dir=$(dirname "$script_path")
repo_root=$(dirname "$(dirname "$nested_dir")")
init_script=$nested_dir/l1-init.sh
out=$repo_root/target/nested-l1

die() {
    echo "build-l1: error: $*" >&2
    exit 1
}

for tool in apt-cache apt-get dpkg-deb depmod xz cpio gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run: apt-get install $PACKAGES"
done
busybox=/bin/busybox
[[ -x $busybox ]] && ! ldd "$busybox" >/dev/null 2>&1 ||
    die "a static $busybox is needed; run: apt-get install busybox-static"

package=${VEIL_L1_KERNEL_PACKAGE:-}
if [[ -z $package ]]; then
    package=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' |
        cut -d' ' -f1 | sort -V | tail -n 1)
    [[ -n $package ]] ||
        die "apt knows no linux-image-6.12.*+deb12-amd64-unsigned package; run: apt-get update"
fi
version=$(apt-cache policy "$package" | awk '/Candidate:/ { print $2 }')
[[ -n $version && $version != "(none)" ]] || die "apt has no candidate version of $package"

key=$({
    echo "$package=$version"
    echo "MODULES=$MODULES"
    sha256sum <"$script_path"
    sha256sum <"$init_script"
    dpkg-query -W -f='busybox-static=${Version}\n' busybox-static 2>/dev/null || true
} | sha256sum | cut -d' ' -f1)

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

if [[ -f $out/KEY && -f $out/vmlinuz && -f $out/l1.cpio.gz ]] && [[ $(<"$out/KEY") == "$key" ]]; then
    echo "$out"
    exit 0
fi

echo "build-l1: building the L1 image from $package $version" >&2
rm -f "$out/KEY" "$out/vmlinuz" "$out/l1.cpio.gz"
work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

(cd "$work" && apt-get download "$package=$version" >&2 2>"$work/apt.err") ||
    die "apt-get download $package=$version failed: $(cat "$work/apt.err")"
dpkg-deb -x "$work"/*.deb "$work/pkg"
kver=$(ls "$work/pkg/lib/modules")
[[ -n $kver && -f $work/pkg/boot/vmlinuz-$kver ]] || die "$package has no boot/vmlinuz-$kver"
depmod -b "$work/pkg" "$kver"
moddir=$work/pkg/lib/modules/$kver

# The load order: every module after its dependencies, each once.
declare -A loaded=()
order=()
add_module() {
    local path=$1 line dep
    [[ -n ${loaded[$path]:-} ]] && return 0
    loaded[$path]=1
    line=$(grep -m1 "^$path:" "$moddir/modules.dep") || die "module $path is not in modules.dep"
    for dep in $(echo "${line#*:}" | tr ' ' '\n' | tac); do
        add_module "$dep"
    done
    order+=("$path")
}
for name in $MODULES; do
    path=$(grep -m1 -E "/${name//-/[-_]}\.ko(\.xz)?:" "$moddir/modules.dep" | cut -d: -f1) ||
        die "$package has no module $name"
    [[ -n $path ]] || die "$package has no module $name"
    add_module "$path"
done

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,host,modules,run,tmp}
cp "$busybox" "$root/bin/busybox"
install -m 0755 "$init_script" "$root/init"
for path in "${order[@]}"; do
    base=$(basename "$path")
    base=${base%.xz}
    if [[ $path == *.xz ]]; then
        xz -dc "$moddir/$path" >"$root/modules/$base"
    else
        cp "$moddir/$path" "$root/modules/$base"
    fi
    echo "$base" >>"$root/modules/order"
done
(cd "$root" && find . -mindepth 1 -print | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -6 -n >"$work/l1.cpio.gz"

cp "$work/pkg/boot/vmlinuz-$kver" "$out/vmlinuz"
mv "$work/l1.cpio.gz" "$out/l1.cpio.gz"
echo "$package $version" >"$out/KERNEL"
echo "$key" >"$out/KEY"
echo "build-l1: $package $version, ${#order[@]} modules" >&2
echo "$out"
