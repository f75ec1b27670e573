//! The ID block and its authentication information (AMD SNP ABI, SNP_LAUNCH_FINISH): a
//! guest owner's signed statement of the expected launch digest and policy.
//!
//! Ours, not the `sev` crate's: `sev` 8 has the ID block and auth block types
//! (`measurement::idblock_types`) and their signing only with its `openssl` feature, which
//! Veil does not enable (it builds `sev` with `crypto_nossl`, without a C crypto library).

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha384};

/// Size of the ID block.
pub const ID_BLOCK_SIZE: usize = 0x60;
/// Size of the ID authentication information structure.
pub const ID_AUTH_SIZE: usize = 0x1000;
/// Size of a public key structure (curve + QX + QY + reserved).
const PUBKEY_SIZE: usize = 0x404;
const ID_KEY_ALGO: usize = 0x00;
const AUTH_KEY_ALGO: usize = 0x04;
const ID_BLOCK_SIG: usize = 0x40;
const ID_KEY: usize = 0x240;
const ID_KEY_SIG: usize = 0x680;
const AUTHOR_KEY: usize = 0x880;
/// Curve number of P-384 in the public key structure.
const CURVE_P384: u32 = 2;

/// Errors from checking an ID block.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdBlockError {
    #[error("ID block is {0} bytes, expected {ID_BLOCK_SIZE}")]
    BlockSize(usize),
    #[error("ID auth block is {0} bytes, expected {ID_AUTH_SIZE}")]
    AuthSize(usize),
    #[error("ID block version {0} is not 1")]
    Version(u32),
    #[error("{which} algorithm {algo} is not ECDSA P-384 with SHA-384 (1)")]
    Algorithm { which: &'static str, algo: u32 },
    #[error("{which} is not a P-384 public key: {why}")]
    Key { which: &'static str, why: String },
    #[error("{0} signature does not verify")]
    Signature(&'static str),
    #[error("ID block launch digest {expected} differs from the measured {actual}")]
    Digest { expected: String, actual: String },
    #[error("ID block policy {expected:#x} differs from the launch policy {actual:#x}")]
    Policy { expected: u64, actual: u64 },
}

/// The ID block: expected digest, identity and policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdBlock {
    pub ld: [u8; 48],
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
}

impl IdBlock {
    pub fn to_bytes(&self) -> [u8; ID_BLOCK_SIZE] {
        let mut b = [0u8; ID_BLOCK_SIZE];
        b[0x00..0x30].copy_from_slice(&self.ld);
        b[0x30..0x40].copy_from_slice(&self.family_id);
        b[0x40..0x50].copy_from_slice(&self.image_id);
        b[0x50..0x54].copy_from_slice(&self.version.to_le_bytes());
        b[0x54..0x58].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[0x58..0x60].copy_from_slice(&self.policy.to_le_bytes());
        b
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, IdBlockError> {
        if bytes.len() != ID_BLOCK_SIZE {
            return Err(IdBlockError::BlockSize(bytes.len()));
        }
        let take = |from: usize, to: usize| &bytes[from..to];
        let block = Self {
            ld: take(0, 0x30).try_into().unwrap_or([0; 48]),
            family_id: take(0x30, 0x40).try_into().unwrap_or([0; 16]),
            image_id: take(0x40, 0x50).try_into().unwrap_or([0; 16]),
            version: u32::from_le_bytes(take(0x50, 0x54).try_into().unwrap_or([0; 4])),
            guest_svn: u32::from_le_bytes(take(0x54, 0x58).try_into().unwrap_or([0; 4])),
            policy: u64::from_le_bytes(take(0x58, 0x60).try_into().unwrap_or([0; 8])),
        };
        if block.version != 1 {
            return Err(IdBlockError::Version(block.version));
        }
        Ok(block)
    }
}

/// The 4 KiB ID authentication information structure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdAuthBlock(Box<[u8; ID_AUTH_SIZE]>);

impl IdAuthBlock {
    pub fn parse(bytes: &[u8]) -> Result<Self, IdBlockError> {
        let arr: [u8; ID_AUTH_SIZE] = bytes
            .try_into()
            .map_err(|_| IdBlockError::AuthSize(bytes.len()))?;
        Ok(Self(Box::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8; ID_AUTH_SIZE] {
        &self.0
    }

    /// Builds an auth block whose ID key signs `block` (no author key), for tests and tools.
    pub fn sign(block: &IdBlock, id_key: &p384::ecdsa::SigningKey) -> Self {
        use p384::ecdsa::signature::Signer;
        let mut b = [0u8; ID_AUTH_SIZE];
        b[ID_KEY_ALGO..ID_KEY_ALGO + 4].copy_from_slice(&1u32.to_le_bytes());
        b[AUTH_KEY_ALGO..AUTH_KEY_ALGO + 4].copy_from_slice(&1u32.to_le_bytes());
        let sig: Signature = id_key.sign(&block.to_bytes());
        write_signature(&mut b[ID_BLOCK_SIG..ID_BLOCK_SIG + 0x200], &sig);
        write_public_key(&mut b[ID_KEY..ID_KEY + PUBKEY_SIZE], id_key.verifying_key());
        Self(Box::new(b))
    }

    /// Checks the ID block signature (and the author's signature of the ID key when
    /// `author_key_enabled`); returns (SHA-384 of the ID key, SHA-384 of the author key or
    /// zeros) as the report's ID_KEY_DIGEST and AUTHOR_KEY_DIGEST.
    pub fn verify(
        &self,
        block: &IdBlock,
        author_key_enabled: bool,
    ) -> Result<([u8; 48], [u8; 48]), IdBlockError> {
        let b = &self.0[..];
        for (which, at) in [("ID key", ID_KEY_ALGO), ("author key", AUTH_KEY_ALGO)] {
            let algo = u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
            if algo != 1 && (which == "ID key" || author_key_enabled) {
                return Err(IdBlockError::Algorithm { which, algo });
            }
        }
        let id_key_bytes = &b[ID_KEY..ID_KEY + PUBKEY_SIZE];
        let id_key = read_public_key(id_key_bytes, "ID key")?;
        let sig = read_signature(&b[ID_BLOCK_SIG..ID_BLOCK_SIG + 0x200], "ID block")?;
        id_key
            .verify(&block.to_bytes(), &sig)
            .map_err(|_| IdBlockError::Signature("ID block"))?;
        let id_digest: [u8; 48] = Sha384::digest(id_key_bytes).into();
        let mut author_digest = [0u8; 48];
        if author_key_enabled {
            let author_bytes = &b[AUTHOR_KEY..AUTHOR_KEY + PUBKEY_SIZE];
            let author = read_public_key(author_bytes, "author key")?;
            let sig = read_signature(&b[ID_KEY_SIG..ID_KEY_SIG + 0x200], "ID key")?;
            author
                .verify(id_key_bytes, &sig)
                .map_err(|_| IdBlockError::Signature("ID key"))?;
            author_digest = Sha384::digest(author_bytes).into();
        }
        Ok((id_digest, author_digest))
    }
}

/// Writes R and S little-endian into 72-byte fields.
pub(crate) fn write_signature(out: &mut [u8], sig: &Signature) {
    let (r, s) = sig.split_bytes();
    for (i, byte) in r.iter().rev().enumerate() {
        out[i] = *byte;
    }
    for (i, byte) in s.iter().rev().enumerate() {
        out[72 + i] = *byte;
    }
}

fn read_signature(bytes: &[u8], which: &'static str) -> Result<Signature, IdBlockError> {
    let be = |le: &[u8]| {
        let mut out = [0u8; 48];
        for (dst, src) in out.iter_mut().zip(le[..48].iter().rev()) {
            *dst = *src;
        }
        out
    };
    if bytes[48..72]
        .iter()
        .chain(&bytes[120..144])
        .any(|&b| b != 0)
    {
        return Err(IdBlockError::Signature(which));
    }
    Signature::from_scalars(be(&bytes[..72]), be(&bytes[72..144]))
        .map_err(|_| IdBlockError::Signature(which))
}

fn write_public_key(out: &mut [u8], key: &VerifyingKey) {
    let point = key.to_encoded_point(false);
    out[0..4].copy_from_slice(&CURVE_P384.to_le_bytes());
    if let (Some(x), Some(y)) = (point.x(), point.y()) {
        for (i, byte) in x.iter().rev().enumerate() {
            out[4 + i] = *byte;
        }
        for (i, byte) in y.iter().rev().enumerate() {
            out[4 + 72 + i] = *byte;
        }
    }
}

fn read_public_key(bytes: &[u8], which: &'static str) -> Result<VerifyingKey, IdBlockError> {
    let curve = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or([0; 4]));
    if curve != CURVE_P384 {
        return Err(IdBlockError::Key {
            which,
            why: format!("curve {curve} is not P-384 (2)"),
        });
    }
    let mut sec1 = [0u8; 97];
    sec1[0] = 0x04;
    for i in 0..48 {
        sec1[1 + i] = bytes[4 + 47 - i];
        sec1[49 + i] = bytes[4 + 72 + 47 - i];
    }
    VerifyingKey::from_sec1_bytes(&sec1).map_err(|e| IdBlockError::Key {
        which,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::SigningKey;
    use rand_core::OsRng;

    fn block() -> IdBlock {
        IdBlock {
            ld: [7; 48],
            family_id: [1; 16],
            image_id: [2; 16],
            version: 1,
            guest_svn: 3,
            policy: 0x30000,
        }
    }

    #[test]
    fn signed_block_verifies_and_digest_is_of_id_key() {
        let key = SigningKey::random(&mut OsRng);
        let auth = IdAuthBlock::sign(&block(), &key);
        let (id_digest, author) = auth.verify(&block(), false).unwrap();
        let expected: [u8; 48] =
            Sha384::digest(&auth.as_bytes()[ID_KEY..ID_KEY + PUBKEY_SIZE]).into();
        assert_eq!(id_digest, expected);
        assert_eq!(author, [0; 48]);
        assert_eq!(IdBlock::parse(&block().to_bytes()).unwrap(), block());
    }

    #[test]
    fn tampering_is_caught() {
        let key = SigningKey::random(&mut OsRng);
        let auth = IdAuthBlock::sign(&block(), &key);
        let mut other = block();
        other.policy = 0x30000 | (1 << 19);
        assert_eq!(
            auth.verify(&other, false),
            Err(IdBlockError::Signature("ID block"))
        );
        // No author key present while AUTHOR_KEY_EN asks for one.
        assert!(auth.verify(&block(), true).is_err());
        let mut bytes = *auth.as_bytes();
        bytes[ID_KEY] = 3;
        let bad_curve = IdAuthBlock::parse(&bytes).unwrap();
        assert!(matches!(
            bad_curve.verify(&block(), false),
            Err(IdBlockError::Key {
                which: "ID key",
                ..
            })
        ));
        assert_eq!(IdBlock::parse(&[0; 10]), Err(IdBlockError::BlockSize(10)));
        let mut v2 = block().to_bytes();
        v2[0x50] = 2;
        assert_eq!(IdBlock::parse(&v2), Err(IdBlockError::Version(2)));
        assert_eq!(
            IdAuthBlock::parse(&[0; 5]).unwrap_err(),
            IdBlockError::AuthSize(5)
        );
    }
}
