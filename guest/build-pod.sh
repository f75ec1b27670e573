#!/usr/bin/env bash
# Builds the pod guest as published: the kernel (build-kernel.sh), the initramfs with the
# static agent (build-initramfs.sh), the SEV-SNP IGVM that boots them (`veil igvm build`), and
# manifest.json (`veil guest manifest`: the version of every input, the SHA-256 of each
# image, the launch digests for 1, 2 and 4 vCPUs on Milan, Genoa and Turin with the default
# policy). Every output is reproducible: the same checkout and inputs give the same bytes in
# any directory, for any user, umask or TMPDIR (guest/check-reproducible.sh shows it).
#
# Output (relative to the repository root unless --out is given):
#   target/guest-pod/vmlinux             the kernel (ELF)
#   target/guest-pod/kernel.config       its final .config (also embedded in vmlinux)
#   target/guest-pod/veil-agent          the static agent, /init of the initramfs
#   target/guest-pod/initramfs.cpio.gz   the initramfs
#   target/guest-pod/pod.igvm            the SNP launch image
#   target/guest-pod/manifest.json       the manifest
# Check a directory against its manifest: veil guest verify-manifest DIR/manifest.json
# Environment: SOURCE_DATE_EPOCH (default 0), VEIL (a veil binary to use instead of building one).
set -euo pipefail

# What the IGVM measures besides the images: the command line (with the one virtio device an
# SNP pod has, vsock, where the VMM places it: first MMIO window, IRQ 5), RAM and policy.
readonly POD_CMDLINE="console=ttyS0 acpi=off reboot=k panic=-1 virtio_mmio.device=4K@0xd0001000:5"
readonly POD_MEM_MIB=256
readonly POD_POLICY=0x30000
readonly DEBIAN_INPUTS="linux-source-6.1 gcc-12 binutils libc6-dev libelf-dev libssl-dev flex bison bc cpio gzip lz4 make"

script_path=$(readlink -f "${BASH_SOURCE[0]}")
guest_dir=$(dirname "$script_path")
repo_root=$(dirname "$guest_dir")
out=$repo_root/target/guest-pod

die() {
    echo "build-pod: error: $*" >&2
    exit 1
}

while (($#)); do
    case $1 in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,16p' "$script_path" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (usage: guest/build-pod.sh [--out DIR])" ;;
    esac
done
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
export LC_ALL=C TZ=UTC

kernel_paths=$("$guest_dir/build-kernel.sh")
vmlinux=$(sed -n 1p <<<"$kernel_paths")
initramfs=$("$guest_dir/build-initramfs.sh")
target_dir=$(cd "$repo_root" && cargo metadata --format-version 1 --no-deps --offline |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
agent=$target_dir/x86_64-unknown-linux-gnu/release/veil-agent
[[ -x $agent ]] || die "no agent at $agent after build-initramfs.sh"

# The tool only writes the IGVM and the manifest; VEIL=path uses an existing one.
if [[ -n ${VEIL:-} ]]; then
    veil=$VEIL
else
    echo "build-pod: building the veil tool" >&2
    (cd "$repo_root" && cargo build --locked --quiet -p veil --bin veil >&2)
    veil=$target_dir/debug/veil
fi
[[ -x $veil ]] || die "no veil binary at $veil"

mkdir -p "$out"
rm -f "$out/manifest.json"
install -m 0644 "$vmlinux" "$out/vmlinux"
install -m 0644 "$(dirname "$vmlinux")/config" "$out/kernel.config"
install -m 0644 "$agent" "$out/veil-agent"
install -m 0644 "$initramfs" "$out/initramfs.cpio.gz"
"$veil" igvm build --kernel "$out/vmlinux" --initrd "$out/initramfs.cpio.gz" \
    --cmdline "$POD_CMDLINE" --mem-mib "$POD_MEM_MIB" --policy "$POD_POLICY" \
    -o "$out/pod.igvm" >&2

# The version of every input that reaches the images.
inputs=()
for pkg in $DEBIAN_INPUTS; do
    version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || version=absent
    inputs+=(--input "debian:$pkg=$version")
done
rustc_version=$(cd "$repo_root" && rustc --version)
cargo_version=$(cd "$repo_root" && cargo --version)
inputs+=(--input "rustc=$rustc_version" --input "cargo=$cargo_version")
for file in Cargo.lock guest/kernel.config guest/build-kernel.sh guest/build-initramfs.sh guest/build-pod.sh; do
    inputs+=(--input "sha256:$file=$(sha256sum <"$repo_root/$file" | cut -d' ' -f1)")
done
inputs+=(--input "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH")

"$veil" guest manifest -o "$out/manifest.json" \
    --image vmlinux=vmlinux --image kernel-config=kernel.config --image agent=veil-agent \
    --image initramfs=initramfs.cpio.gz --image igvm=pod.igvm \
    --igvm igvm --kernel vmlinux --initrd initramfs \
    --cmdline "$POD_CMDLINE" --mem-mib "$POD_MEM_MIB" --policy "$POD_POLICY" \
    "${inputs[@]}" >&2
echo "$out/manifest.json"
