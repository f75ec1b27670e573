//! Launching an IGVM guest the SEV-SNP way.
//!
//! Two firmware backends run the same sequence (`veil_snp::igvm::run_launch`):
//! - `Kvm` ([`kvm`]): real hardware. The host is checked first and a host without SEV-SNP is
//!   refused with the missing pieces named; then an SNP VM with guest_memfd-backed RAM is
//!   launched through KVM and runs encrypted.
//! - `Model` ([`model`]): the clearly insecure software model of the firmware, for development
//!   and tests. It accumulates the launch digest exactly as the firmware would; the VMM then
//!   boots the same memory image as a normal (unencrypted) VM so the whole loader path runs.

pub mod image;
pub mod kvm;
pub mod model;
pub mod vcpu_state;

use std::path::{Path, PathBuf};

use kvm_bindings::CpuId;
use veil_snp::firmware::{FirmwareError, LaunchFinish};
use veil_snp::igvm::{load_igvm, IgvmError, LaunchPlan, ParameterUse, PlanPage};
use veil_snp::kvm::{check_snp_host, SystemProbe};
use veil_snp::policy::{GuestPolicy, PolicyError};
use veil_snp::vmsa::Vmsa;
use veil_snp::PAGE_SIZE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Largest IGVM file read.
const MAX_IGVM_BYTES: u64 = 1 << 30;

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
    /// Guest policy (validated: reserved bit 17 set, DEBUG refused); `None` takes the IGVM
    /// file's own (an ID block in the file signs that one).
    pub policy: Option<u64>,
    /// HOST_DATA given at LAUNCH_FINISH: the SHA-256 of the pod's policy / init data.
    pub host_data: [u8; 32],
    /// With the model: write a model-signed attestation report here (REPORT_DATA zero), and
    /// the model's public key next to it as `<path>.pub.pem`.
    pub model_report: Option<PathBuf>,
}

impl SnpConfig {
    /// A launch through KVM with the file's policy and zero HOST_DATA.
    pub fn kvm_default() -> Self {
        Self {
            firmware: SnpFirmware::Kvm,
            policy: None,
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
    #[error("cannot open {path} for the SEV-SNP launch: {source}")]
    DevSev {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KVM refused to {action}: {source}")]
    Kvm {
        action: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("computing the expected launch digest: {0}")]
    ExpectedDigest(IgvmError),
    #[error(transparent)]
    VmsaFeatures(#[from] veil_snp::kvm::VmsaFeaturesError),
    #[error(transparent)]
    VcpuState(#[from] vcpu_state::VcpuStateError),
    #[error("discarding the host copy of launched page(s) at {gpa:#x}+{size:#x} failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    Discard { gpa: u64, size: u64, errno: i32 },
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
    #[error("SNP launch ({firmware} firmware): {source}")]
    Firmware {
        firmware: &'static str,
        source: FirmwareError,
    },
    #[error("writing the launch image to guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot write the model's attestation report to {path}: {reason}")]
    Report { path: PathBuf, reason: String },
}

/// What a launch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpLaunch {
    pub firmware: SnpFirmware,
    /// The launch digest, 96 lowercase hex characters: the one the model accumulated, or for
    /// KVM the one Veil expects the secure processor to have computed (as `veil measure
    /// --igvm` does); the guest's attestation report carries the real one.
    pub digest: String,
    /// Bytes put through LAUNCH_UPDATE with their contents measured.
    pub measured_bytes: u64,
    /// CPUID leaf 1 EAX of the vCPUs: KVM puts it in each AP's RDX (`veil measure --vcpu-sig`).
    pub vcpu_signature: u32,
    /// Device arguments (`virtio_mmio.device=...`) the guest does not get from the VMM,
    /// because the file takes no command line: its own, measured, command line must carry
    /// them or the guest will not find those devices.
    pub device_args_not_passed: Vec<String>,
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

/// What both backends need besides the plan: the validated policy, the vCPUs' VMSAs as KVM
/// will build them and the LAUNCH_FINISH arguments.
pub struct LaunchInputs {
    pub policy: GuestPolicy,
    /// CPUID leaf 1 EAX of the vCPUs.
    pub vcpu_signature: u32,
    /// One per vCPU, the boot vCPU first.
    pub vmsas: Vec<Vmsa>,
    pub finish: LaunchFinish,
}

impl LaunchInputs {
    /// Validates the policy and the plan's memory, and derives the vCPU state.
    pub fn new(
        plan: &LaunchPlan,
        config: &SnpConfig,
        facts: &GuestFacts,
    ) -> Result<Self, SnpLaunchError> {
        let raw = config.policy.unwrap_or(plan.policy);
        let policy = GuestPolicy::new(raw, false).map_err(|source| SnpLaunchError::Policy {
            policy: raw,
            source,
        })?;
        image::check_ram(plan, facts.mem_bytes)?;
        let vcpu_signature = facts
            .cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .map_or(0, |e| e.eax);
        Ok(Self {
            policy,
            vcpu_signature,
            vmsas: plan.vcpu_vmsas(facts.vcpus, vcpu_signature),
            finish: LaunchFinish {
                id: plan.id.as_ref().map(|id| (id.block, id.auth.clone())),
                author_key_enabled: plan.id.as_ref().is_some_and(|id| id.author_key_enabled),
                host_data: config.host_data,
            },
        })
    }
}

/// Reads a launched page back from the image written into `mem` (pages were checked to lie
/// in RAM, so the read cannot miss).
fn page_from(mem: &GuestMemoryMmap, page: &PlanPage) -> Vec<u8> {
    let mut bytes = vec![0u8; PAGE_SIZE as usize];
    let _ = mem.read_slice(&mut bytes, GuestAddress(page.gpa));
    bytes
}
