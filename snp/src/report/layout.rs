//! Byte layout of the 0x4A0-byte attestation report. The report is kept as its exact bytes
//! (reserved areas included) so that verification hashes precisely what the firmware signed.
//! Not the `sev` crate's `AttestationReport` (which `tests/report.rs` checks these fields
//! against): it is a decoded struct that re-encodes its fields rather than the signed bytes,
//! and sev 8's decoder refuses reports it cannot place in a CPU generation: a version 2
//! report with a masked chip ID (policy MASK_CHIP_ID), or a v3+ report from a family/model it
//! does not know.

use super::SIG_ALGO_ECDSA_P384_SHA384;

/// Size of an attestation report.
pub const REPORT_SIZE: usize = 0x4a0;
/// The signature covers bytes 0..SIGNED_LEN.
pub const SIGNED_LEN: usize = 0x2a0;
/// Each of R and S is a little-endian 72-byte field (only the low 48 bytes are used by P-384).
const SIG_COMPONENT: usize = 72;
const SIG_R: usize = 0x2a0;
const SIG_S: usize = SIG_R + SIG_COMPONENT;
/// Oldest and newest report versions this layout describes (v3 added the CPUID fields,
/// v5 the mitigation vectors; v4 is laid out like v3).
const MIN_VERSION: u32 = 2;
const MAX_VERSION: u32 = 5;

/// Errors from parsing a report.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("attestation report is {0} bytes, expected exactly {REPORT_SIZE}")]
    Size(usize),
    #[error(
        "attestation report version {0} is not supported (expected {MIN_VERSION}..={MAX_VERSION})"
    )]
    Version(u32),
    #[error("attestation report signature algorithm {0} is not ECDSA P-384 with SHA-384 (1)")]
    Algorithm(u32),
}

/// A syntactically valid attestation report, byte for byte as received.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestationReport {
    bytes: Box<[u8; REPORT_SIZE]>,
}

impl std::fmt::Debug for AttestationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationReport")
            .field("version", &self.version())
            .field("policy", &format_args!("{:#x}", self.policy()))
            .field("measurement", &hex::encode(self.measurement()))
            .field("host_data", &hex::encode(self.host_data()))
            .finish_non_exhaustive()
    }
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(bytes, at))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(bytes, at))
}

impl AttestationReport {
    /// Checks size, version and signature algorithm; the signature itself is checked by
    /// [`super::verify_report`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        let bytes: [u8; REPORT_SIZE] = bytes
            .try_into()
            .map_err(|_| ReportError::Size(bytes.len()))?;
        let version = u32_at(&bytes, 0x00);
        if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
            return Err(ReportError::Version(version));
        }
        let algo = u32_at(&bytes, 0x34);
        if algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(ReportError::Algorithm(algo));
        }
        Ok(Self {
            bytes: Box::new(bytes),
        })
    }

    /// Assembles a report from a body and the little-endian signature components.
    pub fn from_parts(
        body: &ReportBody,
        r_le: &[u8; SIG_COMPONENT],
        s_le: &[u8; SIG_COMPONENT],
    ) -> Result<Self, ReportError> {
        let mut bytes = [0u8; REPORT_SIZE];
        bytes[..SIGNED_LEN].copy_from_slice(&body.to_signed_bytes());
        bytes[SIG_R..SIG_S].copy_from_slice(r_le);
        bytes[SIG_S..SIG_S + SIG_COMPONENT].copy_from_slice(s_le);
        Self::parse(&bytes)
    }

    /// The serialized report (identical to the parsed input).
    pub fn as_bytes(&self) -> &[u8; REPORT_SIZE] {
        &self.bytes
    }
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..SIGNED_LEN]
    }

    pub fn version(&self) -> u32 {
        u32_at(&self.bytes[..], 0x00)
    }
    pub fn guest_svn(&self) -> u32 {
        u32_at(&self.bytes[..], 0x04)
    }
    pub fn policy(&self) -> u64 {
        u64_at(&self.bytes[..], 0x08)
    }
    pub fn family_id(&self) -> [u8; 16] {
        array(&self.bytes[..], 0x10)
    }
    pub fn image_id(&self) -> [u8; 16] {
        array(&self.bytes[..], 0x20)
    }
    pub fn vmpl(&self) -> u32 {
        u32_at(&self.bytes[..], 0x30)
    }
    pub fn signature_algo(&self) -> u32 {
        u32_at(&self.bytes[..], 0x34)
    }
    pub fn current_tcb(&self) -> u64 {
        u64_at(&self.bytes[..], 0x38)
    }
    pub fn platform_info(&self) -> u64 {
        u64_at(&self.bytes[..], 0x40)
    }
    /// AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY (bits 2..4).
    pub fn key_flags(&self) -> u32 {
        u32_at(&self.bytes[..], 0x48)
    }
    pub fn report_data(&self) -> [u8; 64] {
        array(&self.bytes[..], 0x50)
    }
    pub fn measurement(&self) -> [u8; 48] {
        array(&self.bytes[..], 0x90)
    }
    pub fn host_data(&self) -> [u8; 32] {
        array(&self.bytes[..], 0xc0)
    }
    pub fn id_key_digest(&self) -> [u8; 48] {
        array(&self.bytes[..], 0xe0)
    }
    pub fn author_key_digest(&self) -> [u8; 48] {
        array(&self.bytes[..], 0x110)
    }
    pub fn report_id(&self) -> [u8; 32] {
        array(&self.bytes[..], 0x140)
    }
    pub fn report_id_ma(&self) -> [u8; 32] {
        array(&self.bytes[..], 0x160)
    }
    pub fn reported_tcb(&self) -> u64 {
        u64_at(&self.bytes[..], 0x180)
    }
    /// CPUID family, model, stepping of the chip (report version 3 and later).
    pub fn cpuid_fms(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| (self.bytes[0x188], self.bytes[0x189], self.bytes[0x18a]))
    }
    pub fn chip_id(&self) -> [u8; 64] {
        array(&self.bytes[..], 0x1a0)
    }
    pub fn committed_tcb(&self) -> u64 {
        u64_at(&self.bytes[..], 0x1e0)
    }
    /// Current firmware (major, minor, build).
    pub fn current_version(&self) -> (u8, u8, u8) {
        (self.bytes[0x1ea], self.bytes[0x1e9], self.bytes[0x1e8])
    }
    /// Committed firmware (major, minor, build).
    pub fn committed_version(&self) -> (u8, u8, u8) {
        (self.bytes[0x1ee], self.bytes[0x1ed], self.bytes[0x1ec])
    }
    pub fn launch_tcb(&self) -> u64 {
        u64_at(&self.bytes[..], 0x1f0)
    }
    /// R and S of the signature, little-endian, 72 bytes each.
    pub fn signature_le(&self) -> ([u8; SIG_COMPONENT], [u8; SIG_COMPONENT]) {
        (array(&self.bytes[..], SIG_R), array(&self.bytes[..], SIG_S))
    }

    /// The named fields of the signed part.
    pub fn body(&self) -> ReportBody {
        let (build, minor, major) = (self.bytes[0x1e8], self.bytes[0x1e9], self.bytes[0x1ea]);
        let (cbuild, cminor, cmajor) = (self.bytes[0x1ec], self.bytes[0x1ed], self.bytes[0x1ee]);
        ReportBody {
            version: self.version(),
            guest_svn: self.guest_svn(),
            policy: self.policy(),
            family_id: self.family_id(),
            image_id: self.image_id(),
            vmpl: self.vmpl(),
            current_tcb: self.current_tcb(),
            platform_info: self.platform_info(),
            key_flags: self.key_flags(),
            report_data: self.report_data(),
            measurement: self.measurement(),
            host_data: self.host_data(),
            id_key_digest: self.id_key_digest(),
            author_key_digest: self.author_key_digest(),
            report_id: self.report_id(),
            report_id_ma: self.report_id_ma(),
            reported_tcb: self.reported_tcb(),
            cpuid_fms: [self.bytes[0x188], self.bytes[0x189], self.bytes[0x18a]],
            chip_id: self.chip_id(),
            committed_tcb: self.committed_tcb(),
            current_version: [build, minor, major],
            committed_version: [cbuild, cminor, cmajor],
            launch_tcb: self.launch_tcb(),
        }
    }
}

