//! configfs-tsm reports (`Documentation/ABI/testing/configfs-tsm`): make a report directory,
//! write REPORT_DATA to `inblob`, read the report from `outblob`, remove the directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{AttestationError, AttestationReport, AttestationSource, REPORT_DATA_LEN};

/// Where configfs-tsm report entries are created.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// Reports through configfs-tsm; only the `sev_guest` provider is accepted.
#[derive(Debug)]
pub struct ConfigfsTsm {
    root: PathBuf,
    counter: AtomicU64,
}

impl Default for ConfigfsTsm {
    fn default() -> Self {
        Self::with_root(DEFAULT_ROOT)
    }
}

impl ConfigfsTsm {
    /// Uses `root` instead of the standard configfs location (tests use a plain directory).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            counter: AtomicU64::new(0),
        }
    }

    fn tsm_err(path: &Path, source: std::io::Error) -> AttestationError {
        AttestationError::Tsm {
            path: path.display().to_string(),
            source,
        }
    }

    fn read_in(
        &self,
        entry: &Path,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<AttestationReport, AttestationError> {
        let inblob = entry.join("inblob");
        fs::write(&inblob, report_data).map_err(|e| Self::tsm_err(&inblob, e))?;
        let provider_path = entry.join("provider");
        let provider =
            fs::read_to_string(&provider_path).map_err(|e| Self::tsm_err(&provider_path, e))?;
        if provider.trim() != "sev_guest" {
            return Err(AttestationError::TsmProvider(provider.trim().to_string()));
        }
        let outblob = entry.join("outblob");
        let raw = fs::read(&outblob).map_err(|e| Self::tsm_err(&outblob, e))?;
        AttestationReport::from_bytes(raw)
    }
}

impl AttestationSource for ConfigfsTsm {
    fn name(&self) -> &'static str {
        "configfs-tsm"
    }

    fn report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<AttestationReport, AttestationError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let entry = self
            .root
            .join(format!("veil-agent-{}-{n}", std::process::id()));
        fs::create_dir(&entry).map_err(|e| Self::tsm_err(&entry, e))?;
        let result = self.read_in(&entry, report_data);
        // configfs removes the entry's attribute files itself; rmdir is all it takes.
        if let Err(e) = fs::remove_dir(&entry) {
            tracing::warn!(entry = %entry.display(), error = %e, "could not remove configfs-tsm entry");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_root_is_an_error_naming_the_entry() {
        let tsm = ConfigfsTsm::with_root("/nonexistent/tsm/report");
        let err = tsm.report(&[0; 64]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tsm/report"), "{err}");
    }
}
