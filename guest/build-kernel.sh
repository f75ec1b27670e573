#!/usr/bin/env bash
# Builds the Veil pod guest kernel (vmlinux with the PVH entry note, and bzImage) from
# Debian's linux-source-6.1 tarball with `make tinyconfig` + guest/kernel.config.
#
# Output (relative to the repository root, whatever the current directory):
#   target/guest-kernel/vmlinux   uncompressed ELF, booted through its PVH entry
#   target/guest-kernel/bzImage   same kernel, 64-bit boot protocol
#   target/guest-kernel/config    the final .config
#   target/guest-kernel/KEY       cache key of the build that produced the files above
# On success the absolute paths of vmlinux and bzImage are printed on stdout, one per
# line; progress and errors go to stderr.
#
# The cache key is the SHA-256 of the fragment, this script and the installed
# linux-source-6.1 package version. With a matching KEY the script only prints the
# paths. A rebuild first deletes KEY and the old images, and installs new ones (KEY
# last) only after a successful build, so a failed or interrupted build never leaves
# images that look current. The build tree is kept for fast incremental rebuilds.
set -euo pipefail

readonly PACKAGES="linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio lz4"
readonly SOURCE_PACKAGE=linux-source-6.1
readonly TARBALL=/usr/src/linux-source-6.1.tar.xz

script_path=$(readlink -f "${BASH_SOURCE[0]}")
guest_dir=$(dirname "$script_path")
repo_root=$(dirname "$guest_dir")
fragment=$guest_dir/kernel.config
out=$repo_root/target/guest-kernel
build=$out/build
log=$out/build.log

die() {
    echo "build-kernel: error: $*" >&2
    exit 1
}

usage() {
    cat <<EOF
usage: guest/build-kernel.sh [--force]
Builds target/guest-kernel/{vmlinux,bzImage} unless they are current.
  --force   rebuild even if the cache key matches
EOF
}

force=0
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$arg'" ;;
    esac
done

[[ -f $fragment ]] || die "config fragment $fragment is missing"

source_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE" 2>/dev/null) ||
    die "package $SOURCE_PACKAGE is not installed; run: apt-get install $PACKAGES"
[[ -f $TARBALL ]] ||
    die "$TARBALL not found (package $SOURCE_PACKAGE $source_version is broken?); run: apt-get install --reinstall $SOURCE_PACKAGE"

key=$({
    sha256sum <"$fragment"
    sha256sum <"$script_path"
    echo "$SOURCE_PACKAGE=$source_version"
} | sha256sum | cut -d' ' -f1)

mkdir -p "$out"
# One build at a time; a second caller waits and then finds the cache current.
exec 9>"$out/.lock"
flock 9

print_outputs() {
    echo "$out/vmlinux"
    echo "$out/bzImage"
}

if ((force == 0)) && [[ -f $out/KEY && -f $out/vmlinux && -f $out/bzImage ]] &&
    [[ $(<"$out/KEY") == "$key" ]]; then
    print_outputs
    exit 0
fi

# --- Rebuild -------------------------------------------------------------------------

missing=()
for tool in make gcc ld flex bison bc cpio perl tar xz lz4 sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if command -v gcc >/dev/null 2>&1; then
    echo '#include <gelf.h>' | gcc -E -x c - >/dev/null 2>&1 || missing+=("gelf.h (libelf-dev)")
    echo '#include <openssl/opensslv.h>' | gcc -E -x c - >/dev/null 2>&1 ||
        missing+=("openssl/opensslv.h (libssl-dev)")
fi
((${#missing[@]} == 0)) ||
    die "missing build tools: ${missing[*]}; run: apt-get install $PACKAGES"

# From here on the old images are no longer current.
rm -f "$out/KEY" "$out/vmlinux" "$out/bzImage" "$out/config" \
    "$out/KEY.tmp" "$out/vmlinux.tmp" "$out/bzImage.tmp" "$out/config.tmp"

: >"$log"
started=$SECONDS
echo "build-kernel: building guest kernel ($SOURCE_PACKAGE $source_version, key ${key:0:12}); log: $log" >&2

on_exit() {
    local status=$?
    rm -f "$out/KEY.tmp" "$out/vmlinux.tmp" "$out/bzImage.tmp" "$out/config.tmp"
    rm -rf "$build/source.tmp"
    if ((status != 0)); then
        echo "build-kernel: build FAILED (exit $status); last lines of $log:" >&2
        tail -n 40 "$log" >&2 || true
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run() {
    echo "+ $*" >>"$log"
    "$@" >>"$log" 2>&1
}

# Extract the source once per package version; the stamp is written only after a
# complete extraction, so a half-extracted tree is never reused.
if [[ ! -f $build/source/.veil-source-version || $(<"$build/source/.veil-source-version") != "$source_version" ]]; then
    echo "build-kernel: extracting $TARBALL" >&2
    rm -rf "$build"
    mkdir -p "$build/source.tmp"
    run tar -xf "$TARBALL" -C "$build/source.tmp" --strip-components=1
    echo "$source_version" >"$build/source.tmp/.veil-source-version"
    mv "$build/source.tmp" "$build/source"
fi
src=$build/source
obj=$build/obj
mkdir -p "$obj"

# Fixed build identity: the same inputs give the same `Linux version` line and image
# (a reproducible image is what an SNP launch measurement is checked against). Locale and
# time zone fixed too, for any tool that formats dates or sorts. Build paths do not reach
# the image: Kbuild maps the source tree out of __FILE__ and the config has no debug info.
export KBUILD_BUILD_USER=veil KBUILD_BUILD_HOST=veil KBUILD_BUILD_VERSION=1
export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
export LC_ALL=C TZ=UTC
kmake() {
    run make -C "$src" O="$obj" "$@"
}

echo "build-kernel: configuring (tinyconfig + $fragment)" >&2
kmake tinyconfig
# merge_config.sh makes its temporary files in the current directory: use the object tree,
# not whatever directory the caller is in (which may not be writable).
(cd "$obj" && run "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment")
kmake olddefconfig

# Every value the fragment sets must be in the final config: Kconfig drops an option
# whose dependencies are unmet without an error.
dropped=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=.+$ ]]; then
        grep -qxF -- "$line" "$obj/.config" ||
            dropped+=("$line (final: $(grep -E "^${BASH_REMATCH[1]}=|^# ${BASH_REMATCH[1]} is not set" "$obj/.config" || echo absent))")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        ! grep -qE "^${BASH_REMATCH[1]}=" "$obj/.config" ||
            dropped+=("$line (final: $(grep -E "^${BASH_REMATCH[1]}=" "$obj/.config"))")
    fi
done <"$fragment"
if ((${#dropped[@]} > 0)); then
    printf 'build-kernel: option did not stick: %s\n' "${dropped[@]}" | tee -a "$log" >&2
    die "${#dropped[@]} option(s) of $fragment did not survive olddefconfig (unmet dependencies?)"
fi

echo "build-kernel: compiling with -j$(nproc)" >&2
kmake -j"$(nproc)" vmlinux bzImage

cp "$obj/vmlinux" "$out/vmlinux.tmp"
cp "$obj/arch/x86/boot/bzImage" "$out/bzImage.tmp"
cp "$obj/.config" "$out/config.tmp"
mv "$out/vmlinux.tmp" "$out/vmlinux"
mv "$out/bzImage.tmp" "$out/bzImage"
mv "$out/config.tmp" "$out/config"
echo "$key" >"$out/KEY.tmp"
mv "$out/KEY.tmp" "$out/KEY"

echo "build-kernel: done in $((SECONDS - started)) s" >&2
print_outputs
