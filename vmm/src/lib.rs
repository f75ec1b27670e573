//! Veil's micro-VMM as a library: configure a VM ([`VmConfig`]), build it ([`Vm::new`]), run
//! it ([`Vm::run`]) and stop it from any thread ([`StopHandle`]); the seccomp filters
//! ([`seccomp`]) and the jail ([`jail`]) a VMM process confines itself with are here too.
//! Nothing of a command line is: the `veil` binary (the `veil` package) is a thin front end
//! over this crate, and an embedder's dependency tree has no clap, no log subscriber and no
//! process-wide signal handling.
//!
//! The example below is the one in the repository's README (a unit test keeps them equal):
//!
#![doc = include_str!("embedding_example.md")]

pub mod config;
pub mod console;
pub mod control;
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

#[cfg(test)]
mod tests {
    /// The README shows the same embedding example this crate's documentation builds.
    #[test]
    fn readme_has_the_doc_tested_example() {
        let readme = include_str!("../../README.md");
        let example = include_str!("embedding_example.md");
        assert!(
            readme.contains(example),
            "README.md's example differs from {example}"
        );
    }
}
