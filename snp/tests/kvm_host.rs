//! The KVM backend against this host's real KVM: on a host without SNP every step fails
//! cleanly with the ioctl and errno named, and nothing panics.

use std::path::Path;

use veil_snp::firmware::{FirmwareError, LaunchFirmware};
use veil_snp::kvm::uapi::KVM_X86_SNP_VM;
use veil_snp::kvm::{check_snp_host, KvmSevVm, KvmSnpFirmware, SystemProbe};
use veil_snp::{GuestPolicy, PageType};

fn kvm() -> Option<kvm_ioctls::Kvm> {
    if !Path::new("/dev/kvm").exists() {
        println!("skipped: /dev/kvm is not present");
        return None;
    }
    Some(kvm_ioctls::Kvm::new().expect("open /dev/kvm"))
}

#[test]
fn snp_vm_type_is_refused_without_snp() {
    let Some(kvm) = kvm() else { return };
    if check_snp_host(&SystemProbe::default()).is_ok() {
        println!("skipped: this host supports SNP");
        return;
    }
    let err = kvm.create_vm_with_type(KVM_X86_SNP_VM).unwrap_err();
    println!("KVM_CREATE_VM(KVM_X86_SNP_VM): {err}");
    assert_eq!(err.errno(), libc::EINVAL);
}

#[test]
fn encrypt_ops_on_a_plain_vm_fail_with_the_ioctl_named() {
    let Some(kvm) = kvm() else { return };
    if check_snp_host(&SystemProbe::default()).is_ok() {
        println!("skipped: this host supports SNP; the launch itself is exercised by the VMM");
        return;
    }
    let vm = kvm.create_vm().expect("default VM");
    // Any fd stands in for /dev/sev: KVM refuses the command before looking at it.
    let sev = std::fs::File::open("/dev/null").unwrap();
    let mut fw = KvmSnpFirmware::new(KvmSevVm::new(&vm, sev));
    match fw.init(0) {
        Err(FirmwareError::Ioctl { op, errno, .. }) => {
            assert_eq!(op, "KVM_SEV_INIT2");
            assert!(
                errno == libc::ENOTTY || errno == libc::EINVAL,
                "errno {errno}"
            );
        }
        other => panic!("expected an ioctl error, got {other:?}"),
    }
    let err = fw.launch_start(GuestPolicy::default()).unwrap_err();
    assert!(
        err.to_string().contains("KVM_SEV_SNP_LAUNCH_START"),
        "{err}"
    );
    // LAUNCH_UPDATE never started, so it is refused before any ioctl.
    assert!(matches!(
        fw.launch_update(0, PageType::Normal, &mut [0u8; 4096]),
        Err(FirmwareError::WrongState { .. })
    ));
}
