//! Attestation reports: model-signed round trip, tamper detection naming the field, malformed
//! input, layout cross-checked with the `sev` crate, and a real Milan report with its VCEK.

use std::path::PathBuf;

use veil_snp::firmware::model::InsecureModelFirmware;
use veil_snp::firmware::{LaunchFinish, LaunchFirmware};
use veil_snp::report::{
    vcek_verifying_key, verify_report, AttestationReport, Expected, Generation, Problem,
    ReportBody, ReportError, VerifyError, REPORT_SIZE,
};
use veil_snp::vmsa::{Vmsa, RESET_EIP};
use veil_snp::{GuestPolicy, PageType};

fn model_report() -> (InsecureModelFirmware, AttestationReport, Expected) {
    let mut model = InsecureModelFirmware::new();
    model.launch_start(GuestPolicy::default()).unwrap();
    model
        .launch_update(0x10_0000, PageType::Normal, &mut vec![0x42; 0x3000])
        .unwrap();
    let finish = LaunchFinish {
        host_data: [0xab; 32],
        ..LaunchFinish::default()
    };
    model
        .launch_finish(&[Vmsa::qemu_reset(RESET_EIP, 1, 0xa00f11)], &finish)
        .unwrap();
    let report = model.attestation_report([0x11; 64], 0).unwrap();
    let expected = Expected {
        measurement: Some(model.launch_digest().bytes()),
        host_data: Some([0xab; 32]),
        policy: Some(0x30000),
    };
    (model, report, expected)
}

fn problems(err: VerifyError) -> Vec<Problem> {
    match err {
        VerifyError::Rejected(p) => p,
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn model_signed_report_round_trips_and_verifies() {
    let (model, report, expected) = model_report();
    let reparsed = AttestationReport::parse(report.as_bytes()).unwrap();
    assert_eq!(reparsed, report);
    assert_eq!(
        reparsed.body().to_signed_bytes()[..],
        report.signed_bytes()[..]
    );
    verify_report(&reparsed, &model.verifying_key(), &expected).unwrap();
}

#[test]
fn flipping_any_measured_field_byte_names_the_field() {
    let (model, report, expected) = model_report();
    let key = model.verifying_key();
    for (field, start, len) in [
        ("measurement", 0x90, 48),
        ("host_data", 0xc0, 32),
        ("policy", 0x08, 8),
    ] {
        for at in start..start + len {
            let mut bytes = *report.as_bytes();
            bytes[at] ^= 0x01;
            let tampered = AttestationReport::parse(&bytes).unwrap();
            let err = verify_report(&tampered, &key, &expected).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{field} mismatch")),
                "byte {at:#x}: {msg}"
            );
            assert!(msg.contains("signature"), "byte {at:#x}: {msg}");
            let found = problems(err);
            assert_eq!(found.len(), 2, "byte {at:#x}: {found:?}");
        }
    }
}

#[test]
fn flipping_any_signature_byte_fails_on_the_signature_alone() {
    let (model, report, expected) = model_report();
    let key = model.verifying_key();
    for at in 0x2a0..0x2a0 + 144 {
        let mut bytes = *report.as_bytes();
        bytes[at] ^= 0x80;
        let tampered = AttestationReport::parse(&bytes).unwrap();
        let found = problems(verify_report(&tampered, &key, &expected).unwrap_err());
        assert_eq!(found.len(), 1, "byte {at:#x}: {found:?}");
        assert!(matches!(found[0], Problem::Signature(_)), "byte {at:#x}");
    }
}

#[test]
fn wrong_expectations_are_each_named() {
    let (model, report, _) = model_report();
    let expected = Expected {
        measurement: Some([0; 48]),
        host_data: Some([0; 32]),
        policy: Some(0x31000),
    };
    let found = problems(verify_report(&report, &model.verifying_key(), &expected).unwrap_err());
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(matches!(found[0], Problem::Measurement { .. }));
    assert!(matches!(found[1], Problem::HostData { .. }));
    assert_eq!(
        found[2],
        Problem::Policy {
            expected: 0x31000,
            actual: 0x30000
        }
    );
}

#[test]
fn malformed_reports_are_rejected() {
    let (_, report, _) = model_report();
    let bytes = report.as_bytes().to_vec();
    assert_eq!(
        AttestationReport::parse(&bytes[..REPORT_SIZE - 1]),
        Err(ReportError::Size(REPORT_SIZE - 1))
    );
    assert_eq!(AttestationReport::parse(&[]), Err(ReportError::Size(0)));
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        AttestationReport::parse(&long),
        Err(ReportError::Size(REPORT_SIZE + 1))
    );
    for version in [0u32, 1, 6, 0xffff_ffff] {
        let mut b = bytes.clone();
        b[0..4].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            AttestationReport::parse(&b),
            Err(ReportError::Version(version))
        );
    }
    for algo in [0u32, 2, 0x100] {
        let mut b = bytes.clone();
        b[0x34..0x38].copy_from_slice(&algo.to_le_bytes());
        let err = AttestationReport::parse(&b).unwrap_err();
        assert_eq!(err, ReportError::Algorithm(algo));
        assert!(err.to_string().contains("algorithm"));
    }
    // Non-zero bytes above the 48 a P-384 scalar uses are a signature failure, not a panic.
    let (model, _, expected) = model_report();
    let mut b = bytes;
    b[0x2a0 + 60] = 1;
    let r = AttestationReport::parse(&b).unwrap();
    assert!(verify_report(&r, &model.verifying_key(), &expected).is_err());
}

