//! The SEV-SNP commands of `veil` (measure, igvm build, report verify, guest manifests):
//! clap argument structs and functions that do the work through `veil_snp` and return the
//! text to print.

mod guest_manifest;
mod igvm_build;
mod measure;
mod report_verify;

pub use guest_manifest::{run_manifest, run_verify_manifest, ManifestArgs, VerifyManifestArgs};
pub use igvm_build::{run_igvm_build, IgvmBuildArgs};
pub use measure::{run_measure, MeasureArgs};
pub use report_verify::{run_report_verify, ReportVerifyArgs};

use std::path::{Path, PathBuf};

/// Errors of the command-line operations.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building an IGVM from {kernel}: {source}")]
    IgvmBuild {
        kernel: PathBuf,
        source: veil_snp::igvm::BuildError,
    },
    #[error("{file} is larger than {limit} bytes")]
    TooLarge { file: PathBuf, limit: u64 },
    #[error("--{flag} {value:?}: expected {bytes} bytes as hexadecimal: {reason}")]
    BadHex {
        flag: &'static str,
        value: String,
        bytes: usize,
        reason: hex::FromHexError,
    },
    #[error("--public-key {path}: not a P-384 public key in PEM: {why}")]
    BadPublicKey { path: PathBuf, why: String },
    #[error("give either --vcek or --public-key to verify the report's signature")]
    NoKey,
    #[error("give either --ovmf or --igvm to measure")]
    NoMeasureSource,
    #[error("give either --vcpu-type or --vcpu-sig")]
    NoVcpuSignature,
    #[error(transparent)]
    CpuType(#[from] veil_snp::cpu_types::CpuTypeError),
    #[error(transparent)]
    Igvm(#[from] veil_snp::igvm::IgvmError),
    #[error(transparent)]
    Ovmf(#[from] veil_snp::ovmf::OvmfError),
    #[error(transparent)]
    Report(#[from] veil_snp::report::ReportError),
    #[error(transparent)]
    Verify(#[from] veil_snp::report::VerifyError),
    #[error(transparent)]
    Policy(#[from] veil_snp::policy::PolicyError),
    #[error(transparent)]
    Manifest(#[from] veil_snp::manifest::ManifestError),
}

/// Reads a whole file of at most `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, CliError> {
    let read_err = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > limit {
        return Err(CliError::TooLarge {
            file: path.to_path_buf(),
            limit,
        });
    }
    std::fs::read(path).map_err(read_err)
}

fn parse_hex<const N: usize>(flag: &'static str, value: &str) -> Result<[u8; N], CliError> {
    veil_snp::hex::decode_array(value.trim()).map_err(|reason| CliError::BadHex {
        flag,
        value: value.to_string(),
        bytes: N,
        reason,
    })
}
