//! Containers from OCI specs: root file system from a read-only block device with a writable
//! overlay, namespaces (mount, UTS, IPC, PID), cgroup v2, credentials, capabilities, rlimits, stdio, exit codes.
//!
//! Hand-written on purpose (see the crate README / commit message): youki's `libcontainer` was
//! the preferred choice; this module is the narrow subset the agent needs.

mod cgroup;
mod devmapper;
mod limits;
mod mounts;
mod paths;
mod process;
mod reaper;
mod spawn;
mod stdio;
mod storage;
mod sys;
mod verity;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ttrpc::Code;

pub use cgroup::detect_root as detect_cgroup_root;
pub use paths::validate_id;
pub use reaper::Reaper;

use crate::protocols::agent;
use process::Process;

/// Largest single WriteStdin payload accepted.
pub const MAX_STDIN_WRITE: usize = 1 << 20;
/// Largest single ReadStdout/ReadStderr answer.
pub const MAX_READ: usize = 1 << 20;

/// Errors from container operations; `code()` gives the ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid {kind} id {id:?}: use [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 bytes")]
    InvalidId { kind: &'static str, id: String },
    #[error("invalid {what}: {path:?} (must be absolute, without `.`/`..` components)")]
    InvalidPath { what: &'static str, path: String },
    #[error("invalid OCI spec: {0}")]
    InvalidSpec(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    #[error("no container {0:?}")]
    NoContainer(String),
    #[error("process {exec_id:?} already exists in container {container_id:?}")]
    ProcessExists {
        container_id: String,
        exec_id: String,
    },
    #[error("no process {exec_id:?} in container {container_id:?}")]
    NoProcess {
        container_id: String,
        exec_id: String,
    },
    #[error("container {id:?} is {state}; {op} needs it {wanted}")]
    WrongState {
        id: String,
        state: &'static str,
        op: &'static str,
        wanted: &'static str,
    },
    #[error("stdin write of {len} bytes exceeds the {max}-byte limit")]
    WriteTooLarge { len: usize, max: usize },
    #[error("signal {0} is not a valid signal number")]
    BadSignal(u32),
    #[error("mounting {what}: {source}")]
    Mount {
        what: String,
        source: std::io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("starting process: {0}")]
    Spawn(std::io::Error),
    #[error("stream of process {exec_id:?}: {source}")]
    Stream {
        exec_id: String,
        source: std::io::Error,
    },
    #[error(
        "layer {device}: dm-verity root hash is {found}, the storage (and policy) name {expected}"
    )]
    RootHashMismatch {
        device: String,
        expected: String,
        found: String,
    },
    #[error("container {id:?} still has processes after being killed")]
    Busy { id: String },
}

impl ContainerError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }

    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidId { .. }
            | Self::InvalidPath { .. }
            | Self::InvalidSpec(_)
            | Self::WriteTooLarge { .. }
            | Self::BadSignal(_) => Code::INVALID_ARGUMENT,
            Self::Unsupported(_) => Code::UNIMPLEMENTED,
            Self::ContainerExists(_) | Self::ProcessExists { .. } => Code::ALREADY_EXISTS,
            Self::NoContainer(_) | Self::NoProcess { .. } => Code::NOT_FOUND,
            Self::RootHashMismatch { .. } => Code::PERMISSION_DENIED,
            Self::WrongState { .. } | Self::Busy { .. } => Code::FAILED_PRECONDITION,
            Self::Mount { .. } | Self::Io { .. } | Self::Spawn(_) | Self::Stream { .. } => {
                Code::INTERNAL
            }
        }
    }
}

/// Where the runtime keeps its state.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Per-container directories (mount points) live under here.
    pub state_dir: PathBuf,
    /// The cgroup v2 mount; containers get `<root>/veil/<id>`.
    pub cgroup_root: PathBuf,
}

