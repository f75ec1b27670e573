//! StatsContainer's numbers read from a cgroup v2 directory.
//!
//! libcgroups 0.7 reads v2 statistics all or nothing, and its "all" includes the pressure
//! files (`cpu.pressure`, `memory.pressure`) and hugetlb's, which the guest kernel does not
//! have (no CONFIG_PSI, no CONFIG_HUGETLBFS: neither is needed by a pod). So the v2 numbers
//! the agent reports are read here: the files every v2 kernel with the cpu, memory and pids
//! controllers has are required, the optional ones (`memory.peak`, throttling) read as zero.

use std::collections::HashMap;
use std::path::Path;

use libcgroups::stats::{CpuStats, MemoryData, MemoryStats, PidStats, Stats};

use super::ContainerError;

/// Kata's agent API reports CPU time in nanoseconds; cgroup v2's `cpu.stat` counts in µs.
const NS_PER_US: u64 = 1000;

fn read_err(file: &Path, what: impl std::fmt::Display) -> ContainerError {
    ContainerError::Runtime(format!("cgroup stats: {}: {what}", file.display()))
}

/// A single-value file (`max` reads as `u64::MAX`, as the kernel means it).
fn single(file: &Path) -> Result<u64, ContainerError> {
    let text = std::fs::read_to_string(file).map_err(|e| read_err(file, e))?;
    match text.trim() {
        "max" => Ok(u64::MAX),
        value => value.parse().map_err(|e| read_err(file, e)),
    }
}

/// A flat-keyed file (`key value` per line); lines that are not a key and a number are
/// skipped, since newer kernels add keys.
fn keyed(file: &Path) -> Result<HashMap<String, u64>, ContainerError> {
    let text = std::fs::read_to_string(file).map_err(|e| read_err(file, e))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// The statistics of the cgroup v2 directory `dir`.
pub fn read_v2(dir: &Path) -> Result<Stats, ContainerError> {
    let pids = PidStats {
        current: single(&dir.join("pids.current"))?,
        // 0 is "no limit" in the stats, as libcgroups reports it.
        limit: match single(&dir.join("pids.max"))? {
            u64::MAX => 0,
            limit => limit,
        },
    };

    let events = keyed(&dir.join("memory.events"))?;
    let memory_stat = keyed(&dir.join("memory.stat"))?;
    let memory = MemoryStats {
        memory: MemoryData {
            usage: single(&dir.join("memory.current"))?,
            limit: single(&dir.join("memory.max"))?,
            // memory.peak arrived in Linux 5.19.
            max_usage: single(&dir.join("memory.peak")).unwrap_or(0),
            fail_count: events.get("oom").copied().unwrap_or(0),
        },
        cache: memory_stat.get("file").copied().unwrap_or(0),
        hierarchy: true,
        stats: memory_stat,
        ..Default::default()
    };

    let cpu_file = dir.join("cpu.stat");
    let cpu_stat = keyed(&cpu_file)?;
    let usec = |key: &'static str| cpu_stat.get(key).copied();
    let required =
        |key: &'static str| usec(key).ok_or_else(|| read_err(&cpu_file, format_args!("no {key}")));
    let mut cpu = CpuStats::default();
    cpu.usage.usage_total = required("usage_usec")? * NS_PER_US;
    cpu.usage.usage_user = required("user_usec")? * NS_PER_US;
    cpu.usage.usage_kernel = required("system_usec")? * NS_PER_US;
    // Throttling lines exist only where the cpu controller is enabled for the cgroup.
    cpu.throttling.periods = usec("nr_periods").unwrap_or(0);
    cpu.throttling.throttled_periods = usec("nr_throttled").unwrap_or(0);
    cpu.throttling.throttled_time = usec("throttled_usec").unwrap_or(0) * NS_PER_US;

    Ok(Stats {
        cpu,
        pids,
        memory,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// The files a kernel without PSI or hugetlb has: stats still come out, in Kata's units.
    fn kernel_without_psi(dir: &Path) {
        write(dir, "pids.current", "3\n");
        write(dir, "pids.max", "max\n");
        write(dir, "memory.current", "4096\n");
        write(dir, "memory.max", "16777216\n");
        write(
            dir,
            "memory.events",
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
        );
        write(dir, "memory.stat", "anon 1024\nfile 2048\n");
        write(
            dir,
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
    }

    #[test]
    fn reads_a_cgroup_without_pressure_or_hugetlb_files() {
        let dir = tempfile::tempdir().unwrap();
        kernel_without_psi(dir.path());
        let s = read_v2(dir.path()).unwrap();
        assert_eq!((s.pids.current, s.pids.limit), (3, 0));
        assert_eq!(s.memory.memory.usage, 4096);
        assert_eq!(s.memory.memory.limit, 16 << 20);
        assert_eq!(s.memory.memory.fail_count, 1);
        assert_eq!(s.memory.memory.max_usage, 0);
        assert_eq!(s.memory.cache, 2048);
        assert_eq!(s.cpu.usage.usage_total, 1_500_000);
        assert_eq!(s.cpu.usage.usage_user, 1_000_000);
        assert_eq!(s.cpu.usage.usage_kernel, 500_000);
        assert_eq!(s.cpu.throttling.periods, 0);
    }

    #[test]
    fn throttling_and_peak_when_present() {
        let dir = tempfile::tempdir().unwrap();
        kernel_without_psi(dir.path());
        write(dir.path(), "memory.peak", "8192\n");
        write(dir.path(), "pids.max", "64\n");
        write(
            dir.path(),
            "cpu.stat",
            "usage_usec 1\nuser_usec 1\nsystem_usec 0\nnr_periods 7\nnr_throttled 2\nthrottled_usec 30\n",
        );
        let s = read_v2(dir.path()).unwrap();
        assert_eq!(s.memory.memory.max_usage, 8192);
        assert_eq!(s.pids.limit, 64);
        assert_eq!(
            (
                s.cpu.throttling.periods,
                s.cpu.throttling.throttled_periods,
                s.cpu.throttling.throttled_time
            ),
            (7, 2, 30_000)
        );
    }

    #[test]
    fn a_missing_required_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        kernel_without_psi(dir.path());
        std::fs::remove_file(dir.path().join("memory.current")).unwrap();
        let err = read_v2(dir.path()).unwrap_err().to_string();
        assert!(err.contains("memory.current"), "{err}");
        write(dir.path(), "memory.current", "lots\n");
        let err = read_v2(dir.path()).unwrap_err().to_string();
        assert!(err.contains("memory.current"), "{err}");
    }
}
