//! The containerd task API (served as both `containerd.task.v2.Task` and `.v3.Task`) over
//! one pod sandbox: containers map to agent containers, processes to agent processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{CloseIORequest, Empty, UpdateTaskRequest};
use containerd_shim_protos::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ResizePtyRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::types::task::{ProcessInfo, Status};
use tokio::sync::Mutex;
use veil_agent::protocols::agent;

use crate::annotations::{self, Role};
use crate::config::Config;
use crate::events::Events;
use crate::io::{Copies, OutputFifos, StdioPaths};
use crate::policy::InitData;
use crate::rootfs::{ImageCache, Layers, SnapshotMount};
use crate::sandbox::{self, ctx, Sandbox, SandboxSpec};
use crate::spec;
use crate::state::{agent_exec_id, Container, Phase, Proc, SANDBOX_DIED_STATUS};
use crate::volumes;

/// ttrpc status errors, as containerd maps them (NotFound, AlreadyExists, ...).
fn status(code: ttrpc::Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn not_found(what: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("{what}: not found"))
}

fn agent_err(call: &str, e: ttrpc::Error) -> ttrpc::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => status(s.code(), format!("agent {call}: {}", s.message())),
        other => status(ttrpc::Code::UNAVAILABLE, format!("agent {call}: {other}")),
    }
}

/// The pod as this shim runs it.
#[derive(Default)]
struct Pod {
    sandbox: Option<Arc<dyn Sandbox>>,
    sandbox_id: String,
    containers: HashMap<String, Container>,
}

/// The task service.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    events: Events,
    images: ImageCache,
    pod: Mutex<Pod>,
    /// Signalled when containerd asked the shim to shut down with nothing left to run.
    shutdown: Arc<tokio::sync::Notify>,
    /// The server's socket, removed before the Shutdown reply: containerd may end the shim
    /// as soon as it has that reply.
    socket: PathBuf,
    /// The pod sandbox's directory, named after `socket` (`sandbox::sandbox_dir`).
    sandbox_dir: PathBuf,
}

impl TaskService {
    pub fn new(
        config: Config,
        events: Events,
        shutdown: Arc<tokio::sync::Notify>,
        socket: PathBuf,
    ) -> Self {
        let images = ImageCache::new(config.image_cache_dir.clone(), config.verity());
        let sandbox_dir = sandbox::sandbox_dir(&config.state_dir, &socket);
        Self {
            inner: Arc::new(Inner {
                config,
                events,
                images,
                pod: Mutex::new(Pod::default()),
                shutdown,
                socket,
                sandbox_dir,
            }),
        }
    }
}

