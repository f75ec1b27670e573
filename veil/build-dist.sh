#!/usr/bin/env bash
# Builds the `veil` binary as it ships: a static-pie executable (glibc's static libraries;
# the toolchain here has no musl target), optimised for size with whole-program LTO (the
# `dist` profile in Cargo.toml). Prints its absolute path on stdout; cargo's progress goes
# to stderr.
#
# Why: a VMM process per pod makes its resident size a per-pod cost. Mapping libc.so and a
# larger binary costs ~1.3 MiB of RSS per VMM (fault-around maps 64 KiB of file pages per
# text fault); statically linked and size-optimised, veil with the tiny guest peaks at ~2.5
# MiB instead of ~3.8 MiB (benches/README.md, memory section). `--target` keeps build
# scripts and proc macros dynamic, which crt-static cannot build.
set -euo pipefail

readonly TARGET=x86_64-unknown-linux-gnu
repo_root=$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")

case ${1:-} in
-h | --help)
    echo "usage: veil/build-dist.sh    builds target/$TARGET/dist/veil (static-pie) and prints its path"
    exit 0
    ;;
"") ;;
*)
    echo "build-dist: unknown argument '$1' (see --help)" >&2
    exit 1
    ;;
esac

cd "$repo_root"
target_dir=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n $target_dir ]] || target_dir=$repo_root/target
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile dist --locked \
    -p veil --bin veil --target "$TARGET" >&2
veil=$target_dir/$TARGET/dist/veil
[[ -x $veil ]] || {
    echo "build-dist: cargo did not produce $veil" >&2
    exit 1
}
if readelf -l "$veil" | grep -q 'Requesting program interpreter'; then
    echo "build-dist: $veil is dynamically linked" >&2
    exit 1
fi
echo "$veil"
