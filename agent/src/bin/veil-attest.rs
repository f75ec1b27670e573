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
    #[error("--report-data {0:?}: expected at most {REPORT_DATA_LEN} bytes as hexadecimal")]
    ReportData(String),
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

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    if text.len() % 2 != 0 || text.len() > 2 * REPORT_DATA_LEN {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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
    let report_data = parse_hex(&cli.report_data)
        .ok_or_else(|| AttestError::ReportData(cli.report_data.clone()))?;
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
