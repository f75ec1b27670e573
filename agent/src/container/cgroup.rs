//! cgroup v2 for one container: `<root>/veil/<id>`, limits from the OCI resources, stats, kill.

use std::path::{Path, PathBuf};

use super::ContainerError;
use crate::protocols::{agent, oci};

/// Controllers the agent enables for containers when the hierarchy offers them.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

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
    /// Creates `<root>/veil/<id>` and applies `resources`. Refuses an existing directory (it
    /// would belong to another container or a leftover).
    pub fn create(
        root: &Path,
        id: &str,
        resources: Option<&oci::LinuxResources>,
    ) -> Result<Self, ContainerError> {
        let parent = root.join("veil");
        if !parent.exists() {
            std::fs::create_dir(&parent).map_err(|e| ContainerError::io("creating", &parent, e))?;
        }
        enable_controllers(root);
        enable_controllers(&parent);
        let path = parent.join(id);
        std::fs::create_dir(&path).map_err(|e| ContainerError::io("creating", &path, e))?;
        let cgroup = Cgroup { path };
        if let Some(r) = resources {
            if let Err(e) = cgroup.apply(r) {
                cgroup.remove();
                return Err(e);
            }
        }
        Ok(cgroup)
    }

    /// `cgroup.procs`, which a child writes `0` to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    fn apply(&self, r: &oci::LinuxResources) -> Result<(), ContainerError> {
        if let Some(mem) = r.Memory.as_ref() {
            if mem.Limit > 0 {
                self.write_limit("memory.max", &mem.Limit.to_string())?;
            }
        }
        if let Some(pids) = r.Pids.as_ref() {
            if pids.Limit > 0 {
                self.write_limit("pids.max", &pids.Limit.to_string())?;
            }
        }
        if let Some(cpu) = r.CPU.as_ref() {
            if cpu.Quota > 0 {
                let period = if cpu.Period > 0 { cpu.Period } else { 100_000 };
                self.write_limit("cpu.max", &format!("{} {period}", cpu.Quota))?;
            }
        }
        Ok(())
    }

    /// Writes a limit; a controller this hierarchy lacks is an error (a limit the caller asked
    /// for must not be silently dropped).
    fn write_limit(&self, file: &str, value: &str) -> Result<(), ContainerError> {
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(|e| ContainerError::io("writing limit to", &path, e))
    }

    /// Pids currently in the cgroup.
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

/// Delegates the controllers we use to children of `dir`, where offered. Failure is only
/// logged: a later limit write reports the missing controller precisely.
fn enable_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for controller in CONTROLLERS {
        if available.split_whitespace().any(|c| c == *controller) {
            let file = dir.join("cgroup.subtree_control");
            if let Err(e) = std::fs::write(&file, format!("+{controller}")) {
                tracing::debug!(file = %file.display(), controller, error = %e, "controller not enabled");
            }
        }
    }
}
