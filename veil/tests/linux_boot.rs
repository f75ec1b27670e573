//! Boots the project's guest kernel (guest/build-kernel.sh) under real KVM and checks what
//! Linux itself reports about the machine Veil gave it.
//!
//! On this project's CI hosts KVM is a software backend that cannot run a stock kernel to
//! user space (see ../shared/HOST-KVM.md), so the tests read the kernel's early console
//! lines and then stop the VM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use veil_tests::guest_kernel;

/// Upper bound on waiting for the lines: a hang guard, not a performance check.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Runs `veil run` with `args` until `done` says the console lines seen so far suffice (or
/// the VM ends), then stops it with SIGTERM. Returns the console lines.
fn boot_until(args: &[&str], done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut child: Child = Command::new(common::VEIL)
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + HANG_GUARD;
    let mut lines = Vec::new();
    while !done(&lines) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line.trim_end_matches('\r').to_string()),
            Err(_) => break, // VM ended or hang guard reached; the asserts say what is missing
        }
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    reader.join().unwrap();
    // Stopped by our signal (143) or ended by the guest's own failure on this host (2).
    assert!(
        matches!(status.code(), Some(143) | Some(2) | Some(0)),
        "veil: {status:?}\n{}",
        lines.join("\n")
    );
    lines
}

/// Parses `BIOS-e820: [mem 0xSTART-0xEND] usable` lines into inclusive ranges.
fn usable_ram(lines: &[String]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter(|l| l.contains("BIOS-e820: [mem ") && l.ends_with("] usable"))
        .map(|l| {
            let range = l.split("[mem ").nth(1).unwrap().split(']').next().unwrap();
            let (start, end) = range.split_once('-').unwrap();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (hex(start), hex(end))
        })
        .collect()
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[test]
fn vmlinux_through_pvh_reports_cmdline_memory_and_cpus() {
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1 veil.marker=42";
    let kernel = guest_kernel("vmlinux");
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--mem-mib",
        "256",
        "--vcpus",
        "2",
    ];
    // "smpboot: Allowing" comes after the e820 map and the MP table are parsed.
    let lines = boot_until(&args, |l| has(l, "smpboot: Allowing"));
    let text = lines.join("\n");
    assert!(has(&lines, "Linux version 6.1"), "{text}");
    let reported = lines
        .iter()
        .find_map(|l| l.strip_prefix("Command line: "))
        .expect("Command line: line");
    assert_eq!(reported, cmdline, "{text}");
    let top = usable_ram(&lines)
        .iter()
        .map(|r| r.1 + 1)
        .max()
        .expect("usable e820 ranges");
    assert_eq!(top, 256 << 20, "{text}");
    assert!(has(&lines, "MPTABLE: OEM ID: VEIL"), "{text}");
    assert!(has(&lines, "Processors: 2"), "{text}");
    assert!(has(&lines, "smpboot: Allowing 2 CPUs"), "{text}");
}
