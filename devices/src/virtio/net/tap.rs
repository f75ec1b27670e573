//! The host side of the device: a tap with virtio-net headers, behind [`NetBackend`] so the
//! device model can be driven by anything that carries whole frames (tests use a datagram
//! socket pair).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetError, VNET_HDR_LEN};

/// Where frames (each with its 12-byte virtio-net header) come from and go to.
pub trait NetBackend: Send {
    /// The fd the event loop watches for incoming frames.
    fn fd(&self) -> RawFd;
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// `TUN_F_*` offloads the back end can deliver to the guest.
    fn supported_offloads(&self) -> u32;
    /// Limits the offloads in delivered frames to `flags` (a subset of the supported ones).
    fn set_offloads(&mut self, flags: u32) -> std::io::Result<()>;
}

/// The offload sets worth trying, most capable first: checksum plus TCP segmentation, then
/// checksum alone.
const OFFLOAD_PROBES: [u32; 2] = [
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
    libc::TUN_F_CSUM,
];

/// An attached tap interface.
pub struct Tap {
    file: File,
    name: String,
    offloads: u32,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a union member).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

impl Tap {
    /// Attaches to the existing tap `name` in the calling thread's network namespace,
    /// non-blocking, with 12-byte virtio-net headers and the richest offloads it accepts.
    pub fn open(name: &str) -> Result<Self, NetError> {
        if !valid_name(name) {
            return Err(NetError::BadTapName(name.to_string()));
        }
        let c_name = CString::new(name).map_err(|_| NetError::BadTapName(name.to_string()))?;
        // TUNSETIFF would create a missing tap; the device must only use one prepared for it.
        // SAFETY: `c_name` is a NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(NetError::TapMissing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| NetError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may update) an ifreq, which `req` is, laid out as the
        // kernel's (16-byte name, then a 24-byte union).
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(NetError::Attach {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr_len`.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(NetError::VnetHeader {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut tap = Self {
            file,
            name: name.to_string(),
            offloads: 0,
        };
        tap.offloads = OFFLOAD_PROBES
            .into_iter()
            .find(|&flags| tap.set_offloads(flags).is_ok())
            .unwrap_or(0);
        tracing::debug!(tap = name, offloads = tap.offloads, "tap attached");
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A tap read returns exactly one frame (truncated if `buf` is short).
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let written = self.file.write(frame)?;
        if written != frame.len() {
            return Err(std::io::Error::other(format!(
                "tap took {written} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    fn supported_offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offloads(&mut self, flags: u32) -> std::io::Result<()> {
        // TUNSETOFFLOAD takes the flags by value, as an unsigned long.
        // SAFETY: no memory is passed; the kernel only reads the integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
