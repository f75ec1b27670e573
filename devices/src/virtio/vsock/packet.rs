//! The virtio-vsock packet header (virtio 1.2, 5.10.6), little-endian, 44 bytes.

/// Size of the header in front of every packet.
pub const HEADER_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The only socket type we serve.
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Decodes the wire layout.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            kind: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the wire layout.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_spec_offsets() {
        let h = Header {
            src_cid: 0x0102030405060708,
            dst_cid: 2,
            src_port: 0xaabbccdd,
            dst_port: 1024,
            len: 5,
            kind: TYPE_STREAM,
            op: OP_RW,
            flags: 3,
            buf_alloc: 0x40000,
            fwd_cnt: 9,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08, "src_cid little-endian at 0");
        assert_eq!(b[8], 2, "dst_cid at 8");
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa], "src_port at 16");
        assert_eq!(&b[20..22], &[0x00, 0x04], "dst_port at 20");
        assert_eq!(b[24], 5, "len at 24");
        assert_eq!(b[28], 1, "type at 28");
        assert_eq!(b[30], 5, "op at 30");
        assert_eq!(b[32], 3, "flags at 32");
        assert_eq!(&b[36..40], &[0, 0, 4, 0], "buf_alloc at 36");
        assert_eq!(b[40], 9, "fwd_cnt at 40");
        assert_eq!(Header::from_bytes(&b), h);
    }
}
