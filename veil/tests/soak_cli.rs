//! Soak through the `veil` binary, the way a shim that spawns one VMM per pod uses it: 500
//! sequential and twenty-at-a-time start/stop cycles of an idle guest with a disk and vsock,
//! each stopped with SIGTERM once the guest has printed its line. The long-lived process
//! here is the spawner: its fds, threads and RSS stay flat, every `veil` exits with its
//! documented status (128 + SIGTERM) and leaves no socket behind.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use veil_tests::usage::{settled_usage, usage};
use veil_tests::Guest;

const SEQUENTIAL: usize = 500;
const CONCURRENT: usize = 20;
const CONCURRENT_ROUNDS: usize = 5;
const WARM_UP: usize = 20;
/// A joined thread may still be listed in /proc for a moment while the kernel reaps it.
const SETTLE_GUARD: Duration = Duration::from_secs(10);

/// Open fds and threads of one running `veil`, once its guest has printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct VmmUsage {
    fds: usize,
    threads: usize,
}

fn vmm_usage(pid: u32) -> VmmUsage {
    VmmUsage {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count(),
        threads: std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count(),
    }
}

fn cycle(dir: &Path, n: usize) -> VmmUsage {
    let uds = dir.join(format!("v{n}.sock"));
    let disk = format!("{},ro", dir.join("disk.img").display());
    let mut child = Command::new(common::VEIL)
        .args(["run", "--kernel", Guest::Idle.path().to_str().unwrap()])
        .args(["--mem-mib", "16", "--disk", &disk, "--vsock-cid", "3"])
        .arg("--vsock-uds")
        .arg(&uds)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn veil");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "veil-test-guest idle\n", "veil {n}");
    let vmm = vmm_usage(child.id());
    // SAFETY: plain kill(2) on our own child's pid, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "veil {n}: {err}");
    assert!(!err.contains("panicked"), "veil {n}: {err}");
    assert!(!uds.exists(), "veil {n} left its vsock socket behind");
    vmm
}

/// `CONCURRENT` runs at once; the largest VMM usage among them.
fn concurrent_round(dir: &Path, round: usize) -> VmmUsage {
    thread::scope(|s| {
        let runs: Vec<_> = (0..CONCURRENT)
            .map(|i| s.spawn(move || cycle(dir, SEQUENTIAL + round * CONCURRENT + i)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).max().unwrap()
    })
}

#[test]
fn five_hundred_sequential_and_twenty_way_concurrent_veil_runs_leave_the_spawner_flat() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.img"), vec![0u8; 64 << 10]).unwrap();
    let dir = dir.path();
    let before = usage();
    // Each VMM's own fds and threads: no run may need more than the warm-up's did.
    let mut vmm_warm = VmmUsage::default();
    for n in 0..WARM_UP {
        vmm_warm = vmm_warm.max(cycle(dir, n));
    }
    vmm_warm = vmm_warm.max(concurrent_round(dir, 0));
    let warm = settled_usage(before.threads, SETTLE_GUARD);
    let mut vmm_most = VmmUsage::default();
    for n in WARM_UP..SEQUENTIAL {
        vmm_most = vmm_most.max(cycle(dir, n));
    }
    let after_sequential = settled_usage(before.threads, SETTLE_GUARD);
    for round in 1..=CONCURRENT_ROUNDS {
        vmm_most = vmm_most.max(concurrent_round(dir, round));
    }
    let end = settled_usage(before.threads, SETTLE_GUARD);
    eprintln!(
        "soak (CLI): spawner after warm-up {warm:?}, after {SEQUENTIAL} sequential \
         {after_sequential:?}, after {CONCURRENT_ROUNDS}x{CONCURRENT} concurrent {end:?}; \
         each veil at most {vmm_warm:?} in warm-up, {vmm_most:?} afterwards"
    );
    assert!(vmm_most.fds <= vmm_warm.fds, "{vmm_most:?} > {vmm_warm:?}");
    assert!(
        vmm_most.threads <= vmm_warm.threads,
        "{vmm_most:?} > {vmm_warm:?}"
    );
    for (what, u) in [("sequential", after_sequential), ("concurrent", end)] {
        assert_eq!(u.fds, warm.fds, "fds leaked by {what} runs");
        assert_eq!(u.threads, before.threads, "threads left by {what} runs");
        let bound = warm.rss_kib + (warm.rss_kib / 4).max(4 << 10);
        assert!(
            u.rss_kib <= bound,
            "RSS grew from {} to {} KiB over {what} runs",
            warm.rss_kib,
            u.rss_kib
        );
    }
    // Every socket file was removed by its VMM; nothing else was left in the directory.
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "disk.img")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
