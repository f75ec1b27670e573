//! The process sandbox: `veil-agent` as a child of the shim on a Unix socket. NOT ISOLATED:
//! containers run on the host kernel as root-created namespaces, for hosts whose KVM cannot run
//! a guest. Chosen only in the shim's config file; every log line that starts one says so.
//!
//! The agent and everything it forks live in a cgroup of the sandbox's own, so teardown (also
//! after the agent was killed) can end every process with one `cgroup.kill`. Root images reach
//! the agent as read-only loop devices, the host's stand-in for the VM's virtio-blk drives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use veil_agent::client::AgentClient;

use super::{connect_agent, create_dir, Sandbox, SandboxError, SandboxSpec};
use crate::config::SandboxKind;
use crate::rootfs::{run, tool, Image};

/// The agent binary's name, looked up next to the shim and on PATH.
const AGENT_BINARY: &str = "veil-agent";
/// Name of the per-sandbox cgroup under the cgroup v2 mount.
const CGROUP_PREFIX: &str = "veil-sandbox-";

pub struct ProcessSandbox {
    client: AgentClient,
    pid: u32,
    dir: PathBuf,
    cgroup: Option<PathBuf>,
    loops: Mutex<HashMap<String, String>>,
    death: watch::Receiver<Option<String>>,
    destroyed: tokio::sync::Mutex<bool>,
    ending: std::sync::atomic::AtomicBool,
}

