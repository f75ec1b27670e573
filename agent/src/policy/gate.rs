//! The gate every request passes: no policy -> refused; policy loads bound to HOST_DATA.

use std::sync::Mutex;

use protobuf::MessageFull;

use super::{request_to_input_json, PolicyEngine, PolicyError};
use crate::attestation::AttestationSource;

/// Holds the active policy and the attestation source that binds it.
pub struct PolicyGate {
    attestation: Box<dyn AttestationSource>,
    active: Mutex<Option<PolicyEngine>>,
}

impl PolicyGate {
    /// A gate with no policy loaded: it refuses everything until [`PolicyGate::load`] succeeds.
    pub fn new(attestation: Box<dyn AttestationSource>) -> Self {
        Self {
            attestation,
            active: Mutex::new(None),
        }
    }

    /// The attestation source (also serves the attestation service).
    pub fn attestation(&self) -> &dyn AttestationSource {
        self.attestation.as_ref()
    }

    /// Whether a policy is loaded.
    pub fn is_loaded(&self) -> bool {
        self.lock().is_some()
    }

    /// Loads `text` as the policy if its SHA-256 equals HOST_DATA in a fresh attestation report
    /// and it parses. The digest is checked first: text the host did not commit to at launch is
    /// refused without being parsed.
    pub fn load(&self, text: &str) -> Result<(), PolicyError> {
        let digest = PolicyEngine::digest_of(text);
        let report = self.attestation.report(&[0u8; 64])?;
        let host_data = report.host_data();
        if digest != host_data {
            return Err(PolicyError::DigestMismatch {
                policy: hex::encode(digest),
                host_data: hex::encode(host_data),
            });
        }
        let engine = PolicyEngine::parse(text)?;
        tracing::info!(
            digest = %hex::encode(digest),
            attestation = self.attestation.name(),
            "policy loaded"
        );
        *self.lock() = Some(engine);
        Ok(())
    }

    /// Checks `req` against rule `rule`. Refused when no policy is loaded.
    pub fn authorize<M: MessageFull>(&self, rule: &str, req: &M) -> Result<(), PolicyError> {
        let mut guard = self.lock();
        let engine = guard.as_mut().ok_or(PolicyError::NoPolicy)?;
        let input = request_to_input_json(req)?;
        engine.check(rule, &input)
    }

    /// Whether rule `rule` allows `req`: a question the policy answers (e.g.
    /// `AllowUnverifiedLayers`), where an undefined rule or no policy means no.
    pub fn allows<M: MessageFull>(&self, rule: &str, req: &M) -> bool {
        self.authorize(rule, req).is_ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PolicyEngine>> {
        // A panic while holding the lock cannot leave the Option half-written; keep serving.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::InsecureDevelopment;
    use crate::protocols::agent;

    const ALLOW_START: &str = "package agent_policy\n\ndefault StartContainerRequest := false\nStartContainerRequest { input.container_id == \"ok\" }\n";

    fn gate_for(policy: &str) -> PolicyGate {
        PolicyGate::new(Box::new(InsecureDevelopment::new(PolicyEngine::digest_of(
            policy,
        ))))
    }

    fn start(id: &str) -> agent::StartContainerRequest {
        let mut r = agent::StartContainerRequest::new();
        r.container_id = id.into();
        r
    }

    #[test]
    fn no_policy_refuses_every_request() {
        let gate = gate_for(ALLOW_START);
        let err = gate
            .authorize("StartContainerRequest", &start("ok"))
            .unwrap_err();
        assert!(matches!(err, PolicyError::NoPolicy), "{err}");
    }

    #[test]
    fn matching_policy_loads_and_is_enforced() {
        let gate = gate_for(ALLOW_START);
        gate.load(ALLOW_START).unwrap();
        gate.authorize("StartContainerRequest", &start("ok"))
            .unwrap();
        let err = gate
            .authorize("StartContainerRequest", &start("bad"))
            .unwrap_err();
        assert!(err.to_string().contains("StartContainerRequest"), "{err}");
    }

    #[test]
    fn digest_mismatch_is_refused_and_nothing_loads() {
        let gate = gate_for(ALLOW_START);
        let other = format!("{ALLOW_START}\n# changed\n");
        let err = gate.load(&other).unwrap_err();
        assert!(matches!(err, PolicyError::DigestMismatch { .. }), "{err}");
        assert!(!gate.is_loaded());
    }

    #[test]
    fn malformed_policy_matching_host_data_is_a_parse_error() {
        let bad = "package agent_policy\nthis is not rego (";
        let gate = gate_for(bad);
        let err = gate.load(bad).unwrap_err();
        assert!(matches!(err, PolicyError::Parse(_)), "{err}");
        assert!(!gate.is_loaded());
    }
}
