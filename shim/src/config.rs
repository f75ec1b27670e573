//! The shim's TOML configuration file.
//!
//! Its path comes from containerd's runtime options (`ConfigPath`), else
//! [`DEFAULT_CONFIG_PATH`]; an absent default file means all defaults. Unknown keys are refused
//! so a typo cannot silently change what kind of sandbox a pod gets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Read when containerd's runtime options name no file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/veil/shim.toml";
/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read shim config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shim config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("shim config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("shim config {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// Which sandbox backs a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// One veil VM per pod: the product.
    #[default]
    Vm,
    /// `veil-agent` as a host process: isolates nothing; for hosts whose KVM cannot run a
    /// guest. Only ever chosen here, never by a pod.
    Process,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sandbox: SandboxKind,
    /// Per-sandbox state (sockets, resource records): removed with the sandbox.
    pub state_dir: PathBuf,
    /// Block images of container root file systems, one per layer chain, shared by sandboxes.
    pub image_cache_dir: PathBuf,
    /// Append a dm-verity hash tree to each image and have the agent mount through it.
    /// Defaults to on for VMs, off for process sandboxes (host kernels may lack dm-verity).
    pub verity: Option<bool>,
    /// How long the agent may take to answer after the sandbox starts, in seconds.
    pub agent_start_timeout_secs: u64,
    pub vm: VmSection,
    pub process: ProcessSection,
}

/// `[vm]`: how VM sandboxes are built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmSection {
    /// Guest kernel (vmlinux or bzImage) built by `guest/build-kernel.sh`.
    pub kernel: PathBuf,
    /// Guest initramfs (the agent as /init) built by `guest/build-initramfs.sh`.
    pub initrd: PathBuf,
    /// Extra kernel command-line arguments (the shim adds console, agent and device ones).
    pub kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Most containers (placeholder drives) a pod may hold.
    pub max_containers: u32,
    /// `soft-kvm` hides CPU features software KVM backends cannot emulate.
    pub cpu_template: String,
    /// Launch SEV-SNP guests. Needs an SNP host and `igvm`; never falls back to a plain VM.
    pub snp: bool,
    /// The IGVM guest image for SNP sandboxes.
    pub igvm: Option<PathBuf>,
    /// Guest policy for SNP launches (None: the IGVM file's own).
    pub snp_policy: Option<u64>,
    /// Run each VM as a jailed `veil run --jail` process (namespaces, empty root,
    /// unprivileged user, no capabilities); `false` runs it on a thread of the shim.
    pub jail: bool,
    /// The jailed VMM's user, `USER[:GROUP]` (names or numbers).
    pub jail_user: String,
    /// The `veil` binary for jailed VMs (found next to the shim, then on PATH, when unset).
    pub veil: Option<PathBuf>,
}

/// `[process]`: how process sandboxes are built.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSection {
    /// The `veil-agent` binary (found next to the shim, then on PATH, when unset).
    pub agent: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sandbox: SandboxKind::Vm,
            state_dir: PathBuf::from("/run/veil-shim"),
            image_cache_dir: PathBuf::from("/var/lib/veil-shim/images"),
            verity: None,
            agent_start_timeout_secs: 60,
            vm: VmSection::default(),
            process: ProcessSection::default(),
        }
    }
}

impl Default for VmSection {
    fn default() -> Self {
        Self {
            kernel: PathBuf::from("/usr/share/veil/vmlinux"),
            initrd: PathBuf::from("/usr/share/veil/initramfs.cpio.gz"),
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            max_containers: 8,
            cpu_template: "host".into(),
            snp: false,
            igvm: None,
            snp_policy: None,
            jail: true,
            jail_user: "nobody".into(),
            veil: None,
        }
    }
}

impl Config {
    /// Reads `path`; when `path` is the default and does not exist, returns the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses and checks the text of a config file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |what: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if config.vm.vcpus == 0 {
            return Err(invalid("vm.vcpus must be at least 1"));
        }
        if config.vm.max_containers == 0 {
            return Err(invalid("vm.max_containers must be at least 1"));
        }
        if config.agent_start_timeout_secs == 0 {
            return Err(invalid("agent_start_timeout_secs must be at least 1"));
        }
        if !config.state_dir.is_absolute() || !config.image_cache_dir.is_absolute() {
            return Err(invalid(
                "state_dir and image_cache_dir must be absolute paths",
            ));
        }
        Ok(config)
    }

    /// Whether images get a dm-verity tree.
    pub fn verity(&self) -> bool {
        self.verity.unwrap_or(self.sandbox == SandboxKind::Vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/veil/shim.toml"))
    }

    #[test]
    fn empty_file_gives_vm_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.sandbox, SandboxKind::Vm);
        assert!(c.verity());
        assert_eq!(c.vm.vcpus, 1);
    }

    #[test]
    fn process_sandbox_turns_verity_off_by_default() {
        let c = parse("sandbox = \"process\"\n[process]\nagent = \"/bin/veil-agent\"\n").unwrap();
        assert_eq!(c.sandbox, SandboxKind::Process);
        assert!(!c.verity());
        assert_eq!(
            c.process.agent.as_deref(),
            Some(Path::new("/bin/veil-agent"))
        );
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused_with_the_path() {
        let err = parse("sandboxx = \"vm\"").unwrap_err().to_string();
        assert!(
            err.contains("/etc/veil/shim.toml") && err.contains("sandboxx"),
            "{err}"
        );
        let err = parse("sandbox = \"container\"").unwrap_err().to_string();
        assert!(err.contains("container"), "{err}");
    }

    #[test]
    fn zero_vcpus_and_relative_dirs_are_refused() {
        assert!(parse("[vm]\nvcpus = 0").is_err());
        assert!(parse("state_dir = \"run\"").is_err());
    }

    #[test]
    fn an_explicit_missing_file_is_an_error_the_default_is_not() {
        let err = Config::load(Some(Path::new("/nonexistent/veil.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/veil.toml"), "{err}");
    }
}
