//! A parsed Rego policy and its rule evaluation.

use sha2::{Digest, Sha256};

use super::PolicyError;

/// The Rego package whose rules name the requests (as in Kata: `data.agent_policy.<Request>`).
pub const POLICY_PACKAGE: &str = "agent_policy";

/// Largest policy accepted, to bound parse time and memory.
pub const MAX_POLICY_LEN: usize = 1 << 20;

/// A policy that parsed, with the digest of its text.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: regorus::Engine,
    digest: [u8; 32],
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicyEngine(sha256:{})", hex::encode(self.digest))
    }
}

impl PolicyEngine {
    /// SHA-256 of the policy text exactly as received (this is what HOST_DATA must hold).
    pub fn digest_of(text: &str) -> [u8; 32] {
        Sha256::digest(text.as_bytes()).into()
    }

    /// Parses `text` as Rego. Kata's policies are written in Rego v0 syntax (with the
    /// `future.keywords` imports), so that is what the engine accepts.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge {
                len: text.len(),
                max: MAX_POLICY_LEN,
            });
        }
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(true);
        engine
            .add_policy("policy.rego".to_string(), text.to_string())
            .map_err(|e| PolicyError::Parse(format!("{e:#}")))?;
        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Parse(format!("{e:#}")))?;
        let wanted = format!("data.{POLICY_PACKAGE}");
        if !packages.contains(&wanted) {
            return Err(PolicyError::Parse(format!(
                "policy must declare `package {POLICY_PACKAGE}` (found {packages:?})"
            )));
        }
        Ok(Self {
            engine,
            digest: Self::digest_of(text),
        })
    }

    /// The SHA-256 of the policy text.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Evaluates rule `rule` (e.g. `CreateContainerRequest`) with `input_json` as `input`.
    /// Allowed only if the rule is defined and yields `true` or an object with `allowed: true`
    /// (newer Kata policies return `{"allowed": ..., "ops": ...}`); anything else is a denial.
    pub fn check(&mut self, rule: &str, input_json: &str) -> Result<(), PolicyError> {
        let input =
            regorus::Value::from_json_str(input_json).map_err(|e| PolicyError::Evaluation {
                rule: rule.to_string(),
                message: format!("input: {e:#}"),
            })?;
        self.engine.set_input(input);
        let path = format!("data.{POLICY_PACKAGE}.{rule}");
        let value = match self.engine.eval_rule(path) {
            Ok(v) => v,
            // A rule the policy does not define at all: default deny.
            Err(e) if format!("{e:#}").contains("not a valid rule path") => {
                return Err(PolicyError::Denied {
                    rule: rule.to_string(),
                })
            }
            Err(e) => {
                return Err(PolicyError::Evaluation {
                    rule: rule.to_string(),
                    message: format!("{e:#}"),
                })
            }
        };
        if is_allowed(&value) {
            Ok(())
        } else {
            Err(PolicyError::Denied {
                rule: rule.to_string(),
            })
        }
    }
}

fn is_allowed(value: &regorus::Value) -> bool {
    if *value == regorus::Value::Bool(true) {
        return true;
    }
    if let Ok(map) = value.as_object() {
        return map.get(&regorus::Value::from("allowed")) == Some(&regorus::Value::Bool(true));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
package agent_policy

default CreateContainerRequest := false
default ExecProcessRequest := false

CreateContainerRequest {
    input.container_id == "allowed"
}

ExecProcessRequest := {"allowed": true, "ops": []} {
    input.process.Args[0] == "/bin/true"
}
"#;

    #[test]
    fn rule_yielding_true_allows() {
        let mut p = PolicyEngine::parse(POLICY).unwrap();
        p.check("CreateContainerRequest", r#"{"container_id":"allowed"}"#)
            .unwrap();
    }

    #[test]
    fn rule_yielding_false_denies_and_names_the_rule() {
        let mut p = PolicyEngine::parse(POLICY).unwrap();
        let err = p
            .check("CreateContainerRequest", r#"{"container_id":"other"}"#)
            .unwrap_err();
        assert!(matches!(err, PolicyError::Denied { .. }));
        assert!(err.to_string().contains("CreateContainerRequest"), "{err}");
    }

    #[test]
    fn object_result_with_allowed_true_allows() {
        let mut p = PolicyEngine::parse(POLICY).unwrap();
        p.check(
            "ExecProcessRequest",
            r#"{"process":{"Args":["/bin/true"]}}"#,
        )
        .unwrap();
        let err = p
            .check("ExecProcessRequest", r#"{"process":{"Args":["/bin/sh"]}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("ExecProcessRequest"), "{err}");
    }

    #[test]
    fn rule_missing_from_policy_is_denied() {
        let mut p = PolicyEngine::parse(POLICY).unwrap();
        let err = p.check("ReadStreamRequest", "{}").unwrap_err();
        assert!(
            matches!(err, PolicyError::Denied { ref rule } if rule == "ReadStreamRequest"),
            "{err}"
        );
    }

    #[test]
    fn malformed_policy_is_a_parse_error() {
        let err =
            PolicyEngine::parse("package agent_policy\n\nCreateContainerRequest {{{").unwrap_err();
        assert!(matches!(err, PolicyError::Parse(_)), "{err}");
    }

    #[test]
    fn policy_in_another_package_is_refused() {
        let err = PolicyEngine::parse("package other\n\ndefault x := true\n").unwrap_err();
        assert!(err.to_string().contains("agent_policy"), "{err}");
    }

    #[test]
    fn digest_is_sha256_of_the_text() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            hex::encode(PolicyEngine::digest_of("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
