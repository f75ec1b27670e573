//! The few fields of an SEV-SNP attestation report the agent reads.

use super::AttestationError;

/// Size of an SNP attestation report (ABI spec, table "ATTESTATION_REPORT").
pub const REPORT_LEN: usize = 0x4A0;
/// Size of the caller-chosen REPORT_DATA field.
pub const REPORT_DATA_LEN: usize = 64;
/// Size of HOST_DATA.
pub const HOST_DATA_LEN: usize = 32;

const REPORT_DATA_OFFSET: usize = 0x50;
const HOST_DATA_OFFSET: usize = 0xC0;

/// A raw report, at least [`REPORT_LEN`] bytes long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationReport {
    raw: Vec<u8>,
}

impl AttestationReport {
    /// Wraps raw report bytes; refuses anything shorter than a report.
    pub fn from_bytes(raw: Vec<u8>) -> Result<Self, AttestationError> {
        if raw.len() < REPORT_LEN {
            return Err(AttestationError::ShortReport {
                got: raw.len(),
                want: REPORT_LEN,
            });
        }
        Ok(Self { raw })
    }

    /// The raw bytes, as the firmware produced them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// HOST_DATA: the SHA-256 of the pod's policy, set by the host at launch.
    pub fn host_data(&self) -> [u8; HOST_DATA_LEN] {
        let mut out = [0u8; HOST_DATA_LEN];
        out.copy_from_slice(&self.raw[HOST_DATA_OFFSET..HOST_DATA_OFFSET + HOST_DATA_LEN]);
        out
    }

    /// REPORT_DATA: what the requester asked to be bound into the report.
    pub fn report_data(&self) -> [u8; REPORT_DATA_LEN] {
        let mut out = [0u8; REPORT_DATA_LEN];
        out.copy_from_slice(&self.raw[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + REPORT_DATA_LEN]);
        out
    }

    /// Builds a report layout with the given fields and everything else zero (no signature).
    /// Used by the development backend and tests.
    pub fn unsigned(report_data: &[u8; REPORT_DATA_LEN], host_data: &[u8; HOST_DATA_LEN]) -> Self {
        let mut raw = vec![0u8; REPORT_LEN];
        raw[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + REPORT_DATA_LEN].copy_from_slice(report_data);
        raw[HOST_DATA_OFFSET..HOST_DATA_OFFSET + HOST_DATA_LEN].copy_from_slice(host_data);
        Self { raw }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_at_the_spec_offsets() {
        let mut raw = vec![0u8; REPORT_LEN];
        raw[0x50] = 0xAA;
        raw[0x8F] = 0xAB;
        raw[0xC0] = 0x11;
        raw[0xDF] = 0x22;
        let report = AttestationReport::from_bytes(raw).unwrap();
        assert_eq!(report.report_data()[0], 0xAA);
        assert_eq!(report.report_data()[63], 0xAB);
        assert_eq!(report.host_data()[0], 0x11);
        assert_eq!(report.host_data()[31], 0x22);
    }

    #[test]
    fn short_report_is_refused() {
        let err = AttestationReport::from_bytes(vec![0; 100]).unwrap_err();
        assert!(err.to_string().contains("100 bytes"), "{err}");
    }
}
