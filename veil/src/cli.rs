//! The `veil` command line: a thin layer over the library.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use veil_vmm::config::{DEFAULT_CMDLINE, DEFAULT_KVM_DEVICE, DEFAULT_MEM_MIB};
use veil_vmm::control::{self, ControlError};
use veil_vmm::jail::relay::ChildEnd;
use veil_vmm::jail::{self, Forked, JailConfig, JailError};
use veil_vmm::seccomp::{self, SeccompLevel, ThreadKind};
use veil_vmm::{
    BlockConfig, Console, CpuTemplate, KernelSource, NetConfig, Vm, VmConfig, VmError, VmExit,
    VmOutcome, VsockConfig,
};
use veil_vmm::{SnpConfig, SnpFirmware};

use crate::{demo, signals, snp};

/// Veil: a micro-VMM that runs each pod in its own (SEV-SNP) virtual machine.
#[derive(Debug, Parser)]
#[command(name = "veil", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a Linux kernel (ELF vmlinux through PVH, or bzImage) and run it until it shuts down.
    Run(Box<RunArgs>),
    /// Boot the small built-in guest and report how long each stage of the boot took.
    Demo(MachineArgs),
    /// Print the expected SEV-SNP launch digest (96 hex characters), without hardware.
    Measure(snp::MeasureArgs),
    /// IGVM files for SEV-SNP guests.
    Igvm {
        #[command(subcommand)]
        command: IgvmCommand,
    },
    /// SEV-SNP attestation reports.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// The pod guest images and their manifest (what a pod owner audits).
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Write a manifest: SHA-256 of each image, build inputs, launch digests of the IGVM.
    Manifest(snp::ManifestArgs),
    /// Check the images next to a manifest against it; exit status 1 on any mismatch.
    VerifyManifest(snp::VerifyManifestArgs),
}

#[derive(Debug, Subcommand)]
pub enum IgvmCommand {
    /// Build an IGVM file that boots a Linux vmlinux directly as an SEV-SNP guest.
    Build(snp::IgvmBuildArgs),
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Check a report's signature (VCEK chain or a public key) and expected fields.
    Verify(snp::ReportVerifyArgs),
}

