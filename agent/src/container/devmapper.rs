//! Just enough device-mapper (`linux/dm-ioctl.h`) to create and remove one read-only
//! dm-verity device: DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND (resume), DM_DEV_REMOVE.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::verity::VerityParams;
use super::ContainerError;

/// The device-mapper control node.
pub const CONTROL: &str = "/dev/mapper/control";

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
const DM_READONLY_FLAG: u32 = 1 << 0;

/// `struct dm_ioctl`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const fn dm_iowr(nr: u64) -> u64 {
    (3 << 30) | ((std::mem::size_of::<DmIoctl>() as u64) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: u64 = dm_iowr(3);
const DM_DEV_REMOVE: u64 = dm_iowr(4);
const DM_DEV_SUSPEND: u64 = dm_iowr(6);
const DM_TABLE_LOAD: u64 = dm_iowr(9);

/// A dm-verity device this agent created, with a block node it made for it.
#[derive(Debug)]
pub struct VerityDevice {
    name: String,
    node: PathBuf,
}

impl VerityDevice {
    /// The block device node to mount.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// Creates `name` over `device` with `params`, and its node at `node`.
    pub fn create(
        name: &str,
        device: &Path,
        params: &VerityParams,
        node: &Path,
    ) -> Result<Self, ContainerError> {
        let dev = device.to_str().ok_or_else(|| ContainerError::InvalidPath {
            what: "verity device",
            path: device.display().to_string(),
        })?;
        let created = ioctl(DM_DEV_CREATE, name, 0, None)?;
        let this = Self {
            name: name.to_string(),
            node: node.to_path_buf(),
        };
        let table = params.table(dev);
        let setup = ioctl(
            DM_TABLE_LOAD,
            name,
            DM_READONLY_FLAG,
            Some((params.data_sectors(), "verity", &table)),
        )
        .and_then(|_| ioctl(DM_DEV_SUSPEND, name, 0, None))
        .and_then(|_| make_node(node, created.dev));
        match setup {
            Ok(()) => Ok(this),
            Err(e) => {
                this.remove();
                Err(e)
            }
        }
    }

    /// Removes the node and the device; best effort, logged.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.node);
        if let Err(e) = ioctl(DM_DEV_REMOVE, &self.name, 0, None) {
            tracing::warn!(device = %self.name, error = %e, "dm device not removed");
        }
    }
}

/// Whether device-mapper is available.
pub fn available() -> bool {
    Path::new(CONTROL).exists()
}

fn dm_err(op: &'static str, name: &str, source: std::io::Error) -> ContainerError {
    ContainerError::Io {
        op,
        path: format!("device-mapper device {name}"),
        source,
    }
}

/// Issues one DM ioctl, with an optional single target (sectors, type, params).
fn ioctl(
    cmd: u64,
    name: &str,
    flags: u32,
    target: Option<(u64, &str, &str)>,
) -> Result<DmIoctl, ContainerError> {
    if name.len() >= DM_NAME_LEN {
        return Err(ContainerError::InvalidSpec(format!(
            "dm name {name:?} too long"
        )));
    }
    let header_len = std::mem::size_of::<DmIoctl>();
    let spec_len = std::mem::size_of::<DmTargetSpec>();
    let params_len = target.map_or(0, |(_, _, p)| p.len() + 1);
    // Room for the header, one target with its NUL-terminated params (8-byte aligned), and
    // the kernel's output.
    let total = (header_len + spec_len + params_len).div_ceil(8) * 8 + 16 * 1024;
    let mut buf = vec![0u64; total / 8];
    let bytes: &mut [u8] =
        // SAFETY: a u64 buffer viewed as bytes; same allocation, length in bytes.
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), total) };
    let mut header = DmIoctl {
        version: [4, 0, 0],
        data_size: total as u32,
        data_start: header_len as u32,
        target_count: 0,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    header.name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some((sectors, kind, params)) = target {
        header.target_count = 1;
        let mut spec = DmTargetSpec {
            sector_start: 0,
            length: sectors,
            status: 0,
            next: 0,
            target_type: [0; DM_MAX_TYPE_NAME],
        };
        spec.target_type[..kind.len()].copy_from_slice(kind.as_bytes());
        // SAFETY: DmTargetSpec is plain old data; copy its bytes into the buffer after the
        // header, where the kernel expects it.
        let spec_bytes = unsafe {
            std::slice::from_raw_parts((&spec as *const DmTargetSpec).cast::<u8>(), spec_len)
        };
        bytes[header_len..header_len + spec_len].copy_from_slice(spec_bytes);
        let p = header_len + spec_len;
        bytes[p..p + params.len()].copy_from_slice(params.as_bytes());
    }
    // SAFETY: as above, for the header at the start of the buffer.
    let header_bytes =
        unsafe { std::slice::from_raw_parts((&header as *const DmIoctl).cast::<u8>(), header_len) };
    bytes[..header_len].copy_from_slice(header_bytes);

    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|e| dm_err("opening control for", name, e))?;
    // SAFETY: the buffer is `total` bytes, 8-byte aligned, starts with a valid dm_ioctl whose
    // data_size says `total`; the kernel writes only within it.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), cmd as _, buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(dm_err("ioctl on", name, std::io::Error::last_os_error()));
    }
    // SAFETY: the buffer starts with a dm_ioctl the kernel filled in.
    Ok(unsafe { std::ptr::read(buf.as_ptr().cast::<DmIoctl>()) })
}

/// Makes a block node for the kernel's encoded dev_t.
fn make_node(node: &Path, dev: u64) -> Result<(), ContainerError> {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    let path = super::sys::cstr(node).map_err(|e| ContainerError::io("naming", node, e))?;
    // SAFETY: mknod with a valid path string.
    let rc = unsafe {
        libc::mknod(
            path.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(major, minor),
        )
    };
    if rc != 0 {
        return Err(ContainerError::io(
            "creating device node",
            node,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<DmIoctl>(), 312);
        assert_eq!(std::mem::size_of::<DmTargetSpec>(), 40);
        assert_eq!(DM_DEV_CREATE, 0xC138_FD03);
        assert_eq!(DM_TABLE_LOAD, 0xC138_FD09);
    }
}
