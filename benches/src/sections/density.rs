//! Density and rate: how many tiny-guest VMs start and finish per second per core with N
//! running side by side, and the memory each idle VM costs with many up at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::bench::{expect_exit, Bench, Failures, RunError, TINY_TIMEOUT};
use crate::guest::IDLE_GREETING;
use crate::launch::{ms_between, Launched};
use crate::proc_mem::read_proc_mem;
use crate::report::Section;
use crate::vmm::{Shape, Vmm};

/// Goal from issue 6: VMs started and finished per core per second.
pub const TARGET_RATE_PER_CORE: f64 = 20.0;

/// VMs per second per core over `window`, given `completed` VMs on `cores` cores.
pub fn rate_per_core(completed: usize, window: Duration, cores: usize) -> f64 {
    completed as f64 / window.as_secs_f64() / cores.max(1) as f64
}

/// Runs `parallel` workers, each booting the exit guest back to back until `window` ends;
/// counts VMs that exited cleanly by then.
fn one_window(b: &Bench, vmm: Vmm, parallel: usize, failures: &mut Failures) -> usize {
    let completed = AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::<RunError>::new());
    let start = Instant::now();
    let end = start + b.plan.rate_window;
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                while Instant::now() < end {
                    let Some(command) = b.tools.tiny_guest(vmm, &b.exit_guest, Shape::SMALL) else {
                        return;
                    };
                    let result = Launched::spawn(command)
                        .map_err(RunError::from)
                        .and_then(|mut vm| expect_exit(&mut vm, vmm.clean_exit_status()));
                    match result {
                        Ok(ended) if ended.at <= end => {
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).push(e),
                    }
                }
            });
        }
    });
    for e in errors.into_inner().unwrap_or_else(|p| p.into_inner()) {
        failures.add(format!("{} x{parallel}", vmm.name()), e);
    }
    completed.into_inner()
}

fn start_rate(b: &Bench, section: &mut Section, failures: &mut Failures) {
    for &parallel in &b.plan.rate_parallel {
        for vmm in [Vmm::Veil, Vmm::Floor] {
            let samples: Vec<f64> = (0..b.plan.rate_windows)
                .map(|_| {
                    let n = one_window(b, vmm, parallel, failures);
                    rate_per_core(n, b.plan.rate_window, b.cores)
                })
                .collect();
            section.figure(
                format!(
                    "{}: VMs started+finished per core per second, {parallel} in parallel",
                    vmm.name()
                ),
                "VMs/s/core",
                &samples,
            );
        }
    }
    section.note(format!(
        "rate: {} windows of {:?} per row, {} cores; each VM boots the tiny exit guest (1 vCPU / 128 MiB) with its console piped to the harness; target: veil >= {TARGET_RATE_PER_CORE} VMs/s/core",
        b.plan.rate_windows, b.plan.rate_window, b.cores
    ));
}

fn idle_density(b: &Bench, section: &mut Section, failures: &mut Failures) {
    let n = b.plan.idle_vms;
    let start = Instant::now();
    let mut vms = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(command) = b.tools.tiny_guest(Vmm::Veil, &b.idle_guest, Shape::SMALL) else {
            return;
        };
        match Launched::spawn(command) {
            Ok(vm) => vms.push(vm),
            Err(e) => failures.add("veil idle", e),
        }
    }
    vms.retain_mut(|vm| match vm.wait_for_line(IDLE_GREETING, TINY_TIMEOUT) {
        Ok(_) => true,
        Err(e) => {
            failures.add("veil idle", e);
            false
        }
    });
    let all_up_ms = ms_between(start, Instant::now());
    std::thread::sleep(super::memory::SETTLE);
    let (mut rss, mut pss) = (Vec::new(), Vec::new());
    for vm in &vms {
        match read_proc_mem(vm.pid(), Shape::SMALL.mem_mib << 20) {
            Ok(m) => {
                rss.push(m.rss_kib as f64 / 1024.0);
                pss.push(m.pss_kib as f64 / 1024.0);
            }
            Err(e) => failures.add("veil idle", e),
        }
    }
    for vm in &vms {
        vm.signal(libc::SIGTERM);
    }
    let clean = vms
        .iter_mut()
        .map(|vm| vm.wait(TINY_TIMEOUT))
        .filter(|ended| matches!(ended, Ok(e) if e.status == 128 + libc::SIGTERM))
        .count();
    let up = vms.len();
    section.figure(format!("veil: {up} idle VMs up: RSS per VM"), "MiB", &rss);
    section.figure(format!("veil: {up} idle VMs up: PSS per VM"), "MiB", &pss);
    section.figure(
        format!("veil: spawn -> all {up} idle VMs printed their line"),
        "ms",
        &[all_up_ms],
    );
    section.note(format!(
        "idle density: {n} veil processes started at once with the idle guest (1 vCPU / 128 MiB); {up} came up; {clean} exited with status 143 on SIGTERM; PSS shares the veil binary's pages between processes"
    ));
}

pub fn run(b: &Bench) -> Section {
    let mut section = Section::new("Density and start rate: tiny guests");
    let mut failures = Failures::default();
    start_rate(b, &mut section, &mut failures);
    idle_density(b, &mut section, &mut failures);
    for n in failures.notes() {
        section.note(n);
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_per_second_and_per_core() {
        assert_eq!(rate_per_core(60, Duration::from_secs(3), 2), 10.0);
        assert_eq!(rate_per_core(0, Duration::from_secs(1), 2), 0.0);
        assert_eq!(rate_per_core(5, Duration::from_millis(500), 0), 10.0);
    }
}
