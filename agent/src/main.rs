//! `veil-agent`: the guest agent. As PID 1 it sets up the guest, then serves the agent API on
//! vsock port 1024; on a host it serves a Unix socket (`--listen unix:PATH`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tracing::{error, info, warn};

use veil_agent::attestation::{self, AttestationSource, InsecureDevelopment};
use veil_agent::container::{detect_cgroup_root, ContainerManager, Reaper, RuntimeConfig};
use veil_agent::policy::PolicyGate;
use veil_agent::service::{self, Agent};
use veil_agent::transport::ListenAddr;

/// Largest init-data (policy) device content read.
const MAX_INIT_DATA: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "veil-agent",
    version,
    about = "Veil guest agent (Kata-compatible ttrpc API)"
)]
struct Cli {
    /// Where to listen: `vsock[:PORT]` (default vsock:1024) or `unix:PATH`.
    #[arg(long, env = "VEIL_LISTEN", default_value = "vsock:1024")]
    listen: ListenAddr,
    /// Attestation backend: auto (sev-guest, then configfs-tsm), sev-guest, configfs-tsm,
    /// or insecure (development only; needs --insecure-host-data).
    #[arg(long, env = "VEIL_ATTESTATION", default_value = "auto")]
    attestation: String,
    /// HOST_DATA (64 hex digits) for the insecure development backend.
    #[arg(long, env = "VEIL_INSECURE_HOST_DATA")]
    insecure_host_data: Option<String>,
    /// A read-only block device (or file) holding the policy as init data, NUL-padded.
    #[arg(long, env = "VEIL_POLICY_DEVICE")]
    policy_device: Option<PathBuf>,
    /// Directory for per-container state and mount points.
    #[arg(long, default_value = "/run/veil-agent")]
    state_dir: PathBuf,
    /// The cgroup v2 mount (detected when omitted).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
}

