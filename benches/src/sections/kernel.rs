//! Process start -> the guest kernel's `Linux version` console line, Veil against QEMU
//! microvm, both booting the project's uncompressed vmlinux through its PVH entry. The VMM is
//! stopped (SIGTERM) right after the line.

use std::time::Duration;

use crate::bench::{Bench, Failures, RunError};
use crate::launch::{ms_between, Launched};
use crate::report::{Section, Status};
use crate::stats::median_ratio;
use crate::vmm::Vmm;

/// The kernel's first console line.
pub const LINUX_VERSION: &str = "Linux version";
/// Early serial output so the line is printed when the kernel reaches it, not when the
/// console driver registers; `reboot=k` and `panic=-1` end the VM if the kernel gets further.
pub const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1";
const TIMEOUT: Duration = Duration::from_secs(60);

const TITLE: &str = "Linux boot: spawn -> `Linux version` line, project guest kernel";

fn one_run(b: &Bench, vmm: Vmm) -> Option<Result<f64, RunError>> {
    let command = b.tools.linux(vmm, &b.vmlinux, CMDLINE)?;
    Some((|| {
        let mut vm = Launched::spawn(command)?;
        let at = vm.wait_for_line(LINUX_VERSION, TIMEOUT)?;
        vm.signal(libc::SIGTERM);
        vm.wait(Duration::from_secs(10))?;
        Ok(ms_between(vm.spawned_at, at))
    })())
}

pub fn run(b: &Bench) -> Section {
    if !b.vmlinux.is_file() {
        return Section::not_run(
            TITLE,
            Status::Skipped(format!(
                "no guest kernel at {} (build it with guest/build-kernel.sh, or pass --vmlinux)",
                b.vmlinux.display()
            )),
        );
    }
    let mut section = Section::new(TITLE);
    let vmms = [Vmm::Veil, Vmm::Qemu];
    let mut samples = [Vec::new(), Vec::new()];
    let mut failures = Failures::default();
    for round in 0..b.plan.kernel_rounds {
        for i in [round % 2, (round + 1) % 2] {
            match one_run(b, vmms[i]) {
                None => {}
                Some(Ok(ms)) => samples[i].push(ms),
                Some(Err(e)) => failures.add(vmms[i].name(), e),
            }
        }
    }
    let veil = section.figure("veil: spawn -> Linux version", "ms", &samples[0]);
    let qemu = section.figure("qemu microvm: spawn -> Linux version", "ms", &samples[1]);
    section.ratio(
        "veil/qemu, spawn -> Linux version (medians)",
        median_ratio(veil.as_ref(), qemu.as_ref()),
        None,
    );
    section.note(format!(
        "kernel {}, command line `{CMDLINE}`",
        b.vmlinux.display()
    ));
    for n in failures.notes() {
        section.note(n);
    }
    section
}
