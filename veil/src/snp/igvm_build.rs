//! `veil igvm build`: writes an IGVM file that boots a Linux vmlinux directly as an SNP guest.

use std::path::PathBuf;

use clap::Args;

use super::{read_bounded, CliError};
use veil_snp::igvm::build::{build_igvm, BuildInput, DEFAULT_C_BIT};
use veil_snp::policy::{GuestPolicy, DEFAULT_POLICY};

/// Largest kernel or initrd read.
const MAX_BOOT_FILE: u64 = 1 << 30;

/// Arguments of `veil igvm build`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct IgvmBuildArgs {
    /// Uncompressed ELF kernel (vmlinux); its PT_LOAD segments are measured.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initrd, measured and placed at the top of RAM below the MMIO gap.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line, measured (the VMM cannot add to it at launch).
    #[arg(long, value_name = "S", default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Guest RAM in MiB: fixes the measured e820 map; every RAM page is validated at launch.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub mem_mib: u64,
    /// SNP guest policy, hexadecimal (DEBUG is refused).
    #[arg(long, value_name = "HEX", default_value = "0x30000")]
    pub policy: String,
    /// Page-table C-bit position (CPUID 0x8000001F EBX[5:0]).
    #[arg(long, value_name = "BIT", default_value_t = DEFAULT_C_BIT)]
    pub c_bit: u8,
    /// Where to write the IGVM file.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
}

/// Builds and writes the file; returns a one-line summary.
pub fn run_igvm_build(args: &IgvmBuildArgs) -> Result<String, CliError> {
    let policy = GuestPolicy::from_hex(&args.policy, false)?;
    let kernel = read_bounded(&args.kernel, MAX_BOOT_FILE)?;
    let initrd = args
        .initrd
        .as_ref()
        .map(|p| read_bounded(p, MAX_BOOT_FILE))
        .transpose()?;
    let built = build_igvm(&BuildInput {
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline: &args.cmdline,
        mem_mib: args.mem_mib,
        policy: policy.raw(),
        c_bit: args.c_bit,
    })
    .map_err(|source| CliError::IgvmBuild {
        kernel: args.kernel.clone(),
        source,
    })?;
    std::fs::write(&args.output, &built.bytes).map_err(|source| CliError::Write {
        path: args.output.clone(),
        source,
    })?;
    let s = built.summary;
    Ok(format!(
        "{}: {} measured bytes; pages: {} NORMAL with data, {} NORMAL zeros, {} SECRETS, {} CPUID; entry {:#x}",
        args.output.display(),
        s.measured_bytes(),
        s.normal_pages,
        s.zero_pages,
        s.secrets_pages,
        s.cpuid_pages,
        s.entry
    ))
}

const _: () = assert!(DEFAULT_POLICY == 0x30000);
