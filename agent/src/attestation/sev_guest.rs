//! `/dev/sev-guest` SNP_GET_REPORT (Linux `include/uapi/linux/sev-guest.h`).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use super::{AttestationError, AttestationReport, AttestationSource, REPORT_DATA_LEN, REPORT_LEN};

/// Where the kernel's sev-guest driver lives.
pub const DEFAULT_PATH: &str = "/dev/sev-guest";

/// `struct snp_report_req`.
#[repr(C)]
struct SnpReportReq {
    user_data: [u8; REPORT_DATA_LEN],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// `struct snp_report_resp`: the firmware's MSG_REPORT_RSP inside a 4000-byte buffer.
#[repr(C)]
struct SnpReportResp {
    data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
struct SnpGuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    /// `exitinfo2`, or { fw_error: u32, vmm_error: u32 } in the union.
    exitinfo2: u64,
}

/// `_IOWR('S', 0x0, struct snp_guest_request_ioctl)`.
const SNP_GET_REPORT: u64 =
    (3 << 30) | ((std::mem::size_of::<SnpGuestRequestIoctl>() as u64) << 16) | ((b'S' as u64) << 8);

/// MSG_REPORT_RSP header: status u32, report_size u32, 24 reserved bytes, then the report.
const RESP_HEADER_LEN: usize = 0x20;

/// Reports from the sev-guest character device at VMPL 0.
#[derive(Debug, Clone)]
pub struct SevGuestDevice {
    path: String,
}

impl Default for SevGuestDevice {
    fn default() -> Self {
        Self {
            path: DEFAULT_PATH.to_string(),
        }
    }
}

impl AttestationSource for SevGuestDevice {
    fn name(&self) -> &'static str {
        "sev-guest"
    }

    fn report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<AttestationReport, AttestationError> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|source| AttestationError::Open {
                path: self.path.clone(),
                source,
            })?;
        let req = SnpReportReq {
            user_data: *report_data,
            vmpl: 0,
            rsvd: [0; 28],
        };
        let mut resp = SnpReportResp { data: [0; 4000] };
        let mut arg = SnpGuestRequestIoctl {
            msg_version: 1,
            req_data: &req as *const SnpReportReq as u64,
            resp_data: &mut resp as *mut SnpReportResp as u64,
            exitinfo2: 0,
        };
        // SAFETY: `dev` is an open sev-guest fd; `arg` points at a correctly laid out
        // snp_guest_request_ioctl whose req/resp pointers reference live, correctly sized buffers
        // that outlive the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), SNP_GET_REPORT as _, &mut arg) };
        if rc != 0 {
            return Err(AttestationError::Ioctl {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
                fw_error: arg.exitinfo2 as u32,
                vmm_error: (arg.exitinfo2 >> 32) as u32,
            });
        }
        let status = u32::from_le_bytes([resp.data[0], resp.data[1], resp.data[2], resp.data[3]]);
        if status != 0 {
            return Err(AttestationError::FirmwareStatus(status));
        }
        let size = u32::from_le_bytes([resp.data[4], resp.data[5], resp.data[6], resp.data[7]]);
        let size = (size as usize).min(resp.data.len() - RESP_HEADER_LEN);
        if size < REPORT_LEN {
            return Err(AttestationError::ShortReport {
                got: size,
                want: REPORT_LEN,
            });
        }
        AttestationReport::from_bytes(resp.data[RESP_HEADER_LEN..RESP_HEADER_LEN + size].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_structs_match_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<SnpReportReq>(), 96);
        assert_eq!(std::mem::size_of::<SnpReportResp>(), 4000);
        assert_eq!(std::mem::size_of::<SnpGuestRequestIoctl>(), 32);
        assert_eq!(SNP_GET_REPORT, 0xC020_5300);
    }

    #[test]
    fn missing_device_is_an_open_error_naming_the_path() {
        let dev = SevGuestDevice {
            path: "/nonexistent/sev-guest".into(),
        };
        let err = dev.report(&[0; 64]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sev-guest"), "{err}");
    }
}
