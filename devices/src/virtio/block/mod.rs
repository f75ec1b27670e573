//! virtio-blk on a raw image file.
//!
//! Requests: read (IN), write (OUT), flush and get-id; anything else answers UNSUPP. A
//! read-only disk offers `VIRTIO_BLK_F_RO` and answers writes with IOERR. Capacity is the
//! file size in 512-byte sectors, rounded down; every request is bounds checked against it.
//! The backing file can be replaced at run time ([`Block::swap_backing_file`], then the
//! transport's config-change interrupt): this is how pods attach images to placeholder drives.

mod device;
mod request;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use device::Block;

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the serial the driver reads with GET_ID.
pub const ID_BYTES: usize = 20;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device understands FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// How to build a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Raw image; `None` makes an empty placeholder (capacity 0) until a file is swapped in.
    pub path: Option<PathBuf>,
    /// Refuse guest writes.
    pub read_only: bool,
    /// Serial returned by GET_ID (at most 20 bytes are used).
    pub id: String,
}

/// Errors of the block device's host side.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image file could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The image's size could not be read.
    #[error("cannot read the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The disk id does not fit the 20 bytes of GET_ID.
    #[error("disk id {id:?} is longer than {ID_BYTES} bytes")]
    IdTooLong { id: String },
}
