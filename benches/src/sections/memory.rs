//! VMM memory overhead: with the idle tiny guest up, the process's RSS minus the resident part
//! of its guest RAM mapping (what the guest and the loader touched), for 1 vCPU / 128 MiB and
//! 2 vCPU / 1 GiB, Veil against QEMU microvm (and the floor where it fits).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bench::{Bench, Failures, RunError, TINY_TIMEOUT};
use crate::guest::IDLE_GREETING;
use crate::launch::Launched;
use crate::proc_mem::{read_proc_mem, ProcMem, ProcMemError};
use crate::report::Section;
use crate::stats::median_ratio;
use crate::vmm::{Shape, Vmm};

/// The two shapes issue 6 asks for.
pub const SHAPES: [Shape; 2] = [
    Shape::SMALL,
    Shape {
        vcpus: 2,
        mem_mib: 1024,
    },
];

/// Goal from issue 6: peak RSS of the VMM with the tiny guest, MiB.
pub const TARGET_PEAK_RSS_MIB: f64 = 3.0;

/// Time for the VMM to finish whatever follows the guest's line before memory is read.
pub const SETTLE: Duration = Duration::from_millis(150);

#[derive(Debug, thiserror::Error)]
enum MemRunError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Launch(#[from] crate::launch::LaunchError),
    #[error(transparent)]
    Proc(#[from] ProcMemError),
}

/// Starts the idle guest, waits for its line, reads its memory and stops it with SIGTERM.
/// VmHWM (the peak since exec) read while the guest idles is the VMM's peak RSS for this
/// guest: what follows (stop and teardown) frees memory rather than adding any.
pub fn measure_idle(
    b: &Bench,
    vmm: Vmm,
    shape: Shape,
) -> Option<Result<ProcMem, Box<dyn std::error::Error>>> {
    let command = b.tools.tiny_guest(vmm, &b.idle_guest, shape)?;
    Some(
        (|| -> Result<_, MemRunError> {
            let mut vm = Launched::spawn(command)?;
            vm.wait_for_line(IDLE_GREETING, TINY_TIMEOUT)?;
            std::thread::sleep(SETTLE);
            let mem = read_proc_mem(vm.pid(), shape.mem_mib << 20)?;
            vm.signal(libc::SIGTERM);
            vm.wait(TINY_TIMEOUT)?;
            Ok(mem)
        })()
        .map_err(Into::into),
    )
}

#[derive(Default)]
struct Samples {
    rss: Vec<f64>,
    guest: Vec<f64>,
    overhead: Vec<f64>,
    peak: Vec<f64>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn run(b: &Bench) -> Section {
    let mut section =
        Section::new("Memory: idle tiny guest, VMM overhead beyond touched guest RAM");
    let mut failures = Failures::default();
    for shape in SHAPES {
        let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
        for round in 0..b.plan.memory_rounds {
            for vmm in crate::bench::rotated(round) {
                match measure_idle(b, vmm, shape) {
                    None => {}
                    Some(Ok(mem)) => {
                        let s = samples.entry(vmm.name()).or_default();
                        s.rss.push(mib(mem.rss_kib));
                        s.guest.push(mib(mem.guest_rss_kib));
                        s.overhead.push(mib(mem.overhead_kib()));
                        s.peak.push(mib(mem.hwm_kib));
                    }
                    Some(Err(e)) => failures.add(format!("{} ({})", vmm.name(), shape.label()), e),
                }
            }
        }
        let label = shape.label();
        let mut overhead = BTreeMap::new();
        for vmm in Vmm::ALL {
            let Some(s) = samples.get(vmm.name()) else {
                continue;
            };
            let who = format!("{}, {label}", vmm.name());
            section.figure(format!("{who}: RSS"), "MiB", &s.rss);
            section.figure(format!("{who}: guest RAM resident"), "MiB", &s.guest);
            overhead.insert(
                vmm.name(),
                section.figure(
                    format!("{who}: overhead (RSS - guest RAM)"),
                    "MiB",
                    &s.overhead,
                ),
            );
            let peak = section.figure(format!("{who}: peak RSS (VmHWM)"), "MiB", &s.peak);
            if vmm == Vmm::Veil && shape == Shape::SMALL {
                if let Some(p) = peak {
                    section.note(format!(
                        "veil peak RSS, {label}: median {:.2} MiB against the target of < {TARGET_PEAK_RSS_MIB} MiB: {}",
                        p.median,
                        if p.median < TARGET_PEAK_RSS_MIB { "met" } else { "not met" }
                    ));
                }
            }
        }
        let get = |v: Vmm| overhead.get(v.name()).copied().flatten();
        section.ratio(
            format!("veil/qemu overhead, {label} (medians)"),
            median_ratio(get(Vmm::Veil).as_ref(), get(Vmm::Qemu).as_ref()),
            None,
        );
    }
    section.note("RSS is VmRSS while the guest idles; guest RAM resident is the Rss of the anonymous mapping(s) of guest size in /proc/PID/smaps; peak RSS is VmHWM read at the same time (wait4's ru_maxrss would include the harness's own RSS, folded in at exec)");
    section.note("the floor has one vCPU and appears only in the 1 vCPU rows");
    for n in failures.notes() {
        section.note(n);
    }
    section
}
