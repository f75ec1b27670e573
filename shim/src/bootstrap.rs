//! The shim binary's one-shot actions containerd runs: `start` (find or launch the pod's
//! shim server and print its address) and `delete` (clean up after a shim that died).
//!
//! containerd-shim 0.12's own `run` answers `start` for task API v3 only (a JSON reply that
//! containerd 1.6 cannot read), so these actions are ours, built from the crate's flag parser,
//! socket naming and bootstrap messages; the server speaks both API versions.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::Flags;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use serde::{Deserialize, Serialize};

use crate::annotations::{self, Role};
use crate::config::{Config, SandboxKind};
use crate::options::{self, CONFIG_PATH_ENV};
use crate::spec;

/// The descriptor the listening socket is handed to the shim server on.
pub const LISTENER_FD: i32 = 3;
/// Largest start payload read from stdin (containerd's own limit).
const MAX_STDIN: u64 = 10 << 20;
/// Record in each bundle that the `delete` action reads.
const BUNDLE_RECORD: &str = "veil-shim.json";
/// The shim server's pid, in the bundle of the container that started it.
pub const PID_FILE: &str = "shim.pid";
/// Connection attempts before a shim server counts as alive.
const LIVENESS_PROBES: u32 = 5;
/// Exit status `delete` reports for a task whose shim died (128 + SIGKILL, as runc's shim).
const DEAD_SHIM_STATUS: u32 = 137;

/// Errors of the one-shot actions.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("container {id} belongs to pod sandbox {sandbox}, whose shim at {socket} does not answer: {source}")]
    NoPodShim {
        id: String,
        sandbox: String,
        socket: String,
        source: std::io::Error,
    },
    #[error("encoding reply: {0}")]
    Encode(#[from] containerd_shim_protos::protobuf::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootstrapError {
    let what = what.into();
    move |source| BootstrapError::Io { what, source }
}

/// What a bundle records about the shim that runs it.
#[derive(Debug, Serialize, Deserialize)]
struct BundleRecord {
    sandbox_id: String,
    socket: String,
    sandbox_dir: PathBuf,
    kind: SandboxKind,
}

/// `start`: prints the address of the shim server for this container's pod, launching one
/// for a pod's first container.
pub fn start(flags: &Flags) -> Result<(), BootstrapError> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN)
        .read_to_end(&mut input)
        .map_err(io("reading start parameters"))?;
    // containerd 2.3+ sends BootstrapParams and wants a BootstrapResult; older daemons send
    // the runtime options (an Any) and want the bare address, which they take for task
    // API v2 (served alongside v3).
    let params = BootstrapParams::parse_from_bytes(&input)
        .ok()
        .filter(|p| p.instance_id == flags.id && !p.containerd_ttrpc_address.is_empty());
    let options: Vec<Any> = match &params {
        Some(p) => p
            .extensions
            .iter()
            .filter_map(|e| e.value.clone().into_option())
            .collect(),
        None => Any::parse_from_bytes(&input).ok().into_iter().collect(),
    };
    let config_path = options
        .iter()
        .find_map(options::config_path)
        .or_else(|| std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from));
    let config = Config::load(config_path.as_deref())?;
    let bundle = std::env::current_dir().map_err(io("reading the bundle directory"))?;
    let oci = spec::load_bundle(&bundle)?;
    let role = annotations::role(&spec::annotations(&oci));
    let grouping = match &role {
        Role::PodMember { sandbox_id } => sandbox_id.clone(),
        _ => flags.id.clone(),
    };
    let address = socket_address(flags, params.as_ref(), &grouping);
    let socket = address.trim_start_matches("unix://").to_string();
    let record = BundleRecord {
        sandbox_id: grouping.clone(),
        socket: socket.clone(),
        sandbox_dir: crate::sandbox::sandbox_dir(&config.state_dir, Path::new(&socket)),
        kind: config.sandbox,
    };
    std::fs::write(
        bundle.join(BUNDLE_RECORD),
        serde_json::to_vec(&record).expect("record serializes"),
    )
    .map_err(io("writing the bundle record"))?;

    if let Role::PodMember { sandbox_id } = &role {
        UnixStream::connect(&socket).map_err(|source| BootstrapError::NoPodShim {
            id: flags.id.clone(),
            sandbox: sandbox_id.clone(),
            socket: socket.clone(),
            source,
        })?;
    } else if UnixStream::connect(&socket).is_err() {
        let ttrpc_address = params
            .as_ref()
            .map(|p| p.containerd_ttrpc_address.clone())
            .or_else(|| std::env::var("TTRPC_ADDRESS").ok())
            .unwrap_or_default();
        launch_server(flags, &socket, &ttrpc_address, config_path.as_deref())?;
    }
    std::fs::write(bundle.join("address"), &address).map_err(io("writing the address file"))?;
    let reply = match params {
        Some(_) => BootstrapResult {
            version: containerd_shim_protos::TASK_API_VERSION,
            address: address.clone(),
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()?,
        None => address.into_bytes(),
    };
    let mut out = std::io::stdout();
    out.write_all(&reply).map_err(io("writing the address"))?;
    out.flush().map_err(io("writing the address"))?;
    Ok(())
}

