//! Launching an IGVM guest the SEV-SNP way.
//!
//! Two firmware backends run the same sequence (`veil_snp::igvm::run_launch`):
//! - `Kvm`: real hardware. The host is checked first and a host without SEV-SNP is refused
//!   with the missing pieces named.
//! - `Model`: the clearly insecure software model of the firmware, for development and tests.
//!   It accumulates the launch digest exactly as the firmware would; the VMM then boots the
//!   same memory image as a normal (unencrypted) VM so the whole loader path runs.

use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, CpuId};
use veil_snp::cpuid_page::CpuidPage;
use veil_snp::firmware::model::InsecureModelFirmware;
use veil_snp::firmware::{FirmwareError, LaunchFinish};
use veil_snp::igvm::{load_igvm, run_launch, IgvmError, LaunchPlan, ParameterUse, PlanPage};
use veil_snp::kvm::{check_snp_host, SystemProbe};
use veil_snp::policy::{GuestPolicy, PolicyError};
use veil_snp::vmsa::{Segment, Vmsa};
use veil_snp::{PageType, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::x86_64::layout::ram_regions;

/// Largest IGVM file read.
const MAX_IGVM_BYTES: u64 = 1 << 30;
/// The guest policy most SNP stacks default to: SMT allowed, reserved bit 17 set.
pub const DEFAULT_POLICY: u64 = 0x30000;

/// Which firmware performs the launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpFirmware {
    /// The AMD secure processor, through KVM and `/dev/sev`.
    Kvm,
    /// The insecure software model (development and tests only).
    Model,
}

/// How to launch an SEV-SNP guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpConfig {
    pub firmware: SnpFirmware,
    /// Guest policy (validated: reserved bit 17 set, DEBUG refused).
    pub policy: u64,
    /// HOST_DATA given at LAUNCH_FINISH: the SHA-256 of the pod's policy / init data.
    pub host_data: [u8; 32],
    /// With the model: write a model-signed attestation report here (REPORT_DATA zero), and
    /// the model's public key next to it as `<path>.pub.pem`.
    pub model_report: Option<PathBuf>,
}

impl SnpConfig {
    /// A launch through KVM with the default policy and zero HOST_DATA.
    pub fn kvm_default() -> Self {
        Self {
            firmware: SnpFirmware::Kvm,
            policy: DEFAULT_POLICY,
            host_data: [0; 32],
            model_report: None,
        }
    }
}

/// Errors of an SNP launch.
#[derive(Debug, thiserror::Error)]
pub enum SnpLaunchError {
    #[error("cannot read IGVM file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("IGVM file {path} is larger than {MAX_IGVM_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("IGVM file {path}: {source}")]
    Igvm { path: PathBuf, source: IgvmError },
    /// The host check's own message names what is missing.
    #[error("{0}")]
    Host(String),
    #[error(
        "SEV-SNP launch through KVM is not implemented in the VMM yet (the host has what it \
         needs); use --snp-firmware model for development"
    )]
    KvmLaunchMissing,
    #[error("guest policy {policy:#x}: {source}")]
    Policy { policy: u64, source: PolicyError },
    #[error("the IGVM file needs guest RAM at {gpa:#x} (+{size:#x}) beyond the {mib} MiB configured; raise --mem-mib")]
    OutsideRam { gpa: u64, size: u64, mib: u64 },
    #[error("IGVM parameter area {index} asks for {what:?}, which Veil does not provide")]
    UnsupportedParameter { index: u32, what: ParameterUse },
    #[error("IGVM parameter area {index} is too small for its {what:?}")]
    ParameterTooSmall { index: u32, what: ParameterUse },
    #[error("building the CPUID page: {0}")]
    CpuidPage(String),
    #[error("launch (insecure model firmware): {0}")]
    Firmware(#[from] FirmwareError),
    #[error("writing the launch image to guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot write the model's attestation report to {path}: {reason}")]
    Report { path: PathBuf, reason: String },
}

/// What a model launch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLaunch {
    /// The launch digest, 96 lowercase hex characters.
    pub digest: String,
    /// Bytes put through LAUNCH_UPDATE with their contents measured.
    pub measured_bytes: u64,
    /// CPUID leaf 1 EAX of the vCPUs: KVM puts it in each AP's RDX (`veil measure --vcpu-sig`).
    pub vcpu_signature: u32,
}

