//! The `veil-agent` binary's start-up behaviour, observed from outside.

use std::process::Command;

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veil-agent"));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn insecure_mode_marks_every_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["--attestation", "insecure", "--insecure-host-data"])
        .arg("00".repeat(32))
        .arg("--listen")
        .arg(format!(
            "unix:{}/missing-dir/agent.sock",
            dir.path().display()
        ))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "bind into a missing directory must fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines.len() >= 2,
        "expected the insecure warning and the failure: {stderr}"
    );
    for line in &lines {
        assert!(
            line.starts_with(veil_agent::logging::INSECURE_MARK),
            "unmarked: {line}"
        );
    }
    assert!(stderr.contains("missing-dir"), "{stderr}");
}

#[test]
fn without_snp_hardware_auto_attestation_refuses_to_start() {
    if std::path::Path::new("/dev/sev-guest").exists()
        || std::path::Path::new("/sys/kernel/config/tsm/report").exists()
    {
        eprintln!("SKIPPED: this machine has an SNP attestation interface");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .arg("--listen")
        .arg(format!("unix:{}/agent.sock", dir.path().display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no SEV-SNP attestation interface"),
        "{stderr}"
    );
    assert!(!stderr.contains("INSECURE"), "{stderr}");
}

#[test]
fn bad_host_data_is_named() {
    let out = agent()
        .args(["--attestation", "insecure", "--insecure-host-data", "xyz"])
        .args(["--listen", "unix:/nonexistent/agent.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"xyz\""), "{stderr}");
}

#[test]
fn listens_on_vsock_when_the_kernel_has_it() {
    use std::io::BufRead;
    if !std::path::Path::new("/dev/vsock").exists() {
        eprintln!("SKIPPED: no /dev/vsock on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = agent()
        .args(["--attestation", "insecure", "--insecure-host-data"])
        .arg("00".repeat(32))
        .args(["--listen", "vsock:10240", "--state-dir"])
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines().take(20) {
        let line = line.unwrap();
        let done = line.contains("agent serving") || line.contains("agent failed");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let last = seen.last().cloned().unwrap_or_default();
    assert!(
        last.contains("agent serving listen=vsock:10240"),
        "{seen:#?}"
    );
}
