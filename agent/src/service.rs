//! The ttrpc services: every Kata request passes the policy gate, then goes to the runtime.

use std::sync::Arc;

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use protobuf::MessageFull;
use ttrpc::r#async::TtrpcContext;
use ttrpc::{Code, Error as TtrpcError};

use crate::attestation::pad_report_data;
use crate::container::{ContainerError, ContainerManager};
use crate::network::{self, NetworkError};
use crate::policy::{PolicyError, PolicyGate};
use crate::protocols::{agent, agent_ttrpc, types, veil, veil_ttrpc};

/// What the agent does when the sandbox is destroyed (power off when it is PID 1).
pub type OnDestroy = Box<dyn Fn() + Send + Sync>;

/// Shared state behind both services.
pub struct Agent {
    gate: Arc<PolicyGate>,
    containers: Arc<ContainerManager>,
    init_daemon: bool,
    on_destroy: OnDestroy,
}

impl Agent {
    /// Builds the agent. `init_daemon` is reported by GetGuestDetails; `on_destroy` runs after
    /// DestroySandbox has removed every container.
    pub fn new(
        gate: Arc<PolicyGate>,
        containers: Arc<ContainerManager>,
        init_daemon: bool,
        on_destroy: OnDestroy,
    ) -> Self {
        Self {
            gate,
            containers,
            init_daemon,
            on_destroy,
        }
    }

    fn authorize<M: MessageFull>(&self, rule: &str, req: &M) -> ttrpc::Result<()> {
        self.gate.authorize(rule, req).map_err(|e| {
            tracing::warn!(rule, error = %e, "request refused by policy");
            policy_status(e)
        })
    }
}

