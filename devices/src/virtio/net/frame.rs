//! One frame as the queues carry it: a 12-byte virtio-net header, then the Ethernet frame.
//! Everything here reads guest-controlled bytes, so every length is checked first.

use std::io::Read;

use virtio_queue::{DescriptorChain, Reader};

use super::{ETH_OVERHEAD, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::GuestMemory;

/// `gso_type` of a frame that is not a segmentation-offload packet.
const GSO_NONE: u8 = 0;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_AT: usize = 10;

/// Why a guest TX chain was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TxError {
    #[error("frame buffers are not in guest memory: {0}")]
    Memory(virtio_queue::Error),
    #[error("chain of {0} bytes is shorter than the {VNET_HDR_LEN}-byte header")]
    ShortHeader(usize),
    #[error("chain of {0} bytes exceeds the {max}-byte limit", max = VNET_HDR_LEN + MAX_FRAME_LEN)]
    TooLong(usize),
    #[error("reading the frame from guest memory failed: {0}")]
    Read(std::io::Error),
}

/// Copies the readable part of `chain` (header and frame) into `buf`, which holds at least
/// `VNET_HDR_LEN + MAX_FRAME_LEN` bytes; returns its length.
pub(crate) fn read_tx(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, TxError> {
    let mut reader = Reader::new(mem, chain).map_err(TxError::Memory)?;
    let len = reader.available_bytes();
    if len < VNET_HDR_LEN {
        return Err(TxError::ShortHeader(len));
    }
    if len > VNET_HDR_LEN + MAX_FRAME_LEN || len > buf.len() {
        return Err(TxError::TooLong(len));
    }
    reader.read_exact(&mut buf[..len]).map_err(TxError::Read)?;
    Ok(len)
}

/// Whether `frame` (header included) is an ordinary frame longer than the MTU allows.
/// Segmentation-offload packets are split to MTU-sized frames later, so only their absolute
/// size ([`MAX_FRAME_LEN`]) is limited.
pub(crate) fn exceeds_mtu(frame: &[u8], mtu: u16) -> bool {
    let gso_type = frame.get(1).copied().unwrap_or(GSO_NONE);
    gso_type == GSO_NONE
        && frame.len().saturating_sub(VNET_HDR_LEN) > usize::from(mtu) + ETH_OVERHEAD
}

/// Sets `num_buffers` to 1: without mergeable RX buffers every frame uses one chain, and the
/// tap leaves the field unwritten.
pub(crate) fn set_single_buffer(frame: &mut [u8]) {
    if let Some(field) = frame.get_mut(NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2) {
        field.copy_from_slice(&1u16.to_le_bytes());
    }
}
