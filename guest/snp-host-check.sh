#!/usr/bin/env bash
# One command for an SEV-SNP host: boots the published pod image (pod.igvm of a pod set built
# by guest/build-pod.sh) with `veil run --snp`, has the agent inside the guest fetch its SNP
# attestation report (veil.AttestationService/GetAttestationReport over the VMM's vsock, with
# a fresh nonce as REPORT_DATA), and checks it: the images against manifest.json, the
# signature chain VCEK -> ASK -> ARK, MEASUREMENT against `veil measure --igvm` for this host's
# vCPU signature (and the manifest's digest for the same CPU type), HOST_DATA against the
# SHA-256 of the policy, the guest policy, and REPORT_DATA against the nonce.
# Prints one line per check (PASS, FAIL, or NOT RUN with the reason); exit status 0 only if
# every check passes. On a host without SNP it says exactly what is missing.
#
# usage: guest/snp-host-check.sh [--pod DIR] [--vcek FILE] [--generation milan|genoa|turin]
#            [--vcpus N] [--policy-file FILE] [--keep DIR]
#        guest/snp-host-check.sh --snp-firmware model ...     (development, INSECURE)
#        guest/snp-host-check.sh --agent-unix PATH ...        (development: a host agent)
#        guest/snp-host-check.sh --report FILE [--public-key PEM] [--nonce HEX] ...
#
#   --pod DIR          pod set with manifest.json (default target/guest-pod)
#   --vcek FILE        this chip's VCEK (PEM or DER); without it the line names the AMD KDS
#                      URL for the report's chip and TCB
#   --vcpus N          vCPUs of the test VM (default 1)
#   --policy-file F    the pod policy whose SHA-256 becomes HOST_DATA (default: a fixed
#                      deny-all Rego policy)
#   --keep DIR         keep the report, console log and VMM log in DIR
#   --snp-firmware model   launch with Veil's insecure firmware model instead of KVM: the
#                      report is the model's, signed with its own key (checked with it) and
#                      made at launch (no nonce); for testing this script without SNP
#   --agent-unix PATH  no VM: fetch the report from an agent on a Unix socket (e.g.
#                      `veil-agent --listen unix:PATH --attestation insecure`)
#   --report FILE      no VM: check a report obtained elsewhere (with --nonce HEX, the
#                      REPORT_DATA it was asked with; --public-key PEM instead of a VCEK for
#                      the model's reports)
#   --vcpu-sig HEX     without a launch here: the vCPU signature the report's guest had
#                      (default: this host's CPUID signature)
# Environment: VEIL, VEIL_ATTEST (binaries; default: built with cargo from this checkout).
set -uo pipefail

script_path=$(readlink -f "${BASH_SOURCE[0]}")
guest_dir=$(dirname "$script_path")
repo_root=$(dirname "$guest_dir")
pod=$repo_root/target/guest-pod
vcek= generation= vcpus=1 policy_file= keep= firmware=kvm agent_unix= given_report= public_key= given_nonce= given_sig=
readonly DEFAULT_POLICY='package agent_policy
default CreateContainerRequest := false
'

usage() { sed -n '12,35p' "$script_path" | sed 's/^# \{0,1\}//'; }
die() {
    echo "snp-host-check: error: $*" >&2
    exit 2
}
while (($#)); do
    case $1 in
    --pod) pod=${2:?}; shift 2 ;;
    --vcek) vcek=${2:?}; shift 2 ;;
    --generation) generation=${2:?}; shift 2 ;;
    --vcpus) vcpus=${2:?}; shift 2 ;;
    --policy-file) policy_file=${2:?}; shift 2 ;;
    --keep) keep=${2:?}; shift 2 ;;
    --snp-firmware) firmware=${2:?}; shift 2 ;;
    --agent-unix) agent_unix=${2:?}; shift 2 ;;
    --report) given_report=${2:?}; shift 2 ;;
    --public-key) public_key=${2:?}; shift 2 ;;
    --nonce) given_nonce=${2:?}; shift 2 ;;
    --vcpu-sig) given_sig=${2:?}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
[[ $firmware == kvm || $firmware == model ]] || die "--snp-firmware is kvm or model, not '$firmware'"
[[ $vcpus =~ ^[1-9][0-9]*$ ]] || die "--vcpus must be a positive number, not '$vcpus'"

