//! Building a manifest from the images on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    sha256_hex, IgvmRecipe, Image, LaunchDigestEntry, Manifest, ManifestError, FORMAT, VCPU_COUNTS,
    VCPU_TYPES,
};
use crate::cpu_types::signature_of;
use crate::igvm::load_igvm;

/// What `veil guest manifest` is given.
#[derive(Clone, Debug)]
pub struct ManifestInput {
    /// The directory the manifest is written to; image files are named relative to it.
    pub dir: PathBuf,
    /// (name, file relative to `dir`).
    pub images: Vec<(String, String)>,
    pub inputs: BTreeMap<String, String>,
    pub recipe: IgvmRecipe,
}

fn read(path: &Path) -> Result<Vec<u8>, ManifestError> {
    std::fs::read(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Hashes the images and measures the IGVM for every vCPU count and type.
pub fn build_manifest(input: &ManifestInput) -> Result<Manifest, ManifestError> {
    let mut images = BTreeMap::new();
    for (name, file) in &input.images {
        let bytes = read(&input.dir.join(file))?;
        images.insert(
            name.clone(),
            Image {
                file: file.clone(),
                sha256: sha256_hex(&bytes),
            },
        );
    }
    let recipe = &input.recipe;
    for (role, name) in [
        ("IGVM", &recipe.image),
        ("kernel", &recipe.kernel),
        ("initrd", &recipe.initrd),
    ] {
        if !images.contains_key(name) {
            return Err(ManifestError::MissingImage {
                role,
                name: name.clone(),
            });
        }
    }
    let igvm_path = input.dir.join(&images[&input.recipe.image].file);
    let plan = load_igvm(&read(&igvm_path)?).map_err(|source| ManifestError::Measure {
        path: igvm_path.clone(),
        source,
    })?;
    let mut configs = Vec::new();
    for vcpu_type in VCPU_TYPES {
        let sig = signature_of(vcpu_type)?;
        configs.extend(VCPU_COUNTS.map(|vcpus| (vcpu_type, vcpus, sig)));
    }
    let digests = plan
        .launch_digests(&configs.iter().map(|&(_, n, s)| (n, s)).collect::<Vec<_>>())
        .map_err(|source| ManifestError::Measure {
            path: igvm_path.clone(),
            source,
        })?;
    let launch_digests = configs
        .iter()
        .zip(digests)
        .map(|(&(vcpu_type, vcpus, sig), digest)| LaunchDigestEntry {
            vcpus,
            vcpu_type: vcpu_type.to_string(),
            vcpu_sig: format!("{sig:#010x}"),
            measurement: hex::encode(digest),
        })
        .collect();
    Ok(Manifest {
        format: FORMAT.to_string(),
        inputs: input.inputs.clone(),
        images,
        igvm: input.recipe.clone(),
        launch_digests,
    })
}
