//! `veil measure`: the expected launch digest, without hardware.

use std::path::PathBuf;

use clap::Args;

use super::{read_bounded, CliError};
use veil_snp::cpu_types::signature_of;
use veil_snp::igvm::{load_igvm, plan::MAX_IGVM_SIZE};
use veil_snp::ovmf::{KernelHashes, Ovmf, DEFAULT_GUEST_FEATURES};

/// Firmware images are a few MiB; refuse anything absurd before reading it.
const MAX_FIRMWARE: u64 = 16 << 20;
/// Kernels and initrds hashed for a direct boot.
const MAX_BOOT_FILE: u64 = 2 << 30;

/// Arguments of `veil measure`: exactly one of `--ovmf` and `--igvm`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct MeasureArgs {
    /// OVMF image launched the way QEMU does (same result as `sev-snp-measure --mode snp`).
    #[arg(long, value_name = "FILE", required_unless_present = "igvm")]
    pub ovmf: Option<PathBuf>,
    /// IGVM file launched by Veil through KVM (VMSAs as KVM builds them).
    #[arg(long, value_name = "FILE", conflicts_with = "ovmf")]
    pub igvm: Option<PathBuf>,
    /// Number of vCPUs (one VMSA each).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub vcpus: u32,
    /// vCPU model whose CPUID signature KVM puts in RDX at reset, e.g. EPYC-v4, EPYC-Milan,
    /// EPYC-Genoa.
    #[arg(long, value_name = "T", required_unless_present = "vcpu_sig")]
    pub vcpu_type: Option<String>,
    /// The CPUID leaf 1 EAX signature itself (hexadecimal), e.g. the host's with CPUID
    /// passthrough.
    #[arg(long, value_name = "HEX", value_parser = parse_sig, conflicts_with = "vcpu_type")]
    pub vcpu_sig: Option<u32>,
    /// SEV_FEATURES of every VMSA for --ovmf, hexadecimal (QEMU's default is 0x1, SNP
    /// active); an IGVM file carries its own.
    #[arg(long, value_name = "HEX", value_parser = parse_features, default_value = "0x1", conflicts_with = "igvm")]
    pub guest_features: u64,
    /// Kernel QEMU boots directly with --ovmf (kernel-hashes=on): its hash is measured.
    #[arg(long, value_name = "FILE", conflicts_with = "igvm")]
    pub kernel: Option<PathBuf>,
    /// Initrd of the direct boot (needs --kernel).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line of the direct boot (needs --kernel).
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    pub append: Option<String>,
}

fn parse_sig(value: &str) -> Result<u32, String> {
    let digits = value
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X");
    u32::from_str_radix(digits, 16)
        .map_err(|e| format!("{value:?} is not a 32-bit hexadecimal value: {e}"))
}

fn parse_features(value: &str) -> Result<u64, String> {
    let digits = value
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X");
    u64::from_str_radix(digits, 16).map_err(|e| format!("{value:?} is not hexadecimal: {e}"))
}

/// Returns the digest as 96 lowercase hex characters.
pub fn run_measure(args: &MeasureArgs) -> Result<String, CliError> {
    let signature = match (args.vcpu_sig, &args.vcpu_type) {
        (Some(sig), _) => sig,
        (None, Some(name)) => signature_of(name)?,
        (None, None) => return Err(CliError::NoVcpuSignature),
    };
    let digest = match (&args.ovmf, &args.igvm) {
        (Some(ovmf), _) => {
            let image = read_bounded(ovmf, MAX_FIRMWARE)?;
            let hashes = match &args.kernel {
                Some(kernel) => {
                    let kernel = read_bounded(kernel, MAX_BOOT_FILE)?;
                    let initrd = args
                        .initrd
                        .as_ref()
                        .map(|p| read_bounded(p, MAX_BOOT_FILE))
                        .transpose()?;
                    Some(KernelHashes::new(
                        &kernel,
                        initrd.as_deref(),
                        args.append.as_deref(),
                    ))
                }
                None => None,
            };
            Ovmf::parse(&image)?.launch_digest(
                args.vcpus,
                signature,
                args.guest_features,
                hashes.as_ref(),
            )?
        }
        (None, Some(igvm)) => {
            let bytes = read_bounded(igvm, MAX_IGVM_SIZE as u64)?;
            load_igvm(&bytes)?.launch_digest(args.vcpus, signature)?
        }
        (None, None) => return Err(CliError::NoMeasureSource),
    };
    Ok(hex::encode(digest))
}

const _: () = assert!(DEFAULT_GUEST_FEATURES == 0x1);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        measure: MeasureArgs,
    }

    #[test]
    fn arguments_parse_like_sev_snp_measure() {
        let cli = Cli::parse_from([
            "veil",
            "--ovmf",
            "/x.fd",
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-Milan",
            "--guest-features",
            "0x21",
        ]);
        assert_eq!(cli.measure.vcpus, 4);
        assert_eq!(cli.measure.guest_features, 0x21);
        let cli = Cli::parse_from([
            "veil",
            "--ovmf",
            "/x",
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC",
        ]);
        assert_eq!(cli.measure.guest_features, 1);
        assert!(Cli::try_parse_from([
            "veil",
            "--ovmf",
            "/x",
            "--vcpus",
            "0",
            "--vcpu-type",
            "EPYC"
        ])
        .is_err());
    }

    #[test]
    fn missing_file_is_named() {
        let args = MeasureArgs {
            ovmf: Some(PathBuf::from("/nonexistent/ovmf.fd")),
            igvm: None,
            kernel: None,
            initrd: None,
            append: None,
            vcpus: 1,
            vcpu_type: Some("EPYC".into()),
            vcpu_sig: None,
            guest_features: 1,
        };
        let err = run_measure(&args).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ovmf.fd"), "{err}");
    }
}
