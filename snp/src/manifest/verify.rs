//! `veil guest verify-manifest`: compares the images on disk with a manifest. Builds nothing
//! but the IGVM in memory (a second or so) to check that it is exactly the kernel and
//! initramfs it names.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{sha256_hex, Manifest, ManifestError, FORMAT, MAX_MANIFEST_SIZE};
use crate::cpu_types::signature_of;
use crate::igvm::{build_igvm, load_igvm, BuildInput};

/// One comparison and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was compared, e.g. `image agent (veil-agent)`.
    pub what: String,
    /// `None` when it matches; otherwise what differs.
    pub mismatch: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mismatch {
            None => write!(f, "ok        {}", self.what),
            Some(why) => write!(f, "MISMATCH  {}: {why}", self.what),
        }
    }
}

/// Every check of one manifest, in order.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    pub checks: Vec<Check>,
}

impl Verification {
    pub fn mismatches(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.mismatch.is_some())
    }

    pub fn all_match(&self) -> bool {
        self.mismatches().next().is_none()
    }

    fn push(&mut self, what: String, mismatch: Option<String>) {
        self.checks.push(Check { what, mismatch });
    }
}

fn invalid(path: &Path, why: String) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_path_buf(),
        why,
    }
}

/// `len` lowercase hex digits: the form `hex::encode` writes, since entries are compared with
/// freshly computed digests as text (the `hex` crate decodes either case, so it cannot tell).
fn is_lowercase_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_hex_u64(path: &Path, field: &str, value: &str) -> Result<u64, ManifestError> {
    let digits = value.strip_prefix("0x").unwrap_or(value);
    u64::from_str_radix(digits, 16)
        .map_err(|_| invalid(path, format!("{field} {value:?} is not hexadecimal")))
}

/// Reads and checks the shape of a manifest (not the images).
pub fn read_manifest(path: &Path) -> Result<Manifest, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read(path).map_err(read_err)?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|source| ManifestError::Malformed {
            path: path.to_path_buf(),
            source,
        })?;
    if manifest.format != FORMAT {
        return Err(ManifestError::Format {
            path: path.to_path_buf(),
            found: manifest.format,
        });
    }
    for (name, image) in &manifest.images {
        if !is_lowercase_hex(&image.sha256, 64) {
            return Err(invalid(
                path,
                format!("image {name}: sha256 is not 64 lowercase hex characters"),
            ));
        }
        if Path::new(&image.file).is_absolute() || image.file.split('/').any(|c| c == "..") {
            return Err(invalid(
                path,
                format!(
                    "image {name}: file {:?} must be relative to the manifest, without ..",
                    image.file
                ),
            ));
        }
    }
    let recipe = &manifest.igvm;
    for (role, name) in [
        ("igvm.image", &recipe.image),
        ("igvm.kernel", &recipe.kernel),
        ("igvm.initrd", &recipe.initrd),
    ] {
        if !manifest.images.contains_key(name) {
            return Err(invalid(
                path,
                format!("{role} names image {name:?}, which is not listed"),
            ));
        }
    }
    parse_hex_u64(path, "igvm.policy", &recipe.policy)?;
    for entry in &manifest.launch_digests {
        if !is_lowercase_hex(&entry.measurement, 96) {
            return Err(invalid(
                path,
                format!(
                    "launch digest for {} vCPUs ({}) is not 96 lowercase hex characters",
                    entry.vcpus, entry.vcpu_type
                ),
            ));
        }
        parse_hex_u64(path, "vcpu_sig", &entry.vcpu_sig)?;
    }
    Ok(manifest)
}

