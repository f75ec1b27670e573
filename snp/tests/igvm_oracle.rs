//! `veil measure --igvm` against an oracle that shares no code with Veil: the file's
//! directives are read with the `igvm` crate, typed by the IGVM specification's rules (a page
//! without data is a NORMAL page of zeros), and measured by `sev-snp-measure`'s `gctx`, with
//! the BSP's VMSA taken from the file's bytes and the APs' VMSAs built by `sev-snp-measure`.
//!
//! It also checks the rules KVM imposes on an IGVM file that `igvmmeasure --check-kvm`
//! checks: one VP context, at GPA 0xFFFFFFFFF000, after every page directive.

mod reference;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use igvm::{IgvmDirectiveHeader, IgvmFile, IsolationType};
use igvm_defs::IgvmPageDataType;
use reference::run_python;
use veil_snp::igvm::{build_igvm, load_igvm, BuildInput};
use zerocopy::IntoBytes;

/// One operation per stdin line, applied to a `gctx.GCTX`:
/// `normal GPA HEX`, `zeros GPA PAGES`, `unmeasured GPA`, `secrets GPA`, `cpuid GPA`,
/// `vmsa HEX`, `aps EIP FEATURES SIG COUNT` (AP VMSAs built by `sev-snp-measure`).
const ORACLE: &str = r#"
import sys
from sevsnpmeasure.gctx import GCTX
from sevsnpmeasure.vmsa import VMSA
g = GCTX()
for line in sys.stdin:
    p = line.split()
    if not p:
        continue
    op = p[0]
    if op == "normal":
        g.update_normal_pages(int(p[1], 16), bytes.fromhex(p[2]))
    elif op == "zeros":
        g.update_normal_pages(int(p[1], 16), bytes(4096 * int(p[2])))
    elif op == "unmeasured":
        g.update_unmeasured_pages(int(p[1], 16), 4096)
    elif op == "secrets":
        g.update_secrets_page(int(p[1], 16))
    elif op == "cpuid":
        g.update_cpuid_page(int(p[1], 16))
    elif op == "vmsa":
        g.update_vmsa_page(bytes.fromhex(p[1]))
    elif op == "aps":
        eip, features, sig, count = (int(x, 16) for x in p[1:])
        page = bytes(VMSA.build_save_area(eip, features, sig))
        for _ in range(count):
            g.update_vmsa_page(page)
    else:
        raise SystemExit("bad op " + op)
print(g.hex_ld())
"#;

/// The x86 reset vector, where KVM starts every AP that has no VP context of its own.
const AP_EIP: u32 = 0xffff_fff0;
/// The GPA KVM measures every VMSA at.
const KVM_VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
const SIG: u32 = 0x00a0_0f11; // EPYC-Milan

/// The oracle's script for `bytes`, before the APs: pages in file order, then the BSP VMSA.
/// Returns it with the BSP's SEV_FEATURES. Fails the test on any KVM rule the file breaks.
fn oracle_script(bytes: &[u8]) -> (String, u64) {
    let file = IgvmFile::new_from_binary(bytes, Some(IsolationType::Snp))
        .unwrap_or_else(|e| panic!("the igvm crate refuses the file: {e}"));
    let mut script = String::new();
    let mut zeros: Option<(u64, u64)> = None;
    let mut vmsa: Option<(Vec<u8>, u64)> = None;
    let flush = |script: &mut String, zeros: &mut Option<(u64, u64)>| {
        if let Some((gpa, n)) = zeros.take() {
            writeln!(script, "zeros {gpa:x} {n}").unwrap();
        }
    };
    for d in file.directives() {
        match d {
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                assert!(vmsa.is_none(), "page {gpa:#x} after the VP context");
                assert!(!flags.is_2mb_page() && !flags.shared(), "page {gpa:#x}");
                let gpa = *gpa;
                match *data_type {
                    IgvmPageDataType::NORMAL if flags.unmeasured() => {
                        flush(&mut script, &mut zeros);
                        writeln!(script, "unmeasured {gpa:x}").unwrap();
                    }
                    IgvmPageDataType::NORMAL if data.is_empty() => match &mut zeros {
                        Some((start, n)) if *start + *n * 4096 == gpa => *n += 1,
                        _ => {
                            flush(&mut script, &mut zeros);
                            zeros = Some((gpa, 1));
                        }
                    },
                    IgvmPageDataType::NORMAL => {
                        flush(&mut script, &mut zeros);
                        let mut page = data.clone();
                        page.resize(4096, 0);
                        writeln!(script, "normal {gpa:x} {}", hex::encode(&page)).unwrap();
                    }
                    IgvmPageDataType::SECRETS => {
                        flush(&mut script, &mut zeros);
                        writeln!(script, "secrets {gpa:x}").unwrap();
                    }
                    IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => {
                        flush(&mut script, &mut zeros);
                        writeln!(script, "cpuid {gpa:x}").unwrap();
                    }
                    other => panic!("page {gpa:#x}: unexpected data type {other:?}"),
                }
            }
            IgvmDirectiveHeader::SnpVpContext {
                gpa,
                vp_index,
                vmsa: context,
                ..
            } => {
                assert!(
                    vmsa.is_none(),
                    "more than one VP context (KVM sets only the BSP's)"
                );
                assert_eq!(*vp_index, 0);
                assert_eq!(
                    *gpa, KVM_VMSA_GPA,
                    "KVM measures the VMSA at 0xFFFFFFFFF000"
                );
                let mut page = context.as_bytes().to_vec();
                page.resize(4096, 0);
                vmsa = Some((page, context.sev_features.into_bits()));
            }
            IgvmDirectiveHeader::ParameterArea { .. } | IgvmDirectiveHeader::ParameterInsert(_) => {
                panic!("veil igvm build files have no parameter areas")
            }
            _ => {}
        }
    }
    flush(&mut script, &mut zeros);
    let (page, features) = vmsa.expect("the file has a VP context");
    writeln!(script, "vmsa {}", hex::encode(&page)).unwrap();
    (script, features)
}

