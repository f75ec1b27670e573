//! The agent's container statistics in the form containerd reads (cgroup v2 metrics).

use containerd_shim_protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use veil_agent::protocols::agent::StatsContainerResponse;

/// Nanoseconds per microsecond: the agent reports CPU time in ns, cgroup v2 in µs.
const NS_PER_US: u64 = 1000;

pub fn to_cgroup_v2(stats: &StatsContainerResponse) -> Metrics {
    let cg = &stats.cgroup_stats;
    let mut m = Metrics::new();
    m.pids = protobuf::MessageField::some(PidsStat {
        current: cg.pids_stats.current,
        limit: cg.pids_stats.limit,
        ..Default::default()
    });
    let cpu = &cg.cpu_stats.cpu_usage;
    m.cpu = protobuf::MessageField::some(CPUStat {
        usage_usec: cpu.total_usage / NS_PER_US,
        user_usec: cpu.usage_in_usermode / NS_PER_US,
        system_usec: cpu.usage_in_kernelmode / NS_PER_US,
        nr_periods: cg.cpu_stats.throttling_data.periods,
        nr_throttled: cg.cpu_stats.throttling_data.throttled_periods,
        throttled_usec: cg.cpu_stats.throttling_data.throttled_time / NS_PER_US,
        ..Default::default()
    });
    let mem = &cg.memory_stats.usage;
    m.memory = protobuf::MessageField::some(MemoryStat {
        usage: mem.usage,
        usage_limit: mem.limit,
        max_usage: mem.max_usage,
        ..Default::default()
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_agent::protocols::agent;

    #[test]
    fn units_and_fields() {
        let mut resp = StatsContainerResponse::new();
        let mut cg = agent::CgroupStats::new();
        cg.pids_stats.mut_or_insert_default().current = 3;
        cg.cpu_stats
            .mut_or_insert_default()
            .cpu_usage
            .mut_or_insert_default()
            .total_usage = 5_000;
        cg.memory_stats
            .mut_or_insert_default()
            .usage
            .mut_or_insert_default()
            .usage = 4096;
        resp.cgroup_stats = protobuf::MessageField::some(cg);
        let m = to_cgroup_v2(&resp);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.cpu.usage_usec, 5);
        assert_eq!(m.memory.usage, 4096);
    }
}
