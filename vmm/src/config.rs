//! What a VM is made of, checked before anything is created.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

pub use veil_devices::virtio::block::BlockConfig;
pub use veil_devices::virtio::net::{MacAddr, NetConfig};
pub use veil_devices::virtio::vsock::VsockConfig;

use crate::seccomp::SeccompLevel;
use crate::snp_launch::SnpConfig;
use crate::x86_64::cpu_template::CpuTemplate;
use crate::x86_64::layout::{CMDLINE_MAX_LEN, MIN_MEM_BYTES};
use crate::x86_64::mptable;

/// Default guest memory.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Largest guest memory accepted (1 TiB): far beyond a pod, well inside 48-bit guest physical
/// addressing.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Default command line: serial console, reboot through the keyboard controller (which ends
/// the VM), no waiting on panic, and a panic's restart marked warm so that the VMM reports
/// it as a panic rather than an ordinary restart.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k,panic_warm panic=-1";
/// The KVM device.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// Where the guest's kernel comes from.
pub enum KernelSource {
    /// An uncompressed ELF `vmlinux` (booted through its PVH entry when it has one, else its
    /// 64-bit entry point) or a `bzImage` (64-bit boot protocol).
    Path(PathBuf),
    /// An IGVM file, launched as an SEV-SNP guest (see [`VmConfig::snp`]).
    Igvm(PathBuf),
    /// Position-independent 64-bit code, loaded at 1 MiB and entered at its first byte in long
    /// mode with the boot_params address in RSI, like a 64-bit kernel. For built-in guests.
    Flat64(Vec<u8>),
}

impl fmt::Debug for KernelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) | Self::Igvm(p) => write!(f, "{}", p.display()),
            Self::Flat64(code) => write!(f, "<{} bytes of built-in 64-bit code>", code.len()),
        }
    }
}

/// Where the serial console's output goes.
pub enum Console {
    /// The VMM's standard output; the VMM's standard input feeds the guest.
    Stdout,
    /// Discarded.
    Off,
    /// Appended to a file (created if missing).
    File(PathBuf),
    /// Any writer, for programs embedding the VMM.
    Writer(Box<dyn Write + Send>),
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => write!(f, "stdout"),
            Self::Off => write!(f, "off"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Writer(_) => write!(f, "<writer>"),
        }
    }
}

/// Everything needed to build a VM.
#[derive(Debug)]
pub struct VmConfig {
    pub kernel: KernelSource,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    pub console: Console,
    pub cpu_template: &'static CpuTemplate,
    pub kvm_device: PathBuf,
    /// virtio-blk drives, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// virtio-vsock with the hybrid Unix-socket backend.
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices, each on an existing tap that `Vm::new` opens (in the network
    /// namespace it is called in) and keeps open: eth0, eth1, ... in order.
    pub nets: Vec<NetConfig>,
    /// Attach the boot timer device at `layout::BOOT_TIMER_ADDR`.
    pub boot_timer: bool,
    /// How to launch a [`KernelSource::Igvm`] guest; `None` means through KVM with the
    /// default policy.
    pub snp: Option<SnpConfig>,
    /// Which threads [`Vm::run`](crate::Vm::run) puts under a seccomp filter; by default the
    /// vCPU and event-loop threads it creates (see [`SeccompLevel`]).
    pub seccomp: SeccompLevel,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: KernelSource) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: 1,
            console: Console::Stdout,
            cpu_template: &CpuTemplate::HOST,
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
            disks: Vec::new(),
            vsock: None,
            nets: Vec::new(),
            boot_timer: false,
            snp: None,
            seccomp: SeccompLevel::default(),
        }
    }

    /// Checks everything that can be checked without opening files or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let min_mib = MIN_MEM_BYTES >> 20;
        if !(min_mib..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::MemorySize {
                mib: self.mem_mib,
                min: min_mib,
                max: MAX_MEM_MIB,
            });
        }
        if self.vcpus == 0 || self.vcpus > mptable::MAX_CPUS {
            return Err(ConfigError::VcpuCount {
                requested: self.vcpus,
                max: mptable::MAX_CPUS,
            });
        }
        if self.cmdline.len() > CMDLINE_MAX_LEN {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
                max: CMDLINE_MAX_LEN,
            });
        }
        if self.snp.is_some() && !matches!(self.kernel, KernelSource::Igvm(_)) {
            return Err(ConfigError::SnpWithoutIgvm);
        }
        if let Some(pos) = self.cmdline.bytes().position(|b| b == 0 || b == b'\n') {
            return Err(ConfigError::CmdlineInvalidByte { pos });
        }
        Ok(())
    }

    /// The command line the guest gets: the configured one, then the device arguments.
    pub fn full_cmdline(&self, device_args: &[String]) -> Result<String, ConfigError> {
        let mut full = self.cmdline.clone();
        for arg in device_args {
            if !full.is_empty() {
                full.push(' ');
            }
            full.push_str(arg);
        }
        if full.len() > CMDLINE_MAX_LEN {
            let device_args = full.len() - self.cmdline.len();
            return Err(ConfigError::CmdlineWithDevicesTooLong {
                len: full.len(),
                device_args,
                max: CMDLINE_MAX_LEN,
            });
        }
        Ok(full)
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

/// A configuration that cannot work, named by what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("memory size {mib} MiB is out of range: it must be between {min} and {max} MiB")]
    MemorySize { mib: u64, min: u64, max: u64 },
    #[error("vCPU count {requested} is out of range: it must be between 1 and {max}")]
    VcpuCount { requested: u32, max: u32 },
    #[error("kernel command line is {len} bytes long; the guest kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(
        "kernel command line is {len} bytes long with the {device_args} bytes announcing the \
         virtio devices; the guest kernel accepts at most {max}"
    )]
    CmdlineWithDevicesTooLong {
        len: usize,
        device_args: usize,
        max: usize,
    },
    #[error("an SEV-SNP launch needs an IGVM file (--igvm), not a kernel")]
    SnpWithoutIgvm,
    #[error("kernel command line has a NUL or newline byte at offset {pos}")]
    CmdlineInvalidByte { pos: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig::new(KernelSource::Flat64(vec![0xf4]))
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut c = config();
        c.mem_mib = 2;
        assert_eq!(
            c.validate(),
            Err(ConfigError::MemorySize {
                mib: 2,
                min: 4,
                max: MAX_MEM_MIB
            })
        );
        let mut c = config();
        c.vcpus = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::VcpuCount { requested: 0, .. })
        ));
        c.vcpus = 255;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::VcpuCount { requested: 255, .. })
        ));
        let mut c = config();
        c.cmdline = "x".repeat(2048);
        assert_eq!(
            c.validate(),
            Err(ConfigError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        );
        c.cmdline = "x".repeat(2047);
        assert_eq!(c.validate(), Ok(()));
        c.cmdline = "a\0b".into();
        assert_eq!(
            c.validate(),
            Err(ConfigError::CmdlineInvalidByte { pos: 1 })
        );
    }
}
