//! The launch interface of the SNP firmware as the VMM drives it, with two backends:
//! [`kvm`] (real hardware through KVM) and [`model::InsecureModelFirmware`] (a software model
//! for development and tests, never a silent fallback).

pub mod id_block;
pub mod model;

pub use id_block::{IdAuthBlock, IdBlock, IdBlockError, ID_AUTH_SIZE, ID_BLOCK_SIZE};

use crate::digest::DigestError;
use crate::page_info::PageType;
use crate::policy::GuestPolicy;
use crate::vmsa::Vmsa;

/// What LAUNCH_FINISH takes besides the vCPUs.
#[derive(Clone, Debug, Default)]
pub struct LaunchFinish {
    /// ID block and its authentication block; both or neither.
    pub id: Option<(IdBlock, IdAuthBlock)>,
    /// Whether the auth block's author key signs the ID key (AUTHOR_KEY_EN).
    pub author_key_enabled: bool,
    /// 32 bytes the host binds to the guest; reported verbatim (Veil: SHA-256 of init data).
    pub host_data: [u8; 32],
}

/// Errors from a launch step.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("{step} is not allowed in launch state {state}")]
    WrongState {
        step: &'static str,
        state: &'static str,
    },
    #[error(
        "VMSA pages are added by the firmware at LAUNCH_FINISH, not by LAUNCH_UPDATE (GPA {0:#x})"
    )]
    VmsaUpdate(u64),
    #[error("page at GPA {0:#x} was already added to the guest")]
    PageAlreadyAdded(u64),
    #[error("a launch needs at least one vCPU")]
    NoVcpus,
    #[error("launch digest: {0}")]
    Digest(#[from] DigestError),
    #[error("ID block: {0}")]
    IdBlock(#[from] IdBlockError),
    #[error("signing the attestation report: {0}")]
    Signing(String),
    #[error("{op} failed: {} (firmware error {fw_error:#x})", std::io::Error::from_raw_os_error(*.errno))]
    Ioctl {
        op: &'static str,
        errno: i32,
        fw_error: u32,
    },
    #[error("{0}")]
    Limit(String),
}

/// The SNP launch sequence. Call order: `launch_start`, any number of `launch_update`,
/// `launch_finish`.
pub trait LaunchFirmware {
    /// A short name for logs ("kvm", "insecure-model").
    fn name(&self) -> &'static str;

    /// SNP_LAUNCH_START with the guest policy.
    fn launch_start(&mut self, policy: GuestPolicy) -> Result<(), FirmwareError>;

    /// SNP_LAUNCH_UPDATE: adds `data.len()` bytes (whole pages) at `gpa` as `page_type`.
    /// For NORMAL pages `data` is measured by content; for the other types only its
    /// extent counts, and ZERO/SECRETS pages get their contents from the firmware. A CPUID
    /// page that the firmware rejects is written back corrected into `data`.
    fn launch_update(
        &mut self,
        gpa: u64,
        page_type: PageType,
        data: &mut [u8],
    ) -> Result<(), FirmwareError>;

    /// SNP_LAUNCH_FINISH. `vcpus` is the register state of each vCPU in index order; KVM
    /// builds the VMSAs from the vCPUs themselves, the model measures these.
    fn launch_finish(&mut self, vcpus: &[Vmsa], finish: &LaunchFinish)
        -> Result<(), FirmwareError>;
}
