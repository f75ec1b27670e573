//! `guest/snp-host-check.sh` where there is no SEV-SNP: on such a host it names what is
//! missing; a report signed by Veil's insecure firmware model over the published pod image
//! passes its report checks (signature with the model's key, measurement = `veil measure`,
//! HOST_DATA = the policy's SHA-256, policy, nonce), and each wrong input fails its line.
//! (The fetch from an agent is tested in `agent/tests/snp_host_check.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{stdout, VEIL};
use veil_snp::firmware::model::InsecureModelFirmware;
use veil_snp::firmware::LaunchFinish;
use veil_snp::igvm::{load_igvm, run_launch};
use veil_snp::manifest::sha256_hex;
use veil_snp::GuestPolicy;

const SIG: u32 = 0x00a1_0f10; // EPYC-Genoa
const POLICY: &str = "package agent_policy\ndefault CreateContainerRequest := false\n";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The published pod set, built by guest/build-pod.sh. Required under `CI=true`.
fn project_pod() -> Option<PathBuf> {
    let dir = repo_root().join("target/guest-pod");
    if dir.join("manifest.json").exists() {
        return Some(dir);
    }
    let why = format!(
        "{} has no manifest.json: run guest/build-pod.sh",
        dir.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("skipping: {why}");
    None
}

fn check(args: &[&str]) -> Output {
    // veil-attest is not needed without a VM or an agent; the script needs a value to not
    // build it.
    Command::new(repo_root().join("guest/snp-host-check.sh"))
        .args(args)
        .env("VEIL", VEIL)
        .env("VEIL_ATTEST", "/nonexistent/veil-attest")
        .output()
        .unwrap()
}

/// The line of one check: a 9-character status column, then `NAME: detail`.
fn line<'a>(out: &'a str, check: &str) -> &'a str {
    let name = format!("{check}:");
    out.lines()
        .find(|l| l.get(9..).is_some_and(|rest| rest.starts_with(&name)))
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

#[test]
fn without_snp_it_names_what_is_missing() {
    if Path::new("/dev/sev").exists() {
        eprintln!("skipping: this host has /dev/sev; the SNP-less message cannot be seen here");
        return;
    }
    let Some(pod) = project_pod() else { return };
    let out = check(&["--pod", pod.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "manifest").starts_with("PASS"), "{text}");
    let host = line(&text, "snp-host");
    assert!(
        host.starts_with("FAIL") && host.contains("/dev/sev is not available"),
        "{text}"
    );
    for later in [
        "report",
        "signature",
        "measurement",
        "host-data",
        "report-data",
    ] {
        assert!(line(&text, later).starts_with("NOT RUN"), "{later}: {text}");
    }
}

/// A report the insecure model signs for the pod image launched with `policy` as HOST_DATA
/// and `nonce` as REPORT_DATA; written with the model's public key into `dir`.
fn model_report(igvm: &Path, policy: &str, nonce: [u8; 64], dir: &Path) -> (PathBuf, PathBuf) {
    let plan = load_igvm(&std::fs::read(igvm).unwrap()).unwrap();
    let mut model = InsecureModelFirmware::new();
    let host_data: [u8; 32] = veil_snp::hex::decode_array(&sha256_hex(policy.as_bytes())).unwrap();
    run_launch(
        &mut model,
        &plan,
        GuestPolicy::new(plan.policy, false).unwrap(),
        &mut |_| vec![0; 4096],
        &mut |_, _| {},
        &plan.vcpu_vmsas(1, SIG),
        &LaunchFinish {
            host_data,
            ..LaunchFinish::default()
        },
    )
    .unwrap();
    let report = dir.join("report.bin");
    std::fs::write(
        &report,
        model.attestation_report(nonce, 0).unwrap().as_bytes(),
    )
    .unwrap();
    let key = dir.join("model.pem");
    std::fs::write(&key, model.public_key_pem().unwrap()).unwrap();
    (report, key)
}

#[test]
fn a_model_report_of_the_pod_image_passes_and_wrong_inputs_fail() {
    let Some(pod) = project_pod() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nonce = [0x5a; 64];
    let nonce_hex = hex::encode(nonce);
    let (report, key) = model_report(&pod.join("pod.igvm"), POLICY, nonce, dir.path());
    let policy = dir.path().join("policy.rego");
    std::fs::write(&policy, POLICY).unwrap();
    let sig = format!("{SIG:#x}");
    let args = |policy: &Path, nonce: &str| {
        vec![
            "--pod".to_string(),
            pod.to_str().unwrap().into(),
            "--report".into(),
            report.to_str().unwrap().into(),
            "--public-key".into(),
            key.to_str().unwrap().into(),
            "--nonce".into(),
            nonce.into(),
            "--vcpu-sig".into(),
            sig.clone(),
            "--policy-file".into(),
            policy.to_str().unwrap().into(),
        ]
    };
    let run = |a: Vec<String>| check(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let out = run(args(&policy, &nonce_hex));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for name in [
        "manifest",
        "report",
        "signature",
        "measurement",
        "host-data",
        "guest-policy",
        "report-data",
    ] {
        assert!(line(&text, name).starts_with("PASS"), "{name}: {text}");
    }
    // The measurement is also the one the manifest publishes for Genoa, 1 vCPU.
    assert!(line(&text, "measurement").ends_with("= manifest"), "{text}");

    // Another policy: HOST_DATA differs. Another nonce: REPORT_DATA differs.
    let other = dir.path().join("other.rego");
    std::fs::write(&other, "package agent_policy\n").unwrap();
    let out = run(args(&other, &nonce_hex));
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&stdout(&out), "host-data").starts_with("FAIL"));
    assert!(line(&stdout(&out), "report-data").starts_with("PASS"));
    let out = run(args(&policy, &"11".repeat(64)));
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&stdout(&out), "report-data").starts_with("FAIL"));

    // A report of another image: the measurement differs from veil measure's.
    let (other_report, other_key) = {
        let d = dir.path().join("k");
        std::fs::create_dir(&d).unwrap();
        model_report(&pod.join("pod.igvm"), POLICY, nonce, &d)
    };
    let mut bytes = std::fs::read(&other_report).unwrap();
    bytes[0x90] ^= 1; // the measurement; the signature no longer matches either
    std::fs::write(&other_report, bytes).unwrap();
    let mut a = args(&policy, &nonce_hex);
    a[3] = other_report.to_str().unwrap().into();
    a[5] = other_key.to_str().unwrap().into();
    let out = run(a);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "measurement").starts_with("FAIL"), "{text}");
    assert!(line(&text, "signature").starts_with("FAIL"), "{text}");
}
