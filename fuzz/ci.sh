#!/usr/bin/env bash
# Builds every fuzz target and runs each for a fixed time from its committed seed corpus
# (corpus/<target>/), failing on the first crash, leak, timeout or out-of-memory. New inputs
# go to a scratch directory, so the committed corpus only changes by hand.
#
#   fuzz/ci.sh [seconds per target] [target...]
#
# Stable Rust: cargo-fuzz's -Z flags are accepted with RUSTC_BOOTSTRAP=1. The build goes to
# the root target/fuzz so CI's target cache keeps it; debug assertions and overflow checks
# stay on, so arithmetic on untrusted lengths that would wrap is a crash.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

seconds=${1:-20}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

# Largest input worth trying per target (see README.md).
max_len() {
    case $1 in
    igvm_load) echo 1048576 ;;
    virtio_queues) echo 65538 ;;
    report_parse | cpuid_page_parse) echo 8192 ;;
    *) echo 65536 ;;
    esac
}

export RUSTC_BOOTSTRAP=1
# The device targets write and fsync scratch disk images every run: on tmpfs that is cheap.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    export TMPDIR=/dev/shm
fi
cargo fuzz build -O --debug-assertions --target-dir ../target/fuzz
bin=../target/fuzz/x86_64-unknown-linux-gnu/release
artifacts=../target/fuzz/artifacts
mkdir -p "$artifacts"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch" "$TMPDIR"/veil-fuzz-*' EXIT

printf '%-18s %12s %s\n' target executions result
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    log="$scratch/$t.log"
    status=0
    "$bin/$t" "$scratch/$t" "corpus/$t" -max_total_time="$seconds" -max_len="$(max_len "$t")" \
        -timeout=60 -rss_limit_mb=2048 -artifact_prefix="$artifacts/$t-" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if ((status != 0)); then
        printf '%-18s %12s CRASH (exit %d)\n' "$t" "${runs:-?}" "$status"
        tail -60 "$log"
        echo "fuzz target $t failed; the input is in $artifacts/ (make it a #[test] in the owning crate)" >&2
        exit 1
    fi
    printf '%-18s %12s ok\n' "$t" "${runs:-?}"
done
