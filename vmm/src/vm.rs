//! A VM's lifecycle: build everything from a [`VmConfig`], run until the guest or the
//! embedding program ends it, and tear everything down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use veil_devices::bus::Bus;
use veil_devices::i8042::{self, ResetController};
use veil_devices::serial::{self, SerialConsole};
use veil_devices::EventFdTrigger;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::config::{ConfigError, Console, KernelSource, VmConfig};
use crate::console::{self, ConsoleError};
use crate::devices::{self, Attached, DeviceError, DiskHandle};
use crate::event_loop::{Control, StdinForwarder, Wake};
use crate::memory::{GuestRam, MemoryError, RamBacking};
use crate::seccomp::{self, SeccompError, SeccompLevel, ThreadKind};
use crate::snp_launch::kvm::{PageConverter, SnpKvm};
use crate::snp_launch::{
    self, model, vcpu_state, GuestFacts, LaunchInputs, SnpConfig, SnpFirmware, SnpLaunch,
    SnpLaunchError,
};
use crate::vcpu::{self, ExitLatch, Vcpu, VcpuShared, VmExit};
use crate::x86_64::boot::{self, BootError};
use crate::x86_64::cpuid::vcpu_cpuid;
use crate::x86_64::layout::{
    BIOS_WARM_RESET, BIOS_WARM_RESET_FLAG, KVM_IDENTITY_MAP_START, KVM_TSS_START,
};
use crate::x86_64::mptable::{self, MptableError};
use crate::x86_64::regs::EntryMode;
use crate::x86_64::regs::{self, RegsError};
use crate::x86_64::supported_cpuid::SupportedCpuid;
use veil_snp::igvm::LaunchPlan;
use veil_snp::vmsa::Vmsa;

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path} does not exist: this host has no KVM (load the kvm_intel or kvm_amd module, or enable virtualization)")]
    KvmMissing { path: PathBuf },
    #[error("permission denied opening {path}: run as root or add the user to the group that owns it (usually `kvm`)")]
    KvmPermission { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    KvmOpen {
        path: PathBuf,
        source: kvm_ioctls::Error,
    },
    #[error("{requested} vCPUs requested, but KVM on this host supports at most {max} per VM")]
    TooManyVcpus { requested: u32, max: u32 },
    #[error("KVM refused to {action}: {source}")]
    Kvm {
        action: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Snp(#[from] SnpLaunchError),
    #[error("cannot create an event fd or thread for the VM: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("the event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("the event loop thread panicked")]
    EventLoopPanicked,
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

fn kvm_err(action: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { action, source }
}

/// When each stage of the VM's life was reached, measured from the start instant given to
/// [`Vm::with_start`] (the process start for the `veil` binary).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootTimings {
    /// KVM VM, memory, kernel and vCPUs ready.
    pub vm_created: Duration,
    /// The boot vCPU's first KVM_RUN: the guest's first instruction follows immediately.
    pub first_vcpu_run: Option<Duration>,
    /// The guest's first console byte.
    pub first_console_output: Option<Duration>,
    /// The guest's boot-timer write, when the boot timer is attached and was hit.
    pub boot_timer: Option<Duration>,
    /// All vCPU threads joined and the VM torn down.
    pub exited: Duration,
}

/// How a VM ended and how long each stage took.
#[derive(Debug, Clone, PartialEq)]
pub struct VmOutcome {
    pub exit: VmExit,
    pub timings: BootTimings,
}

/// Stops a running VM from any thread.
#[derive(Clone)]
pub struct StopHandle(Arc<EventFd>);

impl StopHandle {
    /// Asks the VM to stop; [`Vm::run`] returns [`VmExit::StopRequested`] soon after.
    pub fn stop(&self) {
        if let Err(e) = self.0.write(1) {
            tracing::error!("cannot signal the VM to stop: {e}");
        }
    }
}

/// A VM ready to run.
pub struct Vm {
    // Field order is drop order: vCPUs before the VM fd, the VM fd and the vCPUs' shared
    // state (which converts pages of `ram`) before the memory.
    vcpus: Vec<VcpuFd>,
    shared: Arc<VcpuShared>,
    vm_fd: Arc<VmFd>,
    ram: GuestRam,
    serial: Arc<Mutex<SerialConsole>>,
    forward_stdin: bool,
    reset: EventFdTrigger,
    stop: Arc<EventFd>,
    start: Instant,
    vm_created: Instant,
    first_console_byte: Arc<OnceLock<Instant>>,
    devices: Attached,
    cmdline: String,
    snp_launch: Option<SnpLaunch>,
    seccomp: SeccompLevel,
}

impl Vm {
    /// Builds a VM, timing from now.
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        Self::with_start(config, Instant::now())
    }

    /// Builds a VM, timing its stages from `start`.
    pub fn with_start(mut config: VmConfig, start: Instant) -> Result<Self, VmError> {
        config.validate()?;
        // An SNP launch is refused before anything is created when the host cannot do it.
        let snp = match &config.kernel {
            KernelSource::Igvm(path) => Some(SnpBoot::prepare(path, config.snp.clone())?),
            _ => None,
        };
        let kvm = open_kvm(&config.kvm_device)?;
        let supported = SupportedCpuid::start(&kvm);
        let max = kvm.get_max_vcpus() as u32;
        if config.vcpus > max {
            return Err(VmError::TooManyVcpus {
                requested: config.vcpus,
                max,
            });
        }
        let sev = snp.as_ref().and_then(|boot| boot.sev.as_ref());
        let vm_fd = Arc::new(match (&snp, sev) {
            (Some(boot), Some(sev)) => sev.create_vm(&kvm, &boot.plan)?,
            _ => kvm.create_vm().map_err(kvm_err("create a VM"))?,
        });
        let confidential = sev.is_some();
        let mem_bytes = config.mem_bytes();
        // Memory before the interrupt controllers: on the hosts measured, each of these waits
        // for a KVM SRCU grace period, and this order waits least (benches/README.md).
        let backing = if confidential {
            RamBacking::SharedAndPrivate
        } else {
            RamBacking::Shared
        };
        let ram = GuestRam::create(&vm_fd, config.mem_mib, backing)?;
        let memory = ram.mmap();
        setup_vm(&vm_fd)?;

        let mut mmio = Bus::new();
        let devices = devices::attach(
            &vm_fd,
            memory,
            &mut mmio,
            devices::Wanted {
                disks: std::mem::take(&mut config.disks),
                vsock: config.vsock.take(),
                nets: std::mem::take(&mut config.nets),
            },
            config.boot_timer.then_some(start),
            confidential,
        )?;
        let supported = supported
            .get(&kvm)
            .map_err(kvm_err("report its supported CPUID"))?;
        let cpuids: Vec<CpuId> = (0..config.vcpus)
            .map(|id| vcpu_cpuid(&supported, id, config.vcpus, config.cpu_template))
            .collect();
        let cmdline = config.full_cmdline(&devices.cmdline_args)?;
        let facts = GuestFacts {
            mem_bytes,
            vcpus: config.vcpus,
            cmdline: &cmdline,
            cpuid: &cpuids[0],
        };
        let (entry, mut snp_launch) = load_guest(&config, memory, snp.as_ref(), &facts)?;
        let vcpus = create_vcpus(&vm_fd, &cpuids, &entry)?;
        let mut page_converter = None;
        if let (Some(boot), Some(sev), BootEntry::Snp(inputs)) = (&snp, sev, &entry) {
            snp_launch = Some(sev.launch(&vm_fd, &ram, &boot.plan, inputs, &facts)?);
            // SAFETY: the converter lives in `shared`, which the Vm drops before `ram` (field
            // order), and the vCPU threads holding clones of `shared` are joined in `run`.
            page_converter = Some(unsafe { PageConverter::new(vm_fd.clone(), &ram, mem_bytes) });
        }
        if let (Some(boot), Some(launch)) = (&snp, snp_launch.as_mut()) {
            if !boot.plan.takes_command_line() {
                launch.device_args_not_passed = devices.cmdline_args.clone();
            }
        }

        let first_console_byte = Arc::new(OnceLock::new());
        let forward_stdin = matches!(config.console, Console::Stdout);
        let out = console::open(config.console, first_console_byte.clone())?;
        let serial_irq = EventFdTrigger::new()?;
        vm_fd
            .register_irqfd(&serial_irq, serial::COM1_IRQ)
            .map_err(kvm_err("register the serial IRQ"))?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(serial_irq, Box::new(out))));
        let reset = EventFdTrigger::new()?;
        let mut pio = Bus::new();
        pio.insert(serial.clone(), serial::COM1_PORT, serial::PORT_LEN)
            .expect("empty bus");
        // A guest reset stops the vCPUs at their next exit, before the event loop ends the VM.
        let stopping = Arc::new(AtomicBool::new(false));
        let i8042 = Arc::new(Mutex::new(ResetController::new(
            reset.try_clone()?,
            stopping.clone(),
        )));
        pio.insert(i8042, i8042::I8042_PORT, i8042::PORT_LEN)
            .expect("disjoint from COM1");

        let shared = Arc::new(VcpuShared {
            pio,
            mmio,
            exit: ExitLatch::new()?,
            page_converter,
            stopping,
            first_run: OnceLock::new(),
        });
        Ok(Self {
            vcpus,
            vm_fd,
            ram,
            shared,
            serial,
            forward_stdin,
            reset,
            stop: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            start,
            vm_created: Instant::now(),
            first_console_byte,
            devices,
            cmdline,
            snp_launch,
            seccomp: config.seccomp,
        })
    }

    /// A handle that stops the VM from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Guest memory, for embedding programs that inspect or prepare it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.mmap()
    }

    /// Handles on the virtio-blk drives, in configuration order, for swapping their backing
    /// files while the VM runs.
    pub fn disks(&self) -> Vec<DiskHandle> {
        self.devices.disks.clone()
    }

    /// The command line the guest was given (the configured one plus device arguments).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// How an IGVM guest was launched: the digest the insecure model measured, or for a
    /// launch through KVM the digest Veil expects in the guest's attestation report.
    pub fn snp_launch(&self) -> Option<&SnpLaunch> {
        self.snp_launch.as_ref()
    }

    /// The KVM VM, for registering further devices.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Runs the guest until it resets or powers off, a vCPU fails, or [`StopHandle::stop`]
    /// is called. All vCPU threads are joined before this returns.
    ///
    /// With seccomp ([`VmConfig::seccomp`] other than [`SeccompLevel::Off`]) every vCPU
    /// thread installs its filter before its first KVM_RUN, and the device event loop runs on
    /// its own thread (`veil-events`) under its filter instead of on the calling thread: a
    /// filter is permanent, and the caller of a library may have other work to do once the VM
    /// ends. Only [`SeccompLevel::AllThreads`] filters the calling thread too, once the VM's
    /// threads exist. No vCPU runs before the event loop's (and the caller's) filter is in.
    pub fn run(mut self) -> Result<VmOutcome, VmError> {
        vcpu::install_kick_handler().map_err(VmError::Signal)?;
        let filters = match self.seccomp {
            SeccompLevel::Off => None,
            _ => Some(Arc::new(seccomp::Filters::new()?)),
        };
        let gate = Arc::new(StartGate::default());
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (id, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let vcpu = Vcpu {
                id: id as u32,
                fd,
                shared: self.shared.clone(),
            };
            let filters = filters.clone();
            let vcpu_gate = gate.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("veil-vcpu{id}"))
                .spawn(move || {
                    if let Some(filters) = filters {
                        if let Err(e) = seccomp::apply(ThreadKind::Vcpu, &filters.vcpu) {
                            vcpu.shared.exit.set(VmExit::VcpuFault {
                                vcpu: vcpu.id,
                                reason: e.to_string(),
                                regs: None,
                            });
                            return vcpu.fd;
                        }
                    }
                    if !vcpu_gate.wait() {
                        return vcpu.fd;
                    }
                    vcpu.run()
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    gate.open(false);
                    self.stop_vcpus(threads);
                    return Err(VmError::Io(e));
                }
            }
        }
        let parts = match self.event_loop_parts() {
            Ok(parts) => parts,
            Err(e) => {
                gate.open(false);
                self.stop_vcpus(threads);
                return Err(e);
            }
        };
        let result = match filters {
            None => {
                gate.open(true);
                event_loop(parts)
            }
            Some(filters) => self.run_filtered_event_loop(parts, &filters, &gate),
        };
        self.stop_vcpus(threads);
        let wake = result?;
        let exit = match wake {
            Wake::Reset => self.reset_exit(),
            Wake::Stop => VmExit::StopRequested,
            Wake::VcpuExit => self.shared.exit.take().unwrap_or(VmExit::StopRequested),
        };
        let since = |t: Instant| t.saturating_duration_since(self.start);
        Ok(VmOutcome {
            exit,
            timings: BootTimings {
                vm_created: since(self.vm_created),
                first_vcpu_run: self.shared.first_run.get().copied().map(since),
                first_console_output: self.first_console_byte.get().copied().map(since),
                boot_timer: self.devices.boot_time.as_ref().and_then(|t| t.get()),
                exited: since(Instant::now()),
            },
        })
    }

    /// Runs the event loop on a filtered `veil-events` thread, filters the calling thread for
    /// [`SeccompLevel::AllThreads`], lets the vCPUs start and waits for the loop to end.
    fn run_filtered_event_loop(
        &self,
        parts: LoopParts,
        filters: &seccomp::Filters,
        gate: &StartGate,
    ) -> Result<Wake, VmError> {
        let (installed_tx, installed) = std::sync::mpsc::channel();
        let program = filters.event_loop.clone();
        let spawned = std::thread::Builder::new()
            .name("veil-events".into())
            .spawn(move || {
                let installed = seccomp::apply(ThreadKind::EventLoop, &program);
                let ok = installed.is_ok();
                let _ = installed_tx.send(installed);
                if ok {
                    event_loop(parts)
                } else {
                    Ok(Wake::Stop)
                }
            });
        let events = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                gate.open(false);
                return Err(VmError::Io(e));
            }
        };
        // This thread's filter goes in while the event loop's thread installs its own: each
        // install costs tens of microseconds, and the vCPUs wait for both.
        let own = match self.seccomp {
            SeccompLevel::AllThreads => seccomp::apply(ThreadKind::Main, &filters.main),
            _ => Ok(()),
        };
        let events_ready = match installed.recv() {
            Ok(result) => result,
            // The thread died before reporting: its join below tells why.
            Err(_) => Ok(()),
        };
        let ready = events_ready.and(own);
        if ready.is_err() {
            StopHandle(self.stop.clone()).stop();
        }
        gate.open(ready.is_ok());
        let result = match events.join() {
            Ok(result) => result,
            Err(_) => Err(VmError::EventLoopPanicked),
        };
        ready?;
        result
    }

    /// Tells a panic from an ordinary restart by the BIOS warm-reset flag (the word at
    /// 0x472 in the BIOS data area, 0x1234 = warm) that Linux writes just before resetting:
    /// warm only for a panic under `reboot=panic_warm`, cold (0) for `reboot`. An SEV-SNP
    /// guest's memory is private, so its flag cannot be read: its resets are just resets.
    fn reset_exit(&self) -> VmExit {
        if self.snp_launch.is_some() {
            return VmExit::GuestReset;
        }
        let flag = self
            .memory()
            .read_obj::<u16>(GuestAddress(BIOS_WARM_RESET_FLAG));
        match flag {
            Ok(BIOS_WARM_RESET) => VmExit::GuestPanicked,
            _ => VmExit::GuestReset,
        }
    }

    /// What the event loop needs, owned, so that it can run on another thread.
    fn event_loop_parts(&self) -> Result<LoopParts, VmError> {
        Ok(LoopParts {
            sources: vec![
                (self.shared.exit.event.try_clone()?, Wake::VcpuExit),
                (EventFd::try_clone(&self.reset)?, Wake::Reset),
                (self.stop.try_clone()?, Wake::Stop),
            ],
            subscribers: self.devices.subscribers.clone(),
            stdin: self.forward_stdin.then(|| self.serial.clone()),
        })
    }

    /// Tells every vCPU thread to stop, kicks them out of KVM_RUN until they do, and joins
    /// them. A kick can land just before a thread enters KVM_RUN, hence the repetition.
    fn stop_vcpus(&self, threads: Vec<JoinHandle<VcpuFd>>) {
        self.shared.stopping.store(true, Ordering::Release);
        while threads.iter().any(|t| !t.is_finished()) {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(vcpu::kick_signal());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        let mut serial = lock(&self.serial);
        let _ = serial.flush_output();
    }
}