impl Inner {
    /// The pod's sandbox for a new container, started when this is the pod's first.
    async fn sandbox_for(
        &self,
        pod: &mut Pod,
        id: &str,
        annotations: &HashMap<String, String>,
        hostname: &str,
        netns: Option<PathBuf>,
    ) -> ttrpc::Result<Arc<dyn Sandbox>> {
        if let Some(s) = &pod.sandbox {
            if let Some(reason) = s.death().borrow().clone() {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("sandbox {} is gone: {reason}", pod.sandbox_id),
                ));
            }
            return Ok(s.clone());
        }
        if let Role::PodMember { sandbox_id } = annotations::role(annotations) {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {id} belongs to pod sandbox {sandbox_id}, which this shim does not run"),
            ));
        }
        let settings = annotations::pod_settings(annotations)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        let spec = SandboxSpec {
            id,
            dir: self.sandbox_dir.clone(),
            config: &self.config,
            init: InitData::new(settings.policy),
            vcpus: settings.vcpus.unwrap_or(self.config.vm.vcpus),
            memory_mib: settings.memory_mib.unwrap_or(self.config.vm.memory_mib),
            hostname: hostname.to_string(),
            netns,
        };
        let sandbox = sandbox::start(spec).await.map_err(|e| {
            tracing::error!(sandbox = id, error = %e, "sandbox did not start");
            status(
                ttrpc::Code::UNAVAILABLE,
                format!("sandbox {id} did not start: {e}"),
            )
        })?;
        // When the VMM or agent dies, free its host resources at once; the tasks' waits
        // fail and report the error status.
        let watched = sandbox.clone();
        tokio::spawn(async move {
            let mut death = watched.death();
            if let Ok(reason) = death.wait_for(Option::is_some).await {
                if !watched.ending() {
                    tracing::error!(reason = ?reason.clone(), "sandbox died; its tasks exit with status {SANDBOX_DIED_STATUS}");
                }
            }
            watched.destroy().await;
        });
        // The agent's OOM notices become containerd's TaskOOM events until the agent goes.
        let (agent, events) = (sandbox.agent().agent.clone(), self.events.clone());
        tokio::spawn(async move {
            let request = agent::GetOOMEventRequest::new();
            while let Ok(event) = agent.get_oom_event(ctx(), &request).await {
                tracing::info!(container = %event.container_id, "OOM kill in the sandbox");
                events.oom(&event.container_id).await;
            }
        });
        pod.sandbox = Some(sandbox.clone());
        pod.sandbox_id = id.to_string();
        Ok(sandbox)
    }

    /// Builds (or reuses) the root image, attaches it and creates the agent container.
    async fn create_container(
        &self,
        sandbox: &Arc<dyn Sandbox>,
        req: &CreateTaskRequest,
        oci_spec: &oci_spec::runtime::Spec,
        scratch: &Path,
    ) -> ttrpc::Result<()> {
        let bundle = PathBuf::from(&req.bundle);
        let mounts: Vec<SnapshotMount> = req
            .rootfs
            .iter()
            .map(|m| SnapshotMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let root_dir = oci_spec
            .root()
            .as_ref()
            .map(|r| bundle.join(r.path()))
            .unwrap_or_else(|| bundle.join("rootfs"));
        let layers = Layers::from_mounts(&mounts, &root_dir)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        let images = self.images.clone();
        let scratch_dir = scratch.to_path_buf();
        let image = tokio::task::spawn_blocking(move || images.get_or_build(&layers, &scratch_dir))
            .await
            .expect("image task")
            .map_err(|e| status(ttrpc::Code::INTERNAL, format!("root image: {e}")))?;
        let device = sandbox
            .attach(&req.id, &image)
            .await
            .map_err(|e| status(ttrpc::Code::INTERNAL, e))?;
        let root_path = format!("/run/kata-containers/{}/rootfs", req.id);
        let mut storage = agent::Storage::new();
        storage.driver = "blk".into();
        storage.source = device;
        storage.fstype = image.fstype.clone();
        storage.mount_point = root_path.clone();
        storage.driver_options = image.driver_options();
        let mut create = agent::CreateContainerRequest::new();
        create.container_id = req.id.clone();
        create.exec_id = req.id.clone();
        create.storages = vec![storage];
        let mut agent_spec = spec::container(oci_spec, &root_path, &bundle)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        // Bind mounts: copied in (and kept updated), or guest tmpfs volumes of the pod.
        let guest = volumes::plan(&req.id, oci_spec.mounts().as_deref().unwrap_or_default());
        if let Err(e) = volumes::copy_in(sandbox.agent(), &guest.copies).await {
            sandbox.detach(&req.id).await;
            return Err(status(ttrpc::Code::INTERNAL, e.to_string()));
        }
        agent_spec.Mounts.extend(guest.mounts);
        create.storages.extend(guest.storages);
        if let Some(p) = agent_spec.Process.as_mut() {
            p.Terminal = req.terminal;
        }
        create.OCI = protobuf::MessageField::some(agent_spec);
        if let Err(e) = sandbox.agent().agent.create_container(ctx(), &create).await {
            sandbox.detach(&req.id).await;
            return Err(agent_err("CreateContainer", e));
        }
        Ok(())
    }

    /// Starts the process's copies and the task that records its exit.
    fn watch_process(
        self: &Arc<Self>,
        sandbox: &Arc<dyn Sandbox>,
        id: &str,
        exec_id: &str,
        stdin: &str,
        outputs: OutputFifos,
    ) {
        let agent_id = agent_exec_id(id, exec_id).to_string();
        let mut copies = Copies::start(sandbox.agent(), id, &agent_id, stdin, outputs);
        let this = self.clone();
        let sandbox = sandbox.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            let mut wait = agent::WaitProcessRequest::new();
            wait.container_id = id.clone();
            wait.exec_id = agent_id;
            let code = match sandbox.agent().agent.wait_process(ctx(), &wait).await {
                Ok(r) => r.status as u32,
                Err(e) => {
                    let mut death = sandbox.death();
                    // A dropped connection comes before the death notice; give the
                    // sandbox's waiter the chance to say why.
                    let reason = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        death.wait_for(Option::is_some),
                    )
                    .await
                    .ok()
                    .and_then(|r| r.ok().and_then(|v| v.clone()))
                    .unwrap_or_else(|| format!("WaitProcess failed: {e}"));
                    tracing::error!(container = %id, exec = %exec_id, %reason,
                        "process lost with its sandbox; exit status {SANDBOX_DIED_STATUS}");
                    SANDBOX_DIED_STATUS
                }
            };
            copies.outputs_done().await;
            copies.release_stdin();
            let exit = {
                let mut pod = this.pod.lock().await;
                let Some(p) = pod
                    .containers
                    .get_mut(&id)
                    .and_then(|c| c.procs.get_mut(&exec_id))
                else {
                    return;
                };
                p.set_exit(code)
            };
            let pid = sandbox.pid();
            let process_id = if exec_id.is_empty() { &id } else { &exec_id };
            this.events
                .exited(&id, process_id, pid, exit.status, &exit.at)
                .await;
        });
    }

    /// Removes container `id` from the agent and the sandbox; ends the sandbox with the
    /// pod's last container.
    async fn remove_container(&self, pod: &mut Pod, id: &str) {
        let Some(sandbox) = pod.sandbox.clone() else {
            return;
        };
        if sandbox.death().borrow().is_none() {
            let mut remove = agent::RemoveContainerRequest::new();
            remove.container_id = id.to_string();
            if let Err(e) = sandbox.agent().agent.remove_container(ctx(), &remove).await {
                tracing::warn!(container = id, error = %e, "agent RemoveContainer failed");
            }
        }
        sandbox.detach(id).await;
        pod.containers.remove(id);
        if pod.containers.is_empty() {
            sandbox.destroy().await;
            pod.sandbox = None;
        }
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let this = &self.inner;
        let mut pod = this.pod.lock().await;
        if pod.containers.contains_key(&req.id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let oci_spec =
            spec::load_bundle(&bundle).map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        let annotations = spec::annotations(&oci_spec);
        let hostname = oci_spec.hostname().clone().unwrap_or_default();
        let first = pod.sandbox.is_none();
        let sandbox = this
            .sandbox_for(
                &mut pod,
                &req.id,
                &annotations,
                &hostname,
                crate::network::netns_path(&oci_spec),
            )
            .await?;
        let scratch = this.sandbox_dir.join("build");
        let created = this
            .create_container(&sandbox, &req, &oci_spec, &scratch)
            .await;
        let _ = std::fs::remove_dir_all(&scratch);
        if let Err(e) = created {
            tracing::error!(container = %req.id, error = %e, "create failed");
            if first {
                sandbox.destroy().await;
                pod.sandbox = None;
            }
            return Err(e);
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        pod.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                procs: HashMap::from([(String::new(), Proc::new(stdio, None))]),
            },
        );
        let pid = sandbox.pid();
        drop(pod);
        this.events.created(&req.id, &req.bundle, pid).await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let this = &self.inner;
        let mut pod = this.pod.lock().await;
        let sandbox = pod.sandbox.clone().ok_or_else(|| not_found("sandbox"))?;
        let proc = pod
            .containers
            .get_mut(&req.id)
            .and_then(|c| c.procs.get_mut(&req.exec_id))
            .ok_or_else(|| not_found(&format!("process {}/{}", req.id, req.exec_id)))?;
        if proc.phase != Phase::Created {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("process {}/{} was already started", req.id, req.exec_id),
            ));
        }
        let client = sandbox.agent();
        if req.exec_id.is_empty() {
            let mut start = agent::StartContainerRequest::new();
            start.container_id = req.id.clone();
            client
                .agent
                .start_container(ctx(), &start)
                .await
                .map_err(|e| agent_err("StartContainer", e))?;
        } else {
            let mut exec = agent::ExecProcessRequest::new();
            exec.container_id = req.id.clone();
            exec.exec_id = req.exec_id.clone();
            exec.process = proc.exec_spec.take().into();
            client
                .agent
                .exec_process(ctx(), &exec)
                .await
                .map_err(|e| agent_err("ExecProcess", e))?;
        }
        proc.phase = Phase::Running;
        // Taken only here, when the process leaves Created.
        let outputs = proc
            .outputs
            .take()
            .unwrap_or_else(|| OutputFifos::open(&proc.stdio));
        let stdin = proc.stdio.stdin.clone();
        this.watch_process(&sandbox, &req.id, &req.exec_id, &stdin, outputs);
        let pid = sandbox.pid();
        drop(pod);
        if req.exec_id.is_empty() {
            this.events.started(&req.id, pid).await;
        } else {
            this.events.exec_started(&req.id, &req.exec_id, pid).await;
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let this = &self.inner;
        let process = spec::exec_process(&req.spec.value)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        let mut pod = this.pod.lock().await;
        let container = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
        if req.exec_id.is_empty() || container.procs.contains_key(&req.exec_id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec id {:?} in use or empty", req.exec_id),
            ));
        }
        if container.init().phase == Phase::Stopped {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut process = process;
        process.Terminal = req.terminal;
        container
            .procs
            .insert(req.exec_id.clone(), Proc::new(stdio, Some(process)));
        drop(pod);
        this.events.exec_added(&req.id, &req.exec_id).await;
        Ok(Empty::new())
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let this = &self.inner;
        let pod = this.pod.lock().await;
        let container = pod
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
        let proc = container
            .procs
            .get(&req.exec_id)
            .ok_or_else(|| not_found(&format!("process {}/{}", req.id, req.exec_id)))?;
        let pid = pod.sandbox.as_ref().map_or(0, |s| s.pid());
        let mut resp = StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.clone(),
            pid,
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        resp.status = EnumOrUnknown::new(match proc.phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped => Status::STOPPED,
        });
        if let Some(exit) = proc.exit() {
            resp.exit_status = exit.status;
            resp.exited_at = protobuf::MessageField::some(exit.at);
        }
        Ok(resp)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let mut rx = {
            let pod = self.inner.pod.lock().await;
            pod.containers
                .get(&req.id)
                .and_then(|c| c.procs.get(&req.exec_id))
                .ok_or_else(|| not_found(&format!("process {}/{}", req.id, req.exec_id)))?
                .exit_tx
                .subscribe()
        };
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| not_found(&format!("process {}/{}", req.id, req.exec_id)))?
            .clone()
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: protobuf::MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let this = &self.inner;
        let mut pod = this.pod.lock().await;
        let sandbox = pod.sandbox.clone();
        let container = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
        let mut targets = vec![req.exec_id.clone()];
        if req.all && req.exec_id.is_empty() {
            targets.extend(container.procs.keys().filter(|k| !k.is_empty()).cloned());
        }
        let mut created_exits = Vec::new();
        for exec_id in targets {
            let Some(proc) = container.procs.get_mut(&exec_id) else {
                return Err(not_found(&format!("process {}/{}", req.id, exec_id)));
            };
            match proc.phase {
                Phase::Stopped if exec_id == req.exec_id => {
                    return Err(not_found(&format!(
                        "process {}/{} already finished",
                        req.id, exec_id
                    )))
                }
                Phase::Stopped => {}
                // Never started: nothing runs in the agent yet for an exec; an init process
                // waits for StartContainer. Either way it ends here, killed.
                Phase::Created => {
                    let exit = proc.set_exit(128 + req.signal);
                    created_exits.push((exec_id.clone(), exit));
                }
                Phase::Running => {
                    let Some(s) = &sandbox else { continue };
                    let mut sig = agent::SignalProcessRequest::new();
                    sig.container_id = req.id.clone();
                    sig.exec_id = agent_exec_id(&req.id, &exec_id).to_string();
                    sig.signal = req.signal;
                    if let Err(e) = s.agent().agent.signal_process(ctx(), &sig).await {
                        if s.death().borrow().is_none() {
                            return Err(agent_err("SignalProcess", e));
                        }
                    }
                }
            }
        }
        let pid = sandbox.as_ref().map_or(0, |s| s.pid());
        drop(pod);
        for (exec_id, exit) in created_exits {
            let process_id = if exec_id.is_empty() {
                &req.id
            } else {
                &exec_id
            };
            this.events
                .exited(&req.id, process_id, pid, exit.status, &exit.at)
                .await;
        }
        Ok(Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        let this = &self.inner;
        let mut pod = this.pod.lock().await;
        let pid = pod.sandbox.as_ref().map_or(0, |s| s.pid());
        let container = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
        let proc = container
            .procs
            .get_mut(&req.exec_id)
            .ok_or_else(|| not_found(&format!("process {}/{}", req.id, req.exec_id)))?;
        if proc.phase == Phase::Running {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("process {}/{} is still running", req.id, req.exec_id),
            ));
        }
        // A process deleted before it ran (or whose exit was never seen) ends now.
        let exit = proc.set_exit(SANDBOX_DIED_STATUS);
        if !req.exec_id.is_empty() {
            container.procs.remove(&req.exec_id);
        } else {
            // Execs go with their container.
            this.remove_container(&mut pod, &req.id).await;
        }
        drop(pod);
        if req.exec_id.is_empty() {
            this.events
                .deleted(&req.id, pid, exit.status, &exit.at)
                .await;
        }
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: protobuf::MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let pod = self.inner.pod.lock().await;
        let container = pod
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
        let pid = pod.sandbox.as_ref().map_or(0, |s| s.pid());
        // The processes live in the sandbox; the host sees one pid (VMM or agent) for all.
        let processes = container
            .procs
            .values()
            .filter(|p| p.phase == Phase::Running)
            .map(|_| ProcessInfo {
                pid,
                ..Default::default()
            })
            .take(1)
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let sandbox = self.inner.pod.lock().await.sandbox.clone();
        let sandbox = sandbox.ok_or_else(|| not_found("sandbox"))?;
        let mut r = agent::TtyWinResizeRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = agent_exec_id(&req.id, &req.exec_id).to_string();
        r.row = req.height;
        r.column = req.width;
        sandbox
            .agent()
            .agent
            .tty_win_resize(ctx(), &r)
            .await
            .map_err(|e| agent_err("TtyWinResize", e))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let pod = self.inner.pod.lock().await;
        let proc = pod
            .containers
            .get(&req.id)
            .and_then(|c| c.procs.get(&req.exec_id))
            .ok_or_else(|| not_found(&format!("process {}/{}", req.id, req.exec_id)))?;
        tracing::debug!(container = %req.id, exec = %req.exec_id, stdin = req.stdin, "CloseIO");
        if req.stdin {
            // containerd's client closed its end; a copy still waiting to open the fifo is
            // released so the process sees end of file.
            crate::io::release_fifo(&proc.stdio.stdin, crate::io::Blocked::Reader);
        }
        Ok(Empty::new())
    }

    /// New cgroup limits for a running container (`ctr task update`, CRI's
    /// UpdateContainerResources): the runtime spec's LinuxResources JSON, to UpdateContainer.
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let sandbox = self.inner.pod.lock().await.sandbox.clone();
        let sandbox = sandbox.ok_or_else(|| not_found("sandbox"))?;
        let json: serde_json::Value = match req.resources.as_ref() {
            Some(any) => serde_json::from_slice(&any.value).map_err(|e| {
                status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("UpdateTask resources are not LinuxResources JSON: {e}"),
                )
            })?,
            None => return Ok(Empty::new()),
        };
        let mut r = agent::UpdateContainerRequest::new();
        r.container_id = req.id.clone();
        r.resources = protobuf::MessageField::some(spec::resources(&json));
        sandbox
            .agent()
            .agent
            .update_container(ctx(), &r)
            .await
            .map_err(|e| agent_err("UpdateContainer", e))?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let sandbox = self.inner.pod.lock().await.sandbox.clone();
        let sandbox = sandbox.ok_or_else(|| not_found("sandbox"))?;
        let mut r = agent::StatsContainerRequest::new();
        r.container_id = req.id.clone();
        let stats = sandbox
            .agent()
            .agent
            .stats_container(ctx(), &r)
            .await
            .map_err(|e| agent_err("StatsContainer", e))?;
        let metrics = crate::stats::to_cgroup_v2(&stats);
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| status(ttrpc::Code::INTERNAL, e))?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: protobuf::MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let pod = self.inner.pod.lock().await;
        if !pod.containers.contains_key(&req.id) {
            return Err(not_found(&format!("container {}", req.id)));
        }
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pod.sandbox.as_ref().map_or(0, |s| s.pid()),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        let this = &self.inner;
        let mut pod = this.pod.lock().await;
        if !pod.containers.is_empty() {
            // Other containers of the pod still run here.
            return Ok(Empty::new());
        }
        if let Some(s) = pod.sandbox.take() {
            s.destroy().await;
        }
        let _ = std::fs::remove_file(&this.socket);
        this.shutdown.notify_one();
        Ok(Empty::new())
    }
}

impl TaskService {
    /// Ends the sandbox (if any) when the server stops.
    pub async fn teardown(&self) {
        let sandbox = self.inner.pod.lock().await.sandbox.take();
        if let Some(s) = sandbox {
            s.destroy().await;
        }
    }
}