/// Compares the images next to the manifest at `path` with it: every image's SHA-256, the
/// IGVM against a fresh build from its kernel, initrd and recipe, the policy in the IGVM, and
/// every launch digest. Errors only for an unusable manifest; mismatches are in the result.
pub fn verify_manifest(path: &Path) -> Result<Verification, ManifestError> {
    let manifest = read_manifest(path)?;
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut out = Verification::default();
    let mut contents = std::collections::BTreeMap::new();
    for (name, image) in &manifest.images {
        let file = dir.join(&image.file);
        let what = format!("image {name} ({})", file.display());
        match std::fs::read(&file) {
            Ok(bytes) => {
                let actual = sha256_hex(&bytes);
                let mismatch = (actual != image.sha256)
                    .then(|| format!("sha256 {actual} on disk, {} in the manifest", image.sha256));
                out.push(what, mismatch);
                contents.insert(name.clone(), bytes);
            }
            Err(e) => out.push(what, Some(format!("cannot read it: {e}"))),
        }
    }

    let recipe = &manifest.igvm;
    let (Some(igvm), Some(kernel), Some(initrd)) = (
        contents.get(&recipe.image),
        contents.get(&recipe.kernel),
        contents.get(&recipe.initrd),
    ) else {
        out.push(
            "launch digests".to_string(),
            Some("not computed: an image they depend on cannot be read".to_string()),
        );
        return Ok(out);
    };
    let policy = parse_hex_u64(path, "igvm.policy", &recipe.policy)?;
    let rebuilt = build_igvm(&BuildInput {
        kernel,
        initrd: Some(initrd),
        cmdline: &recipe.cmdline,
        mem_mib: recipe.mem_mib,
        policy,
        c_bit: recipe.c_bit,
    });
    let what = format!(
        "image {} is `veil igvm build` of {} + {} (--mem-mib {} --policy {} --c-bit {} --cmdline {:?})",
        recipe.image, recipe.kernel, recipe.initrd, recipe.mem_mib, recipe.policy, recipe.c_bit,
        recipe.cmdline
    );
    match rebuilt {
        Ok(built) if built.bytes == *igvm => out.push(what, None),
        Ok(built) => out.push(
            what,
            Some(format!(
                "the build gives sha256 {}, the file on disk is {}",
                sha256_hex(&built.bytes),
                sha256_hex(igvm)
            )),
        ),
        Err(e) => out.push(what, Some(format!("cannot build it: {e}"))),
    }

    let plan = match load_igvm(igvm) {
        Ok(plan) => plan,
        Err(e) => {
            out.push(
                "launch digests".to_string(),
                Some(format!("{} is not a usable IGVM: {e}", recipe.image)),
            );
            return Ok(out);
        }
    };
    out.push(
        format!("guest policy in {} is {}", recipe.image, recipe.policy),
        (plan.policy != policy).then(|| format!("the file carries {:#x}", plan.policy)),
    );
    // Signatures first, then every digest in one pass over the pages.
    let mut sigs = Vec::new();
    for entry in &manifest.launch_digests {
        let sig = parse_hex_u64(path, "vcpu_sig", &entry.vcpu_sig)?;
        sigs.push(match u32::try_from(sig) {
            Err(_) => Err("vcpu_sig is wider than 32 bits".to_string()),
            Ok(sig) if signature_of(&entry.vcpu_type).is_ok_and(|s| s != sig) => Err(format!(
                "{} has another signature than {sig:#010x}",
                entry.vcpu_type
            )),
            Ok(sig) => Ok(sig),
        });
    }
    let configs: Vec<(u32, u32)> = manifest
        .launch_digests
        .iter()
        .zip(&sigs)
        .filter_map(|(e, s)| s.as_ref().ok().map(|&sig| (e.vcpus, sig)))
        .collect();
    let mut digests = match plan.launch_digests(&configs) {
        Ok(d) => d.into_iter(),
        Err(e) => {
            out.push(
                "launch digests".to_string(),
                Some(format!("cannot compute them: {e}")),
            );
            return Ok(out);
        }
    };
    for (entry, sig) in manifest.launch_digests.iter().zip(sigs) {
        let what = format!(
            "launch digest, {} vCPU(s), {} ({})",
            entry.vcpus, entry.vcpu_type, entry.vcpu_sig
        );
        let mismatch = match (sig, digests.next()) {
            (Err(why), _) => Some(why),
            (Ok(_), Some(d)) if hex::encode(d) == entry.measurement => None,
            (Ok(_), Some(d)) => Some(format!(
                "{} computed from {}, {} in the manifest",
                hex::encode(d),
                recipe.image,
                entry.measurement
            )),
            (Ok(_), None) => Some("not computed".to_string()),
        };
        out.push(what, mismatch);
    }
    Ok(out)
}