struct Container {
    id: String,
    init_exec_id: String,
    rootfs: std::sync::Mutex<storage::RootFs>,
    cgroup: cgroup::Cgroup,
    hostname: String,
    spec_mounts: Vec<crate::protocols::oci::Mount>,
    processes: std::sync::Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        let exec_id = if exec_id.is_empty() {
            &self.init_exec_id
        } else {
            exec_id
        };
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::NoProcess {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    fn init(&self) -> Result<Arc<Process>, ContainerError> {
        self.process(&self.init_exec_id)
    }

    fn all_processes(&self) -> Vec<Arc<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// All containers of the sandbox.
pub struct ContainerManager {
    config: RuntimeConfig,
    reaper: Arc<Reaper>,
    containers: tokio::sync::Mutex<HashMap<String, Arc<Container>>>,
}

impl ContainerManager {
    /// A manager with no containers. `reaper` must be running.
    pub fn new(config: RuntimeConfig, reaper: Arc<Reaper>) -> Self {
        Self {
            config,
            reaper,
            containers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        validate_id("container", id)?;
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NoContainer(id.to_string()))
    }

    /// CreateSandbox: records nothing yet beyond validating the request (one sandbox per VM).
    pub fn create_sandbox(&self, req: &agent::CreateSandboxRequest) -> Result<(), ContainerError> {
        if !req.storages.is_empty() {
            return Err(ContainerError::Unsupported("sandbox storages".into()));
        }
        std::fs::create_dir_all(&self.config.state_dir)
            .map_err(|e| ContainerError::io("creating", &self.config.state_dir, e))
    }

    /// CreateContainer: validates everything, mounts the root, creates the cgroup and the init
    /// process's stdio. Nothing is left behind when it fails.
    pub async fn create(&self, req: &agent::CreateContainerRequest) -> Result<(), ContainerError> {
        let id = req.container_id.as_str();
        validate_id("container", id)?;
        let exec_id = if req.exec_id.is_empty() {
            id
        } else {
            req.exec_id.as_str()
        };
        validate_id("exec", exec_id)?;
        let spec = req
            .OCI
            .as_ref()
            .ok_or_else(|| ContainerError::InvalidSpec("no OCI spec".into()))?;
        let process = spec
            .Process
            .as_ref()
            .ok_or_else(|| ContainerError::InvalidSpec("no Process".into()))?;
        if let Some(root) = spec.Root.as_ref() {
            if !root.Path.is_empty() {
                check_root_path(&root.Path)?;
            }
        }
        let [layer] = req.storages.as_slice() else {
            return Err(ContainerError::InvalidSpec(format!(
                "expected exactly one storage (the root layer), got {}",
                req.storages.len()
            )));
        };
        if !layer.mount_point.is_empty() {
            check_root_path(&layer.mount_point)?;
        }
        if spec.Hostname.len() > 64 || spec.Hostname.contains('\0') {
            return Err(ContainerError::InvalidSpec(format!(
                "hostname {:?}",
                spec.Hostname
            )));
        }
        let resources = spec.Linux.as_ref().and_then(|l| l.Resources.as_ref());

        let mut containers = self.containers.lock().await;
        if containers.contains_key(id) {
            return Err(ContainerError::ContainerExists(id.to_string()));
        }
        let dir = self.config.state_dir.join(id);
        if dir.exists() {
            return Err(ContainerError::ContainerExists(id.to_string()));
        }
        let cgroup = cgroup::Cgroup::create(&self.config.cgroup_root, id, resources)?;
        let mut rootfs = match storage::RootFs::mount(&dir, layer, &format!("veil-{id}")) {
            Ok(r) => r,
            Err(e) => {
                cgroup.remove();
                return Err(e);
            }
        };
        let prepared = spawn::PreparedProcess::new(process, &rootfs.merged())
            .and_then(|p| mounts::prepare(&spec.Mounts, &rootfs.merged()).map(|_| p))
            .and_then(|p| Process::new(exec_id, p));
        let init = match prepared {
            Ok(p) => p,
            Err(e) => {
                rootfs.unmount();
                cgroup.remove();
                return Err(e);
            }
        };
        let container = Container {
            id: id.to_string(),
            init_exec_id: exec_id.to_string(),
            rootfs: std::sync::Mutex::new(rootfs),
            cgroup,
            hostname: spec.Hostname.clone(),
            spec_mounts: spec.Mounts.clone(),
            processes: std::sync::Mutex::new(HashMap::from([(
                exec_id.to_string(),
                Arc::new(init),
            )])),
        };
        containers.insert(id.to_string(), Arc::new(container));
        tracing::info!(container = id, "container created");
        Ok(())
    }

    /// StartContainer: runs the init process.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id).await?;
        let init = c.init()?;
        let merged = c.rootfs.lock().unwrap_or_else(|p| p.into_inner()).merged();
        let entry = spawn::Entry::Init {
            rootfs: spawn::c_path(&merged)?,
            hostname: if c.hostname.is_empty() {
                None
            } else {
                Some(
                    std::ffi::CString::new(c.hostname.clone())
                        .map_err(|_| ContainerError::InvalidSpec("hostname has NUL".into()))?,
                )
            },
            mounts: mounts::prepare(&c.spec_mounts, &merged)?,
        };
        let procs = spawn::open_for_child(&c.cgroup.procs_file(), true)?;
        init.spawn(&self.reaper, entry, procs, id)?;
        tracing::info!(
            container = id,
            pid = init.pid().unwrap_or(0),
            "container started"
        );
        Ok(())
    }

    /// ExecProcess: runs another process inside a started container's namespaces.
    pub async fn exec(&self, req: &agent::ExecProcessRequest) -> Result<(), ContainerError> {
        let c = self.get(&req.container_id).await?;
        validate_id("exec", &req.exec_id)?;
        let oci_process = req
            .process
            .as_ref()
            .ok_or_else(|| ContainerError::InvalidSpec("no process".into()))?;
        let init = c.init()?;
        let Some(init_pid) = init.pid().filter(|_| !init.has_exited()) else {
            return Err(ContainerError::WrongState {
                id: c.id.clone(),
                state: if init.pid().is_some() {
                    "stopped"
                } else {
                    "created"
                },
                op: "ExecProcess",
                wanted: "running",
            });
        };
        let merged = c.rootfs.lock().unwrap_or_else(|p| p.into_inner()).merged();
        let prepared = spawn::PreparedProcess::new(oci_process, &merged)?;
        let mut namespaces = Vec::new();
        for ns in ["ipc", "uts", "mnt"] {
            let path = PathBuf::from(format!("/proc/{init_pid}/ns/{ns}"));
            namespaces.push(spawn::open_for_child(&path, false)?);
        }
        let pid_namespace =
            spawn::open_for_child(Path::new(&format!("/proc/{init_pid}/ns/pid")), false)?;
        let process = Arc::new(Process::new(&req.exec_id, prepared)?);
        {
            let mut procs = c.processes.lock().unwrap_or_else(|p| p.into_inner());
            if procs.contains_key(&req.exec_id) {
                return Err(ContainerError::ProcessExists {
                    container_id: c.id.clone(),
                    exec_id: req.exec_id.clone(),
                });
            }
            procs.insert(req.exec_id.clone(), process.clone());
        }
        let cgroup_procs = spawn::open_for_child(&c.cgroup.procs_file(), true)?;
        let spawned = process.spawn(
            &self.reaper,
            spawn::Entry::Join {
                namespaces,
                pid_namespace,
            },
            cgroup_procs,
            &c.id,
        );
        if let Err(e) = spawned {
            c.processes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req.exec_id);
            return Err(e);
        }
        Ok(())
    }

