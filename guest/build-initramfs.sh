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
# Reproducible: file list sorted, owners 0:0, fixed modes whatever the umask, every mtime =
# SOURCE_DATE_EPOCH (default 0), gzip without name or time stamp; the same agent binary gives
# the same bytes. The agent itself is built with Cargo.lock (--locked) and its build paths
# remapped (the checkout to /veil, the target directory to /veil/target, CARGO_HOME to
# /cargo), so it is the same binary in any directory, for any user, with the same toolchain
# (RUST_VERSION below; another version builds, with a warning, and gives other bytes).
# Cached: the key is the SHA-256 of the static agent binary and of this script. cargo decides
# whether the agent needs rebuilding; with a matching KEY the archive is not rebuilt.
set -euo pipefail

readonly PACKAGES="cpio gzip binutils libseccomp-dev"
readonly TARGET=x86_64-unknown-linux-gnu
# The toolchain the published images are built with (rustc --version).
readonly RUST_VERSION=1.95.0

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
       guest/build-initramfs.sh --pack AGENT ARCHIVE
Builds target/guest-initramfs/initramfs.cpio.gz (static veil-agent as /init) unless current.
  --force                 rebuild the archive even if the cache key matches
  --pack AGENT ARCHIVE    only pack the given agent binary into ARCHIVE (no build, no cache)
USAGE
}

# Packs agent binary $1 as /init into the gzip'd newc archive $2, reproducibly.
pack() {
    local agent=$1 archive=$2 stage
    stage=$(mktemp -d "$(dirname "$archive")/stage.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this stage
    trap "rm -rf '$stage' '$archive.tmp'" EXIT
    for dir in dev proc sys run tmp etc sys/fs/cgroup; do
        mkdir -p "$stage/$dir"
    done
    # Modes fixed here, not left to the umask.
    find "$stage" -mindepth 1 -type d -exec chmod 0755 {} +
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
    rm -rf "$stage"
}

for tool in cargo cpio gzip readelf sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run: apt-get install $PACKAGES"
done

# libcontainer's seccomp support links libseccomp statically into the agent.
[[ -f /usr/lib/x86_64-linux-gnu/libseccomp.a ]] ||
    die "/usr/lib/x86_64-linux-gnu/libseccomp.a not found; run: apt-get install $PACKAGES"

force=0
while (($#)); do
    case $1 in
    --force) force=1; shift ;;
    --pack)
        (($# == 3)) || { usage >&2; die "--pack takes AGENT and ARCHIVE"; }
        [[ -f $2 ]] || die "agent binary $2 not found"
        pack "$2" "$3"
        exit 0
        ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

rustc_version=$(cd "$repo_root" && rustc --version)
[[ $rustc_version == "rustc $RUST_VERSION "* ]] ||
    echo "build-initramfs: warning: $rustc_version is not rustc $RUST_VERSION; the agent will differ from the published one" >&2

# A static glibc build: `--target` keeps build scripts and proc macros dynamic while the
# agent itself is linked with crt-static (the toolchain here has no musl target).
# Remapped prefixes, most specific last (rustc applies the last match): no build path
# reaches the binary (panic locations, generated protobuf code under OUT_DIR).
target_dir=$(cd "$repo_root" && cargo metadata --format-version 1 --no-deps --offline 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n $target_dir ]] || target_dir=$repo_root/target
cargo_home=$(readlink -f "${CARGO_HOME:-$HOME/.cargo}")
rustflags="-C target-feature=+crt-static --remap-path-prefix=$cargo_home=/cargo"
# A CARGO_HOME whose registry is a link to another one (check-reproducible.sh does that).
registry=$(readlink -f "$cargo_home/registry")
[[ $registry == "$cargo_home/registry" ]] || rustflags+=" --remap-path-prefix=$registry=/cargo/registry"
rustflags+=" --remap-path-prefix=$repo_root=/veil --remap-path-prefix=$(readlink -f "$target_dir")=/veil/target"
echo "build-initramfs: building static veil-agent (release, $TARGET, $rustc_version)" >&2
(
    cd "$repo_root"
    unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
    # libcontainer's seccomp: link Debian's libseccomp.a (libseccomp-dev), not the .so.
    LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
        RUSTFLAGS="$rustflags" cargo build --release --locked \
        -p veil-agent --bin veil-agent --target "$TARGET" >&2
)
agent=$target_dir/$TARGET/release/veil-agent
[[ -x $agent ]] || die "cargo did not produce $agent"
if readelf -l "$agent" | grep -q 'Requesting program interpreter' ||
    readelf -d "$agent" | grep -q '(NEEDED)'; then
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
pack "$agent" "$archive"
echo "$key" >"$out/KEY"
echo "build-initramfs: $(du -h "$archive" | cut -f1) archive, key ${key:0:12}" >&2
echo "$archive"
