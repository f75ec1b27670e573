//! The SEV-SNP side of the `veil` binary: refusing a host without SNP, and the digest and
//! report commands.

mod common;

use common::{assert_refused, stderr, stdout, veil};

fn host_has_snp() -> bool {
    std::path::Path::new("/dev/sev").exists()
}

#[test]
fn snp_launch_on_a_host_without_snp_names_what_is_missing() {
    if host_has_snp() {
        eprintln!("skipped: this host has /dev/sev, so the refusal cannot be observed here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let igvm = dir.path().join("guest.igvm");
    std::fs::write(&igvm, b"not even read: the host is checked first").unwrap();
    let uds = dir.path().join("v.sock");
    let out = veil(&[
        "run",
        "--igvm",
        igvm.to_str().unwrap(),
        "--snp",
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
    ]);
    assert_refused(&out, &["/dev/sev", "KVM_CAP_VM_TYPES", "SNP"]);
    assert!(
        !uds.exists(),
        "a refused SNP launch left its vsock socket behind"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("guest.igvm")]);
}

#[test]
fn snp_options_need_an_igvm_file() {
    let out = veil(&["run", "--kernel", "/bin/true", "--snp"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--igvm"), "{}", stderr(&out));
}

#[test]
fn measure_ovmf_matches_sev_snp_measure() {
    let ovmf = "/usr/share/OVMF/OVMF_CODE.fd";
    assert!(
        std::path::Path::new(ovmf).exists(),
        "{ovmf} missing: apt-get install ovmf"
    );
    let ours = veil(&[
        "measure",
        "--ovmf",
        ovmf,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
    ]);
    assert_eq!(ours.status.code(), Some(0), "{}", stderr(&ours));
    let reference = std::process::Command::new("sev-snp-measure")
        .args([
            "--mode",
            "snp",
            "--ovmf",
            ovmf,
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-Milan",
        ])
        .output()
        .expect("sev-snp-measure runs (pip install sev-snp-measure)");
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let digest = stdout(&ours).trim().to_string();
    assert_eq!(digest.len(), 96);
    assert!(digest
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(digest, String::from_utf8_lossy(&reference.stdout).trim());
}

#[test]
fn report_verify_rejects_a_malformed_report_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("short.bin");
    std::fs::write(&report, vec![0u8; 100]).unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, b"").unwrap();
    let out = veil(&[
        "report",
        "verify",
        "--report",
        report.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("veil: error: "),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
}