/// The guest physical address width CPUID leaf 0x80000008 reports (36 when absent).
pub fn phys_address_bits(cpuid: &CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// Refuses a host that cannot run SEV-SNP guests, naming everything that is missing.
pub fn check_kvm_host() -> Result<(), SnpLaunchError> {
    check_snp_host(&SystemProbe::default()).map_err(|e| SnpLaunchError::Host(e.to_string()))
}

/// Reads and parses an IGVM file into a launch plan.
pub fn load_plan(path: &Path) -> Result<LaunchPlan, SnpLaunchError> {
    let read = |source| SnpLaunchError::Read {
        path: path.to_owned(),
        source,
    };
    if std::fs::metadata(path).map_err(read)?.len() > MAX_IGVM_BYTES {
        return Err(SnpLaunchError::TooLarge {
            path: path.to_owned(),
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    load_igvm(&bytes).map_err(|source| SnpLaunchError::Igvm {
        path: path.to_owned(),
        source,
    })
}

/// What the VMM provides to the plan's parameter areas.
pub struct GuestFacts<'a> {
    pub mem_bytes: u64,
    pub vcpus: u32,
    pub cmdline: &'a str,
    /// vCPU 0's CPUID, for the CPUID page.
    pub cpuid: &'a CpuId,
}

/// Lays the plan out in guest memory, runs LAUNCH_START/UPDATE/FINISH against the insecure
/// model and returns the digest it accumulated.
pub fn launch_with_model(
    mem: &GuestMemoryMmap,
    plan: &LaunchPlan,
    config: &SnpConfig,
    facts: &GuestFacts,
) -> Result<ModelLaunch, SnpLaunchError> {
    let policy =
        GuestPolicy::new(config.policy, false).map_err(|source| SnpLaunchError::Policy {
            policy: config.policy,
            source,
        })?;
    check_ram(plan, facts.mem_bytes)?;
    write_image(mem, plan, facts)?;

    let vcpu_signature = facts
        .cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .map_or(0, |e| e.eax);
    let vmsas = plan.vcpu_vmsas(facts.vcpus, vcpu_signature);
    let finish = LaunchFinish {
        id: plan.id.as_ref().map(|id| (id.block, id.auth.clone())),
        author_key_enabled: plan.id.as_ref().is_some_and(|id| id.author_key_enabled),
        host_data: config.host_data,
    };
    let mut firmware = InsecureModelFirmware::new();
    let mut store_err = None;
    run_launch(
        &mut firmware,
        plan,
        policy,
        &mut |page: &PlanPage| {
            let mut bytes = vec![0u8; PAGE_SIZE as usize];
            // Pages were written just above and checked to lie in RAM.
            let _ = mem.read_slice(&mut bytes, GuestAddress(page.gpa));
            bytes
        },
        &mut |gpa, data| {
            if let Err(e) = mem.write_slice(data, GuestAddress(gpa)) {
                store_err.get_or_insert(e);
            }
        },
        &vmsas,
        &finish,
    )?;
    if let Some(e) = store_err {
        return Err(e.into());
    }
    if let Some(path) = &config.model_report {
        write_model_report(&firmware, path)?;
    }
    Ok(ModelLaunch {
        digest: firmware.launch_digest().hex(),
        measured_bytes: plan.measured_bytes(),
        vcpu_signature,
    })
}

fn check_ram(plan: &LaunchPlan, mem_bytes: u64) -> Result<(), SnpLaunchError> {
    let regions = ram_regions(mem_bytes);
    let in_ram = |gpa: u64, size: u64| {
        regions
            .iter()
            .any(|&(start, len)| gpa >= start && gpa.saturating_add(size) <= start + len)
    };
    let pages = plan.pages.iter().map(|p| (p.gpa, PAGE_SIZE));
    let shared = plan
        .shared_pages
        .iter()
        .map(|(gpa, data)| (*gpa, data.len() as u64));
    for (gpa, size) in plan
        .required_memory
        .iter()
        .copied()
        .chain(pages)
        .chain(shared)
    {
        if !in_ram(gpa, size) {
            return Err(SnpLaunchError::OutsideRam {
                gpa,
                size,
                mib: mem_bytes >> 20,
            });
        }
    }
    Ok(())
}

/// Writes every page the way the VMM hands it to LAUNCH_UPDATE: NORMAL data, parameter
/// areas filled in, the CPUID page from the vCPUs' CPUID; ZERO and SECRETS pages stay zero
/// (the firmware fills the secrets page).
fn write_image(
    mem: &GuestMemoryMmap,
    plan: &LaunchPlan,
    facts: &GuestFacts,
) -> Result<(), SnpLaunchError> {
    for page in &plan.pages {
        match page.page_type {
            PageType::Normal => mem.write_slice(&page.data, GuestAddress(page.gpa))?,
            PageType::Cpuid => {
                let entries: Vec<_> = facts.cpuid.as_slice().to_vec();
                let cpuid = CpuidPage::from_kvm(&entries)
                    .map_err(|e| SnpLaunchError::CpuidPage(e.to_string()))?;
                mem.write_slice(&cpuid.to_page(), GuestAddress(page.gpa))?;
            }
            _ => {}
        }
    }
    for (gpa, data) in &plan.shared_pages {
        mem.write_slice(data, GuestAddress(*gpa))?;
    }
    for area in &plan.parameter_areas {
        let Some(gpa) = area.insert_gpa else { continue };
        let mut bytes = area.initial_data.clone();
        bytes.resize(area.size as usize, 0);
        for &(what, offset) in &area.uses {
            let value =
                parameter_bytes(what, facts).ok_or(SnpLaunchError::UnsupportedParameter {
                    index: area.index,
                    what,
                })?;
            let start = offset as usize;
            let dest = bytes.get_mut(start..start + value.len()).ok_or(
                SnpLaunchError::ParameterTooSmall {
                    index: area.index,
                    what,
                },
            )?;
            dest.copy_from_slice(&value);
        }
        mem.write_slice(&bytes, GuestAddress(gpa))?;
    }
    Ok(())
}

/// The bytes of one parameter, in IGVM's formats.
fn parameter_bytes(what: ParameterUse, facts: &GuestFacts) -> Option<Vec<u8>> {
    match what {
        ParameterUse::VpCount => Some(facts.vcpus.to_le_bytes().to_vec()),
        ParameterUse::CommandLine => {
            let mut bytes = facts.cmdline.as_bytes().to_vec();
            bytes.push(0);
            Some(bytes)
        }
        ParameterUse::MemoryMap => {
            // IGVM_VHS_MEMORY_MAP_ENTRY: start page u64, page count u64, type u16 (0 = RAM),
            // flags u16, reserved u32; a zero-length entry ends the list.
            let mut map = Vec::new();
            for (start, len) in ram_regions(facts.mem_bytes).into_iter().chain([(0, 0)]) {
                map.extend((start / PAGE_SIZE).to_le_bytes());
                map.extend((len / PAGE_SIZE).to_le_bytes());
                map.extend([0u8; 8]);
            }
            Some(map)
        }
        _ => None,
    }
}

fn write_model_report(firmware: &InsecureModelFirmware, path: &Path) -> Result<(), SnpLaunchError> {
    let fail = |reason: String| SnpLaunchError::Report {
        path: path.to_owned(),
        reason,
    };
    let report = firmware
        .attestation_report([0u8; 64], 0)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(path, report.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let mut pem_path = path.as_os_str().to_owned();
    pem_path.push(".pub.pem");
    let pem = firmware.public_key_pem().map_err(|e| fail(e.to_string()))?;
    std::fs::write(pem_path, pem).map_err(|e| fail(e.to_string()))
}

/// Converts a VMSA segment (attributes packed as in the VMCB) to KVM's form.
fn kvm_segment_of(seg: &Segment) -> kvm_segment {
    let a = seg.attrib;
    let present = (a >> 7) & 1;
    kvm_segment {
        base: seg.base,
        limit: seg.limit,
        selector: seg.selector,
        type_: (a & 0xf) as u8,
        s: ((a >> 4) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        present: present as u8,
        avl: ((a >> 8) & 1) as u8,
        l: ((a >> 9) & 1) as u8,
        db: ((a >> 10) & 1) as u8,
        g: ((a >> 11) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot vCPU's registers from the plan's VMSA, for running the image as a normal VM
/// (the model backend): CR3 keeps only the bits the host's physical address width allows,
/// since the C-bit an SNP image sets there is a reserved bit without SNP. The guest's page
/// tables keep their C-bits, so such a guest faults once it walks them: the launch path is
/// what runs here, not the SNP guest.
pub fn bsp_registers(vmsa: &Vmsa, mut sregs: kvm_sregs, phys_bits: u8) -> (kvm_regs, kvm_sregs) {
    let [r8, r9, r10, r11, r12, r13, r14, r15] = vmsa.r8_15;
    let regs = kvm_regs {
        rax: vmsa.rax,
        rbx: vmsa.rbx,
        rcx: vmsa.rcx,
        rdx: vmsa.rdx,
        rsi: vmsa.rsi,
        rdi: vmsa.rdi,
        rsp: vmsa.rsp,
        rbp: vmsa.rbp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip: vmsa.rip,
        // Bit 1 of RFLAGS is always set.
        rflags: vmsa.rflags | 0x2,
    };
    sregs.cs = kvm_segment_of(&vmsa.cs);
    sregs.ds = kvm_segment_of(&vmsa.ds);
    sregs.es = kvm_segment_of(&vmsa.es);
    sregs.fs = kvm_segment_of(&vmsa.fs);
    sregs.gs = kvm_segment_of(&vmsa.gs);
    sregs.ss = kvm_segment_of(&vmsa.ss);
    sregs.tr = kvm_segment_of(&vmsa.tr);
    sregs.ldt = kvm_segment_of(&vmsa.ldtr);
    sregs.gdt.base = vmsa.gdtr.base;
    sregs.gdt.limit = vmsa.gdtr.limit as u16;
    sregs.idt.base = vmsa.idtr.base;
    sregs.idt.limit = vmsa.idtr.limit as u16;
    sregs.cr0 = vmsa.cr0;
    sregs.cr3 = vmsa.cr3 & ((1u64 << phys_bits.clamp(32, 52)) - 1);
    sregs.cr4 = vmsa.cr4;
    // EFER.SVME is KVM's business on SNP, not the guest's.
    sregs.efer = vmsa.efer & !(1 << 12);
    (regs, sregs)
}
