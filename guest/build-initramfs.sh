#!/usr/bin/env bash
# Builds the Veil pod guest initramfs: a newc cpio archive (gzip) whose /init is a static
# `veil-agent`, plus the few nodes and directories the kernel and the agent need before
# devtmpfs is mounted.
#
# Output (relative to the repository root, whatever the current directory):
#   target/guest-initramfs/initramfs.cpio.gz   the archive
#   target/guest-initramfs/KEY                 cache key of the build that produced it
# On success the absolute path of the archive is printed on stdout; progress and errors go
# to stderr.
#
# Reproducible: file list sorted, owners 0:0, every mtime = SOURCE_DATE_EPOCH (default 0),
# gzip without name or time stamp; the same agent binary gives the same bytes.
# Cached: the key is the SHA-256 of the static agent binary and of this script. cargo decides
# whether the agent needs rebuilding; with a matching KEY the archive is not rebuilt.
set -euo pipefail

readonly PACKAGES="cpio gzip binutils"
readonly TARGET=x86_64-unknown-linux-gnu

script_path=$(readlink -f "${BASH_SOURCE[0]}")
guest_dir=$(dirname "$script_path")
repo_root=$(dirname "$guest_dir")
out=$repo_root/target/guest-initramfs
archive=$out/initramfs.cpio.gz
epoch=${SOURCE_DATE_EPOCH:-0}

die() {
    echo "build-initramfs: error: $*" >&2
    exit 1
}

usage() {
    cat <<USAGE
usage: guest/build-initramfs.sh [--force]
Builds target/guest-initramfs/initramfs.cpio.gz (static veil-agent as /init) unless current.
  --force   rebuild the archive even if the cache key matches
USAGE
}

force=0
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$arg'" ;;
    esac
done

for tool in cargo cpio gzip readelf sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run: apt-get install $PACKAGES"
done

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

# A static glibc build: `--target` keeps build scripts and proc macros dynamic while the
# agent itself is linked with crt-static (the toolchain here has no musl target).
echo "build-initramfs: building static veil-agent (release, $TARGET)" >&2
(
    cd "$repo_root"
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        -p veil-agent --bin veil-agent --target "$TARGET" >&2
)
agent=$repo_root/target/$TARGET/release/veil-agent
[[ -x $agent ]] || die "cargo did not produce $agent"
if readelf -l "$agent" | grep -q 'Requesting program interpreter'; then
    die "$agent is dynamically linked; the initramfs has no shared libraries"
fi

key=$({
    sha256sum <"$agent"
    sha256sum <"$script_path"
    echo "SOURCE_DATE_EPOCH=$epoch"
} | sha256sum | cut -d' ' -f1)

if ((force == 0)) && [[ -f $out/KEY && -f $archive ]] && [[ $(<"$out/KEY") == "$key" ]]; then
    echo "$archive"
    exit 0
fi

rm -f "$out/KEY" "$archive"
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage" "$archive.tmp"' EXIT

for dir in dev proc sys run tmp etc sys/fs/cgroup; do
    mkdir -p "$stage/$dir"
done
chmod 1777 "$stage/tmp"
install -m 0755 "$agent" "$stage/init"
# The kernel opens /dev/console for init's stdio before anything is mounted.
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3

find "$stage" -exec touch -h -d "@$epoch" {} +
(
    cd "$stage"
    find . -mindepth 1 -print | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible
) | gzip -9 -n >"$archive.tmp"

mv "$archive.tmp" "$archive"
echo "$key" >"$out/KEY"
echo "build-initramfs: $(du -h "$archive" | cut -f1) archive, key ${key:0:12}" >&2
echo "$archive"
