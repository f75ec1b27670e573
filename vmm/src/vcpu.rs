//! vCPU threads: run the guest, dispatch its I/O exits to the buses, and report how it ended.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd};
use veil_devices::bus::Bus;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::snp_launch::kvm::PageConverter;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset through the i8042 controller (Linux `reboot`).
    GuestReset,
    /// The guest kernel panicked: it reset the machine with the BIOS warm-reset flag set,
    /// which Linux does for a panic when booted with `reboot=panic_warm` (veil's default
    /// command line has it) and never for an ordinary cold `reboot`.
    GuestPanicked,
    /// The guest asked for power-off or reset through a KVM system event.
    GuestSystemEvent { kind: u32 },
    /// The embedding program (or a signal to the `veil` process) asked the VM to stop.
    StopRequested,
    /// A vCPU triple-faulted: the guest crashed (or rebooted the hard way). No registers for
    /// an SEV-SNP guest: its state is encrypted.
    TripleFault {
        vcpu: u32,
        regs: Option<RegisterDump>,
    },
    /// A vCPU exit the VMM cannot continue from.
    VcpuFault {
        vcpu: u32,
        reason: String,
        regs: Option<RegisterDump>,
    },
}

impl VmExit {
    /// Whether the guest ended the VM itself, normally.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            Self::GuestReset | Self::GuestSystemEvent { .. } | Self::StopRequested
        )
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GuestReset => write!(f, "guest reset through the i8042 controller"),
            Self::GuestPanicked => write!(
                f,
                "the guest kernel panicked (it reset the machine with the warm-reset flag \
                 that reboot=panic_warm sets for panics; its console has the panic message)"
            ),
            Self::GuestSystemEvent { kind } => {
                write!(f, "guest system event {kind} (power-off/reset)")
            }
            Self::StopRequested => write!(f, "stopped on request"),
            Self::TripleFault {
                vcpu,
                regs: Some(regs),
            } => write!(f, "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN); {regs}"),
            Self::TripleFault { vcpu, regs: None } => write!(
                f,
                "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN); registers unavailable"
            ),
            Self::VcpuFault {
                vcpu,
                reason,
                regs: Some(regs),
            } => write!(f, "vCPU {vcpu}: {reason}; {regs}"),
            Self::VcpuFault {
                vcpu,
                reason,
                regs: None,
            } => write!(f, "vCPU {vcpu}: {reason}"),
        }
    }
}

/// The registers worth seeing when a vCPU dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterDump {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: u16,
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.rip, self.rsp, self.rflags, self.rax, self.cs, self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )
    }
}

/// The vCPU's registers, or None where KVM cannot report them (an SEV-SNP guest's state is
/// encrypted after its launch).
fn dump(vcpu: &VcpuFd) -> Option<RegisterDump> {
    let regs = vcpu.get_regs().ok()?;
    let sregs = vcpu.get_sregs().ok()?;
    Some(RegisterDump {
        rip: regs.rip,
        rsp: regs.rsp,
        rflags: regs.rflags,
        rax: regs.rax,
        cr0: sregs.cr0,
        cr2: sregs.cr2,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        cs: sregs.cs.selector,
    })
}

/// Records the first reason the VM must end and wakes the event loop.
pub struct ExitLatch {
    reason: Mutex<Option<VmExit>>,
    pub event: EventFd,
}

impl ExitLatch {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets the exit reason unless one is already set.
    pub fn set(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
        }
        drop(reason);
        if let Err(e) = self.event.write(1) {
            tracing::error!("cannot wake the event loop: {e}");
        }
    }

    pub fn take(&self) -> Option<VmExit> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What all vCPU threads share.
pub struct VcpuShared {
    pub pio: Bus,
    pub mmio: Bus,
    pub exit: ExitLatch,
    /// Private <-> shared page conversion, for an SEV-SNP guest.
    pub page_converter: Option<PageConverter>,
    /// Set by the VMM when the VM ends, and by a guest's reset request.
    pub stopping: Arc<AtomicBool>,
    pub first_run: OnceLock<Instant>,
}

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the (empty) handler for the kick signal, once per process. The signal's only job
/// is to make KVM_RUN return EINTR.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    *INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), on_kick))
}

/// One vCPU and its run loop.
pub struct Vcpu {
    pub id: u32,
    pub fd: VcpuFd,
    pub shared: Arc<VcpuShared>,
}

/// A KVM_EXIT_SYSTEM_EVENT: shutdown and reset end the VM cleanly; a crash report or an SEV
/// guest's termination request (GHCB MSR protocol: reason set in bits 15:12, reason code in
/// bits 23:16 of the value KVM passes in `data[0]`) is a guest failure.
fn system_event(vcpu: u32, kind: u32, data: &[u64]) -> Step {
    let reason = match kind {
        kvm_bindings::KVM_SYSTEM_EVENT_CRASH => "the guest reported a crash".to_string(),
        kvm_bindings::KVM_SYSTEM_EVENT_SEV_TERM => {
            let ghcb = data.first().copied().unwrap_or(0);
            format!(
                "the SEV guest asked to be terminated (GHCB reason set {}, code {:#x})",
                (ghcb >> 12) & 0xf,
                (ghcb >> 16) & 0xff
            )
        }
        _ => return Step::Exit(VmExit::GuestSystemEvent { kind }),
    };
    Step::Exit(VmExit::VcpuFault {
        vcpu,
        reason,
        regs: None,
    })
}

