//! Launch digests and VMSA pages compared byte for byte with `sev-snp-measure`.

mod reference;

use reference::{run_cli, run_python};
use veil_snp::ovmf::{ovmf_launch_digest, Ovmf, DEFAULT_GUEST_FEATURES};
use veil_snp::vmsa::{Vmsa, RESET_EIP};
use veil_snp::{LaunchDigest, PageType};

/// Feeds one operation per stdin line ("TYPE GPA HEXDATA" or "TYPE GPA LEN") to gctx.GCTX.
const GCTX_SCRIPT: &str = r#"
import sys
from sevsnpmeasure.gctx import GCTX
g = GCTX()
for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    kind, gpa = parts[0], int(parts[1], 16)
    if kind == "normal":
        g.update_normal_pages(gpa, bytes.fromhex(parts[2]))
    elif kind == "vmsa":
        g.update_vmsa_page(bytes.fromhex(parts[2]))
    elif kind == "zero":
        g.update_zero_pages(gpa, int(parts[2], 16))
    elif kind == "unmeasured":
        g.update_unmeasured_pages(gpa, int(parts[2], 16))
    elif kind == "secrets":
        g.update_secrets_page(gpa)
    elif kind == "cpuid":
        g.update_cpuid_page(gpa)
    else:
        raise SystemExit("bad op " + kind)
print(g.hex_ld())
"#;

/// Deterministic page contents that differ per page and per seed.
fn pattern(pages: usize, seed: u8) -> Vec<u8> {
    (0..pages * 4096)
        .map(|i| ((i / 4096) as u8).wrapping_mul(31) ^ (i as u8).wrapping_add(seed))
        .collect()
}

/// Applies `ops` to a Veil digest and produces the same script for the reference.
fn both(ops: &[(PageType, u64, Vec<u8>)]) -> (String, String) {
    let mut ld = LaunchDigest::new();
    let mut script = String::new();
    for (page_type, gpa, data) in ops {
        ld.update(*page_type, *gpa, data).unwrap();
        let line = match page_type {
            PageType::Normal => format!("normal {gpa:x} {}", hex::encode(data)),
            PageType::Vmsa => format!("vmsa {gpa:x} {}", hex::encode(data)),
            PageType::Zero => format!("zero {gpa:x} {:x}", data.len()),
            PageType::Unmeasured => format!("unmeasured {gpa:x} {:x}", data.len()),
            PageType::Secrets => format!("secrets {gpa:x}"),
            PageType::Cpuid => format!("cpuid {gpa:x}"),
        };
        script.push_str(&line);
        script.push('\n');
    }
    (ld.hex(), run_python(GCTX_SCRIPT, &script))
}

#[test]
fn every_page_type_at_several_gpas_matches_gctx() {
    let vmsa = Vmsa::qemu_reset(RESET_EIP, 1, 0x00a0_0f11).to_page();
    let ops = vec![
        (PageType::Normal, 0x0, pattern(3, 1)),
        (PageType::Zero, 0x10_0000, vec![0; 0x3000]),
        (PageType::Normal, 0xffe0_0000, pattern(1, 2)),
        (PageType::Unmeasured, 0x80_0000, vec![0; 0x2000]),
        (PageType::Secrets, 0x80_d000, vec![0; 0x1000]),
        (PageType::Cpuid, 0x80_e000, vec![0; 0x1000]),
        (PageType::Normal, 0x1_0000_0000, pattern(2, 3)),
        (PageType::Zero, 0xf_ffff_f000, vec![0; 0x1000]),
        (PageType::Vmsa, veil_snp::VMSA_GPA, vmsa.clone()),
        (PageType::Vmsa, veil_snp::VMSA_GPA, vmsa),
    ];
    let (veil, reference) = both(&ops);
    assert_eq!(veil.len(), 96);
    assert_eq!(veil, reference);
}

#[test]
fn each_page_type_alone_matches_gctx() {
    for (page_type, gpa) in [
        (PageType::Normal, 0x7000),
        (PageType::Zero, 0x2000),
        (PageType::Unmeasured, 0x9_9000),
        (PageType::Secrets, 0x5000),
        (PageType::Cpuid, 0x6000),
        (PageType::Vmsa, veil_snp::VMSA_GPA),
    ] {
        let (veil, reference) = both(&[(page_type, gpa, pattern(1, 9))]);
        assert_eq!(veil, reference, "{page_type} at {gpa:#x}");
    }
}

#[test]
fn large_parallel_range_matches_gctx() {
    // Big enough to take the multi-threaded hashing path.
    let (veil, reference) = both(&[(PageType::Normal, 0x20_0000, pattern(600, 7))]);
    assert_eq!(veil, reference);
}