/// containerd's socket naming for shims (a hash of its address, namespace and the group).
fn socket_address(flags: &Flags, params: Option<&BootstrapParams>, grouping: &str) -> String {
    let mut opts = containerd_shim::StartOpts {
        address: flags.address.clone(),
        namespace: flags.namespace.clone(),
        ..Default::default()
    };
    if let Some(p) = params {
        opts.socket_dir = p.socket_dir.clone().filter(|d| !d.is_empty());
    }
    opts.socket_address(grouping)
}

/// Binds the pod's socket and starts the shim server on it (in a session of its own so that
/// it outlives this process and containerd's process group).
fn launch_server(
    flags: &Flags,
    socket: &str,
    ttrpc_address: &str,
    config_path: Option<&Path>,
) -> Result<(), BootstrapError> {
    let path = Path::new(socket);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    // Nothing answers there (checked by the caller): a stale socket file from a dead shim.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(io(format!("binding {socket}")))?;
    let fd: OwnedFd = listener.into();
    let raw = fd.as_raw_fd();
    let exe = std::env::current_exe().map_err(io("finding the shim binary"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", socket])
        .env("TTRPC_ADDRESS", ttrpc_address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if flags.debug {
        cmd.arg("-debug");
    }
    if let Some(p) = config_path {
        cmd.env(CONFIG_PATH_ENV, p);
    }
    // SAFETY: between fork and exec the closure only calls async-signal-safe functions
    // (setsid, dup2, fcntl) on descriptors that exist in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if raw == LISTENER_FD {
                // Already in place: only clear close-on-exec.
                let flags = libc::fcntl(raw, libc::F_GETFD);
                libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(raw, LISTENER_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let _ = std::fs::remove_file(path);
        BootstrapError::Io {
            what: "starting the shim server".into(),
            source: e,
        }
    })?;
    tracing::debug!(pid = child.id(), socket, "shim server started");
    drop(fd);
    Ok(())
}

/// The listening socket the `start` action handed over, or a fresh bind of `socket` when the
/// server was started by hand.
pub fn inherited_listener(socket: &str) -> Result<UnixListener, BootstrapError> {
    // SAFETY: fstat on a descriptor number only reads its metadata.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(LISTENER_FD, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if is_socket {
        // SAFETY: fd 3 is the listening socket `start` placed there for this process alone.
        let listener = unsafe { UnixListener::from_raw_fd(LISTENER_FD) };
        // SAFETY: as above; close-on-exec keeps it from the agent process.
        unsafe {
            let flags = libc::fcntl(LISTENER_FD, libc::F_GETFD);
            libc::fcntl(LISTENER_FD, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
        return Ok(listener);
    }
    let path = socket.trim_start_matches("unix://");
    UnixListener::bind(path).map_err(io(format!("binding {path}")))
}

/// Whether the shim server of a bundle still runs. containerd calls `delete` as soon as the
/// connection drops, which can be while the killed server is still exiting and its
/// listening socket still accepts: so a dying or zombie pid counts as dead, and a socket must
/// keep accepting over a short while to count as alive.
fn shim_alive(bundle: &Path, socket: &str) -> bool {
    if let Some(pid) = std::fs::read_to_string(bundle.join(PID_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return false;
        }
    }
    for _ in 0..LIVENESS_PROBES {
        if UnixStream::connect(socket).is_err() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

/// `delete`: called by containerd for a task whose shim is gone (or whose create failed).
/// Removes what the dead shim left when this container was its pod's sandbox, and reports
/// the task as killed.
pub fn delete(flags: &Flags) -> Result<(), BootstrapError> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io("reading the bundle directory"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    if let Ok(text) = std::fs::read(bundle.join(BUNDLE_RECORD)) {
        if let Ok(record) = serde_json::from_slice::<BundleRecord>(&text) {
            let shim_alive = shim_alive(&bundle, &record.socket);
            if !shim_alive && record.sandbox_id == flags.id {
                match record.kind {
                    SandboxKind::Process => {
                        crate::sandbox::teardown_process_records(&record.sandbox_dir)
                    }
                    // The VM ran inside the dead shim process: only files remain.
                    SandboxKind::Vm => crate::cleanup::remove_tree(&record.sandbox_dir),
                }
                let _ = std::fs::remove_file(&record.socket);
            }
        }
    }
    let resp = DeleteResponse {
        exit_status: DEAD_SHIM_STATUS,
        exited_at: protobuf::MessageField::some(crate::events::now()),
        ..Default::default()
    };
    std::io::stdout()
        .write_all(&resp.write_to_bytes()?)
        .map_err(io("writing the delete response"))?;
    Ok(())
}