    /// SignalProcess: one process, or (empty exec id) every process in the container.
    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), ContainerError> {
        if signal == 0 || signal > 64 {
            return Err(ContainerError::BadSignal(signal));
        }
        let c = self.get(id).await?;
        if exec_id.is_empty() {
            for pid in c.cgroup.pids() {
                // SAFETY: kill(2) on a pid from the container's cgroup.
                unsafe { libc::kill(pid, signal as i32) };
            }
            return Ok(());
        }
        c.process(exec_id)?.signal(signal as i32, id)
    }

    /// WaitProcess: the exit status (code, or 128 + signal).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let c = self.get(id).await?;
        let p = c.process(exec_id)?;
        p.wait(id).await
    }

    /// WriteStdin.
    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<u32, ContainerError> {
        if data.len() > MAX_STDIN_WRITE {
            return Err(ContainerError::WriteTooLarge {
                len: data.len(),
                max: MAX_STDIN_WRITE,
            });
        }
        let c = self.get(id).await?;
        c.process(exec_id)?.write_stdin(data).await
    }

    /// ReadStdout / ReadStderr: up to `len` bytes (bounded by [`MAX_READ`]); empty at end.
    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        len: u32,
        stderr: bool,
    ) -> Result<Vec<u8>, ContainerError> {
        let c = self.get(id).await?;
        let len = (len as usize).clamp(1, MAX_READ);
        c.process(exec_id)?.read_output(len, stderr).await
    }

    /// CloseStdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let c = self.get(id).await?;
        c.process(exec_id)?.close_stdin().await;
        Ok(())
    }

    /// TtyWinResize.
    pub async fn resize_tty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ContainerError> {
        let c = self.get(id).await?;
        let rows = rows.min(u16::MAX as u32) as u16;
        let cols = cols.min(u16::MAX as u32) as u16;
        c.process(exec_id)?.resize(rows, cols)
    }

    /// StatsContainer.
    pub async fn stats(&self, id: &str) -> Result<agent::StatsContainerResponse, ContainerError> {
        Ok(self.get(id).await?.cgroup.stats())
    }

    /// RemoveContainer: kills every process, waits for them, unmounts, removes the cgroup.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        validate_id("container", id)?;
        let mut containers = self.containers.lock().await;
        let c = containers
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NoContainer(id.to_string()))?;
        Self::teardown(&c).await?;
        containers.remove(id);
        tracing::info!(container = id, "container removed");
        Ok(())
    }

    /// Removes every container (DestroySandbox).
    pub async fn remove_all(&self) -> Result<(), ContainerError> {
        let mut containers = self.containers.lock().await;
        let all: Vec<_> = containers.values().cloned().collect();
        for c in all {
            Self::teardown(&c).await?;
            containers.remove(&c.id);
        }
        Ok(())
    }

    async fn teardown(c: &Container) -> Result<(), ContainerError> {
        c.cgroup.kill_all();
        for p in c.all_processes() {
            p.kill_and_wait().await;
        }
        // Processes we did not spawn (a container's own children) leave the cgroup once the
        // kernel has delivered SIGKILL; give that a bounded number of short pauses.
        for _ in 0..500 {
            if c.cgroup.pids().is_empty() {
                break;
            }
            c.cgroup.kill_all();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if !c.cgroup.pids().is_empty() {
            return Err(ContainerError::Busy { id: c.id.clone() });
        }
        c.rootfs.lock().unwrap_or_else(|p| p.into_inner()).unmount();
        c.cgroup.remove();
        Ok(())
    }
}

/// A root path from the host names where Kata would put the root; the agent chooses its own
/// location, but a path with traversal in it is refused outright.
fn check_root_path(path: &str) -> Result<(), ContainerError> {
    if path.starts_with('/') {
        paths::relative_inside("root path", path)?;
    } else if path.split('/').any(|s| s == ".." || s == ".") || path.contains('\0') {
        return Err(ContainerError::InvalidPath {
            what: "root path",
            path: path.to_string(),
        });
    }
    Ok(())
}
