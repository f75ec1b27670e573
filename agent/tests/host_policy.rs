//! Policy over the socket: no policy -> everything refused; digest mismatch refused; malformed
//! policy -> parse error; denied request -> permission error naming the rule; attestation
//! report carries the caller's REPORT_DATA and HOST_DATA. Runs unprivileged.

mod common;

use common::*;
use veil_agent::protocols::{agent, veil};

const DENY_CREATE: &str = r#"package agent_policy

default CreateContainerRequest := false
default GuestDetailsRequest := true
"#;

fn set_policy(text: &str) -> agent::SetPolicyRequest {
    let mut r = agent::SetPolicyRequest::new();
    r.policy = text.into();
    r
}

#[tokio::test]
async fn without_a_policy_every_request_but_set_policy_is_refused() {
    let mut agent = AgentProcess::start(&sha256_hex(DENY_CREATE));
    let client = agent.connect().await;
    let (code, msg) = status_of(
        client
            .agent
            .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await,
    );
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
    assert!(msg.contains("no policy"), "{msg}");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "c".into();
    let (code, _) = status_of(client.agent.start_container(ctx(), &start).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);

    // The policy load itself is accepted, after which the policy decides.
    client
        .agent
        .set_policy(ctx(), &set_policy(DENY_CREATE))
        .await
        .unwrap();
    let details = client
        .agent
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .unwrap();
    assert_eq!(details.agent_details.version, env!("CARGO_PKG_VERSION"));
    assert!(!details.agent_details.init_daemon);
}

#[tokio::test]
async fn a_policy_whose_digest_differs_from_host_data_is_refused() {
    let mut agent = AgentProcess::start(&sha256_hex(DENY_CREATE));
    let client = agent.connect().await;
    let (code, msg) = status_of(client.agent.set_policy(ctx(), &set_policy(ALLOW_ALL)).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
    assert!(msg.contains("does not match HOST_DATA"), "{msg}");
    assert!(msg.contains(&sha256_hex(ALLOW_ALL)), "{msg}");
    // Still no policy.
    let (_, msg) = status_of(
        client
            .agent
            .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await,
    );
    assert!(msg.contains("no policy"), "{msg}");
}

#[tokio::test]
async fn a_malformed_policy_is_rejected_with_the_parse_error() {
    let malformed = "package agent_policy\n\nCreateContainerRequest {\n";
    let mut agent = AgentProcess::start(&sha256_hex(malformed));
    let client = agent.connect().await;
    let (code, msg) = status_of(client.agent.set_policy(ctx(), &set_policy(malformed)).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("does not parse"), "{msg}");
}

#[tokio::test]
async fn a_denied_request_gets_a_permission_error_naming_the_rule() {
    let mut agent = AgentProcess::start(&sha256_hex(DENY_CREATE));
    let client = agent.connect().await;
    client
        .agent
        .set_policy(ctx(), &set_policy(DENY_CREATE))
        .await
        .unwrap();
    let req = create_request("denied", "/dev/null", &["true"]);
    let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
    assert!(msg.contains("CreateContainerRequest"), "{msg}");
    // A rule the policy does not define is denied too (default deny), and named.
    let (code, msg) = status_of(
        client
            .agent
            .read_stdout(ctx(), &read_req("denied", "denied"))
            .await,
    );
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
    assert!(msg.contains("ReadStreamRequest"), "{msg}");
    // Replacing the policy needs the current policy's SetPolicyRequest rule.
    let (code, msg) = status_of(
        client
            .agent
            .set_policy(ctx(), &set_policy(DENY_CREATE))
            .await,
    );
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
    assert!(msg.contains("SetPolicyRequest"), "{msg}");
}

#[tokio::test]
async fn the_attestation_service_binds_report_data_and_host_data() {
    let mut agent = AgentProcess::start(&sha256_hex(DENY_CREATE));
    let client = agent.connect().await;
    let mut req = veil::GetAttestationReportRequest::new();
    req.report_data = b"nonce-1234".to_vec();
    let resp = client
        .attestation
        .get_attestation_report(ctx(), &req)
        .await
        .unwrap();
    assert_eq!(resp.source, "insecure-development");
    assert_eq!(resp.report.len(), 0x4A0);
    assert_eq!(&resp.report[0x50..0x5A], b"nonce-1234");
    assert!(resp.report[0x5A..0x90].iter().all(|b| *b == 0));
    let host_data = hex::encode(&resp.report[0xC0..0xE0]);
    assert_eq!(host_data, sha256_hex(DENY_CREATE));

    req.report_data = vec![0; 65];
    let (code, msg) = status_of(client.attestation.get_attestation_report(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("65"), "{msg}");
}

#[tokio::test]
async fn a_policy_from_the_init_data_device_is_loaded_when_it_matches() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("init-data.img");
    // Block devices come padded to a sector; the agent reads up to the first NUL.
    let mut bytes = DENY_CREATE.as_bytes().to_vec();
    bytes.resize(4096, 0);
    std::fs::write(&device, &bytes).unwrap();
    let device = device.to_str().unwrap();

    let mut agent =
        AgentProcess::start_with(&sha256_hex(DENY_CREATE), &["--policy-device", device]);
    let client = agent.connect().await;
    client
        .agent
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .unwrap();

    // The same device against another HOST_DATA: refused, so still no policy.
    let mut other = AgentProcess::start_with(&sha256_hex(ALLOW_ALL), &["--policy-device", device]);
    let client = other.connect().await;
    let (code, msg) = status_of(
        client
            .agent
            .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await,
    );
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
    assert!(msg.contains("no policy"), "{msg}");
}

#[tokio::test]
async fn destroy_sandbox_stops_the_agent() {
    let mut agent = AgentProcess::start(&sha256_hex(ALLOW_ALL));
    let client = agent.connect().await;
    client
        .agent
        .set_policy(ctx(), &set_policy(ALLOW_ALL))
        .await
        .unwrap();
    client
        .agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    // On a host the agent exits (as PID 1 it powers the VM off instead).
    let status = agent.wait_exit();
    assert!(status.success(), "{status}");
}
