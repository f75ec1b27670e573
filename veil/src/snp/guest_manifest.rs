//! `veil guest manifest` (write one) and `veil guest verify-manifest` (check the images on
//! disk against one).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use veil_snp::igvm::build::DEFAULT_C_BIT;
use veil_snp::manifest::{
    build_manifest, verify_manifest, IgvmRecipe, ManifestError, ManifestInput,
};
use veil_snp::policy::GuestPolicy;

/// Arguments of `veil guest manifest`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct ManifestArgs {
    /// Where to write the manifest; image files are named relative to its directory.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// An image, NAME=FILE with FILE relative to the manifest's directory (repeatable).
    #[arg(long = "image", value_name = "NAME=FILE", required = true)]
    pub images: Vec<String>,
    /// A build input and its version, KEY=VALUE (repeatable).
    #[arg(long = "input", value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// Name of the IGVM image.
    #[arg(long, value_name = "NAME", default_value = "igvm")]
    pub igvm: String,
    /// Name of the kernel image the IGVM was built from.
    #[arg(long, value_name = "NAME", default_value = "vmlinux")]
    pub kernel: String,
    /// Name of the initrd image the IGVM was built from.
    #[arg(long, value_name = "NAME", default_value = "initramfs")]
    pub initrd: String,
    /// The `veil igvm build` options the IGVM was built with.
    #[arg(long, value_name = "S")]
    pub cmdline: String,
    #[arg(long, value_name = "N")]
    pub mem_mib: u64,
    #[arg(long, value_name = "HEX", default_value = "0x30000")]
    pub policy: String,
    #[arg(long, value_name = "BIT", default_value_t = DEFAULT_C_BIT)]
    pub c_bit: u8,
}

fn split_pair(spec: &str) -> Option<(String, String)> {
    let (k, v) = spec.split_once('=')?;
    (!k.is_empty() && !v.is_empty()).then(|| (k.to_string(), v.to_string()))
}

/// Writes the manifest; returns a one-line summary.
pub fn run_manifest(args: &ManifestArgs) -> Result<String, CliError> {
    let policy = GuestPolicy::from_hex(&args.policy, false)?;
    let images = args
        .images
        .iter()
        .map(|s| split_pair(s).ok_or_else(|| ManifestError::BadImageSpec(s.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = args
        .inputs
        .iter()
        .map(|s| split_pair(s).ok_or_else(|| ManifestError::BadInputSpec(s.clone())))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let manifest = build_manifest(&ManifestInput {
        dir,
        images,
        inputs,
        recipe: IgvmRecipe {
            image: args.igvm.clone(),
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            mem_mib: args.mem_mib,
            policy: format!("{:#x}", policy.raw()),
            c_bit: args.c_bit,
        },
    })?;
    std::fs::write(&args.output, manifest.to_json()?).map_err(|source| CliError::Write {
        path: args.output.clone(),
        source,
    })?;
    Ok(format!(
        "{}: {} images, {} launch digests",
        args.output.display(),
        manifest.images.len(),
        manifest.launch_digests.len()
    ))
}

/// Arguments of `veil guest verify-manifest`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct VerifyManifestArgs {
    /// The manifest (JSON) next to the images it names.
    #[arg(value_name = "MANIFEST")]
    pub manifest: PathBuf,
}

/// The report (one line per check, then a summary) and whether everything matched.
pub fn run_verify_manifest(args: &VerifyManifestArgs) -> Result<(String, bool), CliError> {
    let verification = verify_manifest(&args.manifest)?;
    let mut text: Vec<String> = verification.checks.iter().map(|c| c.to_string()).collect();
    let bad: Vec<&str> = verification.mismatches().map(|c| c.what.as_str()).collect();
    text.push(if bad.is_empty() {
        format!(
            "{}: all {} checks match",
            args.manifest.display(),
            verification.checks.len()
        )
    } else {
        format!(
            "{}: {} of {} checks differ",
            args.manifest.display(),
            bad.len(),
            verification.checks.len()
        )
    });
    Ok((text.join("\n"), verification.all_match()))
}