impl ProcessSandbox {
    pub async fn start(spec: &SandboxSpec<'_>) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let agent_bin = agent_binary(spec.config.process.agent.as_deref())?;
        let socket = spec.dir.join("agent.sock");
        let state = spec.dir.join("agent-state");
        create_dir(&state, "creating agent state directory")?;
        let cgroup = sandbox_cgroup(&spec.dir);
        tracing::warn!(
            sandbox = spec.id,
            cgroup = ?cgroup,
            agent = %agent_bin.display(),
            "INSECURE process sandbox starting: veil-agent runs on the host, containers are NOT isolated in a VM"
        );
        let mut cmd = tokio::process::Command::new(&agent_bin);
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--attestation", "insecure", "--insecure-host-data"])
            .arg(spec.init.host_data_hex())
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // The agent's log lines join the shim's (containerd's shim log).
            .stderr(Stdio::inherit())
            // Its own process group: a signal to the shim's group does not reach it.
            .process_group(0);
        if let Some(cg) = &cgroup {
            cmd.arg("--cgroup-root").arg(cg);
        }
        let mut child = cmd.spawn().map_err(|source| SandboxError::Io {
            what: "starting",
            path: agent_bin.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        if let Some(cg) = &cgroup {
            // The agent has not been asked for anything yet, so it has forked nothing that
            // could escape the cgroup before it moves there.
            let leaf = cg.join("agent");
            if let Err(e) = std::fs::write(leaf.join("cgroup.procs"), pid.to_string()) {
                tracing::warn!(cgroup = %leaf.display(), error = %e, "agent not moved into its cgroup");
            }
        }
        let (tx, death) = watch::channel(None);
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("veil-agent (pid {pid}) exited: {status}"),
                Err(e) => format!("veil-agent (pid {pid}) could not be waited for: {e}"),
            };
            tracing::warn!(%reason, "process sandbox ended");
            let _ = tx.send(Some(reason));
        });
        let timeout = Duration::from_secs(spec.config.agent_start_timeout_secs);
        let connected = connect_agent(
            || {
                let socket = socket.clone();
                async move {
                    AgentClient::connect_unix(&socket)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
            &death,
            timeout,
        )
        .await;
        let sandbox = ProcessSandbox {
            client: match &connected {
                Ok(c) => c.clone(),
                Err(_) => {
                    // Nothing to talk to: tear down what was started, then report.
                    teardown(&spec.dir, cgroup.as_deref(), pid, &[], &death).await;
                    return Err(connected.err().expect("checked"));
                }
            },
            pid,
            dir: spec.dir.clone(),
            cgroup,
            loops: Mutex::new(HashMap::new()),
            death,
            destroyed: tokio::sync::Mutex::new(false),
            ending: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(Arc::new(sandbox))
    }
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Process
    }

    fn agent(&self) -> &AgentClient {
        &self.client
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    async fn attach(&self, id: &str, image: &Image) -> Result<String, SandboxError> {
        let path = image.path.clone();
        let out = tokio::task::spawn_blocking(move || {
            run(std::process::Command::new(tool("losetup"))
                .args(["--find", "--show", "--read-only"])
                .arg(&path))
        })
        .await
        .expect("losetup task");
        let device = out
            .map_err(|e| SandboxError::Attach {
                image: image.path.clone(),
                why: e.to_string(),
            })?
            .trim()
            .to_string();
        // Recorded on disk too, so the `delete` action can detach it if the shim dies.
        let record = self.dir.join("loops");
        let _ = std::fs::create_dir_all(&record);
        let _ = std::fs::write(record.join(id), &device);
        self.loops
            .lock()
            .expect("loops lock")
            .insert(id.to_string(), device.clone());
        Ok(device)
    }

    async fn detach(&self, id: &str) {
        let device = self.loops.lock().expect("loops lock").remove(id);
        if let Some(device) = device {
            tokio::task::spawn_blocking(move || crate::cleanup::detach_loop(&device))
                .await
                .expect("losetup task");
            let _ = std::fs::remove_file(self.dir.join("loops").join(id));
        }
    }

    fn death(&self) -> watch::Receiver<Option<String>> {
        self.death.clone()
    }

    fn ending(&self) -> bool {
        self.ending.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn destroy(&self) {
        let mut destroyed = self.destroyed.lock().await;
        if *destroyed {
            return;
        }
        *destroyed = true;
        self.ending.store(true, std::sync::atomic::Ordering::SeqCst);
        let loops: Vec<String> = self
            .loops
            .lock()
            .expect("loops lock")
            .drain()
            .map(|(_, d)| d)
            .collect();
        teardown(
            &self.dir,
            self.cgroup.as_deref(),
            self.pid,
            &loops,
            &self.death,
        )
        .await;
        tracing::info!(dir = %self.dir.display(), "process sandbox removed");
    }
}

/// Ends the agent and its containers, detaches loop devices, unmounts and removes `dir`.
async fn teardown(
    dir: &Path,
    cgroup: Option<&Path>,
    pid: u32,
    loops: &[String],
    death: &watch::Receiver<Option<String>>,
) {
    match cgroup {
        Some(cg) => {
            let cg = cg.to_path_buf();
            tokio::task::spawn_blocking(move || {
                crate::cleanup::kill_cgroup(&cg);
                for v1 in v1_copies(&cg) {
                    crate::cleanup::kill_cgroup(&v1);
                }
            })
            .await
            .expect("cgroup task");
        }
        None => {
            // SAFETY: kill(2) on the agent's pid, which stays ours until our waiter reaps it.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    // The waiter task reaps the agent; wait for that so no zombie or mount user remains.
    let mut death = death.clone();
    let _ = death.wait_for(Option::is_some).await;
    let dir = dir.to_path_buf();
    let loops = loops.to_vec();
    tokio::task::spawn_blocking(move || {
        // Unmount first: a loop device detaches only once nothing has it mounted.
        for m in crate::cleanup::mounts_under(&dir) {
            crate::cleanup::unmount(&m);
        }
        for d in &loops {
            crate::cleanup::detach_loop(d);
        }
        crate::cleanup::remove_tree(&dir);
    })
    .await
    .expect("cleanup task");
}

/// What the `delete` action does for a sandbox whose shim died: the same teardown, from the
/// records on disk.
pub fn teardown_from_records(dir: &Path) {
    if let Some(cg) = cgroup_mount() {
        let cg = cg.join(cgroup_name(dir));
        crate::cleanup::kill_cgroup(&cg);
        for v1 in v1_copies(&cg) {
            crate::cleanup::kill_cgroup(&v1);
        }
    }
    for m in crate::cleanup::mounts_under(dir) {
        crate::cleanup::unmount(&m);
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("loops")) {
        for e in entries.flatten() {
            if let Ok(device) = std::fs::read_to_string(e.path()) {
                crate::cleanup::detach_loop(device.trim());
            }
        }
    }
    crate::cleanup::remove_tree(dir);
}

/// The sandbox's cgroup, named like its directory (`sandbox_dir`): unique per containerd,
/// namespace and sandbox id, where the id alone is not.
pub fn cgroup_name(sandbox_dir: &Path) -> String {
    let digest = sandbox_dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    format!("{CGROUP_PREFIX}{digest}")
}

/// `<cgroup2 mount>/veil-sandbox-<digest>/agent`, created; `None` (logged) without cgroup v2.
fn sandbox_cgroup(sandbox_dir: &Path) -> Option<PathBuf> {
    let root = cgroup_mount()?;
    let dir = root.join(cgroup_name(sandbox_dir));
    match std::fs::create_dir_all(dir.join("agent")) {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!(cgroup = %dir.display(), error = %e, "no sandbox cgroup; teardown kills the agent only");
            None
        }
    }
}

/// The cgroup v2 mount point (from /proc/self/mountinfo).
fn cgroup_mount() -> Option<PathBuf> {
    cgroup_mounts("cgroup2").into_iter().next()
}

/// Mount points of file systems of type `fs_type` (from /proc/self/mountinfo).
fn cgroup_mounts(fs_type: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some(fs_type))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .collect()
}

/// On hybrid hosts (cgroup v1 controllers beside the v2 mount) the agent's libcontainer puts
/// containers in v1 cgroups of the same relative path: the sandbox's directory in each v1
/// hierarchy, which teardown removes too.
fn v1_copies(sandbox_cgroup: &Path) -> Vec<PathBuf> {
    let Some(name) = sandbox_cgroup.file_name() else {
        return Vec::new();
    };
    cgroup_mounts("cgroup")
        .into_iter()
        .map(|mount| mount.join(name))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The agent binary: the configured path, else next to the shim, else on PATH.
fn agent_binary(configured: Option<&Path>) -> Result<PathBuf, SandboxError> {
    find_binary(AGENT_BINARY, configured)
}

/// A binary of ours: the configured path, else `name` next to the shim, else on PATH.
pub(super) fn find_binary(name: &str, configured: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let not_found = |path: PathBuf| SandboxError::Io {
        what: "finding the binary",
        path,
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    if let Some(p) = configured {
        return if p.exists() {
            Ok(p.to_path_buf())
        } else {
            Err(not_found(p.to_path_buf()))
        };
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
    {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| not_found(PathBuf::from(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_agent_that_does_not_exist_is_named() {
        let err = agent_binary(Some(Path::new("/nonexistent/veil-agent")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/veil-agent"), "{err}");
    }
}
