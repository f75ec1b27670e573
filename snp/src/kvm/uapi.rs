//! Kernel UAPI for SEV-SNP guests: what `kvm-bindings` 0.14 / `kvm-ioctls` 0.25 do not provide,
//! and tests pinning the crates' structures to the kernel headers' layout.
//!
//! The SNP launch structures (`kvm_sev_cmd`, `kvm_sev_init`, `kvm_sev_snp_launch_start` /
//! `_update` / `_finish`), the private-memory ones (`kvm_memory_attributes`,
//! `kvm_create_guest_memfd`, `kvm_userspace_memory_region2`) and the KVM constants come from
//! `kvm_bindings`; the ioctls from `kvm_ioctls::VmFd` (`encrypt_op`, `set_memory_attributes`,
//! `create_guest_memfd`, `set_user_memory_region2`) and `Kvm::create_vm_with_type`.

/// `KVM_X86_SNP_VM` as `Kvm::create_vm_with_type` takes it (kvm-bindings has it as `u32`).
pub const KVM_X86_SNP_VM: u64 = kvm_bindings::KVM_X86_SNP_VM as u64;

/// Hypercall number an SNP guest uses to ask for a private/shared conversion
/// (include/uapi/linux/kvm_para.h). kvm-bindings 0.14 does not generate kvm_para.h.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// Attribute bits of KVM_HC_MAP_GPA_RANGE's third argument (kvm_para.h, missing likewise).
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0x3;
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;

/// SEV_FEATURES bits of the VMSA (arch/x86/include/asm/svm.h, a kernel-internal header that
/// kvm-bindings 0.14 does not generate). KVM's `KVM_X86_SEV_VMSA_FEATURES` attribute reports
/// the subset KVM_SEV_INIT2 accepts.
pub const SVM_SEV_FEAT_SNP_ACTIVE: u64 = 1 << 0;
pub const SVM_SEV_FEAT_DEBUG_SWAP: u64 = 1 << 5;

/// `_IOW(KVMIO, 0xe2, struct kvm_device_attr)` issued on /dev/kvm itself for the SEV group:
/// kvm-ioctls 0.25 offers KVM_GET_DEVICE_ATTR on vCPU and device fds only, not on `Kvm`.
pub const KVM_GET_DEVICE_ATTR: u64 = (1 << 30)
    | ((std::mem::size_of::<kvm_bindings::kvm_device_attr>() as u64) << 16)
    | (0xae << 8)
    | 0xe2;

#[cfg(test)]
mod tests {
    use kvm_bindings::*;
    use std::mem::{align_of, offset_of, size_of};

    // Sizes and offsets below are those of the C structures in the kernel UAPI headers
    // (linux/kvm.h, asm/kvm.h, Linux 6.11+): they check the crate's bindings, which the
    // launch hands to the kernel as they are.

    #[test]
    fn kvm_sev_cmd_layout() {
        assert_eq!(size_of::<kvm_sev_cmd>(), 24);
        assert_eq!(offset_of!(kvm_sev_cmd, id), 0);
        assert_eq!(offset_of!(kvm_sev_cmd, pad0), 4);
        assert_eq!(offset_of!(kvm_sev_cmd, data), 8);
        assert_eq!(offset_of!(kvm_sev_cmd, error), 16);
        assert_eq!(offset_of!(kvm_sev_cmd, sev_fd), 20);
    }

    #[test]
    fn kvm_sev_init_layout() {
        assert_eq!(size_of::<kvm_sev_init>(), 48);
        assert_eq!(align_of::<kvm_sev_init>(), 8);
        assert_eq!(offset_of!(kvm_sev_init, vmsa_features), 0);
        assert_eq!(offset_of!(kvm_sev_init, flags), 8);
        assert_eq!(offset_of!(kvm_sev_init, ghcb_version), 12);
        assert_eq!(offset_of!(kvm_sev_init, pad1), 14);
        assert_eq!(offset_of!(kvm_sev_init, pad2), 16);
    }