#[test]
fn layout_agrees_with_the_sev_crate() {
    use sev::firmware::guest::AttestationReport as SevReport;
    use sev::parser::ByteParser;
    let body = ReportBody {
        version: 3,
        guest_svn: 0x0102_0304,
        policy: 0x30000,
        family_id: [1; 16],
        image_id: [2; 16],
        vmpl: 1,
        report_data: [3; 64],
        measurement: [4; 48],
        host_data: [5; 32],
        id_key_digest: [6; 48],
        author_key_digest: [7; 48],
        report_id: [8; 32],
        report_id_ma: [9; 32],
        cpuid_fms: [0x19, 0x01, 0x01],
        chip_id: [10; 64],
        current_version: [5, 55, 1],
        ..ReportBody::default()
    };
    let ours = AttestationReport::from_parts(&body, &[0x21; 72], &[0x22; 72]).unwrap();
    let theirs = SevReport::from_bytes(ours.as_bytes()).unwrap();
    assert_eq!(theirs.version, 3);
    assert_eq!(theirs.guest_svn, body.guest_svn);
    assert_eq!(theirs.family_id, body.family_id);
    assert_eq!(theirs.image_id, body.image_id);
    assert_eq!(theirs.vmpl, 1);
    assert_eq!(theirs.sig_algo, 1);
    assert_eq!(theirs.report_data, body.report_data);
    assert_eq!(theirs.measurement, body.measurement);
    assert_eq!(theirs.host_data, body.host_data);
    assert_eq!(theirs.id_key_digest, body.id_key_digest);
    assert_eq!(theirs.author_key_digest, body.author_key_digest);
    assert_eq!(theirs.report_id, body.report_id);
    assert_eq!(theirs.report_id_ma, body.report_id_ma);
    assert_eq!(theirs.chip_id, body.chip_id);
    assert_eq!(theirs.cpuid_fam_id, Some(0x19));
    assert_eq!(theirs.cpuid_mod_id, Some(0x01));
    // Re-encoding with sev gives back our bytes exactly.
    assert_eq!(theirs.to_bytes().unwrap()[..], ours.as_bytes()[..]);
}

/// The `sev` crate ships a real Milan report and its VCEK as test data; it is present in
/// the cargo registry wherever this crate's dependencies were fetched.
fn sev_test_data() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let src = home.join("registry").join("src");
    std::fs::read_dir(src).ok()?.flatten().find_map(|index| {
        let dir = index
            .path()
            .join("sev-8.0.0")
            .join("tests")
            .join("certs_data");
        dir.join("report_milan.hex").exists().then_some(dir)
    })
}

#[test]
fn real_milan_report_verifies_through_the_vcek_chain() {
    let Some(dir) = sev_test_data() else {
        println!("skipped: the sev-8.0.0 crate source (its Milan test report) is not in the cargo registry");
        return;
    };
    let hex_text = std::fs::read_to_string(dir.join("report_milan.hex")).unwrap();
    let clean: String = hex_text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let bytes = hex::decode(&clean).unwrap();
    let report = AttestationReport::parse(&bytes).unwrap();
    let vcek = std::fs::read(dir.join("vcek_milan.der")).unwrap();
    let (key, generation) = vcek_verifying_key(&vcek, None).unwrap();
    assert_eq!(generation, Generation::Milan);
    verify_report(&report, &key, &Expected::default()).unwrap();
    // The same VCEK checked against Genoa's roots is refused, naming the generation.
    let err = vcek_verifying_key(&vcek, Some(Generation::Genoa)).unwrap_err();
    assert!(err.to_string().contains("Genoa"), "{err}");
    // A changed measurement breaks the real signature.
    let mut tampered = bytes.clone();
    tampered[0x90] ^= 1;
    let tampered = AttestationReport::parse(&tampered).unwrap();
    let expected = Expected {
        measurement: Some(report.measurement()),
        ..Expected::default()
    };
    let msg = verify_report(&tampered, &key, &expected)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("signature") && msg.contains("measurement"),
        "{msg}"
    );
}

#[test]
fn non_certificates_and_foreign_certificates_are_refused() {
    let err = vcek_verifying_key(b"not a certificate", None).unwrap_err();
    assert!(matches!(err, VerifyError::BadCertificate(_)), "{err}");
    // An ASK is not signed by itself: the chain check fails for every generation.
    let err = vcek_verifying_key(sev::certs::snp::builtin::milan::ASK, None).unwrap_err();
    let msg = err.to_string();
    for g in ["Milan", "Genoa", "Turin"] {
        assert!(msg.contains(g), "{msg}");
    }
}
