//! Development backend for hosts without SEV-SNP: HOST_DATA comes from configuration.
//! It proves nothing, so every use says so in the log.

use super::{
    AttestationError, AttestationReport, AttestationSource, HOST_DATA_LEN, REPORT_DATA_LEN,
};

/// An unsigned report with a configured HOST_DATA. INSECURE: for development only.
#[derive(Debug, Clone)]
pub struct InsecureDevelopment {
    host_data: [u8; HOST_DATA_LEN],
}

impl InsecureDevelopment {
    /// Creates the backend; logs that the agent is running without attestation.
    pub fn new(host_data: [u8; HOST_DATA_LEN]) -> Self {
        tracing::warn!(
            "INSECURE development attestation backend: HOST_DATA comes from configuration, not from SEV-SNP firmware"
        );
        Self { host_data }
    }
}

impl AttestationSource for InsecureDevelopment {
    fn name(&self) -> &'static str {
        "insecure-development"
    }

    fn report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<AttestationReport, AttestationError> {
        tracing::warn!("INSECURE: serving an unsigned development attestation report (no SEV-SNP)");
        Ok(AttestationReport::unsigned(report_data, &self.host_data))
    }
}
