//! AMD SEV-SNP support for Veil: guest policy, launch digest (PAGE_INFO chain), the VMSA as
//! KVM builds it, the CPUID page, OVMF expected measurements, attestation reports, the launch
//! firmware trait with its KVM and insecure software-model backends. The command line over
//! it is the `veil` package's (`veil/src/snp/`).

pub mod cpu_types;
pub mod cpuid_page;
pub mod digest;
pub mod firmware;
pub mod hex;
pub mod igvm;
pub mod kvm;
pub mod manifest;
pub mod ovmf;
pub mod page_info;
pub mod policy;
pub mod report;
pub mod vmsa;
pub mod x86_boot;

pub use digest::{DigestError, LaunchDigest};
pub use page_info::{PageInfo, PageType, DIGEST_SIZE, PAGE_SIZE, VMSA_GPA};
pub use policy::{GuestPolicy, PolicyError};
