//! Parsing and executing one virtio-blk request (virtio 1.2, 5.2.6).
//!
//! The chain is `header (device-readable, 16 bytes) | data | status (1 device-writable byte)`,
//! and the header and data may be split over any number of descriptors. Everything in it
//! comes from the guest: lengths, directions and sectors are checked before any I/O, and every
//! guest-memory access goes through bounds-checked slices of guest memory.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Reader, Writer};

use super::{ID_BYTES, SECTOR_SIZE};
use crate::virtio::GuestMemory;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status byte values.
pub(crate) const VIRTIO_BLK_S_OK: u8 = 0;
pub(crate) const VIRTIO_BLK_S_IOERR: u8 = 1;
pub(crate) const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Bytes copied per host I/O call; bounds the bounce buffer whatever the guest asks for.
const CHUNK: usize = 64 * 1024;

/// The host side of a disk.
pub(crate) struct Disk {
    pub file: Option<File>,
    pub sectors: u64,
    pub read_only: bool,
    pub id: Vec<u8>,
}

/// Why a request failed; logged, and answered with IOERR or UNSUPP.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("request header is shorter than 16 bytes")]
    ShortHeader,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("{0} request has buffers in the wrong direction")]
    WrongDirection(&'static str),
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(usize),
    #[error("sectors {sector}+{len} bytes run past the disk's {sectors} sectors")]
    OutOfBounds {
        sector: u64,
        len: usize,
        sectors: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("no backing file attached")]
    NoMedium,
    #[error("get-id buffer of {0} bytes is too small")]
    ShortIdBuffer(usize),
    #[error("host I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// Executes the request in `chain`; returns the number of bytes written into guest buffers
/// (the used length). A chain the device cannot even answer (no writable status byte, or a
/// buffer outside guest memory on the writable side) is returned with length 0.
pub(crate) fn execute(
    disk: &mut Disk,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> u32 {
    let head = chain.head_index();
    let mut writer = match Writer::new(mem, chain.clone()) {
        Ok(writer) => writer,
        Err(e) => {
            tracing::warn!(head, "virtio-blk chain dropped, bad writable buffers: {e}");
            return 0;
        }
    };
    let Some(status_at) = writer.available_bytes().checked_sub(1) else {
        tracing::warn!(head, "virtio-blk chain dropped, no status byte");
        return 0;
    };
    let mut status_writer = match writer.split_at(status_at) {
        Ok(status_writer) => status_writer,
        Err(e) => {
            tracing::warn!(head, "virtio-blk chain dropped: {e}");
            return 0;
        }
    };
    let result = match Reader::new(mem, chain) {
        Ok(mut reader) => run(disk, &mut reader, &mut writer),
        Err(e) => Err(RequestError::Io(std::io::Error::other(e.to_string()))),
    };
    let status = match result {
        Ok(()) => VIRTIO_BLK_S_OK,
        Err(e) => {
            tracing::debug!(head, "virtio-blk request failed: {e}");
            e.status()
        }
    };
    if let Err(e) = status_writer.write_all(&[status]) {
        tracing::warn!(head, "cannot write virtio-blk status: {e}");
        return 0;
    }
    // Bounded by the chain's total length, which the queue library keeps below 2^32.
    u32::try_from(writer.bytes_written() + 1).unwrap_or(u32::MAX)
}

fn run(disk: &mut Disk, reader: &mut Reader, data_out: &mut Writer) -> Result<(), RequestError> {
    let mut header = [0u8; 16];
    reader
        .read_exact(&mut header)
        .map_err(|_| RequestError::ShortHeader)?;
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    match kind {
        VIRTIO_BLK_T_IN => {
            if reader.available_bytes() != 0 {
                return Err(RequestError::WrongDirection("read"));
            }
            let len = data_out.available_bytes();
            let file = checked_file(disk, sector, len)?;
            read_disk(file, sector * SECTOR_SIZE, len, data_out)
        }
        VIRTIO_BLK_T_OUT => {
            if data_out.available_bytes() != 0 {
                return Err(RequestError::WrongDirection("write"));
            }
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let len = reader.available_bytes();
            let file = checked_file(disk, sector, len)?;
            write_disk(file, sector * SECTOR_SIZE, len, reader)
        }
        VIRTIO_BLK_T_FLUSH => match &disk.file {
            Some(file) if !disk.read_only => Ok(file.sync_all()?),
            _ => Ok(()),
        },
        VIRTIO_BLK_T_GET_ID => {
            let room = data_out.available_bytes();
            if room < ID_BYTES {
                return Err(RequestError::ShortIdBuffer(room));
            }
            let mut id = [0u8; ID_BYTES];
            let n = disk.id.len().min(ID_BYTES);
            id[..n].copy_from_slice(&disk.id[..n]);
            Ok(data_out.write_all(&id)?)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// The backing file, after checking that `len` bytes at `sector` lie inside the disk.
fn checked_file(disk: &Disk, sector: u64, len: usize) -> Result<&File, RequestError> {
    if len as u64 % SECTOR_SIZE != 0 {
        return Err(RequestError::UnalignedLength(len));
    }
    let out_of_bounds = RequestError::OutOfBounds {
        sector,
        len,
        sectors: disk.sectors,
    };
    let end = (len as u64 / SECTOR_SIZE)
        .checked_add(sector)
        .ok_or(out_of_bounds)?;
    if end > disk.sectors {
        return Err(RequestError::OutOfBounds {
            sector,
            len,
            sectors: disk.sectors,
        });
    }
    disk.file.as_ref().ok_or(RequestError::NoMedium)
}

fn read_disk(file: &File, mut pos: u64, len: usize, out: &mut Writer) -> Result<(), RequestError> {
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        file.read_exact_at(&mut buf[..n], pos)?;
        out.write_all(&buf[..n])?;
        pos += n as u64;
        left -= n;
    }
    Ok(())
}

fn write_disk(
    file: &File,
    mut pos: u64,
    len: usize,
    input: &mut Reader,
) -> Result<(), RequestError> {
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        input.read_exact(&mut buf[..n])?;
        file.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
        left -= n;
    }
    Ok(())
}
