//! The SEV-SNP launch through KVM, and page conversion while the guest runs.
//!
//! Order matters and follows KVM's rules:
//! 1. `KVM_CREATE_VM(KVM_X86_SNP_VM)`, then `KVM_SEV_INIT2` with the file's SEV_FEATURES
//!    (checked first against what KVM supports), before any vCPU exists;
//!    `KVM_CAP_EXIT_HYPERCALL` so the guest's page-state changes reach the VMM.
//! 2. Guest RAM with a guest_memfd per region (`memory.rs`).
//! 3. vCPUs created and loaded with the VMSAs the launch digest assumes (`vcpu_state.rs`).
//! 4. LAUNCH_START / UPDATE / FINISH ([`SnpKvm::launch`]); KVM builds and measures each
//!    vCPU's VMSA at FINISH, after which the vCPUs' state is the guest's alone.
//! 5. The host copies of launched pages are dropped: the guest sees only the private ones.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VmFd};
use veil_snp::firmware::LaunchFirmware;
use veil_snp::igvm::{run_launch, LaunchPlan};
use veil_snp::kvm::uapi::KVM_X86_SNP_VM;
use veil_snp::kvm::{
    check_vmsa_features, enable_map_gpa_range_exits, supported_vmsa_features, KvmGuestMemory,
    KvmSevVm, KvmSnpFirmware, PageStateError, PageStateHandler, StaleBacking,
};
use veil_snp::PAGE_SIZE;

use super::{image, page_from, GuestFacts, LaunchInputs, SnpFirmware, SnpLaunch, SnpLaunchError};
use crate::memory::GuestRam;
use crate::x86_64::layout::ram_regions;

/// The AMD secure processor's device, which every launch command names.
const DEV_SEV: &str = "/dev/sev";

/// An open `/dev/sev`, for the launch commands.
pub struct SnpKvm {
    sev: File,
}

impl SnpKvm {
    /// Opens `/dev/sev` read-write, as KVM requires of the fd passed with each command.
    pub fn open() -> Result<Self, SnpLaunchError> {
        let sev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEV_SEV)
            .map_err(|source| SnpLaunchError::DevSev {
                path: PathBuf::from(DEV_SEV),
                source,
            })?;
        Ok(Self { sev })
    }

    fn firmware<'a>(
        &self,
        vm_fd: &'a VmFd,
    ) -> Result<KvmSnpFirmware<KvmSevVm<'a>>, SnpLaunchError> {
        let sev = self
            .sev
            .try_clone()
            .map_err(|source| SnpLaunchError::DevSev {
                path: PathBuf::from(DEV_SEV),
                source,
            })?;
        Ok(KvmSnpFirmware::new(KvmSevVm::new(vm_fd, sev)))
    }

    /// Creates the SNP VM and initializes it for the plan's SEV_FEATURES; no vCPU may exist
    /// yet.
    pub fn create_vm(&self, kvm: &Kvm, plan: &LaunchPlan) -> Result<VmFd, SnpLaunchError> {
        let supported = supported_vmsa_features(kvm)?;
        check_vmsa_features(plan.sev_features, supported)?;
        let vm_fd =
            kvm.create_vm_with_type(KVM_X86_SNP_VM)
                .map_err(|source| SnpLaunchError::Kvm {
                    action: "create an SEV-SNP VM (KVM_CREATE_VM type KVM_X86_SNP_VM)",
                    source,
                })?;
        self.firmware(&vm_fd)?
            .init(plan.sev_features)
            .map_err(|source| SnpLaunchError::Firmware {
                firmware: "KVM",
                source,
            })?;
        enable_map_gpa_range_exits(&vm_fd).map_err(|errno| SnpLaunchError::Kvm {
            action: "send KVM_HC_MAP_GPA_RANGE hypercalls to the VMM (KVM_CAP_EXIT_HYPERCALL)",
            source: kvm_ioctls::Error::new(errno),
        })?;
        Ok(vm_fd)
    }

    /// Runs LAUNCH_START / UPDATE / FINISH for the plan. The vCPUs must exist and hold
    /// `inputs.vmsas`' state: KVM measures them at FINISH.
    pub fn launch(
        &self,
        vm_fd: &VmFd,
        ram: &GuestRam,
        plan: &LaunchPlan,
        inputs: &LaunchInputs,
        facts: &GuestFacts,
    ) -> Result<SnpLaunch, SnpLaunchError> {
        launch_through(&mut self.firmware(vm_fd)?, ram, plan, inputs, facts)
    }
}

