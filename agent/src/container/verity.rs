//! dm-verity for image layers: the storage names the root hash (and the policy, which sees the
//! storage's `driver_options`, pins it); the agent checks the hash tree's top block against
//! that root hash before anything is mounted, then mounts the layer only through a dm-verity
//! device so the kernel checks every block read against the same root.
//!
//! Layout: `veritysetup format --hash-offset=OFFSET DEV DEV` (data first, then the verity
//! superblock and hash tree on the same device). Options: `verity.root_hash=<64 hex>` and
//! `verity.hash_offset=<bytes>`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ContainerError;

const ROOT_HASH_OPT: &str = "verity.root_hash=";
const HASH_OFFSET_OPT: &str = "verity.hash_offset=";
const SUPERBLOCK_LEN: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const DIGEST_LEN: usize = 32;

/// What the storage asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityOptions {
    pub root_hash: [u8; DIGEST_LEN],
    pub hash_offset: u64,
}

/// Parameters for the dm-verity table, read from the superblock and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub hash_start_block: u64,
    pub salt: Vec<u8>,
    pub root_hash: [u8; DIGEST_LEN],
}

impl VerityParams {
    /// The dm-verity target parameters for `device` (data and hash on the same device).
    pub fn table(&self, device: &str) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        };
        format!(
            "1 {device} {device} {} {} {} {} sha256 {} {salt}",
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_start_block,
            hex::encode(self.root_hash)
        )
    }

    /// Size of the protected data in 512-byte sectors.
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size) / 512
    }
}

fn invalid(msg: String) -> ContainerError {
    ContainerError::InvalidSpec(msg)
}

/// Parses the verity options; `None` when the storage asks for no verity.
pub fn parse_options(options: &[String]) -> Result<Option<VerityOptions>, ContainerError> {
    let mut root = None;
    let mut offset = None;
    for opt in options {
        if let Some(v) = opt.strip_prefix(ROOT_HASH_OPT) {
            let hash = hex::FromHex::from_hex(v).map_err(|e: hex::FromHexError| {
                invalid(format!(
                    "{opt:?}: root hash must be {} hex digits: {e}",
                    2 * DIGEST_LEN
                ))
            })?;
            root = Some(hash);
        } else if let Some(v) = opt.strip_prefix(HASH_OFFSET_OPT) {
            offset = Some(
                v.parse::<u64>()
                    .map_err(|_| invalid(format!("{opt:?}: not a byte count")))?,
            );
        } else if opt.starts_with("verity.") {
            return Err(invalid(format!("unknown verity option {opt:?}")));
        }
    }
    match (root, offset) {
        (None, None) => Ok(None),
        (Some(root_hash), Some(hash_offset)) => Ok(Some(VerityOptions {
            root_hash,
            hash_offset,
        })),
        _ => Err(invalid(format!(
            "verity needs both {ROOT_HASH_OPT}<hex> and {HASH_OFFSET_OPT}<bytes>"
        ))),
    }
}

/// Reads the superblock at `opts.hash_offset` and checks that the hash tree's top block hashes
/// to `opts.root_hash`. A mismatch is refused before anything is mounted.
pub fn check(device: &Path, opts: &VerityOptions) -> Result<VerityParams, ContainerError> {
    let io = |e| ContainerError::io("reading verity metadata from", device, e);
    let mut dev = File::open(device).map_err(io)?;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    dev.seek(SeekFrom::Start(opts.hash_offset)).map_err(io)?;
    dev.read_exact(&mut sb).map_err(io)?;
    let params = parse_superblock(&sb, opts)?;

    // The top level of the tree is the first hash block after the superblock; with no levels
    // (a single data block) the root covers the data block itself.
    let top_offset = if params.data_blocks > 1 {
        params.hash_start_block * u64::from(params.hash_block_size)
    } else {
        0
    };
    let top_len = if params.data_blocks > 1 {
        params.hash_block_size
    } else {
        params.data_block_size
    } as usize;
    let mut top = vec![0u8; top_len];
    dev.seek(SeekFrom::Start(top_offset)).map_err(io)?;
    dev.read_exact(&mut top).map_err(io)?;
    let mut h = Sha256::new();
    h.update(&params.salt);
    h.update(&top);
    let found: [u8; DIGEST_LEN] = h.finalize().into();
    if found != opts.root_hash {
        return Err(ContainerError::RootHashMismatch {
            device: device.display().to_string(),
            expected: hex::encode(opts.root_hash),
            found: hex::encode(found),
        });
    }
    Ok(params)
}

