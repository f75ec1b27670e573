#!/usr/bin/env bash
# Shows that the pod guest builds reproducibly: builds it twice, in two directories, and
# compares every output byte for byte (vmlinux, kernel.config, veil-agent, initramfs.cpio.gz,
# pod.igvm, manifest.json). Exit status 0 when all are identical, 1 otherwise.
#
# Build A is guest/build-pod.sh in this checkout (cached like any build). Build B starts from
# a copy of the checkout's files (tracked and untracked, not ignored) in a new directory under
# /var/tmp, with its own target directory and CARGO_HOME, umask 077, TMPDIR of its own, and, when
# run as root, as user nobody (uid 65534) in a private mount namespace where the toolchain
# and the crate registry's index and downloads (under root's home, which nobody cannot
# enter) are bind-mounted into B's directory, and B unpacks the crate sources itself;
# CAP_MKNOD is kept for the initramfs device nodes. B builds the agent, the initramfs, the
# IGVM and the manifest from scratch.
#
# The kernel: by default B starts with A's kernel images in its cache (a kernel build is 10+
# minutes on 2 cores), so the comparison covers the agent, initramfs, IGVM and manifest
# built from scratch, and the kernel only as an input. --rebuild-kernel builds it in B too.
# Either way the script checks that no build path or host name is in the agent or the kernel.
set -euo pipefail

script_path=$(readlink -f "${BASH_SOURCE[0]}")
guest_dir=$(dirname "$script_path")
repo_root=$(dirname "$guest_dir")
readonly OUTPUTS="vmlinux kernel.config veil-agent initramfs.cpio.gz pod.igvm manifest.json"

die() {
    echo "check-reproducible: error: $*" >&2
    exit 1
}

rebuild_kernel=0
for arg in "$@"; do
    case $arg in
    --rebuild-kernel) rebuild_kernel=1 ;;
    -h | --help) sed -n '2,18p' "$script_path" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (usage: guest/check-reproducible.sh [--rebuild-kernel])" ;;
    esac
done

echo "check-reproducible: build A in $repo_root" >&2
manifest_a=$("$guest_dir/build-pod.sh")
a=$(dirname "$manifest_a")
target_a=$(cd "$repo_root" && cargo metadata --format-version 1 --no-deps --offline |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
veil=$target_a/debug/veil

work=$(mktemp -d /var/tmp/veil-repro.XXXXXX)
# The bind mounts below exist only in build B's private mount namespace and end with it; never
# delete through one that somehow outlived it (it would be the toolchain or the registry).
remove_work() {
    local m
    for m in cargo-bin rustup cargo/registry cargo/registry/index cargo/registry/cache; do
        if mountpoint -q "$work/$m"; then
            echo "check-reproducible: not removing $work: $work/$m is still a mount" >&2
            return
        fi
    done
    rm -rf "$work"
}
trap remove_work EXIT
chmod 0755 "$work"
b_src=$work/src
mkdir -p "$b_src" "$work/tmp" "$work/home" "$work/cargo"
if git -C "$repo_root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$repo_root" && git ls-files -z -co --exclude-standard) |
        (cd "$repo_root" && tar --null -T - -cf -) | tar -xf - -C "$b_src"
else
    # Not a git checkout (an exported tree): everything but the build output.
    (cd "$repo_root" && tar --exclude=./target -cf - .) | tar -xf - -C "$b_src"
fi
# The toolchain and the crates Cargo.lock names, from this machine (no network here).
cargo_home=$(readlink -f "${CARGO_HOME:-$HOME/.cargo}")
rustup_home=$(readlink -f "${RUSTUP_HOME:-$HOME/.rustup}")
mkdir -p "$work/cargo/registry" "$work/cargo-bin" "$work/rustup"
if ((rebuild_kernel == 0)); then
    kernel_cache=$target_a/guest-kernel
    mkdir -p "$b_src/target/guest-kernel"
    cp "$kernel_cache"/{vmlinux,bzImage,config,KEY} "$b_src/target/guest-kernel/"
fi

install -m 0755 "$veil" "$work/veil"
# Build B's environment: nothing inherited but what is set here. As root, the toolchain and
# the registry are bind-mounted into $work (nobody cannot enter root's home); otherwise used
# where they are.
b_build="umask 077 && cd $b_src && exec $b_src/guest/build-pod.sh"
b_env() { # $1: cargo bin dir, $2: RUSTUP_HOME
    echo env -i "PATH=$1:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=$work/home" "TMPDIR=$work/tmp" \
        "CARGO_HOME=$work/cargo" CARGO_NET_OFFLINE=true "RUSTUP_HOME=$2" "VEIL=$work/veil" LANG=C.UTF-8
}
who="user $(id -un)"
if (($(id -u) == 0)); then
    # The registry's index and downloaded crates are bind-mounted; B unpacks the sources
    # itself (as nobody, into its own registry/src): unpacked files keep the modes their
    # crate was published with, and some are not world-readable (fnv 1.0.7: 0640).
    mkdir -p "$work/cargo/registry/index" "$work/cargo/registry/cache" "$work/cargo/registry/src"
    chown -R 65534:65534 "$work"
    who="user nobody"
    mounts="mount --bind $cargo_home/bin $work/cargo-bin && mount --bind $cargo_home/registry/index $work/cargo/registry/index && mount --bind $cargo_home/registry/cache $work/cargo/registry/cache && mount --bind $rustup_home $work/rustup"
    run_b=(unshare --mount --propagation private bash -c "$mounts && exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+mknod --ambient-caps=+mknod $(b_env "$work/cargo-bin" "$work/rustup") bash -c '$b_build'")
else
    echo "check-reproducible: not root: build B runs as $who too (no other user to switch to)" >&2
    rmdir "$work/cargo/registry" && ln -s "$cargo_home/registry" "$work/cargo/registry"
    read -ra env_b <<<"$(b_env "$cargo_home/bin" "$rustup_home")"
    run_b=("${env_b[@]}" bash -c "$b_build")
fi
echo "check-reproducible: build B in $b_src as $who, umask 077, TMPDIR $work/tmp" >&2
started=$SECONDS
"${run_b[@]}" >"$work/b.log" 2>&1 ||
    { tail -n 30 "$work/b.log" >&2; die "build B failed (log above)"; }
echo "check-reproducible: build B took $((SECONDS - started)) s" >&2
b=$b_src/target/guest-pod

status=0
for f in $OUTPUTS; do
    if cmp -s "$a/$f" "$b/$f"; then
        echo "identical  $f  $(sha256sum <"$a/$f" | cut -c1-16)"
    else
        echo "DIFFERS    $f  A $(sha256sum <"$a/$f" | cut -c1-16)  B $(sha256sum <"$b/$f" | cut -c1-16)"
        status=1
    fi
done
# No build path, user's home or host name in what runs in the pod.
host=$(hostname)
for f in veil-agent vmlinux; do
    leaks=$(strings -n 6 "$b/$f" | grep -F -e "$repo_root" -e "$work" -e "$cargo_home" -e /root/ -e /home/ || true)
    if ((${#host} >= 4)) && strings -n 6 "$b/$f" | grep -qwF "$host"; then
        leaks+=" host name $host"
    fi
    if [[ -n $leaks ]]; then
        echo "LEAKS      $f: $(head -c 300 <<<"$leaks")"
        status=1
    else
        echo "clean      $f: no build path, home or host name"
    fi
done
((status == 0)) && echo "check-reproducible: builds A and B are identical" ||
    echo "check-reproducible: builds A and B differ"
exit "$status"
