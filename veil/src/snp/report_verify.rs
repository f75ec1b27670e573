//! `veil report verify`: checks an attestation report's signature (VCEK chain or a known
//! public key, e.g. the insecure model's) and the expected fields, naming every mismatch.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use p384::ecdsa::VerifyingKey;

use super::{parse_hex, read_bounded, CliError};
use veil_snp::report::{
    vcek_verifying_key, verify_report, AttestationReport, Expected, Generation, REPORT_SIZE,
};

/// Certificates and keys are small; bound what is read.
const MAX_PEM: u64 = 64 << 10;

/// AMD generation whose root keys the VCEK must chain to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GenerationArg {
    Milan,
    Genoa,
    Turin,
}

impl From<GenerationArg> for Generation {
    fn from(g: GenerationArg) -> Self {
        match g {
            GenerationArg::Milan => Generation::Milan,
            GenerationArg::Genoa => Generation::Genoa,
            GenerationArg::Turin => Generation::Turin,
        }
    }
}

/// Arguments of `veil report verify`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct ReportVerifyArgs {
    /// The 0x4A0-byte binary report.
    #[arg(long, value_name = "FILE")]
    pub report: PathBuf,
    /// Expected launch digest, 96 hex characters.
    #[arg(long, value_name = "HEX")]
    pub measurement: Option<String>,
    /// Expected HOST_DATA, 64 hex characters.
    #[arg(long, value_name = "HEX")]
    pub host_data: Option<String>,
    /// Expected guest policy, hexadecimal.
    #[arg(long, value_name = "HEX")]
    pub policy: Option<String>,
    /// VCEK certificate (PEM or DER) chaining to AMD's ASK and ARK.
    #[arg(long, value_name = "PEM", conflicts_with = "public_key")]
    pub vcek: Option<PathBuf>,
    /// Generation of the VCEK's roots; all known ones are tried when absent.
    #[arg(long, value_enum, requires = "vcek")]
    pub generation: Option<GenerationArg>,
    /// A P-384 public key in PEM (e.g. the insecure model firmware's).
    #[arg(long, value_name = "PEM")]
    pub public_key: Option<PathBuf>,
}

/// Verifies and returns a summary to print; any failure is an error naming every problem.
pub fn run_report_verify(args: &ReportVerifyArgs) -> Result<String, CliError> {
    let report = AttestationReport::parse(&read_bounded(&args.report, REPORT_SIZE as u64 + 1)?)?;
    let expected = Expected {
        measurement: args
            .measurement
            .as_deref()
            .map(|v| parse_hex::<48>("measurement", v))
            .transpose()?,
        host_data: args
            .host_data
            .as_deref()
            .map(|v| parse_hex::<32>("host-data", v))
            .transpose()?,
        policy: args
            .policy
            .as_deref()
            .map(|v| veil_snp::policy::GuestPolicy::from_hex(v, true).map(|p| p.raw()))
            .transpose()?,
    };
    let (key, signer) = match (&args.vcek, &args.public_key) {
        (Some(vcek), _) => {
            let pem = read_bounded(vcek, MAX_PEM)?;
            let (key, generation) = vcek_verifying_key(&pem, args.generation.map(Into::into))?;
            (key, format!("VCEK chained to the AMD {generation} root"))
        }
        (None, Some(path)) => {
            use p384::pkcs8::DecodePublicKey;
            let pem = read_bounded(path, MAX_PEM)?;
            let text = String::from_utf8_lossy(&pem);
            let key =
                VerifyingKey::from_public_key_pem(&text).map_err(|e| CliError::BadPublicKey {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
            (key, format!("public key {}", path.display()))
        }
        (None, None) => return Err(CliError::NoKey),
    };
    verify_report(&report, &key, &expected)?;
    Ok(format!(
        "attestation report verified (signed by {signer})\nversion: {}\npolicy: {:#x}\nmeasurement: {}\nhost_data: {}\nreport_data: {}",
        report.version(),
        report.policy(),
        hex::encode(report.measurement()),
        hex::encode(report.host_data()),
        hex::encode(report.report_data()),
    ))
}
