//! The pod guest's manifest: what a pod owner compares a rebuild and an attestation report
//! with. One JSON file next to the images it names (paths relative to it), written by
//! `veil guest manifest` at the end of `guest/build-pod.sh`, checked by
//! `veil guest verify-manifest`.
//!
//! It records the version of every build input, the SHA-256 of each image, how the IGVM
//! was built from the kernel and initramfs, and the launch digest `veil measure --igvm`
//! computes for each (vCPU count, vCPU type). Serialization is deterministic (sorted maps,
//! fixed field order, no timestamps), so two reproducible builds give identical manifests.

mod verify;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use verify::{verify_manifest, Check, Verification};
pub use write::{build_manifest, ManifestInput};

/// The value of [`Manifest::format`] this code writes and reads.
pub const FORMAT: &str = "veil-guest-manifest/1";
/// The vCPU counts a manifest gives launch digests for.
pub const VCPU_COUNTS: [u32; 3] = [1, 2, 4];
/// The vCPU types a manifest gives launch digests for: the SNP-capable EPYC generations.
/// With more than one vCPU the digest depends on the CPUID signature (in each AP's RDX).
pub const VCPU_TYPES: [&str; 3] = ["EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"];
/// Largest manifest read.
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;

/// Errors reading, writing or checking a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_MANIFEST_SIZE} bytes: not a manifest")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a valid manifest: {source}")]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: format {found:?} is not {FORMAT:?}")]
    Format { path: PathBuf, found: String },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("image name {0:?} is not NAME=FILE")]
    BadImageSpec(String),
    #[error("input {0:?} is not KEY=VALUE")]
    BadInputSpec(String),
    #[error("the {role} image {name:?} is not among the images given")]
    MissingImage { role: &'static str, name: String },
    #[error("measuring the IGVM {path}: {source}")]
    Measure {
        path: PathBuf,
        source: crate::igvm::IgvmError,
    },
    #[error(transparent)]
    CpuType(#[from] crate::cpu_types::CpuTypeError),
    #[error("serializing the manifest: {0}")]
    Serialize(serde_json::Error),
}

/// One image file: where it is (relative to the manifest) and its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub file: String,
    pub sha256: String,
}

/// How the IGVM was built (`veil igvm build`) from two of the images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgvmRecipe {
    /// Names (keys of [`Manifest::images`]) of the IGVM, the kernel and the initrd.
    pub image: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub mem_mib: u64,
    /// Guest policy in the file, `0x...`.
    pub policy: String,
    pub c_bit: u8,
}

/// The expected SNP measurement of the IGVM for one vCPU configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchDigestEntry {
    pub vcpus: u32,
    pub vcpu_type: String,
    /// CPUID leaf 1 EAX of that type, `0x...`.
    pub vcpu_sig: String,
    /// 96 lowercase hex characters, as `veil measure --igvm` prints it.
    pub measurement: String,
}

/// The manifest file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// Version of every build input (toolchains, packages, lock files), by name.
    pub inputs: BTreeMap<String, String>,
    /// The images, by name.
    pub images: BTreeMap<String, Image>,
    pub igvm: IgvmRecipe,
    pub launch_digests: Vec<LaunchDigestEntry>,
}

impl Manifest {
    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<String, ManifestError> {
        let mut text = serde_json::to_string_pretty(self).map_err(ManifestError::Serialize)?;
        text.push('\n');
        Ok(text)
    }
}

/// SHA-256 as 64 lowercase hex characters.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
