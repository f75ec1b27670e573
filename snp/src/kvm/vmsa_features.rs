//! Which SEV_FEATURES KVM lets a VMM put in every vCPU's VMSA. KVM_SEV_INIT2 refuses a bit it
//! does not support with a bare EINVAL, so Veil asks first (the `KVM_X86_SEV_VMSA_FEATURES`
//! attribute of /dev/kvm) and names the bits the IGVM file wants but the host lacks.

use std::os::fd::AsRawFd;

use kvm_bindings::{KVM_X86_GRP_SEV, KVM_X86_SEV_VMSA_FEATURES};

use super::uapi::{KVM_GET_DEVICE_ATTR, SVM_SEV_FEAT_SNP_ACTIVE};

/// The VMSA features asked for cannot be had on this host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmsaFeaturesError {
    #[error("cannot read the SEV_FEATURES KVM supports (KVM_GET_DEVICE_ATTR on /dev/kvm, group KVM_X86_GRP_SEV): {}", std::io::Error::from_raw_os_error(*.0))]
    Query(i32),
    #[error("the guest asks for SEV_FEATURES {requested:#x}, but KVM on this host supports only {supported:#x} (missing bits {missing:#x})")]
    Unsupported {
        requested: u64,
        supported: u64,
        missing: u64,
    },
}

/// KVM_GET_DEVICE_ATTR(KVM_X86_GRP_SEV, KVM_X86_SEV_VMSA_FEATURES) on the /dev/kvm fd.
pub fn supported_vmsa_features(kvm: &impl AsRawFd) -> Result<u64, VmsaFeaturesError> {
    let mut value: u64 = 0;
    let attr = kvm_bindings::kvm_device_attr {
        flags: 0,
        group: KVM_X86_GRP_SEV,
        attr: u64::from(KVM_X86_SEV_VMSA_FEATURES),
        addr: &mut value as *mut u64 as u64,
    };
    // SAFETY: KVM_GET_DEVICE_ATTR reads the kvm_device_attr we pass by reference and writes
    // one u64 to `addr`, which points at `value`; both outlive the call.
    let rc = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_DEVICE_ATTR as _, &attr) };
    if rc != 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(VmsaFeaturesError::Query(errno));
    }
    Ok(value)
}

/// Checks `requested` (the file's SEV_FEATURES) against what KVM supports. SNP_ACTIVE is
/// implied by the VM type and never reported as supported, so it is not asked for.
pub fn check_vmsa_features(requested: u64, supported: u64) -> Result<(), VmsaFeaturesError> {
    let missing = requested & !SVM_SEV_FEAT_SNP_ACTIVE & !supported;
    if missing == 0 {
        Ok(())
    } else {
        Err(VmsaFeaturesError::Unsupported {
            requested,
            supported,
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::uapi::SVM_SEV_FEAT_DEBUG_SWAP;

    #[test]
    fn snp_active_needs_no_support_and_other_bits_do() {
        assert_eq!(check_vmsa_features(SVM_SEV_FEAT_SNP_ACTIVE, 0), Ok(()));
        assert_eq!(
            check_vmsa_features(
                SVM_SEV_FEAT_SNP_ACTIVE | SVM_SEV_FEAT_DEBUG_SWAP,
                SVM_SEV_FEAT_DEBUG_SWAP
            ),
            Ok(())
        );
        let err = check_vmsa_features(0x1 | 0x20 | 0x80, 0x20).unwrap_err();
        assert_eq!(
            err,
            VmsaFeaturesError::Unsupported {
                requested: 0xa1,
                supported: 0x20,
                missing: 0x80
            }
        );
        assert!(err.to_string().contains("missing bits 0x80"), "{err}");
    }

    /// This host's KVM has no SEV: the query fails with the kernel's answer rather than
    /// claiming a feature set; an SEV host answers with a value.
    #[test]
    fn the_query_on_this_host_answers_or_names_the_failure() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            println!("skipped: /dev/kvm cannot be opened here");
            return;
        };
        match supported_vmsa_features(&kvm) {
            Ok(features) => println!("KVM supports SEV_FEATURES {features:#x}"),
            Err(e) => {
                assert!(matches!(e, VmsaFeaturesError::Query(_)));
                assert!(e.to_string().contains("KVM_X86_GRP_SEV"), "{e}");
            }
        }
    }
}
