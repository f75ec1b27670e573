//! The OCI annotations the shim reads: CRI's pod grouping and the pod's own settings.

use std::collections::HashMap;

/// CRI: `sandbox` for the pod's pause container, `container` for the others.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI: the pod sandbox a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// vCPUs of the pod's VM.
pub const VCPUS: &str = "io.veil.config.vcpus";
/// Memory of the pod's VM in MiB.
pub const MEMORY_MIB: &str = "io.veil.config.memory_mib";
/// The pod's agent policy (Rego text, base64): hashed into HOST_DATA, handed over as init data.
pub const POLICY: &str = "io.veil.config.policy";
/// Kata's names for the same settings, accepted so existing pod specs carry over.
pub const KATA_VCPUS: &str = "io.katacontainers.config.hypervisor.default_vcpus";
pub const KATA_MEMORY_MIB: &str = "io.katacontainers.config.hypervisor.default_memory";
pub const KATA_POLICY: &str = "io.katacontainers.config.agent.policy";

/// Largest vCPU count and memory a pod may ask for.
const MAX_VCPUS: u32 = 64;
const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Errors in annotation values.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation {key}={value:?}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
}

/// Where a container stands in its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The CRI pause container: starts the pod's sandbox.
    PodSandbox,
    /// A CRI container joining the sandbox of pod `sandbox_id`.
    PodMember { sandbox_id: String },
    /// No CRI annotations (e.g. `ctr run`): a sandbox of its own.
    Standalone,
}

/// What the shim takes from a container's annotations.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodSettings {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// The policy text, decoded.
    pub policy: Option<String>,
}

/// Reads the container's role from the CRI annotations.
pub fn role(annotations: &HashMap<String, String>) -> Role {
    match annotations.get(CONTAINER_TYPE).map(String::as_str) {
        Some("sandbox") => Role::PodSandbox,
        Some("container") => match annotations.get(SANDBOX_ID) {
            Some(id) if !id.is_empty() => Role::PodMember {
                sandbox_id: id.clone(),
            },
            _ => Role::Standalone,
        },
        _ => Role::Standalone,
    }
}

/// Reads the pod's settings; a malformed value is an error naming the annotation.
pub fn pod_settings(annotations: &HashMap<String, String>) -> Result<PodSettings, AnnotationError> {
    let get = |ours: &'static str, kata: &'static str| {
        annotations
            .get(ours)
            .map(|v| (ours, v))
            .or_else(|| annotations.get(kata).map(|v| (kata, v)))
    };
    let mut out = PodSettings::default();
    if let Some((key, value)) = get(VCPUS, KATA_VCPUS) {
        let n: u32 = value.trim().parse().map_err(|e| invalid(key, value, e))?;
        if n == 0 || n > MAX_VCPUS {
            return Err(invalid(key, value, format!("must be 1..={MAX_VCPUS}")));
        }
        out.vcpus = Some(n);
    }
    if let Some((key, value)) = get(MEMORY_MIB, KATA_MEMORY_MIB) {
        let n: u64 = value.trim().parse().map_err(|e| invalid(key, value, e))?;
        if n == 0 || n > MAX_MEMORY_MIB {
            return Err(invalid(key, value, format!("must be 1..={MAX_MEMORY_MIB}")));
        }
        out.memory_mib = Some(n);
    }
    if let Some((key, value)) = get(POLICY, KATA_POLICY) {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| invalid(key, "<base64>", e))?;
        let text = String::from_utf8(bytes).map_err(|e| invalid(key, "<base64>", e))?;
        out.policy = Some(text);
    }
    Ok(out)
}

fn invalid(key: &'static str, value: &str, why: impl ToString) -> AnnotationError {
    AnnotationError::Invalid {
        key,
        value: value.to_string(),
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_roles() {
        assert_eq!(role(&map(&[(CONTAINER_TYPE, "sandbox")])), Role::PodSandbox);
        assert_eq!(
            role(&map(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "p1")])),
            Role::PodMember {
                sandbox_id: "p1".into()
            }
        );
        assert_eq!(role(&map(&[])), Role::Standalone);
    }

    #[test]
    fn settings_from_ours_or_katas_names() {
        let s = pod_settings(&map(&[(VCPUS, "2"), (KATA_MEMORY_MIB, "512")])).unwrap();
        assert_eq!(s.vcpus, Some(2));
        assert_eq!(s.memory_mib, Some(512));
        // "package p" in base64.
        let s = pod_settings(&map(&[(POLICY, "cGFja2FnZSBw")])).unwrap();
        assert_eq!(s.policy.as_deref(), Some("package p"));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let err = pod_settings(&map(&[(VCPUS, "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(VCPUS) && err.contains("many"), "{err}");
        let err = pod_settings(&map(&[(MEMORY_MIB, "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(MEMORY_MIB), "{err}");
        let err = pod_settings(&map(&[(POLICY, "!!")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(POLICY), "{err}");
    }
}
