//! A pod's sandbox: something that runs `veil-agent` and lets the shim reach it. Two kinds sit
//! behind one trait so that everything above the transport (tasks, IO, images, events) is the
//! same code: a veil VM (the product) and a host process (development, isolates nothing).

mod jailed;
mod process;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;
use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;

use crate::config::{Config, SandboxKind};
use crate::policy::InitData;
use crate::rootfs::Image;

pub use process::{
    cgroup_name as process_cgroup_name, teardown_from_records as teardown_process_records,
    ProcessSandbox,
};
pub use vm::{VmPlan, VmSandbox};

/// vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Pause between connection attempts while the agent comes up.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// Errors starting or using a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM sandbox: {0}")]
    Vm(String),
    #[error("SEV-SNP sandbox requested (vm.snp = true) but {0}; refusing to start a non-confidential VM instead")]
    SnpUnavailable(String),
    #[error("the agent did not answer within {secs} s: {last}")]
    AgentTimeout { secs: u64, last: String },
    #[error("the sandbox died while starting: {0}")]
    DiedStarting(String),
    #[error("agent {call}: {source}")]
    Agent {
        call: &'static str,
        source: ttrpc::Error,
    },
    #[error("attaching root image {image}: {why}")]
    Attach { image: PathBuf, why: String },
    #[error("all {0} container drives of this sandbox are in use (raise vm.max_containers)")]
    Full(u32),
}

/// The per-sandbox directory under `state_dir`, named by a digest of the shim's socket path.
/// That path is containerd's own name for the sandbox (a digest of containerd's address, the
/// namespace and the sandbox id), so two containerds, or two namespaces, that use one id get
/// two directories. A digest because CRI ids are 64 characters and the sockets inside must
/// fit a Unix socket path (108 bytes).
pub fn sandbox_dir(state_dir: &Path, shim_socket: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(&Sha256::digest(shim_socket.as_os_str().as_encoded_bytes())[..10]);
    state_dir.join(digest)
}

/// What makes a sandbox and what it is asked to run.
pub struct SandboxSpec<'a> {
    pub id: &'a str,
    /// Per-sandbox directory, created by the sandbox and removed with it.
    pub dir: PathBuf,
    pub config: &'a Config,
    pub init: InitData,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub hostname: String,
    /// The pod's network namespace (from its OCI spec); `None` for host-network pods.
    pub netns: Option<PathBuf>,
}

/// A running sandbox.
#[async_trait]
pub trait Sandbox: Send + Sync {
    fn kind(&self) -> SandboxKind;
    /// The agent, connected.
    fn agent(&self) -> &AgentClient;
    /// The host pid reported to containerd for the pod's processes (VMM or agent process).
    fn pid(&self) -> u32;
    /// Makes `image` a block device the agent can mount for container `id`; returns its path
    /// as the agent sees it.
    async fn attach(&self, id: &str, image: &Image) -> Result<String, SandboxError>;
    /// Releases what `attach` did for container `id` (after the agent removed it).
    async fn detach(&self, id: &str);
    /// `Some(reason)` once the VMM or agent is gone.
    fn death(&self) -> watch::Receiver<Option<String>>;
    /// Whether `destroy` has begun (a death after that is the shim's doing, not a fault).
    fn ending(&self) -> bool;
    /// Stops everything and removes every host resource the sandbox made. Idempotent.
    async fn destroy(&self);
    /// The pod network wired into the sandbox, if any.
    fn network(&self) -> Option<&crate::network::PodNetwork> {
        None
    }
}

/// Starts a sandbox of the configured kind and readies its agent (policy, CreateSandbox).
/// Fails within `agent_start_timeout_secs`, leaving nothing behind.
pub async fn start(spec: SandboxSpec<'_>) -> Result<Arc<dyn Sandbox>, SandboxError> {
    std::fs::create_dir_all(&spec.dir).map_err(|source| SandboxError::Io {
        what: "creating sandbox directory",
        path: spec.dir.clone(),
        source,
    })?;
    // Says whose directory this is, for people reading the state directory.
    let _ = std::fs::write(spec.dir.join("sandbox-id"), spec.id);
    let result = match spec.config.sandbox {
        SandboxKind::Process => ProcessSandbox::start(&spec).await,
        SandboxKind::Vm => VmSandbox::start(&spec).await,
    };
    let sandbox = match result {
        Ok(s) => s,
        Err(e) => {
            crate::cleanup::remove_tree(&spec.dir);
            return Err(e);
        }
    };
    if let Err(e) = ready_agent(sandbox.as_ref(), &spec).await {
        sandbox.destroy().await;
        return Err(e);
    }
    Ok(sandbox)
}

/// Loads the policy (unless the sandbox read it as init data) and creates the agent's sandbox.
async fn ready_agent(sandbox: &dyn Sandbox, spec: &SandboxSpec<'_>) -> Result<(), SandboxError> {
    let agent = sandbox.agent();
    if !spec.config.vm.snp || spec.config.sandbox == SandboxKind::Process {
        let mut set = agent::SetPolicyRequest::new();
        set.policy = spec.init.policy.clone();
        agent
            .agent
            .set_policy(ctx(), &set)
            .await
            .map_err(|source| SandboxError::Agent {
                call: "SetPolicy",
                source,
            })?;
    }
    let mut create = agent::CreateSandboxRequest::new();
    create.sandbox_id = spec.id.to_string();
    create.hostname = spec.hostname.clone();
    agent
        .agent
        .create_sandbox(ctx(), &create)
        .await
        .map_err(|source| SandboxError::Agent {
            call: "CreateSandbox",
            source,
        })?;
    if let Some(network) = sandbox.network() {
        network
            .configure_guest(agent)
            .await
            .map_err(|e| SandboxError::Vm(format!("configuring the guest's network: {e}")))?;
    }
    Ok(())
}

/// A ttrpc context without deadline: calls end when the agent answers or its connection
/// drops (which the sandbox's death closes).
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// Connects to the agent through `connect`, retrying until it answers, the sandbox dies or
/// `timeout` passes.
pub async fn connect_agent<F, Fut>(
    mut connect: F,
    death: &watch::Receiver<Option<String>>,
    timeout: Duration,
) -> Result<AgentClient, SandboxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<AgentClient, String>>,
{
    let start = Instant::now();
    loop {
        if let Some(reason) = death.borrow().clone() {
            return Err(SandboxError::DiedStarting(reason));
        }
        let last = match connect().await {
            Ok(client) => {
                // A connected socket is not yet a serving agent (the VMM accepts before the
                // guest listens): a cheap request proves the agent answers.
                let probe = agent::GuestDetailsRequest::new();
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.agent.get_guest_details(ctx(), &probe),
                )
                .await;
                match answer {
                    // A policy refusal still proves a live agent.
                    Ok(Ok(_)) | Ok(Err(ttrpc::Error::RpcStatus(_))) => return Ok(client),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer to GetGuestDetails".to_string(),
                }
            }
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(SandboxError::AgentTimeout {
                secs: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

/// Creates `path` (and parents), naming it on failure.
pub fn create_dir(path: &Path, what: &'static str) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(|source| SandboxError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_dirs_are_short_and_distinct() {
        let state = Path::new("/run/veil-shim");
        let a = sandbox_dir(state, Path::new("/run/containerd/s/1f0e"));
        let b = sandbox_dir(state, Path::new("/run/containerd/s/1f0f"));
        assert_ne!(a, b);
        assert_eq!(a.file_name().unwrap().len(), 20);
        assert_eq!(a, sandbox_dir(state, Path::new("/run/containerd/s/1f0e")));
    }
}
