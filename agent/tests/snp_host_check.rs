//! `guest/snp-host-check.sh --agent-unix`: the script's fetch (`veil-attest`) asks a running
//! agent (insecure development backend, as a host process) for its report with a fresh nonce,
//! and checks REPORT_DATA and HOST_DATA; the unsigned report fails the signature line, which
//! names where this chip's VCEK is served, and the zero measurement fails too.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const POLICY: &str = "package agent_policy\ndefault CreateContainerRequest := false\n";

/// The line of one check: a 9-character status column, then `NAME: detail`.
fn line<'a>(out: &'a str, check: &str) -> &'a str {
    let name = format!("{check}:");
    out.lines()
        .find(|l| l.get(9..).is_some_and(|rest| rest.starts_with(&name)))
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

#[test]
fn the_fetched_report_carries_the_nonce_and_the_policy_digest() {
    let agent = AgentProcess::start(&sha256_hex(POLICY));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rego");
    std::fs::write(&policy, POLICY).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let attest = env!("CARGO_BIN_EXE_veil-attest");
    // The veil binary sits next to the agent's when the workspace is built.
    let veil = Path::new(attest).with_file_name("veil");
    // The agent may still be binding its socket: veil-attest waits for it.
    let out = Command::new(root.join("guest/snp-host-check.sh"))
        .args(["--pod", dir.path().to_str().unwrap()])
        .args(["--agent-unix", agent.socket.to_str().unwrap()])
        .args(["--policy-file", policy.to_str().unwrap()])
        .env("VEIL", &veil)
        .env("VEIL_ATTEST", attest)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        line(&text, "report").starts_with("PASS") && text.contains("insecure-development"),
        "{text}"
    );
    assert!(line(&text, "host-data").starts_with("PASS"), "{text}");
    assert!(line(&text, "report-data").starts_with("PASS"), "{text}");
    let signature = line(&text, "signature");
    assert!(
        signature.starts_with("FAIL") && signature.contains("https://kdsintf.amd.com/vcek/v1/"),
        "{text}"
    );
    assert!(line(&text, "measurement").starts_with("FAIL"), "{text}");
}