/// What one KVM_RUN ended with, detached from the borrowed kvm_run area.
enum Step {
    Continue,
    Exit(VmExit),
}

impl Vcpu {
    /// Runs the guest until the VM stops. Returns the fd so its closing happens on join.
    pub fn run(mut self) -> VcpuFd {
        while !self.shared.stopping.load(Ordering::Acquire) {
            if self.id == 0 {
                self.shared.first_run.get_or_init(Instant::now);
            }
            match self.step() {
                Step::Continue => {}
                Step::Exit(exit) => {
                    self.shared.exit.set(exit);
                    break;
                }
            }
        }
        self.fd
    }

    fn step(&mut self) -> Step {
        let shared = &self.shared;
        let id = self.id;
        let fault = |reason: String| {
            Step::Exit(VmExit::VcpuFault {
                vcpu: id,
                reason,
                regs: None,
            })
        };
        let step = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !shared.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !shared.pio.write(u64::from(port), data) {
                    tracing::trace!("write to unclaimed port {port:#x}");
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !shared.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !shared.mmio.write(addr, data) {
                    tracing::debug!("write to unclaimed MMIO address {addr:#x}");
                }
                Step::Continue
            }
            Ok(VcpuExit::Shutdown) => Step::Exit(VmExit::TripleFault {
                vcpu: id,
                regs: None,
            }),
            Ok(VcpuExit::SystemEvent(kind, data)) => system_event(id, kind, data),
            Ok(VcpuExit::Hypercall(call)) => match &shared.page_converter {
                Some(pages) => match pages.hypercall(call.nr, call.args) {
                    Ok(ret) => {
                        *call.ret = ret;
                        Step::Continue
                    }
                    Err(e) => fault(e.to_string()),
                },
                None => fault(format!("unexpected hypercall {} exit", call.nr)),
            },
            Ok(VcpuExit::MemoryFault { flags, gpa, size }) => match &shared.page_converter {
                Some(pages) => match pages.memory_fault(gpa, size, flags) {
                    Ok(()) => Step::Continue,
                    Err(e) => fault(e.to_string()),
                },
                None => fault(format!(
                    "memory fault at GPA {gpa:#x}+{size:#x} in a VM without private memory"
                )),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => fault(format!(
                "KVM could not enter the guest (hardware reason {reason:#x} on CPU {cpu})"
            )),
            Ok(VcpuExit::InternalError) => fault("KVM internal error".to_string()),
            Ok(VcpuExit::Hlt) => {
                fault("guest halted with no in-kernel interrupt controller to wake it".to_string())
            }
            Ok(other) => fault(format!("unexpected KVM exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => fault(format!("KVM_RUN failed: {e}")),
        };
        self.with_details(step)
    }

    /// Adds what can only be read after the exit's borrow of kvm_run ended: the internal
    /// error's suberror and the registers.
    fn with_details(&mut self, step: Step) -> Step {
        match step {
            Step::Exit(VmExit::TripleFault { vcpu, .. }) => Step::Exit(VmExit::TripleFault {
                vcpu,
                regs: dump(&self.fd),
            }),
            Step::Exit(VmExit::VcpuFault {
                vcpu,
                mut reason,
                regs: None,
            }) => {
                let run = self.fd.get_kvm_run();
                if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
                    // SAFETY: exit_reason says the `internal` member of the union is valid.
                    let internal = unsafe { run.__bindgen_anon_1.internal };
                    let kind = match internal.suberror {
                        1 => "emulation failure",
                        2 => "simultaneous exceptions",
                        3 => "delivery event failure",
                        _ => "unknown",
                    };
                    reason = format!("{reason}, suberror {} ({kind})", internal.suberror);
                }
                Step::Exit(VmExit::VcpuFault {
                    vcpu,
                    reason,
                    regs: dump(&self.fd),
                })
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_of(step: Step) -> VmExit {
        match step {
            Step::Exit(exit) => exit,
            Step::Continue => panic!("a system event must end the VM"),
        }
    }

    #[test]
    fn shutdown_and_reset_events_are_clean_and_crashes_are_not() {
        for kind in [
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET,
        ] {
            assert!(exit_of(system_event(0, kind, &[])).is_clean());
        }
        let crash = exit_of(system_event(1, kvm_bindings::KVM_SYSTEM_EVENT_CRASH, &[]));
        assert!(!crash.is_clean());
        assert!(crash
            .to_string()
            .contains("vCPU 1: the guest reported a crash"));
    }

    /// Linux's SNP code terminates with reason set 1 (the Linux set) and e.g. code 3 when the
    /// hypervisor lacks a feature: GHCB MSR value 0x0003_1100 (request 0x100, set 1, code 3).
    #[test]
    fn sev_termination_names_the_guest_reason() {
        let exit = exit_of(system_event(
            0,
            kvm_bindings::KVM_SYSTEM_EVENT_SEV_TERM,
            &[0x0003_1100],
        ));
        assert!(!exit.is_clean());
        let msg = exit.to_string();
        assert!(msg.contains("GHCB reason set 1, code 0x3"), "{msg}");
    }
}
