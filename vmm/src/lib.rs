//! Veil's micro-VMM as a library.
//!
//! ```no_run
//! use veil_vmm::{KernelSource, Vm, VmConfig};
//!
//! let mut config = VmConfig::new(KernelSource::Path("vmlinux".into()));
//! config.cmdline = "console=ttyS0 reboot=k".into();
//! let vm = Vm::new(config)?;
//! let stop = vm.stop_handle(); // usable from any thread
//! let outcome = vm.run()?;
//! println!("guest ended: {}", outcome.exit);
//! # Ok::<(), veil_vmm::VmError>(())
//! ```

pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod demo;
pub mod devices;
mod event_loop;
pub mod jail;
pub mod memory;
pub mod seccomp;
pub mod snp_launch;
pub mod vcpu;
pub mod vm;
pub mod x86_64;

pub use config::{BlockConfig, Console, KernelSource, VmConfig, VsockConfig};
pub use config::{MacAddr, NetConfig};
pub use devices::DiskHandle;
pub use jail::JailConfig;
pub use seccomp::SeccompLevel;
pub use snp_launch::{SnpConfig, SnpFirmware, SnpLaunch};
pub use vcpu::{RegisterDump, VmExit};
pub use vm::{BootTimings, StopHandle, Vm, VmError, VmOutcome};
pub use x86_64::cpu_template::CpuTemplate;