/// The event loop's inputs: the VM's own wake-up events, the device subscribers and, for
/// a console on stdout, the serial port stdin feeds.
struct LoopParts {
    sources: Vec<(EventFd, Wake)>,
    subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    stdin: Option<Arc<Mutex<SerialConsole>>>,
}

/// Runs the device event loop until something wakes the VM.
fn event_loop(parts: LoopParts) -> Result<Wake, VmError> {
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(VmError::EventLoop)?;
    let control = Arc::new(Mutex::new(Control::new(parts.sources)));
    manager.add_subscriber(control.clone());
    for device in parts.subscribers {
        manager.add_subscriber(device);
    }
    let stdin = match parts.stdin {
        Some(serial) => {
            let forwarder = Arc::new(Mutex::new(StdinForwarder::new(serial)?));
            manager.add_subscriber(forwarder.clone());
            Some(forwarder)
        }
        None => None,
    };
    loop {
        let waiting = stdin.as_ref().is_some_and(|f| lock(f).waiting_for_room());
        manager
            .run_with_timeout(if waiting { 10 } else { -1 })
            .map_err(VmError::EventLoop)?;
        if let Some(wake) = lock(&control).woken {
            return Ok(wake);
        }
        if let Some(f) = stdin.as_ref().filter(|f| lock(f).waiting_for_room()) {
            lock(f).poll_room();
        }
    }
}

