//! Helpers for running the `veil` binary in tests.
#![allow(dead_code)]

use std::process::{Command, Output};

pub mod running;

pub const VEIL: &str = env!("CARGO_BIN_EXE_veil");

/// Runs `veil` with `args` (stdin closed) and returns its output.
pub fn veil(args: &[&str]) -> Output {
    Command::new(VEIL).args(args).output().expect("spawn veil")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean refusal: exit status 1, one `veil: error:` line containing every
/// `needles`, no panic, and the guest never ran (nothing on stdout).
pub fn assert_refused(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    assert!(err.starts_with("veil: error: "), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
}
