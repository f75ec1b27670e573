//! SEV-SNP guest policy (AMD SNP ABI, "GUEST_POLICY" structure): a 64-bit value the firmware
//! enforces for the whole life of the guest and reports in every attestation report.

use std::fmt;

/// Bit 16: the guest may run on a host with SMT enabled.
pub const POLICY_SMT: u64 = 1 << 16;
/// Bit 17: reserved, must be one (firmware rejects a policy with it clear).
pub const POLICY_RESERVED_ONE: u64 = 1 << 17;
/// Bit 18: association with a migration agent is allowed.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Bit 19: the host may debug (decrypt/encrypt) the guest. Never wanted in production.
pub const POLICY_DEBUG: u64 = 1 << 19;
/// Bit 20: the guest may only run on a single-socket system.
pub const POLICY_SINGLE_SOCKET: u64 = 1 << 20;
/// Bit 21: CXL may be populated with devices or memory.
pub const POLICY_CXL_ALLOW: u64 = 1 << 21;
/// Bit 22: AES-256-XTS is required for memory encryption.
pub const POLICY_MEM_AES_256_XTS: u64 = 1 << 22;
/// Bit 23: Running Average Power Limit must be disabled.
pub const POLICY_RAPL_DIS: u64 = 1 << 23;
/// Bit 24: ciphertext hiding must be enabled.
pub const POLICY_CIPHERTEXT_HIDING: u64 = 1 << 24;
/// Bit 25: the guest's pages may not be swapped by the host (SNP_PAGE_MOVE/SWAP disabled).
pub const POLICY_PAGE_SWAP_DISABLE: u64 = 1 << 25;
/// Bits 26..63 are reserved and must be zero.
pub const POLICY_RESERVED_MBZ: u64 = !((1u64 << 26) - 1);

/// The policy most SNP guests use: SMT allowed, reserved bit set, ABI 0.0.
pub const DEFAULT_POLICY: u64 = POLICY_SMT | POLICY_RESERVED_ONE;

/// Errors from building or parsing a guest policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("guest policy {0:#x}: reserved bit 17 must be set")]
    ReservedBitClear(u64),
    #[error("guest policy {0:#x}: reserved bits 26..63 must be zero")]
    ReservedBitsSet(u64),
    #[error("guest policy {0:#x}: DEBUG (bit 19) is set but debugging was not asked for")]
    DebugNotAllowed(u64),
    #[error("guest policy {input:?} is not a hexadecimal 64-bit value")]
    NotHex { input: String },
}

/// A validated guest policy.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestPolicy(u64);

impl GuestPolicy {
    /// Validates `raw`. `allow_debug` must be true for a policy with DEBUG set: a debuggable
    /// guest has no confidentiality, so it is only accepted when explicitly asked for.
    pub fn new(raw: u64, allow_debug: bool) -> Result<Self, PolicyError> {
        if raw & POLICY_RESERVED_ONE == 0 {
            return Err(PolicyError::ReservedBitClear(raw));
        }
        if raw & POLICY_RESERVED_MBZ != 0 {
            return Err(PolicyError::ReservedBitsSet(raw));
        }
        if raw & POLICY_DEBUG != 0 && !allow_debug {
            return Err(PolicyError::DebugNotAllowed(raw));
        }
        Ok(Self(raw))
    }

    /// Parses a hexadecimal policy, with or without a `0x` prefix (`"0x30000"`, `"30000"`).
    pub fn from_hex(input: &str, allow_debug: bool) -> Result<Self, PolicyError> {
        let trimmed = input.trim();
        let digits = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        if digits.is_empty() || digits.len() > 16 {
            return Err(PolicyError::NotHex {
                input: input.to_string(),
            });
        }
        let raw = u64::from_str_radix(digits, 16).map_err(|_| PolicyError::NotHex {
            input: input.to_string(),
        })?;
        Self::new(raw, allow_debug)
    }

    /// Builds a policy from its named parts; the reserved bit is set for the caller.
    pub fn from_parts(abi_major: u8, abi_minor: u8, flags: u64) -> Result<Self, PolicyError> {
        let raw = (u64::from(abi_major) << 8) | u64::from(abi_minor) | flags | POLICY_RESERVED_ONE;
        Self::new(raw, flags & POLICY_DEBUG != 0)
    }

    pub fn raw(self) -> u64 {
        self.0
    }
    pub fn abi_minor(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    pub fn abi_major(self) -> u8 {
        ((self.0 >> 8) & 0xff) as u8
    }
    pub fn smt_allowed(self) -> bool {
        self.0 & POLICY_SMT != 0
    }
    pub fn migrate_ma_allowed(self) -> bool {
        self.0 & POLICY_MIGRATE_MA != 0
    }
    pub fn debug_allowed(self) -> bool {
        self.0 & POLICY_DEBUG != 0
    }
    pub fn single_socket(self) -> bool {
        self.0 & POLICY_SINGLE_SOCKET != 0
    }
}

impl Default for GuestPolicy {
    fn default() -> Self {
        Self(DEFAULT_POLICY)
    }
}

impl fmt::Debug for GuestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestPolicy({:#x})", self.0)
    }
}

impl fmt::Display for GuestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_smt_plus_reserved() {
        let p = GuestPolicy::default();
        assert_eq!(p.raw(), 0x30000);
        assert!(p.smt_allowed());
        assert!(!p.debug_allowed());
        assert_eq!(GuestPolicy::from_hex("0x30000", false), Ok(p));
        assert_eq!(GuestPolicy::from_hex("30000", false), Ok(p));
    }

    #[test]
    fn reserved_bit_17_required() {
        assert_eq!(
            GuestPolicy::new(0x10000, false),
            Err(PolicyError::ReservedBitClear(0x10000))
        );
        let msg = GuestPolicy::from_hex("0x10000", false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("bit 17"), "{msg}");
    }

    #[test]
    fn high_reserved_bits_rejected() {
        assert_eq!(
            GuestPolicy::new(0x30000 | (1 << 40), false),
            Err(PolicyError::ReservedBitsSet(0x30000 | (1 << 40)))
        );
    }

    #[test]
    fn debug_needs_explicit_consent() {
        let raw = 0x30000 | POLICY_DEBUG;
        assert_eq!(
            GuestPolicy::new(raw, false),
            Err(PolicyError::DebugNotAllowed(raw))
        );
        assert!(GuestPolicy::new(raw, true).unwrap().debug_allowed());
    }

    #[test]
    fn fields_decode() {
        let p = GuestPolicy::from_parts(1, 51, POLICY_SINGLE_SOCKET | POLICY_SMT).unwrap();
        assert_eq!(p.raw(), 0x13_0133);
        assert_eq!((p.abi_major(), p.abi_minor()), (1, 51));
        assert!(p.single_socket() && p.smt_allowed() && !p.migrate_ma_allowed());
    }

    #[test]
    fn bad_hex_named() {
        for bad in ["", "0x", "zz", "0x30000000000000000", "-1"] {
            let err = GuestPolicy::from_hex(bad, false).unwrap_err();
            assert_eq!(
                err,
                PolicyError::NotHex {
                    input: bad.to_string()
                }
            );
        }
    }
}
