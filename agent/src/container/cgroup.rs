//! One container's cgroup, as libcontainer made it, through libcgroups (v2 in the guest; v1
//! on hybrid development hosts): its processes, kill, freeze, limits, stats.

use std::path::PathBuf;

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};

use super::ContainerError;
use crate::protocols::agent;

/// Finds the cgroup v2 mount: `/sys/fs/cgroup` in the guest, `/sys/fs/cgroup/unified` on hybrid
/// hosts.
pub fn detect_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// One container's cgroup.
pub struct Cgroup {
    manager: AnyCgroupManager,
    /// Relative to the hierarchy, as in the spec.
    cgroups_path: PathBuf,
}

fn cgroup_err(what: &str, e: impl std::fmt::Display) -> ContainerError {
    ContainerError::Runtime(format!("cgroup {what}: {e}"))
}

impl Cgroup {
    /// The cgroup at `cgroups_path` (relative to the hierarchy, as in the OCI spec).
    pub fn open(cgroups_path: &str, id: &str) -> Result<Self, ContainerError> {
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: PathBuf::from(cgroups_path),
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| cgroup_err("manager", e))?;
        Ok(Self {
            manager,
            cgroups_path: PathBuf::from(cgroups_path),
        })
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.manager
            .get_all_pids()
            .map(|p| p.into_iter().map(|p| p.as_raw()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL to every process: frozen first, so none can fork past the kill.
    pub fn kill_all(&self) {
        let _ = self.manager.freeze(FreezerState::Frozen);
        for pid in self.pids() {
            // SAFETY: kill(2) on a pid read from the container's cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.manager.freeze(FreezerState::Thawed);
    }

    /// PauseContainer / ResumeContainer.
    pub fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.manager
            .freeze(state)
            .map_err(|e| cgroup_err("freezer", e))
    }

    /// UpdateContainer: applies `resources` (already checked by the bundle rules).
    pub fn update(
        &self,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), ContainerError> {
        self.manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| cgroup_err("limits", e))
    }

    /// How many processes the OOM killer has killed in the cgroup (`oom_kill` of cgroup v2's
    /// memory.events, or of v1's memory.oom_control); `None` when neither can be read.
    pub fn oom_kills(&self) -> Option<u64> {
        let rel = self
            .cgroups_path
            .strip_prefix("/")
            .unwrap_or(&self.cgroups_path);
        let unified = detect_root()?;
        let files = [
            unified.join(rel).join("memory.events"),
            PathBuf::from("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control"),
        ];
        files.iter().find_map(|file| {
            let text = std::fs::read_to_string(file).ok()?;
            text.lines().find_map(|line| {
                let value = line.strip_prefix("oom_kill ")?;
                value.trim().parse().ok()
            })
        })
    }

    /// Removes the cgroup (after its processes are gone), when libcontainer could not.
    pub fn remove(&self) {
        if let Err(e) = self.manager.remove() {
            tracing::warn!(error = %e, "cgroup not removed");
        }
    }

    /// The container's cgroup v2 directory, when the container's cgroup is a v2 one.
    fn v2_dir(&self) -> Option<PathBuf> {
        let AnyCgroupManager::V2(_) = self.manager else {
            return None;
        };
        let rel = self
            .cgroups_path
            .strip_prefix("/")
            .unwrap_or(&self.cgroups_path);
        Some(detect_root()?.join(rel))
    }

    /// StatsContainer's cgroup part (CPU times in ns, as Kata's agent API has them).
    pub fn stats(&self) -> Result<agent::StatsContainerResponse, ContainerError> {
        let s = match self.v2_dir() {
            Some(dir) => super::cgroup_stats::read_v2(&dir)?,
            None => self.manager.stats().map_err(|e| cgroup_err("stats", e))?,
        };
        let mut pids = agent::PidsStats::new();
        pids.current = s.pids.current;
        pids.limit = s.pids.limit;

        let mut usage = agent::MemoryData::new();
        usage.usage = s.memory.memory.usage;
        usage.max_usage = s.memory.memory.max_usage;
        usage.failcnt = s.memory.memory.fail_count;
        usage.limit = s.memory.memory.limit;
        let mut memory = agent::MemoryStats::new();
        memory.cache = s.memory.cache;
        memory.usage = protobuf::MessageField::some(usage);

        let mut cpu_usage = agent::CpuUsage::new();
        cpu_usage.total_usage = s.cpu.usage.usage_total;
        cpu_usage.usage_in_usermode = s.cpu.usage.usage_user;
        cpu_usage.usage_in_kernelmode = s.cpu.usage.usage_kernel;
        cpu_usage.percpu_usage = s.cpu.usage.per_core_usage_total.clone();
        let mut throttling = agent::ThrottlingData::new();
        throttling.periods = s.cpu.throttling.periods;
        throttling.throttled_periods = s.cpu.throttling.throttled_periods;
        throttling.throttled_time = s.cpu.throttling.throttled_time;
        let mut cpu = agent::CpuStats::new();
        cpu.cpu_usage = protobuf::MessageField::some(cpu_usage);
        cpu.throttling_data = protobuf::MessageField::some(throttling);

        let mut cg = agent::CgroupStats::new();
        cg.cpu_stats = protobuf::MessageField::some(cpu);
        cg.memory_stats = protobuf::MessageField::some(memory);
        cg.pids_stats = protobuf::MessageField::some(pids);
        let mut resp = agent::StatsContainerResponse::new();
        resp.cgroup_stats = protobuf::MessageField::some(cg);
        Ok(resp)
    }
}
