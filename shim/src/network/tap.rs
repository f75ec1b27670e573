//! The pod's tap: a persistent tap made in the pod's namespace, which the VMM attaches to by
//! name and which outlives the shim's own fd until the sandbox removes it.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use super::NetworkError;

/// `struct ifreq` with the flags member, as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the persistent tap `name` in the calling thread's network namespace.
pub(crate) fn create(name: &str) -> Result<(), NetworkError> {
    let fail = |source| NetworkError::Tap {
        name: name.to_string(),
        source,
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(fail(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(fail)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        // Attachable by the VMM with IFF_VNET_HDR (a per-attachment flag).
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and updates an ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}