fn oracle_digest(bytes: &[u8], vcpus: u32) -> String {
    let (mut script, features) = oracle_script(bytes);
    writeln!(
        script,
        "aps {AP_EIP:x} {features:x} {SIG:x} {:x}",
        vcpus - 1
    )
    .unwrap();
    run_python(ORACLE, &script)
}

/// What `veil measure --igvm PATH --vcpu-sig SIG` prints: the file's plan digest in hex.
fn veil_measure(path: &Path, vcpus: u32) -> String {
    let plan = load_igvm(&std::fs::read(path).unwrap()).unwrap();
    hex::encode(plan.launch_digest(vcpus, SIG).unwrap())
}

/// Builds the file, writes it, and compares both digests for 1, 2 and 4 vCPUs.
fn check(input: &BuildInput<'_>) {
    let built = build_igvm(input).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest.igvm");
    std::fs::write(&path, &built.bytes).unwrap();
    for vcpus in [1, 2, 4] {
        let ours = veil_measure(&path, vcpus);
        assert_eq!(ours.len(), 96);
        assert_eq!(ours, oracle_digest(&built.bytes, vcpus), "{vcpus} vCPUs");
    }
}

/// A minimal x86_64 ELF: one PT_LOAD of `text` at 16 MiB, zero-filled to 64 KiB.
fn tiny_elf(text: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 64 + 56];
    out[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&1u16.to_le_bytes());
    let fields = [
        (0, 1u64 | (5 << 32)),
        (8, 120),
        (16, 0xffff_ffff_8100_0000),
        (24, 0x100_0000),
        (32, text.len() as u64),
        (40, 0x1_0000),
    ];
    for (at, v) in fields {
        out[64 + at..64 + at + 8].copy_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(text);
    out
}

#[test]
fn synthetic_image_measures_the_same_in_the_oracle() {
    let text: Vec<u8> = (0..0x2800u32).map(|i| (i * 7 + 3) as u8).collect();
    let kernel = tiny_elf(&text);
    let initrd: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 | 1).collect();
    check(&BuildInput {
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: "console=ttyS0 acpi=off",
        mem_mib: 32,
        policy: 0x30000,
        c_bit: 51,
    });
}

/// The project's guest kernel and initramfs, as `guest/` builds them. Required under
/// `CI=true` (CI builds them first); elsewhere the test says what is missing and passes.
fn project_images() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let kernel = root.join("target/guest-kernel/vmlinux");
    let initrd = root.join("target/guest-initramfs/initramfs.cpio.gz");
    if kernel.exists() && initrd.exists() {
        return Some((kernel, initrd));
    }
    let missing = format!(
        "{} or {} missing: run guest/build-kernel.sh and guest/build-initramfs.sh",
        kernel.display(),
        initrd.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{missing}");
    eprintln!("skipping: {missing}");
    None
}

#[test]
fn project_pod_image_measures_the_same_in_the_oracle() {
    let Some((kernel, initrd)) = project_images() else {
        return;
    };
    let kernel = std::fs::read(kernel).unwrap();
    let initrd = std::fs::read(initrd).unwrap();
    check(&BuildInput {
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: "console=ttyS0 acpi=off",
        mem_mib: 256,
        policy: 0x30000,
        c_bit: 51,
    });
}
