//! The KVM backend for SEV-SNP: kernel UAPI structures, the host capability check, the launch
//! sequence through KVM_MEMORY_ENCRYPT_OP, and private/shared page conversion at run time.

pub mod guest_memory;
pub mod host_check;
pub mod launch;
pub mod page_state;
pub mod uapi;
pub mod vmsa_features;

pub use guest_memory::{enable_map_gpa_range_exits, KvmGuestMemory, PrivateRegion, StaleBacking};
pub use host_check::{check_snp_host, HostProbe, MissingPiece, SnpHostError, SystemProbe};
pub use launch::{KvmSevVm, KvmSnpFirmware, SevCommands, SevOpError};
pub use page_state::{MemoryBackend, PageStateError, PageStateHandler};
pub use vmsa_features::{check_vmsa_features, supported_vmsa_features, VmsaFeaturesError};
