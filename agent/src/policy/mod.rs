//! Agent policy: Rego rules (evaluated with regorus) that every request must pass, accepted only
//! when its SHA-256 equals HOST_DATA in this guest's attestation report.

mod engine;
mod gate;
mod input;

pub use engine::{PolicyEngine, POLICY_PACKAGE};
pub use gate::PolicyGate;
pub use input::request_to_input_json;

/// A policy that allows every request the agent serves: what a pod without a policy of its
/// own runs under (the shim's default), and what tests load.
pub const ALLOW_ALL: &str = r#"package agent_policy

default CreateContainerRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default ExecProcessRequest := true
default SignalProcessRequest := true
default WaitProcessRequest := true
default StatsContainerRequest := true
default UpdateContainerRequest := true
default PauseContainerRequest := true
default ResumeContainerRequest := true
default ListProcessesRequest := true
default CopyFileRequest := true
default GetOOMEventRequest := true
default GetMetricsRequest := true
default SetGuestDateTimeRequest := true
default WriteStreamRequest := true
default ReadStreamRequest := true
default CloseStdinRequest := true
default TtyWinResizeRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default GuestDetailsRequest := true
default SetPolicyRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default AllowUnverifiedLayers := true
"#;

/// Errors from loading or applying a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("no policy is loaded: every request except SetPolicy is refused until one is")]
    NoPolicy,
    #[error("policy is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("policy does not parse: {0}")]
    Parse(String),
    #[error("policy digest sha256:{policy} does not match HOST_DATA {host_data} in the attestation report")]
    DigestMismatch { policy: String, host_data: String },
    #[error("cannot fetch the attestation report to check the policy digest: {0}")]
    Attestation(#[from] crate::attestation::AttestationError),
    #[error("{rule} is denied by policy")]
    Denied { rule: String },
    #[error("evaluating policy rule {rule}: {message}")]
    Evaluation { rule: String, message: String },
    #[error("request cannot be turned into policy input: {0}")]
    Input(String),
}
