//! Requests the host sends the guest agent: a Kata CreateContainerRequest decoded with
//! protobuf, turned into the policy's JSON input and checked against a small policy that
//! reads nested fields, as the agent does before acting on a request.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use veil_agent::policy::{request_to_input_json, PolicyEngine};
use veil_agent::protocols::agent::CreateContainerRequest;

const POLICY: &str = r#"package agent_policy
import future.keywords.in
default CreateContainerRequest := false
CreateContainerRequest {
    input.container_id != ""
    some arg in input.OCI.Process.Args
    startswith(arg, "/")
}
"#;

fn engine() -> PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| PolicyEngine::parse(POLICY).expect("fuzz policy parses"))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = CreateContainerRequest::parse_from_bytes(data) else {
        return;
    };
    let Ok(json) = request_to_input_json(&req) else {
        return;
    };
    serde_json::from_str::<serde_json::Value>(&json).expect("policy input is valid JSON");
    let _ = engine().check("CreateContainerRequest", &json);
});
