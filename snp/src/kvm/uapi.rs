//! Kernel UAPI for SEV-SNP guests (linux/kvm.h and asm/kvm.h, Linux 6.11+): structures passed
//! through KVM_MEMORY_ENCRYPT_OP and the private-memory ioctls, with their numbers.
//! Layouts are pinned by tests against the sizes and offsets the kernel header defines.

/// VM type for KVM_CREATE_VM.
pub const KVM_X86_SNP_VM: u64 = 4;
/// KVM_CHECK_EXTENSION: bitmap of supported VM types.
pub const KVM_CAP_VM_TYPES: u64 = 235;
pub const KVM_CAP_EXIT_HYPERCALL: u32 = 201;
pub const KVM_CAP_MEMORY_ATTRIBUTES: u64 = 233;
/// `kvm_memory_attributes.attributes` bit marking a range private.
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;
/// `kvm_run.memory_fault.flags` bit: the faulting access was private.
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
pub const KVM_EXIT_HYPERCALL: u32 = 3;
pub const KVM_EXIT_MEMORY_FAULT: u32 = 39;
/// Hypercall number an SNP guest uses to ask for a private/shared conversion
/// (include/uapi/linux/kvm_para.h; missing from kvm-bindings).
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// Attribute bits of KVM_HC_MAP_GPA_RANGE's third argument.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0x3;
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;

/// `enum sev_cmd_id` values used for SNP.
pub const KVM_SEV_INIT2: u32 = 22;
pub const KVM_SEV_SNP_LAUNCH_START: u32 = 100;
pub const KVM_SEV_SNP_LAUNCH_UPDATE: u32 = 101;
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = 102;

/// SEV_FEATURES bits KVM accepts in `kvm_sev_init.vmsa_features` (arch/x86/include/uapi/asm/kvm.h
/// `KVM_X86_SEV_VMSA_FEATURES` attribute reports the supported subset).
pub const SVM_SEV_FEAT_SNP_ACTIVE: u64 = 1 << 0;
pub const SVM_SEV_FEAT_DEBUG_SWAP: u64 = 1 << 5;

const KVMIO: u64 = 0xae;
const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (KVMIO << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// `_IOW(KVMIO, 0xe2, struct kvm_device_attr)`, issued on /dev/kvm itself for the SEV group.
pub const KVM_GET_DEVICE_ATTR: u64 = ioc(IOC_WRITE, 0xe2, 24);
/// `kvm_device_attr.group` of the SEV attributes on /dev/kvm (asm/kvm.h).
pub const KVM_X86_GRP_SEV: u32 = 1;
/// The SEV attribute reporting which SEV_FEATURES KVM_SEV_INIT2 accepts.
pub const KVM_X86_SEV_VMSA_FEATURES: u64 = 0;
/// `_IOWR(KVMIO, 0xba, unsigned long)`
pub const KVM_MEMORY_ENCRYPT_OP: u64 = ioc(IOC_READ | IOC_WRITE, 0xba, 8);
/// `_IOW(KVMIO, 0xd2, struct kvm_memory_attributes)`
pub const KVM_SET_MEMORY_ATTRIBUTES: u64 = ioc(IOC_WRITE, 0xd2, 32);
/// `_IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)`
pub const KVM_CREATE_GUEST_MEMFD: u64 = ioc(IOC_READ | IOC_WRITE, 0xd4, 64);
/// `_IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)`
pub const KVM_SET_USER_MEMORY_REGION2: u64 = ioc(IOC_WRITE, 0x49, 160);

/// `struct kvm_sev_cmd`: the argument of KVM_MEMORY_ENCRYPT_OP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmSevCmd {
    pub id: u32,
    pub pad0: u32,
    /// Userspace address of the command's structure.
    pub data: u64,
    /// Firmware error code (SEV_RET_*), set by KVM.
    pub error: u32,
    /// The `/dev/sev` file descriptor.
    pub sev_fd: u32,
}

/// `struct kvm_sev_init` for KVM_SEV_INIT2.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmSevInit {
    pub vmsa_features: u64,
    pub flags: u32,
    pub ghcb_version: u16,
    pub pad1: u16,
    pub pad2: [u32; 8],
}

/// `struct kvm_sev_snp_launch_start`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmSevSnpLaunchStart {
    pub policy: u64,
    /// Guest OS visible workarounds.
    pub gosvw: [u8; 16],
    pub flags: u16,
    pub pad0: [u8; 6],
    pub pad1: [u64; 4],
}

/// `struct kvm_sev_snp_launch_update`. KVM advances `gfn_start`/`uaddr` and decreases `len`
/// as it processes pages, so a partially processed call is simply issued again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmSevSnpLaunchUpdate {
    pub gfn_start: u64,
    pub uaddr: u64,
    pub len: u64,
    pub page_type: u8,
    pub pad0: u8,
    pub flags: u16,
    pub pad1: u32,
    pub pad2: [u64; 4],
}

