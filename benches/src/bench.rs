//! What every section gets: the programs, the guests, and how many repetitions to do.

use std::path::PathBuf;
use std::time::Duration;

use crate::launch::{Ended, LaunchError, Launched};
use crate::vmm::{Tools, Vmm};

/// How much to measure: `quick` fits in CI's two minutes, `full` gives steadier medians.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Interleaved rounds of tiny-guest boots (each round boots every VMM once).
    pub boot_rounds: usize,
    pub demo_runs: usize,
    pub kernel_rounds: usize,
    pub memory_rounds: usize,
    /// VMs run side by side, per start-rate measurement.
    pub rate_parallel: Vec<usize>,
    pub rate_window: Duration,
    pub rate_windows: usize,
    /// Idle VMs up at once for the per-VM memory figure.
    pub idle_vms: usize,
    /// Runs of each device benchmark guest, and the MiB each moves.
    pub device_runs: usize,
    pub blk_mib: u64,
    pub vsock_mib: u64,
    /// Launch-digest and `openssl speed` rounds, and the MiB hashed per digest round.
    pub digest_rounds: usize,
    pub digest_mib: usize,
    /// `veil run --igvm ... --snp-firmware model` launches timed.
    pub snp_launches: usize,
    /// Interleaved rounds of CRI pod starts (each round starts one pod per runtime).
    pub pod_rounds: usize,
    /// Rounds of pod VM boots inside one L1 (each boots veil and QEMU once), and the time
    /// after which no further boot starts there.
    pub nested_rounds: usize,
    pub nested_budget: Duration,
    /// Interleaved rounds of CRI pod starts (veil VM sandbox, runc) inside one L1, and the
    /// time after which no further round starts there.
    pub nested_pod_rounds: usize,
    pub nested_pod_budget: Duration,
    /// Pod network inside one L1: rounds (each boots veil and QEMU once), 1-byte TCP round
    /// trips and MiB streamed per VM, and the time after which no further round starts.
    pub net_rounds: usize,
    pub net_round_trips: usize,
    pub net_stream_mib: usize,
    pub net_budget: Duration,
}

impl Plan {
    pub fn quick(cores: usize) -> Self {
        Self {
            boot_rounds: 7,
            demo_runs: 5,
            kernel_rounds: 3,
            memory_rounds: 3,
            rate_parallel: vec![cores.max(1), 2 * cores.max(1)],
            rate_window: Duration::from_millis(1500),
            rate_windows: 3,
            idle_vms: 16,
            device_runs: 3,
            blk_mib: 16,
            vsock_mib: 4,
            digest_rounds: 3,
            digest_mib: 32,
            snp_launches: 3,
            pod_rounds: 3,
            nested_rounds: 2,
            nested_budget: Duration::from_secs(150),
            nested_pod_rounds: 2,
            nested_pod_budget: Duration::from_secs(120),
            net_rounds: 1,
            net_round_trips: 200,
            net_stream_mib: 8,
            net_budget: Duration::from_secs(60),
        }
    }

    pub fn full(cores: usize) -> Self {
        Self {
            boot_rounds: 30,
            demo_runs: 20,
            kernel_rounds: 7,
            memory_rounds: 7,
            rate_parallel: vec![1, cores.max(1), 2 * cores.max(1), 4 * cores.max(1)],
            rate_window: Duration::from_secs(3),
            rate_windows: 5,
            idle_vms: 64,
            device_runs: 7,
            blk_mib: 64,
            vsock_mib: 16,
            digest_rounds: 5,
            digest_mib: 128,
            snp_launches: 7,
            pod_rounds: 15,
            nested_rounds: 7,
            nested_budget: Duration::from_secs(1800),
            nested_pod_rounds: 7,
            nested_pod_budget: Duration::from_secs(1500),
            net_rounds: 3,
            net_round_trips: 1000,
            net_stream_mib: 32,
            net_budget: Duration::from_secs(900),
        }
    }
}

/// Everything a section needs.
#[derive(Debug)]
pub struct Bench {
    pub tools: Tools,
    /// The tiny guest that prints a line and ends the VM.
    pub exit_guest: PathBuf,
    /// The tiny guest that prints a line and halts.
    pub idle_guest: PathBuf,
    /// The project's guest kernel (may be missing).
    pub vmlinux: PathBuf,
    /// The project's guest initramfs, `veil-agent` as PID 1 (may be missing).
    pub initramfs: PathBuf,
    pub cores: usize,
    pub plan: Plan,
}

/// Longest wait for a tiny guest's line or exit: far beyond any healthy run.
pub const TINY_TIMEOUT: Duration = Duration::from_secs(20);

/// Every VMM, rotated by `round` so none always runs first (caches, CPU frequency).
pub fn rotated(round: usize) -> Vec<Vmm> {
    let mut order = Vmm::ALL.to_vec();
    let n = order.len();
    order.rotate_left(round % n);
    order
}

/// A run that failed, for the section's notes.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("exited with status {got}, expected {expected}")]
    Status { got: i32, expected: i32 },
}

/// Reaps `vm` and checks its exit status.
pub fn expect_exit(vm: &mut Launched, expected: i32) -> Result<Ended, RunError> {
    let ended = vm.wait(TINY_TIMEOUT)?;
    if ended.status != expected {
        return Err(RunError::Status {
            got: ended.status,
            expected,
        });
    }
    Ok(ended)
}

/// Collects failures per VMM and turns them into short notes.
#[derive(Debug, Default)]
pub struct Failures(Vec<(String, String)>);

impl Failures {
    pub fn add(&mut self, who: impl Into<String>, error: impl std::fmt::Display) {
        tracing::warn!("run failed: {error}");
        self.0.push((who.into(), error.to_string()));
    }

    /// One note per distinct (who, error), with its count.
    pub fn notes(&self) -> Vec<String> {
        let mut notes: Vec<(String, usize)> = Vec::new();
        for (who, error) in &self.0 {
            let text = format!("{who}: failed run: {error}");
            match notes.iter_mut().find(|(t, _)| *t == text) {
                Some((_, n)) => *n += 1,
                None => notes.push((text, 1)),
            }
        }
        notes
            .into_iter()
            .map(|(t, n)| if n > 1 { format!("{t} ({n} times)") } else { t })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_covers_every_vmm_in_every_round() {
        for round in 0..5 {
            let mut order = rotated(round);
            assert_eq!(order.len(), 3);
            order.sort_by_key(|v| v.name());
            order.dedup();
            assert_eq!(order.len(), 3);
        }
        assert_ne!(rotated(0)[0], rotated(1)[0]);
        assert_eq!(rotated(0), rotated(3));
    }

    #[test]
    fn failures_are_grouped() {
        let mut f = Failures::default();
        f.add("qemu", "timeout");
        f.add("veil", "status 2");
        f.add("qemu", "timeout");
        assert_eq!(
            f.notes(),
            [
                "qemu: failed run: timeout (2 times)",
                "veil: failed run: status 2"
            ]
        );
    }

    #[test]
    fn quick_plan_is_smaller() {
        let (q, f) = (Plan::quick(2), Plan::full(2));
        assert!(q.boot_rounds < f.boot_rounds && q.idle_vms < f.idle_vms);
        assert!(q.rate_window * q.rate_windows as u32 <= f.rate_window * f.rate_windows as u32);
    }
}