fn status(code: Code, msg: impl Into<String>) -> TtrpcError {
    TtrpcError::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn policy_status(e: PolicyError) -> TtrpcError {
    let code = match e {
        PolicyError::NoPolicy | PolicyError::Denied { .. } => Code::PERMISSION_DENIED,
        PolicyError::Parse(_) | PolicyError::TooLarge { .. } | PolicyError::Input(_) => {
            Code::INVALID_ARGUMENT
        }
        PolicyError::DigestMismatch { .. } => Code::PERMISSION_DENIED,
        PolicyError::Attestation(_) | PolicyError::Evaluation { .. } => Code::INTERNAL,
    };
    status(code, e.to_string())
}

fn network_status(e: NetworkError) -> TtrpcError {
    tracing::warn!(error = %e, "network request failed");
    status(e.code(), e.to_string())
}

fn container_status(e: ContainerError) -> TtrpcError {
    tracing::warn!(error = %e, "request failed");
    status(e.code(), e.to_string())
}

/// Runs the policy check, then `body`, mapping errors to ttrpc statuses.
macro_rules! handle {
    ($self:ident, $rule:literal, $req:ident, $body:expr) => {{
        $self.authorize($rule, &$req)?;
        $body.map_err(container_status)
    }};
}

impl Agent {
    /// ReadStdout and ReadStderr: one rule (`ReadStreamRequest`, as Kata names it), one path.
    async fn read_stream(
        &self,
        req: agent::ReadStreamRequest,
        stderr: bool,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let data = handle!(
            self,
            "ReadStreamRequest",
            req,
            self.containers
                .read_output(&req.container_id, &req.exec_id, req.len, stderr)
                .await
        )?;
        let mut resp = agent::ReadStreamResponse::new();
        resp.data = data;
        Ok(resp)
    }
}

#[async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "CreateContainerRequest",
            req,
            self.containers
                .create(&req, self.gate.allows("AllowUnverifiedLayers", &req))
                .await
        )?;
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "StartContainerRequest",
            req,
            self.containers.start(&req.container_id).await
        )?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "RemoveContainerRequest",
            req,
            self.containers.remove(&req.container_id).await
        )?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "ExecProcessRequest",
            req,
            self.containers.exec(&req).await
        )?;
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "SignalProcessRequest",
            req,
            self.containers
                .signal(&req.container_id, &req.exec_id, req.signal)
                .await
        )?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        let status = handle!(
            self,
            "WaitProcessRequest",
            req,
            self.containers.wait(&req.container_id, &req.exec_id).await
        )?;
        let mut resp = agent::WaitProcessResponse::new();
        resp.status = status;
        Ok(resp)
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> ttrpc::Result<agent::StatsContainerResponse> {
        handle!(
            self,
            "StatsContainerRequest",
            req,
            self.containers.stats(&req.container_id).await
        )
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let resources = req.resources.clone().unwrap_or_default();
        handle!(
            self,
            "UpdateContainerRequest",
            req,
            self.containers.update(&req.container_id, &resources).await
        )?;
        Ok(Empty::new())
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListProcessesRequest,
    ) -> ttrpc::Result<agent::ListProcessesResponse> {
        let list = handle!(
            self,
            "ListProcessesRequest",
            req,
            self.containers
                .list_processes(&req.container_id, &req.format)
                .await
        )?;
        let mut resp = agent::ListProcessesResponse::new();
        resp.process_list = list;
        Ok(resp)
    }

    async fn copy_file(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CopyFileRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "CopyFileRequest",
            req,
            self.containers.copy_file(&req)
        )?;
        Ok(Empty::new())
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
        self.authorize("GetOOMEventRequest", &req)?;
        let mut event = agent::OOMEvent::new();
        event.container_id = self.containers.next_oom().await;
        Ok(event)
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetMetricsRequest,
    ) -> ttrpc::Result<agent::Metrics> {
        self.authorize("GetMetricsRequest", &req)?;
        let mut metrics = agent::Metrics::new();
        metrics.metrics = crate::metrics::render(self.containers.count().await);
        Ok(metrics)
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        self.authorize("SetGuestDateTimeRequest", &req)?;
        if !self.init_daemon {
            // On a host the clock is the host's, not the sandbox's.
            return Err(status(
                Code::FAILED_PRECONDITION,
                "SetGuestDateTime: the agent is not PID 1 of a guest; the host clock is left alone",
            ));
        }
        crate::metrics::set_clock(req.Sec, req.Usec)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("SetGuestDateTime: {e}")))?;
        Ok(Empty::new())
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "PauseContainerRequest",
            req,
            self.containers.freeze(&req.container_id, true).await
        )?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "ResumeContainerRequest",
            req,
            self.containers.freeze(&req.container_id, false).await
        )?;
        Ok(Empty::new())
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> ttrpc::Result<agent::WriteStreamResponse> {
        let len = handle!(
            self,
            "WriteStreamRequest",
            req,
            self.containers
                .write_stdin(&req.container_id, &req.exec_id, &req.data)
                .await
        )?;
        let mut resp = agent::WriteStreamResponse::new();
        resp.len = len;
        Ok(resp)
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read_stream(req, false).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read_stream(req, true).await
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "CloseStdinRequest",
            req,
            self.containers
                .close_stdin(&req.container_id, &req.exec_id)
                .await
        )?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "TtyWinResizeRequest",
            req,
            self.containers
                .resize_tty(&req.container_id, &req.exec_id, req.row, req.column)
                .await
        )?;
        Ok(Empty::new())
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "CreateSandboxRequest",
            req,
            self.containers.create_sandbox(&req)
        )?;
        // Only the guest's init owns /etc/resolv.conf; a host agent checks the lines only.
        let resolv_conf = self
            .init_daemon
            .then_some(std::path::Path::new(network::GUEST_RESOLV_CONF));
        network::write_resolv_conf(resolv_conf, &req.dns).map_err(network_status)?;
        // The pod's hostname is the guest's (containers without a UTS namespace of their own
        // see it); on a host the agent leaves the host's alone.
        if self.init_daemon && !req.hostname.is_empty() {
            crate::metrics::set_hostname(&req.hostname)
                .map_err(|e| status(Code::INVALID_ARGUMENT, format!("hostname: {e}")))?;
        }
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        handle!(
            self,
            "DestroySandboxRequest",
            req,
            self.containers.remove_all().await
        )?;
        (self.on_destroy)();
        Ok(Empty::new())
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
        self.authorize("GuestDetailsRequest", &req)?;
        let mut details = agent::AgentDetails::new();
        details.version = env!("CARGO_PKG_VERSION").to_string();
        details.init_daemon = self.init_daemon;
        details.storage_handlers = vec!["blk".into()];
        let mut resp = agent::GuestDetailsResponse::new();
        if req.mem_block_size {
            resp.mem_block_size_bytes = read_mem_block_size().unwrap_or(0);
        }
        resp.agent_details = protobuf::MessageField::some(details);
        Ok(resp)
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<types::Interface> {
        self.authorize("UpdateInterfaceRequest", &req)?;
        let iface = req.interface.as_ref().ok_or_else(|| {
            status(
                Code::INVALID_ARGUMENT,
                "UpdateInterface without an interface",
            )
        })?;
        network::update_interface(iface)
            .await
            .map_err(network_status)
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        self.authorize("UpdateRoutesRequest", &req)?;
        let wanted = req
            .routes
            .as_ref()
            .map(|r| r.Routes.as_slice())
            .unwrap_or(&[]);
        let mut resp = agent::Routes::new();
        resp.Routes = network::update_routes(wanted)
            .await
            .map_err(network_status)?;
        Ok(resp)
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListInterfacesRequest,
    ) -> ttrpc::Result<agent::Interfaces> {
        self.authorize("ListInterfacesRequest", &req)?;
        let mut resp = agent::Interfaces::new();
        resp.Interfaces = network::list_interfaces().await.map_err(network_status)?;
        Ok(resp)
    }

    async fn list_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        self.authorize("ListRoutesRequest", &req)?;
        let mut resp = agent::Routes::new();
        resp.Routes = network::list_routes().await.map_err(network_status)?;
        Ok(resp)
    }

    async fn set_policy(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetPolicyRequest,
    ) -> ttrpc::Result<Empty> {
        // Replacing a loaded policy needs that policy's consent; the first load is bound only by
        // HOST_DATA (checked in `load`).
        if self.gate.is_loaded() {
            self.authorize("SetPolicyRequest", &req)?;
        }
        self.gate.load(&req.policy).map_err(|e| {
            tracing::warn!(error = %e, "policy refused");
            policy_status(e)
        })?;
        Ok(Empty::new())
    }
}

fn read_mem_block_size() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/devices/system/memory/block_size_bytes").ok()?;
    u64::from_str_radix(text.trim(), 16).ok()
}

#[async_trait]
impl veil_ttrpc::AttestationService for Agent {
    async fn get_attestation_report(
        &self,
        _ctx: &TtrpcContext,
        req: veil::GetAttestationReportRequest,
    ) -> ttrpc::Result<veil::GetAttestationReportResponse> {
        // Evidence reveals nothing the host does not know and is what a relying party needs to
        // decide whether to trust this guest, so it is served with or without a policy.
        let data = pad_report_data(&req.report_data)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let source = self.gate.attestation();
        let report = source
            .report(&data)
            .map_err(|e| status(Code::INTERNAL, e.to_string()))?;
        let mut resp = veil::GetAttestationReportResponse::new();
        resp.report = report.as_bytes().to_vec();
        resp.source = source.name().to_string();
        Ok(resp)
    }
}

/// The ttrpc service table for `agent`.
pub fn services(agent: Arc<Agent>) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
    let mut all = agent_ttrpc::create_agent_service(agent.clone());
    all.extend(veil_ttrpc::create_attestation_service(agent));
    all
}
