//! `veil-attest`: asks a running agent for its attestation report
//! (`veil.AttestationService/GetAttestationReport`) and writes the raw report to a file.
//! Used by `guest/snp-host-check.sh`; not part of the pod image.
//!
//!     veil-attest (--hybrid-vsock UDS [--port 1024] | --unix PATH) --report-data HEX -o FILE
//!         [--wait SECONDS]
//!
//! Prints the attestation backend's name. Exit status 0 on success, 1 on any error (named).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use veil_agent::client::AgentClient;
use veil_agent::protocols::veil::GetAttestationReportRequest;

/// Longest report_data the firmware takes.
const REPORT_DATA_LEN: usize = 64;

#[derive(Debug, Parser)]
#[command(name = "veil-attest", version)]
struct Cli {
    /// The VMM's hybrid-vsock Unix socket (`veil run --vsock-uds PATH`).
    #[arg(
        long,
        value_name = "UDS",
        conflicts_with = "unix",
        required_unless_present = "unix"
    )]
    hybrid_vsock: Option<PathBuf>,
    /// The agent's vsock port.
    #[arg(long, default_value_t = 1024)]
    port: u32,
    /// An agent listening on a Unix socket (`veil-agent --listen unix:PATH`).
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Up to 64 bytes, hexadecimal, bound into the report (a nonce).
    #[arg(long, value_name = "HEX")]
    report_data: String,
    /// Where to write the report.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Keep trying to connect for this long (the guest may still be booting).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    wait: u64,
}

#[derive(Debug, thiserror::Error)]
enum AttestError {
    #[error("--report-data {value:?}: {reason}; it takes at most {REPORT_DATA_LEN} bytes as hexadecimal")]
    ReportData { value: String, reason: String },
    #[error("connecting to the agent: {0}")]
    Connect(#[from] veil_agent::transport::TransportError),
    #[error("GetAttestationReport failed: {0}")]
    Call(#[from] ttrpc::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `--report-data`: hex (an optional `0x` prefix) of at most `REPORT_DATA_LEN` bytes.
fn parse_report_data(text: &str) -> Result<Vec<u8>, AttestError> {
    let bad = |reason: String| AttestError::ReportData {
        value: text.to_string(),
        reason,
    };
    let digits = text.strip_prefix("0x").unwrap_or(text);
    // Bounded before decoding: the length is checked in bytes, so any input is refused
    // cleanly, non-ASCII included.
    if digits.len() > 2 * REPORT_DATA_LEN {
        return Err(bad(format!("{} characters is too long", digits.len())));
    }
    hex::decode(digits).map_err(|e| bad(e.to_string()))
}

async fn connect(cli: &Cli) -> Result<AgentClient, AttestError> {
    let deadline = Instant::now() + Duration::from_secs(cli.wait);
    loop {
        let attempt = match (&cli.hybrid_vsock, &cli.unix) {
            (Some(uds), _) => AgentClient::connect_hybrid_vsock(uds, cli.port).await,
            (None, Some(path)) => AgentClient::connect_unix(path).await,
            (None, None) => unreachable!("clap requires one of --hybrid-vsock and --unix"),
        };
        match attempt {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(e) => {
                tracing::debug!("agent not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn run(cli: Cli) -> Result<String, AttestError> {
    let report_data = parse_report_data(&cli.report_data)?;
    let client = connect(&cli).await?;
    let mut req = GetAttestationReportRequest::new();
    req.report_data = report_data;
    let resp = client
        .attestation
        .get_attestation_report(ttrpc::context::with_timeout(0), &req)
        .await?;
    std::fs::write(&cli.output, &resp.report).map_err(|source| AttestError::Write {
        path: cli.output.clone(),
        source,
    })?;
    Ok(resp.source)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(source) => {
            println!("{source}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("veil-attest: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_is_bounded_hex() {
        assert_eq!(parse_report_data("0x01ab").unwrap(), vec![0x01, 0xab]);
        assert_eq!(parse_report_data("").unwrap(), Vec::<u8>::new());
        assert_eq!(parse_report_data(&"ff".repeat(64)).unwrap(), vec![0xff; 64]);
        for bad in ["abc".to_string(), "zz".into(), "é0".into(), "ff".repeat(65)] {
            let err = parse_report_data(&bad).unwrap_err().to_string();
            assert!(err.contains("--report-data"), "{err}");
        }
    }
}
