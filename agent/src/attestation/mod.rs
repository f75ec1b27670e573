//! Where the agent gets its own attestation report from.
//!
//! The report binds the policy: HOST_DATA (set by the host at launch, measured by the PSP) must
//! equal SHA-256 of the policy the agent is asked to enforce. Backends: the kernel's
//! `/dev/sev-guest` ioctl, the configfs-tsm report interface, and an insecure development backend
//! for hosts without SNP. The SNP crate's software firmware model can implement
//! [`AttestationSource`] later without changes here.

mod configfs_tsm;
mod insecure;
mod report;
mod sev_guest;

pub use configfs_tsm::ConfigfsTsm;
pub use insecure::InsecureDevelopment;
pub use report::{AttestationReport, HOST_DATA_LEN, REPORT_DATA_LEN, REPORT_LEN};
pub use sev_guest::SevGuestDevice;

/// Errors from fetching an attestation report.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("SNP_GET_REPORT ioctl on {path} failed: {source} (firmware error {fw_error:#x}, vmm error {vmm_error:#x})")]
    Ioctl {
        path: String,
        source: std::io::Error,
        fw_error: u32,
        vmm_error: u32,
    },
    #[error("firmware answered SNP_GET_REPORT with status {0:#x}")]
    FirmwareStatus(u32),
    #[error("configfs-tsm {path}: {source}")]
    Tsm {
        path: String,
        source: std::io::Error,
    },
    #[error("configfs-tsm provider is {0:?}, expected \"sev_guest\"")]
    TsmProvider(String),
    #[error("report is {got} bytes, expected at least {want}")]
    ShortReport { got: usize, want: usize },
    #[error("REPORT_DATA is {0} bytes; at most 64 are allowed")]
    ReportDataTooLong(usize),
}

/// A source of this guest's attestation reports.
pub trait AttestationSource: Send + Sync {
    /// A short name for logs and for the attestation service's `source` field.
    fn name(&self) -> &'static str;
    /// Fetches a fresh report whose REPORT_DATA is `report_data`.
    fn report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<AttestationReport, AttestationError>;
}

/// Pads caller-chosen REPORT_DATA to 64 bytes; longer input is refused (never truncated, or two
/// different nonces could yield the same report).
pub fn pad_report_data(data: &[u8]) -> Result<[u8; REPORT_DATA_LEN], AttestationError> {
    if data.len() > REPORT_DATA_LEN {
        return Err(AttestationError::ReportDataTooLong(data.len()));
    }
    let mut out = [0u8; REPORT_DATA_LEN];
    out[..data.len()].copy_from_slice(data);
    Ok(out)
}

/// Picks the first hardware backend that exists on this guest, if any.
pub fn detect_hardware() -> Option<Box<dyn AttestationSource>> {
    if std::path::Path::new(sev_guest::DEFAULT_PATH).exists() {
        return Some(Box::new(SevGuestDevice::default()));
    }
    if std::path::Path::new(configfs_tsm::DEFAULT_ROOT).exists() {
        return Some(Box::new(ConfigfsTsm::default()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_is_zero_padded() {
        let padded = pad_report_data(b"abc").unwrap();
        assert_eq!(&padded[..3], b"abc");
        assert!(padded[3..].iter().all(|b| *b == 0));
    }

    #[test]
    fn report_data_longer_than_64_is_refused() {
        let err = pad_report_data(&[1u8; 65]).unwrap_err();
        assert!(err.to_string().contains("65 bytes"), "{err}");
    }
}