/// The launch sequence of [`SnpKvm::launch`] through any firmware backend (tests run it
/// against the model with real guest_memfd-backed RAM).
fn launch_through(
    firmware: &mut dyn LaunchFirmware,
    ram: &GuestRam,
    plan: &LaunchPlan,
    inputs: &LaunchInputs,
    facts: &GuestFacts,
) -> Result<SnpLaunch, SnpLaunchError> {
    let mem = ram.mmap();
    image::write_image(mem, plan, facts)?;
    run_launch(
        firmware,
        plan,
        inputs.policy,
        &mut |page| page_from(mem, page),
        // KVM copies each page into the private memory; the shared copy is dropped below.
        &mut |_, _| {},
        &inputs.vmsas,
        &inputs.finish,
    )
    .map_err(|source| SnpLaunchError::Firmware {
        firmware: "KVM",
        source,
    })?;
    drop_host_copies(ram, plan)?;
    let digest = plan
        .launch_digest(facts.vcpus, inputs.vcpu_signature)
        .map_err(SnpLaunchError::ExpectedDigest)?;
    Ok(SnpLaunch {
        firmware: SnpFirmware::Kvm,
        digest: hex::encode(digest),
        measured_bytes: plan.measured_bytes(),
        vcpu_signature: inputs.vcpu_signature,
        device_args_not_passed: Vec::new(),
    })
}

/// Frees the shared-side copy of every launched page: those ranges are private now, and the
/// host copy (which held the image before LAUNCH_UPDATE) must neither linger nor cost memory.
fn drop_host_copies(ram: &GuestRam, plan: &LaunchPlan) -> Result<(), SnpLaunchError> {
    // SAFETY: the regions are `ram`'s own mappings and guest_memfds, alive for this call; the
    // launched ranges are private, so their shared pages are no longer the guest's.
    let stale = unsafe { StaleBacking::new(ram.private_regions()) };
    for (gpa, size) in page_runs(plan) {
        stale
            .discard(gpa, size, true)
            .map_err(|errno| SnpLaunchError::Discard { gpa, size, errno })?;
    }
    Ok(())
}

/// The plan's pages as contiguous (GPA, size) runs.
fn page_runs(plan: &LaunchPlan) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for page in &plan.pages {
        match runs.last_mut() {
            Some((start, size)) if *start + *size == page.gpa => *size += PAGE_SIZE,
            _ => runs.push((page.gpa, PAGE_SIZE)),
        }
    }
    runs
}

/// Converts guest pages between private and shared when a running SNP guest asks
/// (KVM_EXIT_HYPERCALL) or touches a page in the other state (KVM_EXIT_MEMORY_FAULT).
/// Shared by the vCPU threads.
pub struct PageConverter {
    handler: PageStateHandler,
    memory: Mutex<KvmGuestMemory>,
}

impl PageConverter {
    /// # Safety
    /// `ram` must outlive the converter (the Vm drops its vCPU state before its RAM).
    pub unsafe fn new(vm_fd: Arc<VmFd>, ram: &GuestRam, mem_bytes: u64) -> Self {
        // SAFETY: the caller keeps `ram`'s mappings and guest_memfds alive for our lifetime;
        // a range's shared pages are discarded only once it is private, and the other way round.
        let stale = unsafe { StaleBacking::new(ram.private_regions()) };
        Self {
            handler: PageStateHandler::new(ram_regions(mem_bytes)),
            memory: Mutex::new(KvmGuestMemory::new(vm_fd, stale)),
        }
    }

    /// KVM_EXIT_HYPERCALL: returns the value for the guest's result register.
    pub fn hypercall(&self, nr: u64, args: [u64; 6]) -> Result<u64, PageStateError> {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        self.handler.handle_hypercall(&mut *memory, nr, args)
    }