#[test]
fn vmsa_pages_match_reference_layout() {
    let script = r#"
import sys
from sevsnpmeasure.vmsa import VMSA
eip, features, sig = (int(x, 16) for x in sys.stdin.read().split())
print(bytes(VMSA.build_save_area(eip, features, sig)).hex())
"#;
    for (eip, features, sig) in [
        (RESET_EIP, 0x1, 0x0080_0f12),
        (0x0080_b004, 0x1, 0x00a0_0f11),
        (0xffff_b000, 0x21, 0x00a1_0f10),
    ] {
        let reference = run_python(script, &format!("{eip:x} {features:x} {sig:x}"));
        let veil = hex::encode(Vmsa::qemu_reset(eip, features, sig).to_page());
        assert_eq!(
            veil, reference,
            "eip {eip:#x} features {features:#x} sig {sig:#x}"
        );
    }
}

const OVMF: &str = "/usr/share/OVMF/OVMF_CODE.fd";

fn ovmf_image() -> Vec<u8> {
    std::fs::read(OVMF)
        .unwrap_or_else(|e| panic!("{OVMF}: {e}; install the Debian package `ovmf` for this test"))
}

#[test]
fn ovmf_digest_matches_sev_snp_measure() {
    let image = ovmf_image();
    for (vcpus, vcpu_type) in [
        (1, "EPYC-v4"),
        (2, "EPYC-Milan"),
        (4, "EPYC-Genoa"),
        (3, "EPYC-Rome"),
    ] {
        let veil =
            ovmf_launch_digest(&image, vcpus, vcpu_type, DEFAULT_GUEST_FEATURES, None).unwrap();
        let n = vcpus.to_string();
        let reference = run_cli(&[
            "--mode",
            "snp",
            "--ovmf",
            OVMF,
            "--vcpus",
            &n,
            "--vcpu-type",
            vcpu_type,
        ]);
        assert_eq!(hex::encode(veil), reference, "{vcpus} x {vcpu_type}");
    }
}

#[test]
fn ovmf_guest_features_match_sev_snp_measure() {
    let image = ovmf_image();
    let veil = ovmf_launch_digest(&image, 2, "EPYC-Milan", 0x21, None).unwrap();
    let reference = run_cli(&[
        "--mode",
        "snp",
        "--ovmf",
        OVMF,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--guest-features",
        "0x21",
    ]);
    assert_eq!(hex::encode(veil), reference);
    assert_ne!(
        veil,
        ovmf_launch_digest(&image, 2, "EPYC-Milan", DEFAULT_GUEST_FEATURES, None).unwrap()
    );
}

#[test]
fn ovmf_firmware_prefix_matches_snp_ovmf_hash() {
    // The digest after the firmware volume alone, as `--mode snp:ovmf-hash` computes it.
    let image = ovmf_image();
    let ovmf = Ovmf::parse(&image).unwrap();
    let mut ld = LaunchDigest::new();
    ld.update_normal(ovmf.gpa(), &image).unwrap();
    let reference = run_cli(&["--mode", "snp:ovmf-hash", "--ovmf", OVMF]);
    assert_eq!(ld.hex(), reference);
}

/// GUID text -> firmware (mixed-endian) bytes.
fn guid_le(text: &str) -> Vec<u8> {
    let b = hex::decode(text.replace('-', "")).unwrap();
    [
        &[b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]][..],
        &b[8..],
    ]
    .concat()
}

/// An OVMF-like image with SEV metadata including a kernel hashes section, as AmdSev builds
/// of OVMF have, and the footer entries pointing at it.
fn ovmf_with_kernel_hashes(hash_table_gpa: u32) -> Vec<u8> {
    let mut img: Vec<u8> = (0..0x10000usize).map(|i| (i % 253) as u8).collect();
    let items: [(u32, u32, u32); 4] = [
        (0x80_0000, 0x2000, 1),
        (0x80_2000, 0x1000, 2),
        (0x80_3000, 0x1000, 3),
        (0x80_4000, 0x1000, 0x10),
    ];
    let meta_at = 0x8000;
    let mut meta = b"ASEV".to_vec();
    meta.extend_from_slice(&((16 + items.len() * 12) as u32).to_le_bytes());
    meta.extend_from_slice(&1u32.to_le_bytes());
    meta.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for (gpa, size, kind) in items {
        for v in [gpa, size, kind] {
            meta.extend_from_slice(&v.to_le_bytes());
        }
    }
    img[meta_at..meta_at + meta.len()].copy_from_slice(&meta);
    let mut table = Vec::new();
    let mut entry = |data: &[u8], guid: &str| {
        table.extend_from_slice(data);
        table.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&guid_le(guid));
    };
    entry(
        &((0x10000 - meta_at) as u32).to_le_bytes(),
        "dc886566-984a-4798-a75e-5585a7bf67cc",
    );
    entry(
        &0x0080_b004u32.to_le_bytes(),
        "00f771de-1a7e-4fcb-890e-68c77e2fb44e",
    );
    let mut hash_entry = hash_table_gpa.to_le_bytes().to_vec();
    hash_entry.extend_from_slice(&0x400u32.to_le_bytes());
    entry(&hash_entry, "7255371f-3a3b-4b04-927b-1da6efa8d454");
    let footer_len = (table.len() + 18) as u16;
    table.extend_from_slice(&footer_len.to_le_bytes());
    table.extend_from_slice(&guid_le("96b582de-1fb2-45f7-baea-a366c55a082d"));
    let end = img.len() - 32;
    img[end - table.len()..end].copy_from_slice(&table);
    img
}