/// Errors that stop the agent at start-up.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("--attestation {0:?}: use auto, sev-guest, configfs-tsm or insecure")]
    UnknownBackend(String),
    #[error("no SEV-SNP attestation interface found (/dev/sev-guest, configfs-tsm); use --attestation insecure for development")]
    NoHardware,
    #[error("--insecure-host-data {value:?}: {reason}; it takes 64 hex digits (32 bytes)")]
    BadHostData { value: String, reason: String },
    #[error("no cgroup v2 hierarchy found; pass --cgroup-root")]
    NoCgroup,
    #[error("reading init data {path}: {source}")]
    InitData {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Init(#[from] veil_agent::init::InitError),
    #[error(transparent)]
    Transport(#[from] veil_agent::transport::TransportError),
    #[error("ttrpc server: {0}")]
    Server(String),
    #[error("installing SIGCHLD handler: {0}")]
    Signal(std::io::Error),
}

/// The host's HOST_DATA in hex: any input, non-ASCII or of odd length included, is an error
/// naming what is wrong, never a panic (the hex crate decodes byte by byte).
fn parse_host_data(text: &str) -> Result<[u8; 32], StartError> {
    hex::FromHex::from_hex(text).map_err(|e: hex::FromHexError| StartError::BadHostData {
        value: text.to_string(),
        reason: e.to_string(),
    })
}

fn attestation_source(cli: &Cli) -> Result<Box<dyn AttestationSource>, StartError> {
    let insecure = || -> Result<Box<dyn AttestationSource>, StartError> {
        let hex = cli
            .insecure_host_data
            .as_deref()
            .ok_or_else(|| StartError::BadHostData {
                value: String::new(),
                reason: "not given".into(),
            })?;
        Ok(Box::new(InsecureDevelopment::new(parse_host_data(hex)?)))
    };
    match cli.attestation.as_str() {
        "auto" => attestation::detect_hardware().ok_or(StartError::NoHardware),
        "sev-guest" => Ok(Box::new(attestation::SevGuestDevice::default())),
        "configfs-tsm" => Ok(Box::new(attestation::ConfigfsTsm::default())),
        "insecure" => insecure(),
        other => Err(StartError::UnknownBackend(other.to_string())),
    }
}

/// Reads the policy from the init-data device: text up to the first NUL (devices are padded).
fn read_init_data(path: &PathBuf) -> Result<String, StartError> {
    use std::io::Read;
    let err = |source| StartError::InitData {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_INIT_DATA)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if let Some(end) = bytes.iter().position(|b| *b == 0) {
        bytes.truncate(end);
    }
    String::from_utf8(bytes)
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

async fn run(cli: Cli) -> Result<(), StartError> {
    let init = veil_agent::init::is_init();
    if init {
        veil_agent::init::mount_kernel_filesystems()?;
    }
    if !init {
        // Container processes libcontainer forks are re-parented to the agent, which must
        // reap them and report their exit; on a host it is not PID 1, so it asks to be.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == -1 {
            return Err(StartError::Signal(std::io::Error::last_os_error()));
        }
    }
    let reaper = Reaper::start().map_err(StartError::Signal)?;
    let gate = Arc::new(PolicyGate::new(attestation_source(&cli)?));
    if let Some(dev) = &cli.policy_device {
        let text = read_init_data(dev)?;
        match gate.load(&text) {
            Ok(()) => info!(device = %dev.display(), "policy loaded from init data"),
            // Not fatal: the host may still send the right policy with SetPolicy.
            Err(e) => error!(device = %dev.display(), error = %e, "init-data policy refused"),
        }
    }
    let cgroup_root = match &cli.cgroup_root {
        Some(p) => p.clone(),
        None => detect_cgroup_root().ok_or(StartError::NoCgroup)?,
    };
    let containers = Arc::new(ContainerManager::new(
        RuntimeConfig {
            state_dir: cli.state_dir.clone(),
            cgroup_root,
        },
        reaper,
    ));
    let (destroyed_tx, mut destroyed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let agent = Arc::new(Agent::new(
        gate,
        containers.clone(),
        init,
        Box::new(move || {
            let _ = destroyed_tx.send(());
        }),
    ));
    let listener = cli.listen.bind()?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener)
        .register_service(service::services(agent));
    server
        .start()
        .await
        .map_err(|e| StartError::Server(e.to_string()))?;
    info!(listen = %cli.listen, init, "agent serving");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(StartError::Signal)?;
    tokio::select! {
        _ = destroyed_rx.recv() => info!("sandbox destroyed"),
        _ = sigterm.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
    }
    // Nothing may outlive the agent: on SIGTERM/interrupt the containers are still there.
    if let Err(e) = containers.remove_all().await {
        error!(error = %e, "removing containers at shutdown");
    }
    // Let the DestroySandbox reply leave before shutting down.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let _ = server.shutdown().await;
    if init {
        veil_agent::init::power_off();
    }
    Ok(())
}

fn main() {
    // libcontainer's calls run in a short-lived child of the agent (see container::helper).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(veil_agent::container::helper::HELPER_ARG) {
        std::process::exit(veil_agent::container::helper::main(&args[2..]));
    }
    let cli = Cli::parse();
    veil_agent::logging::init(cli.attestation == "insecure");
    // Before the runtime starts its threads: chroot and mount moves are per process, and
    // the switch must happen while PID 1 is still single-threaded.
    if veil_agent::init::is_init() {
        if let Err(e) = veil_agent::init::leave_initramfs() {
            error!(error = %e, "cannot leave the initramfs; powering off");
            veil_agent::init::power_off();
            std::process::exit(1);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start tokio runtime");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        error!(error = %e, "agent failed");
        if veil_agent::init::is_init() {
            warn!("init failed; powering off");
            veil_agent::init::power_off();
        }
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_data_takes_64_hex_digits_of_either_case() {
        let upper = format!("0A{}", "fF".repeat(31));
        let mut want = [0xff; 32];
        want[0] = 0x0a;
        assert_eq!(parse_host_data(&upper).unwrap(), want);
    }

    #[test]
    fn bad_host_data_is_named_and_never_panics() {
        // 64 bytes, but "é" is two bytes: slicing by byte offsets would split it.
        let non_ascii = format!("é{}", "0".repeat(62));
        assert_eq!(non_ascii.len(), 64);
        for bad in [
            non_ascii,
            "0".repeat(63),
            "0".repeat(65),
            "g".repeat(64),
            format!("+1{}", "0".repeat(62)),
        ] {
            let err = parse_host_data(&bad).unwrap_err().to_string();
            assert!(err.contains("--insecure-host-data"), "{err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let err = parse_host_data(&"g".repeat(64)).unwrap_err().to_string();
        assert!(err.contains("Invalid character 'g'"), "{err}");
    }
}