    /// KVM_EXIT_MEMORY_FAULT: the access's kind (private or shared) wins.
    pub fn memory_fault(&self, gpa: u64, size: u64, flags: u64) -> Result<(), PageStateError> {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        self.handler
            .handle_memory_fault(&mut *memory, gpa, size, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_snp::igvm::PlanPage;
    use veil_snp::vmsa::Vmsa;
    use veil_snp::PageType;

    fn page(gpa: u64) -> PlanPage {
        PlanPage {
            gpa,
            page_type: PageType::Zero,
            data: Vec::new(),
        }
    }

    #[test]
    fn launched_pages_group_into_contiguous_runs() {
        let plan = LaunchPlan {
            policy: 0x30000,
            pages: [0x1000, 0x2000, 0x3000, 0x10_0000, 0x10_1000, 0x5000]
                .into_iter()
                .map(page)
                .collect(),
            shared_pages: Vec::new(),
            parameter_areas: Vec::new(),
            bsp: Vmsa::default(),
            sev_features: 1,
            required_memory: Vec::new(),
            id: None,
        };
        assert_eq!(
            page_runs(&plan),
            vec![(0x1000, 0x3000), (0x10_0000, 0x2000), (0x5000, 0x1000)]
        );
    }

    /// The KVM path's sequence, run against the model firmware on guest_memfd-backed RAM of
    /// this host's KVM: the digest is the one `veil measure` expects, the host copies of the
    /// launched pages are gone afterwards, and host-visible pages stay.
    #[test]
    fn launch_sequence_measures_the_plan_and_drops_host_copies() {
        use crate::memory::RamBacking;
        use crate::snp_launch::SnpConfig;
        use veil_snp::firmware::model::InsecureModelFirmware;
        use vm_memory::{Bytes, GuestAddress};

        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        let Ok(ram) = GuestRam::create(&vm, 16, RamBacking::SharedAndPrivate) else {
            println!("skipped: this KVM has no guest_memfd");
            return;
        };
        let normal = |gpa: u64, byte: u8| PlanPage {
            gpa,
            page_type: PageType::Normal,
            data: vec![byte; PAGE_SIZE as usize],
        };
        let mut pages = vec![normal(0x10_0000, 0xaa), normal(0x10_1000, 0xbb)];
        pages.extend((0x20_0000..0x30_0000).step_by(PAGE_SIZE as usize).map(page));
        let plan = LaunchPlan {
            policy: 0x30000,
            pages,
            shared_pages: vec![(0x40_0000, vec![0x5a; 64])],
            parameter_areas: Vec::new(),
            bsp: Vmsa::qemu_reset(veil_snp::vmsa::RESET_EIP, 1, 0),
            sev_features: 1,
            required_memory: Vec::new(),
            id: None,
        };
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let facts = GuestFacts {
            mem_bytes: 16 << 20,
            vcpus: 2,
            cmdline: "",
            cpuid: &cpuid,
        };
        let config = SnpConfig {
            firmware: SnpFirmware::Model,
            ..SnpConfig::kvm_default()
        };
        let inputs = LaunchInputs::new(&plan, &config, &facts).unwrap();
        let mut model = InsecureModelFirmware::new();
        let launch = launch_through(&mut model, &ram, &plan, &inputs, &facts).unwrap();

        let expected = plan.launch_digest(2, inputs.vcpu_signature).unwrap();
        assert_eq!(launch.digest, hex::encode(expected));
        assert_eq!(model.launch_digest().hex(), launch.digest);
        assert_eq!(launch.measured_bytes, 2 * PAGE_SIZE);

        let mem = ram.mmap();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        mem.read_slice(&mut page, GuestAddress(0x10_0000)).unwrap();
        assert!(
            page.iter().all(|&b| b == 0),
            "host copy of a launched page kept"
        );
        let mut shared = [0u8; 64];
        mem.read_slice(&mut shared, GuestAddress(0x40_0000))
            .unwrap();
        assert_eq!(shared, [0x5a; 64], "host-visible page lost");
    }

    /// This host has no /dev/sev: opening it names the device (on an SNP host it opens).
    #[test]
    fn opening_the_sev_device_names_it_when_absent() {
        match SnpKvm::open() {
            Ok(_) => println!("/dev/sev opened: this is an SEV host"),
            Err(e) => assert!(e.to_string().contains("/dev/sev"), "{e}"),
        }
    }
}