#[test]
fn direct_kernel_boot_hashes_match_sev_snp_measure() {
    use veil_snp::ovmf::KernelHashes;
    let dir = tempfile::tempdir().unwrap();
    let kernel: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let initrd: Vec<u8> = (0..50_000u32).map(|i| (i * 13) as u8).collect();
    let kernel_path = dir.path().join("vmlinuz");
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&kernel_path, &kernel).unwrap();
    std::fs::write(&initrd_path, &initrd).unwrap();
    for (table_gpa, with_initrd, append) in [
        (0x80_4c00u32, true, Some("console=ttyS0 root=/dev/vda")),
        (0x80_4000, false, None),
    ] {
        let image = ovmf_with_kernel_hashes(table_gpa);
        let ovmf_path = dir.path().join("OVMF.fd");
        std::fs::write(&ovmf_path, &image).unwrap();
        let hashes = KernelHashes::new(&kernel, with_initrd.then_some(&initrd[..]), append);
        let veil = ovmf_launch_digest(&image, 2, "EPYC-Milan", 1, Some(&hashes)).unwrap();
        let mut args = vec![
            "--mode".to_string(),
            "snp".into(),
            "--ovmf".into(),
            ovmf_path.display().to_string(),
            "--vcpus".into(),
            "2".into(),
            "--vcpu-type".into(),
            "EPYC-Milan".into(),
            "--kernel".into(),
            kernel_path.display().to_string(),
        ];
        if with_initrd {
            args.extend(["--initrd".into(), initrd_path.display().to_string()]);
        }
        if let Some(a) = append {
            args.extend(["--append".into(), a.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(hex::encode(veil), run_cli(&refs), "table at {table_gpa:#x}");
        // Without a kernel the section is a ZERO page, on both sides.
        let plain = ovmf_launch_digest(&image, 2, "EPYC-Milan", 1, None).unwrap();
        let reference = run_cli(&refs[..8]);
        assert_eq!(hex::encode(plain), reference);
        assert_ne!(plain, veil);
    }
}

#[test]
fn kernel_with_an_ovmf_lacking_the_section_is_refused() {
    use veil_snp::ovmf::{KernelHashes, OvmfError};
    let image = ovmf_image();
    let hashes = KernelHashes::new(b"kernel", None, None);
    assert!(matches!(
        ovmf_launch_digest(&image, 1, "EPYC-v4", 1, Some(&hashes)),
        Err(OvmfError::NoKernelHashesSection)
    ));
}

/// The `sev` crate's measurement module is a second reference, in Rust, without python.
#[test]
fn ovmf_digest_matches_the_sev_crate() {
    use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
    use sev::measurement::vcpu_types::CpuType;
    let image = ovmf_image();
    for (vcpus, vcpu_type) in [
        (1, "EPYC-v4"),
        (2, "EPYC-Milan"),
        (5, "EPYC-Genoa"),
        (2, "EPYC-Turin-v2"),
    ] {
        let theirs = snp_calc_launch_digest(SnpMeasurementArgs {
            vcpus,
            vcpu_type: CpuType::try_from(vcpu_type).unwrap(),
            ovmf_file: OVMF.into(),
            guest_features: Default::default(),
            kernel_file: None,
            initrd_file: None,
            append: None,
            ovmf_hash_str: None,
            vmm_type: None,
        })
        .unwrap();
        let theirs: Vec<u8> = theirs.try_into().unwrap();
        let ours =
            ovmf_launch_digest(&image, vcpus, vcpu_type, DEFAULT_GUEST_FEATURES, None).unwrap();
        assert_eq!(ours.to_vec(), theirs, "{vcpus} x {vcpu_type}");
    }
}