/// Options shared by every command that boots a VM.
#[derive(Debug, Args)]
pub struct MachineArgs {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_MEM_MIB, value_name = "N")]
    pub mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u32,
    /// Where the serial console goes: `stdout`, `off`, or a file path (appended to).
    #[arg(long, default_value = "stdout", value_name = "stdout|off|FILE")]
    pub console: String,
    /// CPU template applied to the guest's CPUID: `host` (default) or `soft-kvm` (hides what
    /// software KVM backends cannot run: XSAVE/AVX, CX16, POPCNT, SMEP, SMAP).
    #[arg(long, default_value = "host", value_name = "NAME")]
    pub cpu_template: String,
    /// The KVM device to use.
    #[arg(long, default_value = DEFAULT_KVM_DEVICE, value_name = "PATH")]
    pub kvm_device: PathBuf,
    /// Write the boot timings (and how the VM ended) as JSON to FILE when the VM ends.
    #[arg(long, value_name = "FILE")]
    pub metrics_json: Option<PathBuf>,
    /// Run without seccomp filters, for debugging. By default every thread of the process
    /// runs under a filter allowing only the system calls (and ioctls) it needs; anything
    /// else kills the process.
    #[arg(long)]
    pub no_seccomp: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel: an uncompressed ELF vmlinux or a bzImage.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "igvm",
        conflicts_with = "igvm"
    )]
    pub kernel: Option<PathBuf>,
    /// An IGVM file, launched as an SEV-SNP guest.
    #[arg(long, value_name = "FILE", conflicts_with = "initrd")]
    pub igvm: Option<PathBuf>,
    /// Launch the IGVM file as an SEV-SNP guest through KVM (the default for --igvm).
    #[arg(long)]
    pub snp: bool,
    /// Who performs the SNP launch: `kvm` (the AMD secure processor) or `model`, an insecure
    /// software model that computes the same launch digest, for development; with `model`
    /// the guest then runs as a normal, unencrypted VM.
    #[arg(long, value_enum, default_value = "kvm")]
    pub snp_firmware: FirmwareArg,
    /// SNP guest policy, hexadecimal (bit 17 must be set; DEBUG is refused); by default the
    /// IGVM file's own.
    #[arg(long, value_name = "HEX", value_parser = parse_policy)]
    pub policy: Option<u64>,
    /// HOST_DATA for LAUNCH_FINISH, 64 hex characters (the SHA-256 of the pod's policy).
    #[arg(long, value_name = "HEX", value_parser = parse_host_data)]
    pub host_data: Option<[u8; 32]>,
    /// With --snp-firmware model: write a model-signed attestation report to FILE and the
    /// model's public key to FILE.pub.pem, for `veil report verify`.
    #[arg(long, value_name = "FILE")]
    pub model_report: Option<PathBuf>,
    /// Initial ramdisk loaded at the top of low memory.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. The VMM appends one `virtio_mmio.device=` argument per virtio
    /// device and changes nothing else.
    #[arg(long, default_value = DEFAULT_CMDLINE, value_name = "STR")]
    pub cmdline: String,
    /// A virtio-blk drive backed by a raw image (repeatable; vda, vdb, ... in order).
    /// `ro` makes it read-only, `id=NAME` sets its serial (at most 20 bytes); without a path
    /// the drive is an empty placeholder whose file is set later.
    #[arg(long = "disk", value_name = "PATH[,ro][,id=NAME]", value_parser = parse_disk)]
    pub disks: Vec<BlockConfig>,
    /// Guest context id of the virtio-vsock device (3 or more).
    #[arg(long, value_name = "N", requires = "vsock_uds")]
    pub vsock_cid: Option<u64>,
    /// Unix socket of the hybrid vsock backend: host programs connect here and send
    /// `CONNECT <port>`; guest connections to host port P go to `PATH_P`.
    #[arg(long, value_name = "PATH", requires = "vsock_cid")]
    pub vsock_uds: Option<PathBuf>,
    /// A virtio-net device on an existing tap in the VMM's network namespace (repeatable;
    /// eth0, eth1, ... in order); the MAC is random unless given, the MTU 1500 unless given.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,mtu=N]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// Attach the boot timer: a guest write of 123 to its page records the boot time.
    #[arg(long)]
    pub boot_timer: bool,
    /// Run the VMM jailed: in new mount, PID, network, IPC and UTS namespaces with an empty
    /// read-only root, as an unprivileged user without capabilities, `no_new_privs` and
    /// resource limits. Everything the VM needs is opened before. Needs root.
    #[arg(long)]
    pub jail: bool,
    /// The jail's user and group, names or numbers [default: nobody, in its primary group].
    #[arg(long, value_name = "USER[:GROUP]", requires = "jail")]
    pub jail_user: Option<String>,
    /// The jail's limit on open files (RLIMIT_NOFILE) [default: 1024].
    #[arg(long, value_name = "N", requires = "jail")]
    pub jail_max_open_files: Option<u64>,
    /// The jail's limit on the VMM's address space in MiB (RLIMIT_AS; guest memory counts)
    /// [default: unlimited].
    #[arg(long, value_name = "MIB", requires = "jail")]
    pub jail_max_memory_mib: Option<u64>,
    /// An inherited Unix stream socket through which the VMM's owner swaps disk images (the
    /// file passed as a descriptor) and stops the VM; the VM stops when it is closed.
    #[arg(long, value_name = "FD")]
    pub control_fd: Option<i32>,
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// `--snp-firmware` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirmwareArg {
    Kvm,
    Model,
}

fn parse_policy(value: &str) -> Result<u64, String> {
    let digits = value.trim_start_matches("0x");
    u64::from_str_radix(digits, 16)
        .map_err(|e| format!("{value:?} is not a hexadecimal policy: {e}"))
}

