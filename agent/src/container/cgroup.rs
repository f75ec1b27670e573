//! cgroup v2 for one container, as libcontainer made it (`<root>/veil/<id>`): stats, the
//! processes in it, kill.

use std::path::{Path, PathBuf};

use crate::protocols::agent;

/// Finds the cgroup v2 mount: `/sys/fs/cgroup` in the guest, `/sys/fs/cgroup/unified` on hybrid
/// hosts.
pub fn detect_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// One container's cgroup directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {

    /// The cgroup libcontainer made for container `id` under `root` (`<root>/veil/<id>`).
    pub fn at(root: &Path, id: &str) -> Self {
        Self {
            path: root.join("veil").join(id),
        }
    }

    fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends SIGKILL to everything in the cgroup (`cgroup.kill` when the kernel has it).
    pub fn kill_all(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            // SAFETY: kill(2) with a pid read from our own cgroup; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Removes the directory (must be empty of processes). Best effort; logs a failure.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "cgroup not removed");
        }
    }

    /// Stats in Kata's shape, from whichever controller files exist.
    pub fn stats(&self) -> agent::StatsContainerResponse {
        let read_u64 = |file: &str| -> Option<u64> {
            std::fs::read_to_string(self.path.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let mut pids = agent::PidsStats::new();
        pids.current = read_u64("pids.current").unwrap_or(self.pids().len() as u64);
        pids.limit = read_u64("pids.max").unwrap_or(0);

        let mut usage = agent::MemoryData::new();
        usage.usage = read_u64("memory.current").unwrap_or(0);
        usage.max_usage = read_u64("memory.peak").unwrap_or(0);
        usage.limit = read_u64("memory.max").unwrap_or(0);
        let mut memory = agent::MemoryStats::new();
        memory.usage = protobuf::MessageField::some(usage);

        let mut cpu_usage = agent::CpuUsage::new();
        if let Ok(text) = std::fs::read_to_string(self.path.join("cpu.stat")) {
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let nanos = value.parse::<u64>().unwrap_or(0).saturating_mul(1000);
                match key {
                    "usage_usec" => cpu_usage.total_usage = nanos,
                    "user_usec" => cpu_usage.usage_in_usermode = nanos,
                    "system_usec" => cpu_usage.usage_in_kernelmode = nanos,
                    _ => {}
                }
            }
        }
        let mut cpu = agent::CpuStats::new();
        cpu.cpu_usage = protobuf::MessageField::some(cpu_usage);

        let mut cg = agent::CgroupStats::new();
        cg.pids_stats = protobuf::MessageField::some(pids);
        cg.memory_stats = protobuf::MessageField::some(memory);
        cg.cpu_stats = protobuf::MessageField::some(cpu);
        let mut resp = agent::StatsContainerResponse::new();
        resp.cgroup_stats = protobuf::MessageField::some(cg);
        resp
    }
}
