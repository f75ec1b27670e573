//! Does this host support SNP guests? Everything missing is named, so `veil run --snp` can
//! fail with one clear message before creating anything.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use kvm_bindings::{KVM_CAP_VM_TYPES, KVM_X86_SNP_VM};

/// One prerequisite the host lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MissingPiece {
    /// The SEV firmware device cannot be opened.
    DevSev { path: PathBuf, why: String },
    /// KVM itself cannot be opened.
    Kvm { why: String },
    /// KVM does not list the SNP VM type in KVM_CAP_VM_TYPES.
    SnpVmType { vm_types: u64 },
}

impl fmt::Display for MissingPiece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingPiece::DevSev { path, why } => {
                write!(f, "{} is not available ({why})", path.display())
            }
            MissingPiece::Kvm { why } => write!(f, "/dev/kvm is not available ({why})"),
            MissingPiece::SnpVmType { vm_types } => write!(
                f,
                "KVM_CAP_VM_TYPES is {vm_types:#x}: SNP (KVM_X86_SNP_VM, bit {KVM_X86_SNP_VM}) is not among the VM types KVM supports"
            ),
        }
    }
}

/// The host cannot launch SNP guests.
#[derive(Debug, thiserror::Error)]
#[error("this host cannot launch SEV-SNP guests: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct SnpHostError(pub Vec<MissingPiece>);

/// Where the capability facts come from (the real host, or a fake in tests).
pub trait HostProbe {
    /// Opens the SEV device read-write, as the launch will.
    fn open_dev_sev(&self) -> Result<(), String>;
    fn dev_sev_path(&self) -> &Path;
    /// KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES) on /dev/kvm.
    fn kvm_vm_types(&self) -> Result<u64, String>;
}

/// The real host.
pub struct SystemProbe {
    pub dev_sev: PathBuf,
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self {
            dev_sev: PathBuf::from("/dev/sev"),
        }
    }
}

impl HostProbe for SystemProbe {
    fn open_dev_sev(&self) -> Result<(), String> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.dev_sev)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn dev_sev_path(&self) -> &Path {
        &self.dev_sev
    }

    fn kvm_vm_types(&self) -> Result<u64, String> {
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| e.to_string())?;
        let value = kvm.check_extension_raw(KVM_CAP_VM_TYPES as libc::c_ulong);
        // Kernels without the capability answer 0: only the default VM type then.
        Ok(u64::try_from(value).unwrap_or(0))
    }
}

/// Checks every prerequisite and names all that are missing.
pub fn check_snp_host(probe: &dyn HostProbe) -> Result<(), SnpHostError> {
    let mut missing = Vec::new();
    if let Err(why) = probe.open_dev_sev() {
        missing.push(MissingPiece::DevSev {
            path: probe.dev_sev_path().to_path_buf(),
            why,
        });
    }
    match probe.kvm_vm_types() {
        Ok(types) if types & (1 << KVM_X86_SNP_VM) != 0 => {}
        Ok(types) => missing.push(MissingPiece::SnpVmType { vm_types: types }),
        Err(why) => missing.push(MissingPiece::Kvm { why }),
    }
    if missing.is_empty() {
        Ok(())
    } else {
        tracing::error!("SNP host check failed: {missing:?}");
        Err(SnpHostError(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        sev: Result<(), String>,
        types: Result<u64, String>,
    }

    impl HostProbe for Fake {
        fn open_dev_sev(&self) -> Result<(), String> {
            self.sev.clone()
        }
        fn dev_sev_path(&self) -> &Path {
            Path::new("/dev/sev")
        }
        fn kvm_vm_types(&self) -> Result<u64, String> {
            self.types.clone()
        }
    }

    #[test]
    fn snp_capable_host_passes() {
        let probe = Fake {
            sev: Ok(()),
            types: Ok(0x1 | 0x4 | 0x8 | 0x10),
        };
        assert!(check_snp_host(&probe).is_ok());
    }

    #[test]
    fn every_missing_piece_is_named() {
        let probe = Fake {
            sev: Err("No such file or directory".into()),
            types: Ok(0x1),
        };
        let err = check_snp_host(&probe).unwrap_err();
        assert_eq!(err.0.len(), 2);
        let msg = err.to_string();
        assert!(
            msg.contains("/dev/sev is not available (No such file"),
            "{msg}"
        );
        assert!(msg.contains("KVM_CAP_VM_TYPES is 0x1"), "{msg}");

        let probe = Fake {
            sev: Ok(()),
            types: Err("Permission denied".into()),
        };
        let msg = check_snp_host(&probe).unwrap_err().to_string();
        assert!(
            msg.contains("/dev/kvm") && !msg.contains("/dev/sev"),
            "{msg}"
        );
    }

    /// The real host: the check must fail cleanly and name exactly what is missing, or pass
    /// on SNP hardware.
    #[test]
    fn this_host_reports_what_is_missing() {
        let probe = SystemProbe::default();
        let sev_present = probe.open_dev_sev().is_ok();
        match check_snp_host(&probe) {
            Ok(()) => println!("this host supports SNP; nothing is missing"),
            Err(err) => {
                let msg = err.to_string();
                println!("{msg}");
                assert_eq!(msg.contains("/dev/sev"), !sev_present, "{msg}");
                assert!(
                    msg.contains("KVM_CAP_VM_TYPES") || msg.contains("/dev/kvm") || !sev_present,
                    "{msg}"
                );
                assert!(err.0.iter().all(
                    |m| !matches!(m, MissingPiece::SnpVmType { vm_types } if vm_types & 0x10 != 0)
                ));
            }
        }
    }
}
