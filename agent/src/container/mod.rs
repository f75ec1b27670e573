//! Containers from OCI specs, run by youki's libcontainer (cgroup v2, seccomp, namespaces,
//! mounts, masked and read-only paths, sysctls, devices, capabilities, rlimits, hooks).
//! What stays the agent's own: the root file system from read-only block layers (dm-verity)
//! under an overlay, the stdio of each process as ttrpc streams, reaping as PID 1, and the
//! checks of everything the host sends before libcontainer sees it.

pub mod bundle;
mod cgroup;
mod cgroup_stats;
mod devmapper;
pub mod helper;
mod paths;
mod process;
mod reaper;
mod runtime;
mod stdio;
mod storage;
mod sys;
mod verity;
mod volumes;

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
    #[error("layer {device} has no dm-verity root hash, and the policy does not allow unverified layers (rule AllowUnverifiedLayers)")]
    UnverifiedLayer { device: String },
    #[error("libcontainer: {0}")]
    Runtime(String),
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
            Self::RootHashMismatch { .. } | Self::UnverifiedLayer { .. } => Code::PERMISSION_DENIED,
            Self::WrongState { .. } | Self::Busy { .. } => Code::FAILED_PRECONDITION,
            Self::Mount { .. }
            | Self::Io { .. }
            | Self::Spawn(_)
            | Self::Stream { .. }
            | Self::Runtime(_) => Code::INTERNAL,
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
    /// The OCI bundle libcontainer was given (config.json, exec process files).
    bundle: PathBuf,
    cgroup: cgroup::Cgroup,
    /// StartContainer has run: exec needs it.
    started: std::sync::atomic::AtomicBool,
    processes: std::sync::Mutex<HashMap<String, Arc<Process>>>,
    /// OOM kills in the cgroup already reported to GetOOMEvent.
    oom_kills_reported: std::sync::atomic::AtomicU64,
}

