//! What a long-lived test process holds (open files, threads, resident memory), for the soak
//! tests that check it stays flat over hundreds of VM start/stop cycles.

use std::time::{Duration, Instant};

/// The calling process's open fds, threads and resident set.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

/// The calling process's usage now (from /proc/self).
pub fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/self/status");
    Usage {
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
        threads: std::fs::read_dir("/proc/self/task").unwrap().count(),
        rss_kib,
    }
}

/// Usage once at most `threads` threads are left: a joined thread can still be listed in /proc
/// for a moment while the kernel reaps it. A thread that never goes away is waited for only
/// `guard`, then counted.
pub fn settled_usage(threads: usize, guard: Duration) -> Usage {
    let deadline = Instant::now() + guard;
    loop {
        let now = usage();
        if now.threads <= threads || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
