//! The functions behind `veil measure` and `veil report verify`.

// veil-snp's reference implementations (Python sev-snp-measure and friends), shared rather
// than copied.
#[path = "../../snp/tests/reference/mod.rs"]
mod reference;

use std::path::PathBuf;

use veil_cli::snp::{run_measure, run_report_verify, MeasureArgs, ReportVerifyArgs};
use veil_snp::firmware::model::InsecureModelFirmware;
use veil_snp::firmware::{LaunchFinish, LaunchFirmware};
use veil_snp::vmsa::{Vmsa, RESET_EIP};
use veil_snp::{GuestPolicy, PageType};

#[test]
fn measure_ovmf_equals_sev_snp_measure() {
    let ovmf = "/usr/share/OVMF/OVMF_CODE.fd";
    assert!(
        std::path::Path::new(ovmf).exists(),
        "{ovmf} missing: install the Debian package `ovmf`"
    );
    let args = MeasureArgs {
        ovmf: Some(PathBuf::from(ovmf)),
        igvm: None,
        vcpus: 8,
        vcpu_type: Some("EPYC-Genoa".into()),
        vcpu_sig: None,
        guest_features: 0x1,
        kernel: None,
        initrd: None,
        append: None,
    };
    let ours = run_measure(&args).unwrap();
    let reference = reference::run_cli(&[
        "--mode",
        "snp",
        "--ovmf",
        ovmf,
        "--vcpus",
        "8",
        "--vcpu-type",
        "EPYC-Genoa",
    ]);
    assert_eq!(ours, reference);
    assert_eq!(ours.len(), 96);
    assert!(ours
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
}

struct Fixture {
    dir: tempfile::TempDir,
    report: PathBuf,
    key: PathBuf,
    measurement: String,
}

fn fixture() -> Fixture {
    let mut model = InsecureModelFirmware::new();
    model.launch_start(GuestPolicy::default()).unwrap();
    model
        .launch_update(0, PageType::Normal, &mut vec![3; 0x2000])
        .unwrap();
    model
        .launch_finish(
            &[Vmsa::qemu_reset(RESET_EIP, 1, 0xa00f11)],
            &LaunchFinish {
                host_data: [0x5c; 32],
                ..LaunchFinish::default()
            },
        )
        .unwrap();
    let report = model.attestation_report([0; 64], 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.bin");
    std::fs::write(&report_path, report.as_bytes()).unwrap();
    let key = dir.path().join("model.pem");
    std::fs::write(&key, model.public_key_pem().unwrap()).unwrap();
    Fixture {
        measurement: model.launch_digest().hex(),
        dir,
        report: report_path,
        key,
    }
}

fn args(f: &Fixture) -> ReportVerifyArgs {
    ReportVerifyArgs {
        report: f.report.clone(),
        measurement: Some(f.measurement.clone()),
        host_data: Some(hex::encode([0x5c; 32])),
        policy: Some("0x30000".into()),
        vcek: None,
        generation: None,
        public_key: Some(f.key.clone()),
    }
}

#[test]
fn report_verify_accepts_the_model_report() {
    let f = fixture();
    let out = run_report_verify(&args(&f)).unwrap();
    assert!(out.contains("verified"), "{out}");
    assert!(out.contains(&f.measurement), "{out}");
}

#[test]
fn report_verify_names_each_mismatch() {
    let f = fixture();
    let mut a = args(&f);
    a.host_data = Some(hex::encode([0; 32]));
    a.policy = Some("0x31000".into());
    let err = run_report_verify(&a).unwrap_err().to_string();
    assert!(err.contains("host_data mismatch"), "{err}");
    assert!(err.contains("policy mismatch"), "{err}");
    assert!(!err.contains("measurement mismatch"), "{err}");

    let mut bytes = std::fs::read(&f.report).unwrap();
    bytes[0x95] ^= 0xff;
    let tampered = f.dir.path().join("tampered.bin");
    std::fs::write(&tampered, &bytes).unwrap();
    let mut a = args(&f);
    a.report = tampered;
    let err = run_report_verify(&a).unwrap_err().to_string();
    assert!(
        err.contains("measurement mismatch") && err.contains("signature"),
        "{err}"
    );
}

#[test]
fn report_verify_rejects_bad_inputs_without_panicking() {
    let f = fixture();
    let short = f.dir.path().join("short.bin");
    std::fs::write(&short, [0u8; 100]).unwrap();
    let mut a = args(&f);
    a.report = short;
    let err = run_report_verify(&a).unwrap_err().to_string();
    assert!(err.contains("100 bytes"), "{err}");

    let mut a = args(&f);
    a.measurement = Some("abcd".into());
    let err = run_report_verify(&a).unwrap_err().to_string();
    assert!(
        err.contains("--measurement") && err.contains("48 bytes"),
        "{err}"
    );

    let mut a = args(&f);
    a.public_key = None;
    assert!(run_report_verify(&a)
        .unwrap_err()
        .to_string()
        .contains("--vcek or --public-key"));

    let mut a = args(&f);
    a.public_key = Some(f.report.clone());
    assert!(run_report_verify(&a)
        .unwrap_err()
        .to_string()
        .contains("not a P-384 public key"));

    let mut a = args(&f);
    a.public_key = None;
    a.vcek = Some(f.key.clone());
    let err = run_report_verify(&a).unwrap_err().to_string();
    assert!(err.contains("VCEK"), "{err}");
}

#[test]
fn measure_with_a_raw_signature_equals_sev_snp_measure() {
    let ovmf = "/usr/share/OVMF/OVMF_CODE.fd";
    let args = MeasureArgs {
        ovmf: Some(PathBuf::from(ovmf)),
        igvm: None,
        vcpus: 3,
        vcpu_type: None,
        vcpu_sig: Some(0x00a1_0f11),
        guest_features: 0x1,
        kernel: None,
        initrd: None,
        append: None,
    };
    let ours = run_measure(&args).unwrap();
    let reference = reference::run_cli(&[
        "--mode",
        "snp",
        "--ovmf",
        ovmf,
        "--vcpus",
        "3",
        "--vcpu-sig",
        "0xa10f11",
    ]);
    assert_eq!(ours, reference);
}