fn parse_host_data(value: &str) -> Result<[u8; 32], String> {
    veil_snp::hex::decode_array(value)
        .map_err(|e| format!("{value:?} is not 32 bytes as 64 hexadecimal characters: {e}"))
}

/// An error the CLI reports before or instead of running the VM.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("unknown CPU template '{0}' (known: {known})", known = template_names())]
    UnknownTemplate(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot write metrics to {path}: {source}")]
    Metrics {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Snp(#[from] snp::CliError),
    #[error("--snp, --snp-firmware, --policy, --host-data and --model-report need --igvm")]
    SnpNeedsIgvm,
    #[error("invalid --disk '{spec}': {reason}")]
    DiskSpec { spec: String, reason: &'static str },
    #[error("--jail: {0}")]
    Jail(#[from] JailError),
    #[error("--control-fd {fd}: {reason}")]
    ControlFd { fd: i32, reason: String },
    #[error("--jail: cannot start the thread that builds the VM: {0}")]
    BuildThread(std::io::Error),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Parses `PATH[,ro][,id=NAME]`; a spec without a path is a placeholder drive.
fn parse_disk(spec: &str) -> Result<BlockConfig, CliError> {
    let bad = |reason| CliError::DiskSpec {
        spec: spec.to_string(),
        reason,
    };
    let mut disk = BlockConfig {
        path: None,
        read_only: false,
        id: String::new(),
    };
    for (i, part) in spec.split(',').enumerate() {
        match part {
            "ro" => disk.read_only = true,
            _ if part.starts_with("id=") => disk.id = part["id=".len()..].to_string(),
            "" if i == 0 => {}
            _ if i == 0 => disk.path = Some(PathBuf::from(part)),
            "" => return Err(bad("empty option")),
            _ => return Err(bad("options are `ro` and `id=NAME`")),
        }
    }
    Ok(disk)
}

fn parse_net(spec: &str) -> Result<NetConfig, String> {
    spec.parse()
        .map_err(|e: veil_devices::virtio::net::NetError| e.to_string())
}

fn template_names() -> String {
    CpuTemplate::ALL
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl MachineArgs {
    fn into_config(self, kernel: KernelSource) -> Result<VmConfig, CliError> {
        let mut config = VmConfig::new(kernel);
        config.mem_mib = self.mem_mib;
        config.vcpus = self.vcpus;
        config.console = match self.console.as_str() {
            "stdout" => Console::Stdout,
            "off" => Console::Off,
            path => Console::File(path.into()),
        };
        config.cpu_template = CpuTemplate::by_name(&self.cpu_template)
            .ok_or(CliError::UnknownTemplate(self.cpu_template))?;
        config.kvm_device = self.kvm_device;
        // The binary runs one VM and nothing else: its main thread is filtered too.
        config.seccomp = if self.no_seccomp {
            SeccompLevel::Off
        } else {
            SeccompLevel::AllThreads
        };
        Ok(config)
    }
}

/// Exit status for a VM that ended because of a guest crash or vCPU failure.
const EXIT_GUEST_FAILED: u8 = 2;
/// Exit status for errors before the guest ran (bad input, no KVM).
const EXIT_VMM_ERROR: u8 = 1;

/// Runs the CLI; `start` is when the process started, for the timings.
pub fn main(cli: Cli, start: Instant) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => match run(*args, start) {
            Ok(Ran::Vm(outcome)) => Ok(Some(outcome)),
            Ok(Ran::Jailed(end)) => return jailed_status(end),
            Err(e) => Err(e),
        },
        Command::Demo(machine) => {
            let metrics = machine.metrics_json.clone();
            let code = KernelSource::Flat64(demo::guest_code().to_vec());
            let outcome = machine.into_config(code).and_then(|mut config| {
                config.boot_timer = true;
                boot(config, start, metrics, None, None)
            });
            outcome.inspect(print_demo_report).map(Some)
        }
        Command::Measure(args) => print_result(snp::run_measure(&args)),
        Command::Igvm {
            command: IgvmCommand::Build(args),
        } => print_result(snp::run_igvm_build(&args)),
        Command::Report {
            command: ReportCommand::Verify(args),
        } => print_result(snp::run_report_verify(&args)),
        Command::Guest {
            command: GuestCommand::Manifest(args),
        } => print_result(snp::run_manifest(&args)),
        Command::Guest {
            command: GuestCommand::VerifyManifest(args),
        } => return verify_manifest(&args),
    };
    match result {
        Ok(Some(outcome)) => exit_status(&outcome.exit),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil: error: {}", error_chain(&e));
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

/// `veil guest verify-manifest`: exit status 0 when everything matches, 1 on any mismatch
/// or an unusable manifest.
fn verify_manifest(args: &snp::VerifyManifestArgs) -> ExitCode {
    match snp::run_verify_manifest(args) {
        Ok((report, all_match)) => {
            println!("{report}");
            if all_match {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_VMM_ERROR)
            }
        }
        Err(e) => {
            eprintln!("veil: error: {}", error_chain(&e));
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

fn print_result(result: Result<String, snp::CliError>) -> Result<Option<VmOutcome>, CliError> {
    println!("{}", result?);
    Ok(None)
}

/// What `veil run` did in this process.
enum Ran {
    /// Ran the VM.
    Vm(VmOutcome),
    /// Relayed signals to the jailed VMM (a child in its own PID namespace) until it ended.
    Jailed(ChildEnd),
}

fn run(args: RunArgs, start: Instant) -> Result<Ran, CliError> {
    let metrics = args.machine.metrics_json.clone();
    let jail = match args.jail {
        true => Some(jail_config(&args)?),
        false => None,
    };
    let control = args.control_fd.map(control_socket).transpose()?;
    let kernel = match (args.kernel, args.igvm) {
        (_, Some(igvm)) => KernelSource::Igvm(igvm),
        (Some(kernel), None) => KernelSource::Path(kernel),
        (None, None) => unreachable!("clap requires --kernel or --igvm"),
    };
    let snp_options = args.snp
        || args.snp_firmware == FirmwareArg::Model
        || args.policy.is_some()
        || args.host_data.is_some()
        || args.model_report.is_some();
    if snp_options && !matches!(kernel, KernelSource::Igvm(_)) {
        return Err(CliError::SnpNeedsIgvm);
    }
    let snp = matches!(kernel, KernelSource::Igvm(_)).then(|| SnpConfig {
        firmware: match args.snp_firmware {
            FirmwareArg::Kvm => SnpFirmware::Kvm,
            FirmwareArg::Model => SnpFirmware::Model,
        },
        policy: args.policy,
        host_data: args.host_data.unwrap_or_default(),
        model_report: args.model_report,
    });
    let mut config = args.machine.into_config(kernel)?;
    config.cmdline = args.cmdline;
    config.initrd = args.initrd;
    config.disks = args.disks;
    config.vsock = args
        .vsock_cid
        .zip(args.vsock_uds)
        .map(|(guest_cid, uds_path)| VsockConfig {
            guest_cid,
            uds_path,
        });
    config.nets = args.nets;
    config.boot_timer = args.boot_timer;
    config.snp = snp;
    let Some(jail) = jail else {
        return boot(config, start, metrics, None, control).map(Ran::Vm);
    };
    let vsock_path = config.vsock.as_ref().map(|v| v.uds_path.clone());
    match jail::fork_into_pid_namespace()? {
        Forked::Parent(end) => {
            // The jailed VMM cannot reach its socket's path to remove it.
            if let Some(path) = vsock_path {
                let _ = std::fs::remove_file(path);
            }
            Ok(Ran::Jailed(end))
        }
        Forked::Child => {
            jail::detach_mounts()?;
            boot(config, start, metrics, Some(jail), control).map(Ran::Vm)
        }
    }
}

fn jail_config(args: &RunArgs) -> Result<JailConfig, CliError> {
    let mut jail = JailConfig::new()?;
    if let Some(user) = &args.jail_user {
        jail.user = jail::parse_user(user)?;
    }
    if let Some(files) = args.jail_max_open_files {
        jail.max_open_files = files;
    }
    jail.max_address_space = args.jail_max_memory_mib.map(|mib| mib << 20);
    Ok(jail)
}

/// Takes ownership of the inherited control socket, after checking that it is one.
fn control_socket(fd: i32) -> Result<UnixStream, CliError> {
    use std::os::fd::FromRawFd;
    let bad = |reason: String| CliError::ControlFd { fd, reason };
    if fd < 3 {
        return Err(bad(
            "not a socket: 0, 1 and 2 are the standard streams".into()
        ));
    }
    // SAFETY: fstat writes into a zeroed stat we own; a bad fd only fails.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } == -1 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("not a socket".into()));
    }
    // SAFETY: the fd is open, a socket, inherited for us alone; we own it from here on.
    let socket = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: fcntl on the fd we own; programs this process might start must not inherit it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(socket)
}

/// The exit status of `veil run --jail`: the jailed VMM's own (0, 1, 2, 128+N), or 128+N
/// when signal N killed it (a seccomp violation: SIGSYS).
fn jailed_status(end: ChildEnd) -> ExitCode {
    if let ChildEnd::Killed(signal) = end {
        eprintln!("veil: the jailed VMM was killed by signal {signal}");
    }
    ExitCode::from(end.status())
}

/// Builds the VM, confines the process when `jail` is given (after every file is open),
/// serves the control socket and runs the VM.
fn boot(
    config: VmConfig,
    start: Instant,
    metrics: Option<PathBuf>,
    jail: Option<JailConfig>,
    control: Option<UnixStream>,
) -> Result<VmOutcome, CliError> {
    let filtered = config.seccomp != SeccompLevel::Off;
    if !filtered {
        tracing::warn!("seccomp filters disabled (--no-seccomp): for debugging only");
        eprintln!(
            "veil: warning: running without seccomp filters (--no-seccomp): for debugging only"
        );
    }
    // A jailed VMM cannot open the metrics file at the end: open it now.
    let metrics = match (metrics, &jail) {
        (Some(path), Some(_)) => Some(Metrics::Open(
            std::fs::File::create(&path).map_err(|source| CliError::Metrics { path, source })?,
        )),
        (path, _) => path.map(Metrics::Path),
    };
    let (vm, network) = match &jail {
        None => (Vm::with_start(config, start)?, None),
        // The jail's new network namespace takes about as long as building the VM: this
        // thread (which runs the VM) enters it while another builds, opening any tap in the
        // host's namespace.
        Some(_) => std::thread::scope(|scope| {
            let build = std::thread::Builder::new()
                .name("veil-build".into())
                .spawn_scoped(scope, move || Vm::with_start(config, start))
                .map_err(CliError::BuildThread)?;
            let network = jail::isolate_network();
            let vm = build
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            Ok::<_, CliError>((vm, Some(network?)))
        })?,
    };
    match vm.snp_launch() {
        Some(launch) if launch.firmware == SnpFirmware::Model => eprintln!(
            "veil: SNP launch digest (INSECURE model firmware): {} ({} measured bytes, vCPU signature {:#x})",
            launch.digest, launch.measured_bytes, launch.vcpu_signature
        ),
        Some(launch) => eprintln!(
            "veil: SEV-SNP launch through KVM finished; expected launch digest {} ({} measured bytes, vCPU signature {:#x}): compare it with the MEASUREMENT of the guest's attestation report",
            launch.digest, launch.measured_bytes, launch.vcpu_signature
        ),
        None => {}
    }
    if let Some(launch) = vm
        .snp_launch()
        .filter(|l| !l.device_args_not_passed.is_empty())
    {
        eprintln!(
            "veil: note: the IGVM file takes no command line from the VMM, so the guest finds its virtio devices only if the file's own command line has: {}",
            launch.device_args_not_passed.join(" ")
        );
    }
    if let (Some(jail), Some(network)) = (&jail, network) {
        jail::confine(jail, network)?;
    }
    stop_on_signals(vm.stop_handle(), filtered)?;
    if let Some(socket) = control {
        let filter = match filtered {
            true => Some(seccomp::filter(ThreadKind::Main).map_err(VmError::from)?),
            false => None,
        };
        control::serve(socket, vm.disks(), vm.stop_handle(), filter)?;
    }
    let outcome = vm.run()?;
    if !outcome.exit.is_clean() {
        eprintln!("veil: guest failed: {}", outcome.exit);
    }
    if let Some(boot_time) = outcome.timings.boot_timer {
        eprintln!("veil: guest boot time (boot timer): {}", ms(boot_time));
    }
    match metrics {
        Some(Metrics::Path(path)) => std::fs::write(&path, metrics_json(&outcome))
            .map_err(|source| CliError::Metrics { path, source })?,
        Some(Metrics::Open(mut file)) => {
            use std::io::Write;
            file.write_all(metrics_json(&outcome).as_bytes())
                .map_err(|source| CliError::Metrics {
                    path: "(the --metrics-json file)".into(),
                    source,
                })?
        }
        None => {}
    }
    Ok(outcome)
}

/// Where `--metrics-json` goes.
enum Metrics {
    Path(PathBuf),
    /// Opened before the jail closed.
    Open(std::fs::File),
}

/// The timings as JSON: microseconds since process start, `null` for stages never reached.
fn metrics_json(outcome: &VmOutcome) -> String {
    let us = |d: Duration| d.as_micros() as u64;
    let t = &outcome.timings;
    let json = serde_json::json!({
        "exit": outcome.exit.to_string(),
        "clean_exit": outcome.exit.is_clean(),
        "vm_created_us": us(t.vm_created),
        "first_vcpu_run_us": t.first_vcpu_run.map(us),
        "first_console_output_us": t.first_console_output.map(us),
        "boot_timer_us": t.boot_timer.map(us),
        "exited_us": us(t.exited),
    });
    format!("{json:#}\n")
}

fn exit_status(exit: &VmExit) -> ExitCode {
    match exit {
        VmExit::StopRequested => match signals::received() {
            Some(signal) => ExitCode::from(128 + signal as u8),
            None => ExitCode::SUCCESS,
        },
        e if e.is_clean() => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_GUEST_FAILED),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn print_demo_report(outcome: &VmOutcome) {
    let t = &outcome.timings;
    let optional = |d: Option<Duration>| d.map_or_else(|| "never".to_string(), ms);
    println!("veil demo: guest ended: {}", outcome.exit);
    println!("  process start -> VM created       {}", ms(t.vm_created));
    println!(
        "  process start -> first vCPU run   {}",
        optional(t.first_vcpu_run)
    );
    println!(
        "  process start -> first console    {}",
        optional(t.first_console_output)
    );
    println!(
        "  process start -> boot timer       {}",
        optional(t.boot_timer)
    );
    println!("  process start -> VM torn down     {}", ms(t.exited));
}

/// SIGINT, SIGTERM and SIGHUP stop the VM cleanly instead of killing the process mid-flight.
/// With `filtered`, the watching thread runs under the main thread's seccomp filter, installed
/// before this returns (so before the guest starts).
fn stop_on_signals(stop: veil_vmm::StopHandle, filtered: bool) -> Result<(), CliError> {
    let filter = match filtered {
        true => Some(seccomp::filter(ThreadKind::Main).map_err(VmError::from)?),
        false => None,
    };
    match signals::watch(move || stop.stop(), filter) {
        Ok(()) => Ok(()),
        Err(signals::WatchError::Seccomp(e)) => Err(VmError::from(e).into()),
        Err(signals::WatchError::Io(e)) => {
            tracing::warn!("cannot watch termination signals: {e}");
            Ok(())
        }
    }
}