/// Holds the vCPU threads (filters installed) until every other filter is in place, or
/// sends them home when the VM could not start.
#[derive(Default)]
struct StartGate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    fn open(&self, go: bool) {
        *lock(&self.state) = Some(go);
        self.opened.notify_all();
    }

    /// Whether the vCPU may run.
    fn wait(&self) -> bool {
        let mut state = lock(&self.state);
        loop {
            if let Some(go) = *state {
                return go;
            }
            state = self.opened.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Where the vCPUs start.
enum BootEntry {
    /// A Linux boot protocol entry, registers set up by the VMM; APs wait for INIT-SIPI.
    Linux(EntryMode),
    /// The boot vCPU from an IGVM file's VMSA, run unencrypted (the model backend); APs wait
    /// for INIT-SIPI.
    Vmsa(Box<Vmsa>),
    /// Every vCPU from the VMSA the SNP launch measures for it.
    Snp(LaunchInputs),
}

/// An IGVM guest to launch the SEV-SNP way.
struct SnpBoot {
    plan: LaunchPlan,
    config: SnpConfig,
    /// `/dev/sev`, when the launch goes through KVM.
    sev: Option<SnpKvm>,
}

impl SnpBoot {
    /// Checks the host (for a KVM launch) and reads the IGVM file.
    fn prepare(path: &Path, config: Option<SnpConfig>) -> Result<Self, VmError> {
        let config = config.unwrap_or_else(SnpConfig::kvm_default);
        let sev = match config.firmware {
            SnpFirmware::Kvm => {
                snp_launch::check_kvm_host()?;
                Some(SnpKvm::open()?)
            }
            SnpFirmware::Model => None,
        };
        Ok(Self {
            plan: snp_launch::load_plan(path)?,
            config,
            sev,
        })
    }
}

/// Puts the guest in memory: a Linux kernel with its boot structures, or an IGVM file
/// launched the SNP way. For a launch through KVM only the inputs are prepared here; the
/// launch itself needs the vCPUs.
fn load_guest(
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    snp: Option<&SnpBoot>,
    facts: &GuestFacts,
) -> Result<(BootEntry, Option<SnpLaunch>), VmError> {
    Ok(match snp {
        None => {
            let kernel = boot::load_kernel(memory, &config.kernel, facts.mem_bytes)?;
            let initrd = match &config.initrd {
                Some(path) => Some(boot::load_initrd(memory, path, &kernel, facts.mem_bytes)?),
                None => None,
            };
            boot::write_boot_params(memory, &kernel, facts.cmdline, initrd, facts.mem_bytes)?;
            regs::write_boot_tables(memory)?;
            mptable::write_mptable(memory, facts.vcpus)?;
            (BootEntry::Linux(kernel.entry), None)
        }
        Some(boot) if boot.sev.is_none() => {
            let launch = model::launch_with_model(memory, &boot.plan, &boot.config, facts)?;
            let phys_bits = snp_launch::phys_address_bits(facts.cpuid);
            let bsp = model::unencrypted_bsp(&boot.plan.bsp, phys_bits);
            (BootEntry::Vmsa(Box::new(bsp)), Some(launch))
        }
        Some(boot) => {
            let inputs = LaunchInputs::new(&boot.plan, &boot.config, facts)?;
            for (id, vmsa) in inputs.vmsas.iter().enumerate() {
                vcpu_state::check_launchable(id as u32, vmsa).map_err(SnpLaunchError::from)?;
            }
            (BootEntry::Snp(inputs), None)
        }
    })
}

/// Gives the VM KVM's private pages, the in-kernel interrupt controllers and PIT.
fn setup_vm(vm_fd: &VmFd) -> Result<(), VmError> {
    vm_fd
        .set_tss_address(KVM_TSS_START as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(kvm_err("set the identity map address"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("create the in-kernel interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd
        .create_pit2(pit)
        .map_err(kvm_err("create the in-kernel PIT"))?;
    Ok(())
}

/// Creates one vCPU per CPUID; the boot vCPU gets its entry state, the others wait for SIPI.
fn create_vcpus(vm_fd: &VmFd, cpuids: &[CpuId], entry: &BootEntry) -> Result<Vec<VcpuFd>, VmError> {
    let msrs = regs::boot_msrs();
    let mut vcpus = Vec::with_capacity(cpuids.len());
    for (id, cpuid) in cpuids.iter().enumerate() {
        let vcpu = vm_fd
            .create_vcpu(id as u64)
            .map_err(kvm_err("create a vCPU"))?;
        vcpu.set_cpuid2(cpuid)
            .map_err(kvm_err("set the vCPU's CPUID"))?;
        regs::set_msrs(&vcpu, &msrs)?;
        vcpu.set_fpu(&regs::boot_fpu())
            .map_err(kvm_err("set the vCPU's FPU state"))?;
        regs::set_lint(&vcpu)?;
        match entry {
            BootEntry::Linux(mode) if id == 0 => regs::setup_boot_vcpu(&vcpu, *mode)?,
            BootEntry::Vmsa(vmsa) if id == 0 => {
                vcpu_state::load_vmsa(&vcpu, 0, vmsa).map_err(SnpLaunchError::from)?
            }
            BootEntry::Snp(inputs) => vcpu_state::load_vmsa(&vcpu, id as u32, &inputs.vmsas[id])
                .map_err(SnpLaunchError::from)?,
            _ => {}
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_kvm(path: &std::path::Path) -> Result<Kvm, VmError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        VmError::KvmMissing {
            path: path.to_owned(),
        }
    })?;
    Kvm::new_with_path(c_path).map_err(|source| match source.errno() {
        libc::ENOENT => VmError::KvmMissing {
            path: path.to_owned(),
        },
        libc::EACCES | libc::EPERM => VmError::KvmPermission {
            path: path.to_owned(),
        },
        _ => VmError::KvmOpen {
            path: path.to_owned(),
            source,
        },
    })
}
