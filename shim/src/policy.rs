//! The pod's agent policy: the text the agent enforces and the HOST_DATA that binds it.
//!
//! The agent accepts a policy only when SHA-256(policy) equals HOST_DATA in its attestation
//! report, so the shim always derives HOST_DATA from the exact bytes it hands over.

use sha2::{Digest, Sha256};

/// Used when a pod carries no policy annotation: every request the agent serves is allowed.
/// A confidential pod that must not be driven arbitrarily by the host supplies its own.
pub use veil_agent::policy::ALLOW_ALL;

/// A policy and the HOST_DATA it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    pub policy: String,
    pub host_data: [u8; 32],
}

impl InitData {
    /// The pod's policy, or [`ALLOW_ALL`] when it has none.
    pub fn new(policy: Option<String>) -> Self {
        let policy = policy.unwrap_or_else(|| ALLOW_ALL.to_string());
        let host_data = Sha256::digest(policy.as_bytes()).into();
        Self { policy, host_data }
    }

    /// HOST_DATA as 64 lowercase hex digits (the agent's `--insecure-host-data` form).
    pub fn host_data_hex(&self) -> String {
        hex::encode(self.host_data)
    }

    /// The init-data block device content: the policy, NUL-padded to whole 512-byte sectors
    /// (the agent reads up to the first NUL).
    pub fn device_image(&self) -> Vec<u8> {
        let mut bytes = self.policy.as_bytes().to_vec();
        bytes.push(0);
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_data_is_the_sha256_of_the_policy_text() {
        let d = InitData::new(Some("abc".into()));
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            d.host_data_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn default_is_allow_all_and_device_is_sector_padded() {
        let d = InitData::new(None);
        assert_eq!(d.policy, ALLOW_ALL);
        let image = d.device_image();
        assert_eq!(image.len() % 512, 0);
        assert_eq!(&image[..ALLOW_ALL.len()], ALLOW_ALL.as_bytes());
        assert_eq!(image[ALLOW_ALL.len()], 0);
    }
}
