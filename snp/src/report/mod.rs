//! SNP attestation reports (AMD SNP ABI, MSG_REPORT_RSP "ATTESTATION_REPORT"): layout,
//! parsing, building and verification.

mod layout;
mod verify;

pub use layout::{AttestationReport, ReportBody, ReportError, REPORT_SIZE, SIGNED_LEN};
pub use verify::{vcek_verifying_key, verify_report, Expected, Generation, Problem, VerifyError};

/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only algorithm SNP defines.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