/// The named fields of the signed part of a report, for building one (the model firmware).
/// Reserved bytes are zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportBody {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub current_tcb: u64,
    pub platform_info: u64,
    pub key_flags: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: u64,
    /// CPUID family, model, stepping (version 3 and later).
    pub cpuid_fms: [u8; 3],
    pub chip_id: [u8; 64],
    pub committed_tcb: u64,
    /// Build, minor, major (the byte order of the report).
    pub current_version: [u8; 3],
    pub committed_version: [u8; 3],
    pub launch_tcb: u64,
}

impl Default for ReportBody {
    /// A version-2 body with every field zero.
    fn default() -> Self {
        Self {
            version: 2,
            guest_svn: 0,
            policy: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            vmpl: 0,
            current_tcb: 0,
            platform_info: 0,
            key_flags: 0,
            report_data: [0; 64],
            measurement: [0; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0; 32],
            report_id_ma: [0; 32],
            reported_tcb: 0,
            cpuid_fms: [0; 3],
            chip_id: [0; 64],
            committed_tcb: 0,
            current_version: [0; 3],
            committed_version: [0; 3],
            launch_tcb: 0,
        }
    }
}

impl ReportBody {
    /// Serializes the signed part; SIGNATURE_ALGO is always ECDSA P-384.
    pub fn to_signed_bytes(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0x00, &self.version.to_le_bytes());
        put(0x04, &self.guest_svn.to_le_bytes());
        put(0x08, &self.policy.to_le_bytes());
        put(0x10, &self.family_id);
        put(0x20, &self.image_id);
        put(0x30, &self.vmpl.to_le_bytes());
        put(0x34, &SIG_ALGO_ECDSA_P384_SHA384.to_le_bytes());
        put(0x38, &self.current_tcb.to_le_bytes());
        put(0x40, &self.platform_info.to_le_bytes());
        put(0x48, &self.key_flags.to_le_bytes());
        put(0x50, &self.report_data);
        put(0x90, &self.measurement);
        put(0xc0, &self.host_data);
        put(0xe0, &self.id_key_digest);
        put(0x110, &self.author_key_digest);
        put(0x140, &self.report_id);
        put(0x160, &self.report_id_ma);
        put(0x180, &self.reported_tcb.to_le_bytes());
        put(0x188, &self.cpuid_fms);
        put(0x1a0, &self.chip_id);
        put(0x1e0, &self.committed_tcb.to_le_bytes());
        put(0x1e8, &self.current_version);
        put(0x1ec, &self.committed_version);
        put(0x1f0, &self.launch_tcb.to_le_bytes());
        b
    }
}
