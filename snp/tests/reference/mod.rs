//! Runs the reference implementation, `sev-snp-measure` (PyPI), through python3.

use std::io::Write;
use std::process::{Command, Stdio};

const INSTALL_HINT: &str = "these conformance tests need python3 with the PyPI package \
     `sev-snp-measure` (pip install sev-snp-measure)";

/// Runs a python script with `stdin`, returning its trimmed stdout; panics (failing the test)
/// with an install hint when python3 or the module is missing.
#[allow(dead_code)] // not every test binary uses both helpers
pub fn run_python(script: &str, stdin: &str) -> String {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start python3 ({e}): {INSTALL_HINT}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("wait for python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'sevsnpmeasure'") {
        panic!("{INSTALL_HINT}");
    }
    assert!(out.status.success(), "python3 failed: {stderr}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Runs `sev-snp-measure`'s command line (`python3 -m sevsnpmeasure.cli ARGS`).
#[allow(dead_code)] // not every test binary uses both helpers
pub fn run_cli(args: &[&str]) -> String {
    let script = "import sys, runpy; sys.argv = ['sev-snp-measure'] + sys.argv[1:]; \
                  runpy.run_module('sevsnpmeasure.cli', run_name='__main__')";
    let out = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start python3 ({e}): {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named") {
        panic!("{INSTALL_HINT}");
    }
    assert!(
        out.status.success(),
        "sev-snp-measure {args:?} failed: {stderr}"
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}