fn parse_superblock(
    sb: &[u8; SUPERBLOCK_LEN],
    opts: &VerityOptions,
) -> Result<VerityParams, ContainerError> {
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes"));
    if &sb[..8] != SIGNATURE {
        return Err(invalid(format!(
            "no verity superblock at offset {}",
            opts.hash_offset
        )));
    }
    let version = u32_at(8);
    let hash_type = u32_at(12);
    if version != 1 || hash_type != 1 {
        return Err(invalid(format!(
            "verity superblock version {version} hash type {hash_type}; only 1/1 is supported"
        )));
    }
    let algorithm = &sb[32..64];
    let end = algorithm.iter().position(|b| *b == 0).unwrap_or(32);
    if &algorithm[..end] != b"sha256" {
        return Err(invalid(format!(
            "verity algorithm {:?}; only sha256 is supported",
            String::from_utf8_lossy(&algorithm[..end])
        )));
    }
    let data_block_size = u32_at(64);
    let hash_block_size = u32_at(68);
    for size in [data_block_size, hash_block_size] {
        if !size.is_power_of_two() || !(512..=65536).contains(&size) {
            return Err(invalid(format!("verity block size {size}")));
        }
    }
    let data_blocks = u64::from_le_bytes(sb[72..80].try_into().expect("8 bytes"));
    let salt_size = u16::from_le_bytes([sb[80], sb[81]]) as usize;
    if salt_size > 256 {
        return Err(invalid(format!("verity salt of {salt_size} bytes")));
    }
    let data_end = data_blocks
        .checked_mul(u64::from(data_block_size))
        .ok_or_else(|| invalid("verity data size overflows".into()))?;
    if data_blocks == 0 || data_end > opts.hash_offset {
        return Err(invalid(format!(
            "verity data ({data_blocks} blocks) overlaps the hash area at {}",
            opts.hash_offset
        )));
    }
    if opts.hash_offset % u64::from(hash_block_size) != 0 {
        return Err(invalid(format!(
            "verity hash offset {} is not a multiple of the hash block size",
            opts.hash_offset
        )));
    }
    Ok(VerityParams {
        data_block_size,
        hash_block_size,
        data_blocks,
        hash_start_block: opts.hash_offset / u64::from(hash_block_size) + 1,
        salt: sb[88..88 + salt_size].to_vec(),
        root_hash: opts.root_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(hash_offset: u64) -> VerityOptions {
        VerityOptions {
            root_hash: [0; 32],
            hash_offset,
        }
    }

    #[test]
    fn options_need_both_fields() {
        assert_eq!(parse_options(&["ro".into()]).unwrap(), None);
        let root = format!("{ROOT_HASH_OPT}{}", "ab".repeat(32));
        assert!(parse_options(std::slice::from_ref(&root)).is_err());
        let both = parse_options(&[root, format!("{HASH_OFFSET_OPT}4096")])
            .unwrap()
            .unwrap();
        assert_eq!(both.root_hash, [0xab; 32]);
        assert_eq!(both.hash_offset, 4096);
        assert!(parse_options(&["verity.bogus=1".into()]).is_err());
        // Host-supplied: a non-ASCII hash of the right byte length is refused, not a panic.
        let non_ascii = format!("{ROOT_HASH_OPT}é{}", "0".repeat(62));
        assert!(parse_options(&[non_ascii, format!("{HASH_OFFSET_OPT}0")]).is_err());
    }

    #[test]
    fn superblock_fields_are_checked() {
        let mut sb = [0u8; SUPERBLOCK_LEN];
        assert!(parse_superblock(&sb, &opts(8192)).is_err());
        sb[..8].copy_from_slice(SIGNATURE);
        sb[8] = 1;
        sb[12] = 1;
        sb[32..38].copy_from_slice(b"sha256");
        sb[64..68].copy_from_slice(&4096u32.to_le_bytes());
        sb[68..72].copy_from_slice(&4096u32.to_le_bytes());
        sb[72..80].copy_from_slice(&2u64.to_le_bytes());
        sb[80] = 2;
        sb[88] = 0xaa;
        sb[89] = 0xbb;
        let p = parse_superblock(&sb, &opts(8192)).unwrap();
        assert_eq!(p.hash_start_block, 3);
        assert_eq!(p.salt, vec![0xaa, 0xbb]);
        assert_eq!(p.data_sectors(), 16);
        assert!(p
            .table("/dev/vda")
            .starts_with("1 /dev/vda /dev/vda 4096 4096 2 3 sha256 "));
        // Data running into the hash area is refused.
        assert!(parse_superblock(&sb, &opts(4096)).is_err());
    }
}