    #[test]
    fn launch_start_layout() {
        assert_eq!(size_of::<kvm_sev_snp_launch_start>(), 64);
        assert_eq!(offset_of!(kvm_sev_snp_launch_start, policy), 0);
        assert_eq!(offset_of!(kvm_sev_snp_launch_start, gosvw), 8);
        assert_eq!(offset_of!(kvm_sev_snp_launch_start, flags), 24);
        assert_eq!(offset_of!(kvm_sev_snp_launch_start, pad0), 26);
        assert_eq!(offset_of!(kvm_sev_snp_launch_start, pad1), 32);
    }

    #[test]
    fn launch_update_layout() {
        assert_eq!(size_of::<kvm_sev_snp_launch_update>(), 64);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, gfn_start), 0);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, uaddr), 8);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, len), 16);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, type_), 24);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, pad0), 25);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, flags), 26);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, pad1), 28);
        assert_eq!(offset_of!(kvm_sev_snp_launch_update, pad2), 32);
    }

    #[test]
    fn launch_finish_layout() {
        assert_eq!(size_of::<kvm_sev_snp_launch_finish>(), 88);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, id_block_uaddr), 0);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, id_auth_uaddr), 8);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, id_block_en), 16);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, auth_key_en), 17);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, vcek_disabled), 18);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, host_data), 19);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, pad0), 51);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, flags), 54);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, pad1), 56);
    }

    #[test]
    fn memory_attributes_and_guest_memfd_layout() {
        assert_eq!(size_of::<kvm_memory_attributes>(), 32);
        assert_eq!(offset_of!(kvm_memory_attributes, address), 0);
        assert_eq!(offset_of!(kvm_memory_attributes, size), 8);
        assert_eq!(offset_of!(kvm_memory_attributes, attributes), 16);
        assert_eq!(offset_of!(kvm_memory_attributes, flags), 24);
        assert_eq!(size_of::<kvm_create_guest_memfd>(), 64);
        assert_eq!(offset_of!(kvm_create_guest_memfd, flags), 8);
        assert_eq!(offset_of!(kvm_create_guest_memfd, reserved), 16);
    }

    #[test]
    fn memory_region2_layout() {
        assert_eq!(size_of::<kvm_userspace_memory_region2>(), 160);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, slot), 0);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, flags), 4);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, guest_phys_addr), 8);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, memory_size), 16);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, userspace_addr), 24);
        assert_eq!(
            offset_of!(kvm_userspace_memory_region2, guest_memfd_offset),
            32
        );
        assert_eq!(offset_of!(kvm_userspace_memory_region2, guest_memfd), 40);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, pad1), 44);
        assert_eq!(offset_of!(kvm_userspace_memory_region2, pad2), 48);
        assert_eq!(KVM_MEM_GUEST_MEMFD, 1 << 2);
    }

    #[test]
    fn ioctl_numbers_and_constants() {
        assert_eq!(super::KVM_GET_DEVICE_ATTR, 0x4018_aee2);
        assert_eq!(super::KVM_X86_SNP_VM, 4);
        assert_eq!(KVM_CAP_VM_TYPES, 235);
        assert_eq!(KVM_CAP_EXIT_HYPERCALL, 201);
        assert_eq!(KVM_CAP_MEMORY_ATTRIBUTES, 233);
        assert_eq!(KVM_X86_GRP_SEV, 1);
        assert_eq!(KVM_X86_SEV_VMSA_FEATURES, 0);
        assert_eq!(KVM_MEMORY_ATTRIBUTE_PRIVATE, 1 << 3);
        assert_eq!(KVM_MEMORY_EXIT_FLAG_PRIVATE, 1 << 3);
        assert_eq!(KVM_EXIT_HYPERCALL, 3);
        assert_eq!(KVM_EXIT_MEMORY_FAULT, 39);
        assert_eq!(sev_cmd_id_KVM_SEV_INIT2, 22);
        assert_eq!(sev_cmd_id_KVM_SEV_SNP_LAUNCH_START, 100);
        assert_eq!(sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE, 101);
        assert_eq!(sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH, 102);
    }
}
