//! AMD SEV-SNP support for Veil: guest policy, launch digest (PAGE_INFO chain), VMSA model,
//! OVMF expected measurements, attestation reports, and the launch firmware backends.

pub mod digest;
pub mod firmware;
pub mod hex;
pub mod page_info;
pub mod policy;

pub use digest::{DigestError, LaunchDigest};
pub use page_info::{PageInfo, PageType, DIGEST_SIZE, PAGE_SIZE, VMSA_GPA};
pub use policy::{GuestPolicy, PolicyError};
pub mod cpu_types;
pub mod kvm;
pub mod ovmf;
pub mod report;
pub mod vmsa;