work=$(mktemp -d)
veil_pid=
cleanup() {
    if [[ -n $veil_pid ]] && kill -0 "$veil_pid" 2>/dev/null; then
        kill "$veil_pid" 2>/dev/null
        wait "$veil_pid" 2>/dev/null
    fi
    if [[ -n $keep ]]; then mkdir -p "$keep" && cp -a "$work"/. "$keep"/; fi
    rm -rf "$work"
}
trap cleanup EXIT

failed=0
pass() { echo "PASS     $1: $2"; }
fail() { echo "FAIL     $1: $2"; failed=1; }
not_run() { echo "NOT RUN  $1: $2"; failed=1; }

# The tools, from this checkout unless given.
if [[ -z ${VEIL:-} || -z ${VEIL_ATTEST:-} ]]; then
    (cd "$repo_root" && cargo build --locked --quiet -p veil --bin veil -p veil-agent --bin veil-attest) ||
        die "building veil and veil-attest failed"
    target=$(cd "$repo_root" && cargo metadata --format-version 1 --no-deps --offline |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fi
veil=${VEIL:-$target/debug/veil}
attest=${VEIL_ATTEST:-$target/debug/veil-attest}

# 1. The pod set on disk is the published one.
manifest=$pod/manifest.json
if out=$("$veil" guest verify-manifest "$manifest" 2>&1); then
    pass manifest "$(tail -n 1 <<<"$out")"
else
    fail manifest "$(grep -E '^MISMATCH|error' <<<"$out" | head -n 5 | tr '\n' ' ')"
fi
igvm=$pod/pod.igvm

# 2. Policy and nonce.
policy=$work/policy.rego
if [[ -n $policy_file ]]; then
    cp "$policy_file" "$policy" || die "cannot read --policy-file $policy_file"
else
    printf '%s' "$DEFAULT_POLICY" >"$policy"
fi
host_data=$(sha256sum <"$policy" | cut -d' ' -f1)
nonce=${given_nonce:-$(head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n')}

# 3. Get a report: from the agent in an SNP guest (or the model's launch, or a host agent).
report=$work/report.bin
got_report=0
nonce_bound=1
if [[ -n $given_report ]]; then
    if cp "$given_report" "$report" 2>/dev/null; then
        pass report "given: $given_report"
        got_report=1
        [[ -n $given_nonce ]] || nonce_bound=0
    else
        fail report "cannot read $given_report"
    fi
elif [[ -n $agent_unix ]]; then
    if src=$("$attest" --unix "$agent_unix" --report-data "$nonce" --wait 30 -o "$report" 2>&1); then
        pass report "fetched from the agent at $agent_unix (backend $src)"
        got_report=1
    else
        fail report "$src"
    fi
else
    vmm_args=(run --igvm "$igvm" --mem-mib "$(sed -n 's/.*"mem_mib": \([0-9]*\).*/\1/p' "$manifest")"
        --vcpus "$vcpus" --host-data "$host_data" --console "$work/console.log"
        --vsock-cid 3 --vsock-uds "$work/vsock.sock")
    if [[ $firmware == model ]]; then
        vmm_args+=(--snp-firmware model --model-report "$report")
    else
        vmm_args+=(--snp)
    fi
    "$veil" "${vmm_args[@]}" >"$work/veil.log" 2>&1 </dev/null &
    veil_pid=$!
    # The launch (or its refusal) comes first; wait for its line or for veil to end.
    for _ in $(seq 600); do
        grep -q "launch digest" "$work/veil.log" && break
        kill -0 "$veil_pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q "launch digest" "$work/veil.log"; then
        wait "$veil_pid" 2>/dev/null
        veil_pid=
        reason=$(grep -m1 "veil: error" "$work/veil.log" | sed 's/^veil: error: //')
        fail snp-host "${reason:-veil did not launch the guest; see its log}"
        not_run report "no SNP guest to ask"
    else
        pass snp-host "$(grep -m1 "launch digest" "$work/veil.log" | sed 's/^veil: //')"
        if [[ $firmware == model ]]; then
            # The model writes its report at launch; the guest itself proves nothing here.
            nonce_bound=0
            [[ -s $report ]] && pass report "the INSECURE model firmware's report, made at launch" && got_report=1 ||
                fail report "the model wrote no report"
        elif src=$("$attest" --hybrid-vsock "$work/vsock.sock" --report-data "$nonce" --wait 300 -o "$report" 2>&1); then
            pass report "fetched by the agent inside the guest (backend $src)"
            got_report=1
        else
            fail report "$src (console: $(tail -c 300 "$work/console.log" 2>/dev/null | tr '\n' ' '))"
        fi
    fi
fi

# 4. Check the report.
field() { # hex of LEN bytes at OFFSET of the report
    od -An -v -tx1 -j "$1" -N "$2" "$report" | tr -d ' \n'
}
le_u64() { # a little-endian u64 at OFFSET, as 0x...
    local hex
    hex=$(od -An -v -tx1 -j "$1" -N 8 "$report" | tr -d '\n' | awk '{for (i = NF; i > 0; i--) printf "%s", $i}')
    printf '%#x' "$((16#$hex))"
}
if ((got_report)); then
    if [[ -n $public_key ]]; then
        key_args=(--public-key "$public_key")
        what="signed by the key in $public_key (INSECURE: no AMD chain)"
    elif [[ $firmware == model ]]; then
        key_args=(--public-key "$report.pub.pem")
        what="signed by the model's own key (INSECURE: no AMD chain)"
    elif [[ -n $vcek ]]; then
        key_args=(--vcek "$vcek")
        [[ -n $generation ]] && key_args+=(--generation "$generation")
        what="VCEK -> ASK -> ARK"
    fi
    if [[ -z ${key_args+set} ]]; then
        chip=$(field 0x1a0 64)
        tcb=$(od -An -v -tu1 -j 0x180 -N 8 "$report" | awk '{printf "blSPL=%d&teeSPL=%d&snpSPL=%d&ucodeSPL=%d", $1, $2, $7, $8}')
        fail signature "no VCEK given (--vcek FILE); AMD's KDS serves this chip's: https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/$chip?$tcb"
    elif out=$("$veil" report verify --report "$report" "${key_args[@]}" 2>&1); then
        pass signature "$what"
    else
        fail signature "$(tr '\n' ' ' <<<"$out")"
    fi

    measurement=$(field 0x90 48)
    sig=$(grep -m1 -o "vCPU signature 0x[0-9a-f]*" "$work/veil.log" 2>/dev/null | cut -d' ' -f3)
    [[ -z $sig ]] && sig=$given_sig
    if [[ -z $sig ]]; then
        # No launch here (--agent-unix): this host's own CPUID signature.
        sig=$(awk -F': ' '/^cpu family/ {f=$2} /^model\t/ {m=$2} /^stepping/ {s=$2} END {
            bf = f > 15 ? 15 : f; ef = f > 15 ? f - 15 : 0
            printf "0x%x", ef * 1048576 + int(m / 16) * 65536 + bf * 256 + (m % 16) * 16 + s }' /proc/cpuinfo)
    fi
    expected=$("$veil" measure --igvm "$igvm" --vcpus "$vcpus" --vcpu-sig "$sig" 2>&1)
    published=$(tr -d ' \n' <"$manifest" | grep -o "{\"vcpus\":$vcpus,[^}]*\"vcpu_sig\":\"0x0*${sig#0x}\",\"measurement\":\"[0-9a-f]*\"" |
        sed 's/.*"measurement":"\([0-9a-f]*\)"/\1/')
    if [[ $measurement != "$expected" ]]; then
        fail measurement "$measurement in the report, veil measure --igvm gives $expected ($vcpus vCPUs, signature $sig)"
    elif [[ -n $published && $published != "$expected" ]]; then
        fail measurement "matches veil measure, but the manifest publishes $published for $vcpus vCPUs, signature $sig"
    else
        pass measurement "$measurement = veil measure --igvm ($vcpus vCPUs, signature $sig)${published:+ = manifest}"
    fi

    actual=$(field 0xc0 32)
    [[ $actual == "$host_data" ]] && pass host-data "$actual = SHA-256 of the policy" ||
        fail host-data "$actual in the report, the policy's SHA-256 is $host_data"

    want_policy=$(sed -n 's/.*"policy": "\(0x[0-9a-f]*\)".*/\1/p' "$manifest")
    actual=$(le_u64 0x08)
    [[ $actual == "$want_policy" ]] && pass guest-policy "$actual" ||
        fail guest-policy "$actual in the report, the manifest says $want_policy"

    actual=$(field 0x50 64)
    if ((nonce_bound == 0)); then
        not_run report-data "the report was not made on request with a nonce (--nonce)"
    elif [[ $actual == "$nonce"* ]]; then
        pass report-data "the nonce (a fresh report)"
    else
        fail report-data "$actual in the report, the nonce was $nonce"
    fi
else
    for check in signature measurement host-data guest-policy report-data; do
        not_run "$check" "no report"
    done
fi

((failed == 0)) && echo "snp-host-check: all checks passed" || echo "snp-host-check: some checks did not pass"
exit "$failed"