impl Container {
    /// Reports the cgroup's OOM kills not reported yet (one event for any number of them).
    /// Called by the periodic watch, and when a process exits and before the cgroup goes:
    /// containerd deletes an OOM-killed task within milliseconds of its exit, well inside
    /// one poll period, and the kill count goes with the cgroup.
    fn report_new_oom_kills(&self, tx: &tokio::sync::mpsc::UnboundedSender<String>) {
        let Some(now) = self.cgroup.oom_kills() else {
            return;
        };
        let before = self
            .oom_kills_reported
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        if now > before {
            tracing::info!(container = %self.id, kills = now - before, "OOM kill in container");
            let _ = tx.send(self.id.clone());
        }
    }

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
    runtime: runtime::Runtime,
    containers: tokio::sync::Mutex<HashMap<String, Arc<Container>>>,
    /// Ids of containers whose processes the OOM killer hit, for GetOOMEvent.
    oom_tx: tokio::sync::mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

/// How often each container's OOM kill counter is read.
const OOM_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Terminal size of a process (rows, columns); 24x80 when the spec gives none.
fn console_size(p: &crate::protocols::oci::Process) -> (u16, u16) {
    let size = p.ConsoleSize.as_ref();
    (
        size.map_or(24, |s| s.Height.min(u16::MAX as u32) as u16),
        size.map_or(80, |s| s.Width.min(u16::MAX as u32) as u16),
    )
}

impl ContainerManager {
    /// A manager with no containers. `reaper` must be running.
    pub fn new(config: RuntimeConfig, reaper: Arc<Reaper>) -> Self {
        let runtime = runtime::Runtime::new(config.state_dir.join("libcontainer"));
        let (oom_tx, oom_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            config,
            reaper,
            runtime,
            containers: tokio::sync::Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
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

    /// The agent's directory behind Kata's `/run/kata-containers/shared/containers/`.
    pub fn shared_dir(&self) -> PathBuf {
        self.config.state_dir.join("shared")
    }

    /// The agent's directory behind Kata's `/run/kata-containers/sandbox/ephemeral/`.
    pub fn ephemeral_dir(&self) -> PathBuf {
        self.config.state_dir.join("ephemeral")
    }

    /// CreateSandbox: records nothing yet beyond validating the request (one sandbox per VM).
    pub fn create_sandbox(&self, req: &agent::CreateSandboxRequest) -> Result<(), ContainerError> {
        if !req.storages.is_empty() {
            return Err(ContainerError::Unsupported("sandbox storages".into()));
        }
        for dir in [
            self.config.state_dir.clone(),
            self.shared_dir(),
            self.ephemeral_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| ContainerError::io("creating", &dir, e))?;
        }
        Ok(())
    }

    /// The cgroup of container `id`, relative to the cgroup v2 mount (what libcontainer takes
    /// as `cgroupsPath`).
    fn cgroups_path(&self, id: &str) -> String {
        let mount = cgroup::detect_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        let below = self
            .config
            .cgroup_root
            .strip_prefix(&mount)
            .unwrap_or(Path::new(""));
        Path::new("/")
            .join(below)
            .join("veil")
            .join(id)
            .display()
            .to_string()
    }

    /// CreateContainer: validates everything, mounts the layers, writes the bundle and has
    /// libcontainer create the container (its init process waits for StartContainer).
    /// Nothing is left behind when it fails. `allow_unverified`: the policy lets layers
    /// without a dm-verity root hash be used.
    pub async fn create(
        &self,
        req: &agent::CreateContainerRequest,
        allow_unverified: bool,
    ) -> Result<(), ContainerError> {
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
        for layer in &req.storages {
            if !layer.mount_point.is_empty() {
                check_root_path(&layer.mount_point)?;
            }
        }

        let mut containers = self.containers.lock().await;
        if containers.contains_key(id) {
            return Err(ContainerError::ContainerExists(id.to_string()));
        }
        let dir = self.config.state_dir.join(id);
        if dir.exists() || self.runtime.state_of(id).exists() {
            return Err(ContainerError::ContainerExists(id.to_string()));
        }
        let cgroups_path = self.cgroups_path(id);
        let shared = self.shared_dir();
        let ephemeral = self.ephemeral_dir();
        let rootfs_dir = dir.join("root");
        let config = bundle::config_json(
            spec,
            &bundle::BundlePaths {
                rootfs: &rootfs_dir.join("rootfs"),
                cgroups_path: &cgroups_path,
                shared_dir: &shared,
                ephemeral_dir: &ephemeral,
            },
        )?;
        // libcontainer's own checks of the spec, before anything is mounted.
        bundle::to_spec(config.clone())?;
        let bundle_dir = dir.join("bundle");
        let (volumes, layers): (Vec<_>, Vec<_>) = req
            .storages
            .iter()
            .cloned()
            .partition(|s| volumes::VOLUME_DRIVERS.contains(&s.driver.as_str()));
        for volume in &volumes {
            volumes::prepare_volume(volume, &shared, &ephemeral)?;
        }
        let mut rootfs = storage::RootFs::mount(
            &rootfs_dir,
            &layers,
            &format!("veil-{id}"),
            allow_unverified,
        )?;
        let undo = |rootfs: &mut storage::RootFs| {
            rootfs.unmount();
            let _ = std::fs::remove_dir_all(&bundle_dir);
            let _ = std::fs::remove_dir(&dir);
        };
        let written = program_in_root(process, &rootfs.merged())
            .and_then(|()| {
                std::fs::create_dir_all(&bundle_dir)
                    .map_err(|e| ContainerError::io("creating", &bundle_dir, e))
            })
            .and_then(|()| {
                std::fs::write(bundle_dir.join("config.json"), config.to_string())
                    .map_err(|e| ContainerError::io("writing the bundle in", &bundle_dir, e))
            });
        let created = match written {
            Ok(()) => self.create_init(id, exec_id, process, &bundle_dir).await,
            Err(e) => Err(e),
        };
        let (init, cgroup) =
            match created.and_then(|init| Ok((init, cgroup::Cgroup::open(&cgroups_path, id)?))) {
                Ok(made) => made,
                Err(e) => {
                    // The init process (if libcontainer made one) waits for start: delete it.
                    let _ = self
                        .runtime
                        .run(&self.reaper, id, runtime::Op::Delete, None)
                        .await;
                    undo(&mut rootfs);
                    return Err(e);
                }
            };
        let container = Container {
            id: id.to_string(),
            init_exec_id: exec_id.to_string(),
            rootfs: std::sync::Mutex::new(rootfs),
            bundle: bundle_dir,
            cgroup,
            started: std::sync::atomic::AtomicBool::new(false),
            processes: std::sync::Mutex::new(HashMap::from([(
                exec_id.to_string(),
                Arc::new(init),
            )])),
            // The cgroup is new, so its count starts at zero: a kill before the first poll
            // (a process can run out of memory within milliseconds of start) still counts.
            oom_kills_reported: std::sync::atomic::AtomicU64::new(0),
        };
        let container = Arc::new(container);
        self.watch_oom(&container);
        containers.insert(id.to_string(), container);
        tracing::info!(container = id, "container created");
        Ok(())
    }

    /// Reports each new OOM kill in the container's cgroup to GetOOMEvent, until the
    /// container is removed.
    fn watch_oom(&self, container: &Arc<Container>) {
        let weak = Arc::downgrade(container);
        let tx = self.oom_tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(OOM_POLL).await;
                let Some(c) = weak.upgrade() else { break };
                c.report_new_oom_kills(&tx);
            }
        });
    }

    /// GetOOMEvent: waits for the next container whose process the OOM killer killed.
    pub async fn next_oom(&self) -> String {
        let mut rx = self.oom_rx.lock().await;
        // The sender lives in `self`, so the channel never closes while this runs.
        rx.recv().await.unwrap_or_default()
    }

    /// CopyFile.
    pub fn copy_file(&self, req: &agent::CopyFileRequest) -> Result<(), ContainerError> {
        volumes::copy_file(&self.shared_dir(), req)
    }

    /// ListProcesses: the container's pids, as a table (`PID` header, one per line) or, with
    /// format `json`, a JSON array.
    pub async fn list_processes(&self, id: &str, format: &str) -> Result<Vec<u8>, ContainerError> {
        let mut pids = self.get(id).await?.cgroup.pids();
        pids.sort_unstable();
        match format {
            "json" => Ok(serde_json::to_vec(&pids).unwrap_or_default()),
            "" | "table" => {
                let mut out = String::from("PID\n");
                for pid in pids {
                    out.push_str(&format!("{pid}\n"));
                }
                Ok(out.into_bytes())
            }
            other => Err(ContainerError::InvalidSpec(format!(
                "ListProcesses format {other:?} (json or table)"
            ))),
        }
    }

    /// How many containers exist (GetMetrics).
    pub async fn count(&self) -> usize {
        self.containers.lock().await.len()
    }

    async fn create_init(
        &self,
        id: &str,
        exec_id: &str,
        process: &crate::protocols::oci::Process,
        bundle_dir: &Path,
    ) -> Result<Process, ContainerError> {
        let (init, child_io) = Process::new(exec_id, process.Terminal, console_size(process))?;
        let pid = self
            .runtime
            .run(
                &self.reaper,
                id,
                runtime::Op::Create(bundle_dir),
                Some(child_io),
            )
            .await?
            .ok_or_else(|| ContainerError::Runtime("create returned no pid".into()))?;
        init.set_started(pid, self.reaper.adopt(pid));
        Ok(init)
    }

    /// StartContainer: lets the init process run (and runs poststart hooks).
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id).await?;
        let init = c.init()?;
        self.runtime
            .run(&self.reaper, id, runtime::Op::Start, None)
            .await?;
        c.started.store(true, std::sync::atomic::Ordering::SeqCst);
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
        let process_json = bundle::process_json(oci_process)?;
        let init = c.init()?;
        let started = c.started.load(std::sync::atomic::Ordering::SeqCst);
        if !started || init.has_exited() {
            return Err(ContainerError::WrongState {
                id: c.id.clone(),
                state: if started { "stopped" } else { "created" },
                op: "ExecProcess",
                wanted: "running",
            });
        }
        let (process, child_io) = Process::new(
            &req.exec_id,
            oci_process.Terminal,
            console_size(oci_process),
        )?;
        let process = Arc::new(process);
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
        let path = c.bundle.join(format!("exec-{}.json", req.exec_id));
        let result = match std::fs::write(&path, process_json.to_string()) {
            Ok(()) => {
                self.runtime
                    .run(
                        &self.reaper,
                        &c.id,
                        runtime::Op::Exec(&path),
                        Some(child_io),
                    )
                    .await
            }
            Err(e) => Err(ContainerError::io("writing", &path, e)),
        };
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(Some(pid)) => {
                process.set_started(pid, self.reaper.adopt(pid));
                Ok(())
            }
            Ok(None) => Err(ContainerError::Runtime("exec returned no pid".into())),
            Err(e) => {
                c.processes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&req.exec_id);
                Err(e)
            }
        }
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
        let status = p.wait(id).await;
        // Before the exit reaches the shim, so its OOM event is not lost to a quick delete.
        c.report_new_oom_kills(&self.oom_tx);
        status
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
        self.get(id).await?.cgroup.stats()
    }

    /// UpdateContainer: new cgroup limits, checked by the same rules as at create.
    pub async fn update(
        &self,
        id: &str,
        resources: &crate::protocols::oci::LinuxResources,
    ) -> Result<(), ContainerError> {
        let c = self.get(id).await?;
        let json = bundle::resources_json(resources)?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(json)
            .map_err(|e| ContainerError::InvalidSpec(format!("resources: {e}")))?;
        c.cgroup.update(&resources)
    }

    /// PauseContainer (`frozen`) and ResumeContainer: the cgroup freezer.
    pub async fn freeze(&self, id: &str, frozen: bool) -> Result<(), ContainerError> {
        self.get(id).await?.cgroup.freeze(frozen)
    }

    /// RemoveContainer: kills every process, waits for them, has libcontainer delete the
    /// container (poststop hooks, cgroup, state), unmounts the layers.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        validate_id("container", id)?;
        let mut containers = self.containers.lock().await;
        let c = containers
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NoContainer(id.to_string()))?;
        self.teardown(&c).await?;
        containers.remove(id);
        tracing::info!(container = id, "container removed");
        Ok(())
    }

    /// Removes every container (DestroySandbox).
    pub async fn remove_all(&self) -> Result<(), ContainerError> {
        let mut containers = self.containers.lock().await;
        let all: Vec<_> = containers.values().cloned().collect();
        for c in all {
            self.teardown(&c).await?;
            containers.remove(&c.id);
        }
        volumes::remove_ephemeral(&self.ephemeral_dir());
        let _ = std::fs::remove_dir_all(self.shared_dir());
        Ok(())
    }

    async fn teardown(&self, c: &Container) -> Result<(), ContainerError> {
        c.report_new_oom_kills(&self.oom_tx);
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
        if let Err(e) = self
            .runtime
            .run(&self.reaper, &c.id, runtime::Op::Delete, None)
            .await
        {
            // The container's processes are gone; what is left is state to clear by hand.
            tracing::warn!(container = %c.id, error = %e, "libcontainer delete failed");
            let _ = std::fs::remove_dir_all(self.runtime.state_of(&c.id));
            c.cgroup.remove();
        }
        c.rootfs.lock().unwrap_or_else(|p| p.into_inner()).unmount();
        let _ = std::fs::remove_dir_all(&c.bundle);
        let _ = std::fs::remove_dir(self.config.state_dir.join(&c.id));
        Ok(())
    }
}

/// Default PATH for resolving a bare program name (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Checks, before libcontainer runs anything, that the program exists in the container's
/// root (host view), so a typo is an invalid argument rather than a runtime failure.
fn program_in_root(p: &crate::protocols::oci::Process, root: &Path) -> Result<(), ContainerError> {
    let arg0 = p.Args.first().map(String::as_str).unwrap_or_default();
    let exists = |path: &str| {
        paths::relative_inside("program", path)
            .map(|rel| std::fs::symlink_metadata(root.join(rel)).is_ok())
            .unwrap_or(false)
    };
    let found = if arg0.starts_with('/') {
        exists(arg0)
    } else if arg0.contains('/') || arg0.is_empty() {
        false
    } else {
        let path_var = p
            .Env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path_var
            .split(':')
            .filter(|d| d.starts_with('/'))
            .any(|d| exists(&format!("{}/{arg0}", d.trim_end_matches('/'))))
    };
    if found {
        Ok(())
    } else {
        Err(ContainerError::InvalidSpec(format!(
            "program {arg0:?} not found in the container (absolute, or a bare name on PATH)"
        )))
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