/// `struct kvm_sev_snp_launch_finish`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmSevSnpLaunchFinish {
    pub id_block_uaddr: u64,
    pub id_auth_uaddr: u64,
    pub id_block_en: u8,
    pub auth_key_en: u8,
    pub vcek_disabled: u8,
    pub host_data: [u8; 32],
    pub pad0: [u8; 3],
    pub flags: u16,
    pub pad1: [u64; 4],
}

/// `struct kvm_memory_attributes` for KVM_SET_MEMORY_ATTRIBUTES.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmMemoryAttributes {
    pub address: u64,
    pub size: u64,
    pub attributes: u64,
    pub flags: u64,
}

/// `struct kvm_create_guest_memfd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmCreateGuestMemfd {
    pub size: u64,
    pub flags: u64,
    pub reserved: [u64; 6],
}

/// `KVM_MEM_GUEST_MEMFD` flag of `kvm_userspace_memory_region2`.
pub const KVM_MEM_GUEST_MEMFD: u32 = 1 << 2;

/// `struct kvm_userspace_memory_region2` for KVM_SET_USER_MEMORY_REGION2: a memslot whose
/// private side lives in a guest_memfd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmUserspaceMemoryRegion2 {
    pub slot: u32,
    pub flags: u32,
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
    pub guest_memfd_offset: u64,
    pub guest_memfd: u32,
    pub pad1: u32,
    pub pad2: [u64; 14],
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    // Sizes and offsets below are those of the C structures in the kernel UAPI headers.

    #[test]
    fn kvm_sev_cmd_layout() {
        assert_eq!(size_of::<KvmSevCmd>(), 24);
        assert_eq!(offset_of!(KvmSevCmd, id), 0);
        assert_eq!(offset_of!(KvmSevCmd, pad0), 4);
        assert_eq!(offset_of!(KvmSevCmd, data), 8);
        assert_eq!(offset_of!(KvmSevCmd, error), 16);
        assert_eq!(offset_of!(KvmSevCmd, sev_fd), 20);
        assert_eq!(
            size_of::<KvmSevCmd>(),
            size_of::<kvm_bindings::kvm_sev_cmd>()
        );
    }

    #[test]
    fn kvm_sev_init_layout() {
        assert_eq!(size_of::<KvmSevInit>(), 48);
        assert_eq!(align_of::<KvmSevInit>(), 8);
        assert_eq!(offset_of!(KvmSevInit, vmsa_features), 0);
        assert_eq!(offset_of!(KvmSevInit, flags), 8);
        assert_eq!(offset_of!(KvmSevInit, ghcb_version), 12);
        assert_eq!(offset_of!(KvmSevInit, pad1), 14);
        assert_eq!(offset_of!(KvmSevInit, pad2), 16);
        assert_eq!(
            size_of::<KvmSevInit>(),
            size_of::<kvm_bindings::kvm_sev_init>()
        );
    }

    #[test]
    fn launch_start_layout() {
        assert_eq!(size_of::<KvmSevSnpLaunchStart>(), 64);
        assert_eq!(offset_of!(KvmSevSnpLaunchStart, policy), 0);
        assert_eq!(offset_of!(KvmSevSnpLaunchStart, gosvw), 8);
        assert_eq!(offset_of!(KvmSevSnpLaunchStart, flags), 24);
        assert_eq!(offset_of!(KvmSevSnpLaunchStart, pad0), 26);
        assert_eq!(offset_of!(KvmSevSnpLaunchStart, pad1), 32);
        assert_eq!(
            size_of::<KvmSevSnpLaunchStart>(),
            size_of::<kvm_bindings::kvm_sev_snp_launch_start>()
        );
    }

    #[test]
    fn launch_update_layout() {
        assert_eq!(size_of::<KvmSevSnpLaunchUpdate>(), 64);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, gfn_start), 0);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, uaddr), 8);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, len), 16);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, page_type), 24);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, pad0), 25);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, flags), 26);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, pad1), 28);
        assert_eq!(offset_of!(KvmSevSnpLaunchUpdate, pad2), 32);
        assert_eq!(
            size_of::<KvmSevSnpLaunchUpdate>(),
            size_of::<kvm_bindings::kvm_sev_snp_launch_update>()
        );
    }

    #[test]
    fn launch_finish_layout() {
        assert_eq!(size_of::<KvmSevSnpLaunchFinish>(), 88);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, id_block_uaddr), 0);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, id_auth_uaddr), 8);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, id_block_en), 16);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, auth_key_en), 17);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, vcek_disabled), 18);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, host_data), 19);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, pad0), 51);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, flags), 54);
        assert_eq!(offset_of!(KvmSevSnpLaunchFinish, pad1), 56);
        assert_eq!(
            size_of::<KvmSevSnpLaunchFinish>(),
            size_of::<kvm_bindings::kvm_sev_snp_launch_finish>()
        );
    }

    #[test]
    fn memory_attributes_and_guest_memfd_layout() {
        assert_eq!(size_of::<KvmMemoryAttributes>(), 32);
        assert_eq!(offset_of!(KvmMemoryAttributes, address), 0);
        assert_eq!(offset_of!(KvmMemoryAttributes, size), 8);
        assert_eq!(offset_of!(KvmMemoryAttributes, attributes), 16);
        assert_eq!(offset_of!(KvmMemoryAttributes, flags), 24);
        assert_eq!(size_of::<KvmCreateGuestMemfd>(), 64);
        assert_eq!(offset_of!(KvmCreateGuestMemfd, flags), 8);
        assert_eq!(offset_of!(KvmCreateGuestMemfd, reserved), 16);
        assert_eq!(
            size_of::<KvmMemoryAttributes>(),
            size_of::<kvm_bindings::kvm_memory_attributes>()
        );
    }

    #[test]
    fn memory_region2_layout() {
        assert_eq!(size_of::<KvmUserspaceMemoryRegion2>(), 160);
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, slot), 0);
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, flags), 4);
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, guest_phys_addr), 8);
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, memory_size), 16);
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, userspace_addr), 24);
        assert_eq!(
            offset_of!(KvmUserspaceMemoryRegion2, guest_memfd_offset),
            32
        );
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, guest_memfd), 40);
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, pad1), 44);
        assert_eq!(offset_of!(KvmUserspaceMemoryRegion2, pad2), 48);
        assert_eq!(
            size_of::<KvmUserspaceMemoryRegion2>(),
            size_of::<kvm_bindings::kvm_userspace_memory_region2>()
        );
        assert_eq!(KVM_MEM_GUEST_MEMFD, kvm_bindings::KVM_MEM_GUEST_MEMFD);
    }

    #[test]
    fn ioctl_numbers() {
        assert_eq!(KVM_MEMORY_ENCRYPT_OP, 0xc008_aeba);
        assert_eq!(KVM_SET_MEMORY_ATTRIBUTES, 0x4020_aed2);
        // _IOW(KVMIO, 0xe2, struct kvm_device_attr), the struct being 24 bytes.
        assert_eq!(KVM_GET_DEVICE_ATTR, 0x4018_aee2);
        assert_eq!(size_of::<kvm_bindings::kvm_device_attr>(), 24);
        assert_eq!(KVM_CREATE_GUEST_MEMFD, 0xc040_aed4);
        assert_eq!(KVM_SET_USER_MEMORY_REGION2, 0x40a0_ae49);
        assert_eq!(
            KVM_SET_USER_MEMORY_REGION2 >> 16 & 0x3fff,
            std::mem::size_of::<kvm_bindings::kvm_userspace_memory_region2>() as u64
        );
    }

    #[test]
    fn constants_agree_with_kvm_bindings() {
        assert_eq!(KVM_X86_SNP_VM, u64::from(kvm_bindings::KVM_X86_SNP_VM));
        assert_eq!(KVM_CAP_VM_TYPES, u64::from(kvm_bindings::KVM_CAP_VM_TYPES));
        assert_eq!(KVM_CAP_EXIT_HYPERCALL, kvm_bindings::KVM_CAP_EXIT_HYPERCALL);
        assert_eq!(KVM_X86_GRP_SEV, kvm_bindings::KVM_X86_GRP_SEV);
        assert_eq!(
            KVM_X86_SEV_VMSA_FEATURES,
            u64::from(kvm_bindings::KVM_X86_SEV_VMSA_FEATURES)
        );
        assert_eq!(
            KVM_MEMORY_ATTRIBUTE_PRIVATE,
            u64::from(kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE)
        );
        assert_eq!(
            KVM_MEMORY_EXIT_FLAG_PRIVATE,
            u64::from(kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE)
        );
        assert_eq!(KVM_EXIT_MEMORY_FAULT, kvm_bindings::KVM_EXIT_MEMORY_FAULT);
        assert_eq!(KVM_EXIT_HYPERCALL, kvm_bindings::KVM_EXIT_HYPERCALL);
        assert_eq!(
            KVM_SEV_SNP_LAUNCH_UPDATE,
            kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE
        );
        assert_eq!(KVM_SEV_INIT2, kvm_bindings::sev_cmd_id_KVM_SEV_INIT2);
    }
}
