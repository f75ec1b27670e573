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

/// Builds an IGVM from a test guest, with `veil igvm build`.
fn build_igvm(dir: &std::path::Path, kernel: &std::path::Path, name: &str) -> std::path::PathBuf {
    build_igvm_with(dir, kernel, name, &[])
}

/// `build_igvm` with further `veil igvm build` arguments.
fn build_igvm_with(
    dir: &std::path::Path,
    kernel: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> std::path::PathBuf {
    let igvm = dir.join(name);
    let mut args = vec![
        "igvm",
        "build",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0",
        "--mem-mib",
        "64",
        "-o",
        igvm.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = veil(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("measured bytes"), "{}", stdout(&out));
    igvm
}

/// `veil report verify` of a model report against the model's key written beside it
/// (`<report>.pub.pem`), with the expectations in `checks`.
fn verify_model_report(report: &std::path::Path, checks: &[&str]) -> std::process::Output {
    let mut key = report.as_os_str().to_owned();
    key.push(".pub.pem");
    let mut args = vec![
        "report",
        "verify",
        "--report",
        report.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(checks);
    veil(&args)
}

/// Runs the model launch and returns (digest, vCPU signature) from veil's report line.
fn model_launch(igvm: &std::path::Path, vcpus: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "run",
        "--igvm",
        igvm.to_str().unwrap(),
        "--snp-firmware",
        "model",
        "--mem-mib",
        "64",
        "--vcpus",
        vcpus,
    ];
    args.extend_from_slice(extra);
    let out = veil(&args);
    let err = stderr(&out);
    // The image is an SNP image (C-bit page tables): run as a normal VM it ends in a fault
    // the VMM reports; the launch before it is what this checks.
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("SNP launch digest (INSECURE model firmware)"))
        .expect("digest line");
    let digest = line
        .split("): ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let sig = line
        .split("vCPU signature ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    (digest, sig)
}

fn measure(igvm: &std::path::Path, vcpus: &str, sig: &str) -> String {
    let out = veil(&[
        "measure",
        "--igvm",
        igvm.to_str().unwrap(),
        "--vcpus",
        vcpus,
        "--vcpu-sig",
        sig,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn model_launch_digest_equals_measure_and_tracks_every_input() {
    let dir = tempfile::tempdir().unwrap();
    let guest = veil_tests::Guest::BootInfo.path();
    let igvm = build_igvm(dir.path(), guest, "guest.igvm");

    let (one, sig) = model_launch(&igvm, "1", &[]);
    assert_eq!(one.len(), 96);
    assert_eq!(measure(&igvm, "1", &sig), one);
    let (two, sig2) = model_launch(&igvm, "2", &[]);
    assert_eq!(measure(&igvm, "2", &sig2), two);
    assert_ne!(one, two, "one VMSA per vCPU is measured");

    // One byte of the guest's code changed: a different launch digest.
    let mut elf = std::fs::read(guest).unwrap();
    let code = 0x1000 + 0x10; // inside the first PT_LOAD segment's file data
    elf[code] ^= 0x01;
    let patched = dir.path().join("patched.elf");
    std::fs::write(&patched, &elf).unwrap();
    let igvm2 = build_igvm(dir.path(), &patched, "patched.igvm");
    let (changed, _) = model_launch(&igvm2, "1", &[]);
    assert_ne!(changed, one);
    assert_eq!(measure(&igvm2, "1", &sig), changed);
}

#[test]
fn model_report_verifies_and_names_each_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let igvm = build_igvm(dir.path(), veil_tests::Guest::BootInfo.path(), "guest.igvm");
    let report = dir.path().join("report.bin");
    let host_data = "ab".repeat(32);
    let (digest, _) = model_launch(
        &igvm,
        "1",
        &[
            "--host-data",
            &host_data,
            "--policy",
            "30000",
            "--model-report",
            report.to_str().unwrap(),
        ],
    );
    let verify = |measurement: &str, host_data: &str, policy: &str| {
        verify_model_report(
            &report,
            &[
                "--measurement",
                measurement,
                "--host-data",
                host_data,
                "--policy",
                policy,
            ],
        )
    };
    let ok = verify(&digest, &host_data, "30000");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    let bad = verify(&digest, &"cd".repeat(32), "30000");
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("host_data"), "{}", stderr(&bad));
    let bad = verify(&"0".repeat(96), &host_data, "30000");
    assert!(stderr(&bad).contains("measurement"), "{}", stderr(&bad));
    let bad = verify(&digest, &host_data, "70000");
    assert!(stderr(&bad).contains("policy"), "{}", stderr(&bad));
}

#[test]
fn model_launch_refuses_a_bad_policy() {
    let dir = tempfile::tempdir().unwrap();
    let igvm = build_igvm(dir.path(), veil_tests::Guest::BootInfo.path(), "guest.igvm");
    // Bit 17 clear, then DEBUG (bit 19) set.
    for policy in ["10000", "b0000"] {
        let out = veil(&[
            "run",
            "--igvm",
            igvm.to_str().unwrap(),
            "--snp-firmware",
            "model",
            "--mem-mib",
            "64",
            "--policy",
            policy,
        ]);
        assert_refused(&out, &["guest policy"]);
    }
}

/// An IGVM from `veil igvm build` measures its own command line, so the VMM cannot add its
/// device arguments: veil says which ones the file's command line needs.
#[test]
fn device_arguments_the_igvm_cannot_take_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let igvm = build_igvm(dir.path(), veil_tests::Guest::BootInfo.path(), "guest.igvm");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let out = veil(&[
        "run",
        "--igvm",
        igvm.to_str().unwrap(),
        "--snp-firmware",
        "model",
        "--mem-mib",
        "64",
        "--disk",
        disk.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    let note = err
        .lines()
        .find(|l| l.contains("takes no command line from the VMM"))
        .unwrap_or_else(|| panic!("no note: {err}"));
    assert!(
        note.ends_with("virtio_mmio.device=4K@0xd0001000:5"),
        "{note}"
    );

    // Without devices there is nothing to say.
    let out = veil(&[
        "run",
        "--igvm",
        igvm.to_str().unwrap(),
        "--snp-firmware",
        "model",
        "--mem-mib",
        "64",
    ]);
    assert!(
        !stderr(&out).contains("takes no command line"),
        "{}",
        stderr(&out)
    );
}

/// Without --policy the launch takes the IGVM file's own policy (which an ID block in the file
/// would sign); with it, the given one. The model's report says which was used.
#[test]
fn the_launch_policy_defaults_to_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let igvm = build_igvm_with(
        dir.path(),
        veil_tests::Guest::BootInfo.path(),
        "single-socket.igvm",
        &["--policy", "130000"],
    );
    let report = dir.path().join("report.bin");
    let verify_policy = |policy: &str| verify_model_report(&report, &["--policy", policy]);

    model_launch(&igvm, "1", &["--model-report", report.to_str().unwrap()]);
    let ok = verify_policy("130000");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    model_launch(
        &igvm,
        "1",
        &[
            "--policy",
            "30000",
            "--model-report",
            report.to_str().unwrap(),
        ],
    );
    let ok = verify_policy("30000");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let other = verify_policy("130000");
    assert_eq!(other.status.code(), Some(1), "{}", stderr(&other));
}
