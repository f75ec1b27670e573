//! PAGE_INFO (AMD SNP ABI, SNP_LAUNCH_UPDATE): the 0x70-byte record the firmware hashes into the
//! launch digest for every page it adds to a guest.

use std::fmt;

/// Size of one guest page as the firmware measures it.
pub const PAGE_SIZE: u64 = 4096;
/// Size of the PAGE_INFO structure, also stored in its LENGTH field.
pub const PAGE_INFO_SIZE: usize = 0x70;
/// Size of a SHA-384 digest.
pub const DIGEST_SIZE: usize = 48;
/// GPA the firmware records for every VMSA page: (u64)-1, page aligned, bits above 51 cleared.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Page types of SNP_LAUNCH_UPDATE (the kernel's `KVM_SEV_SNP_PAGE_TYPE_*` use the same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    /// Data measured by content.
    Normal = 1,
    /// A vCPU save area; only the firmware (via LAUNCH_FINISH in KVM) adds these.
    Vmsa = 2,
    /// A page the firmware zeroes; measured by GPA only.
    Zero = 3,
    /// Encrypted but not measured by content; measured by GPA only.
    Unmeasured = 4,
    /// The secrets page the firmware fills with VMPCKs; measured by GPA only.
    Secrets = 5,
    /// The CPUID page the firmware checks; measured by GPA only.
    Cpuid = 6,
}

impl PageType {
    /// True when the page's contents are hashed into CONTENTS; the other types use zeros.
    pub fn measures_contents(self) -> bool {
        matches!(self, PageType::Normal | PageType::Vmsa)
    }
}

impl TryFrom<u8> for PageType {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        Ok(match value {
            1 => PageType::Normal,
            2 => PageType::Vmsa,
            3 => PageType::Zero,
            4 => PageType::Unmeasured,
            5 => PageType::Secrets,
            6 => PageType::Cpuid,
            other => return Err(other),
        })
    }
}

impl fmt::Display for PageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            PageType::Normal => "NORMAL",
            PageType::Vmsa => "VMSA",
            PageType::Zero => "ZERO",
            PageType::Unmeasured => "UNMEASURED",
            PageType::Secrets => "SECRETS",
            PageType::Cpuid => "CPUID",
        };
        f.write_str(name)
    }
}

/// One PAGE_INFO record. Veil always launches at VMPL0 without IMI, so the VMPL permission
/// bytes and IMI are zero, as in every launch KVM performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    /// Launch digest before this page.
    pub digest_cur: [u8; DIGEST_SIZE],
    /// SHA-384 of the page for NORMAL/VMSA, zeros otherwise.
    pub contents: [u8; DIGEST_SIZE],
    pub page_type: PageType,
    /// Set for pages of an incoming migration image; never by Veil.
    pub imi: bool,
    pub vmpl3_perms: u8,
    pub vmpl2_perms: u8,
    pub vmpl1_perms: u8,
    pub gpa: u64,
}

impl PageInfo {
    /// Serializes to the firmware layout: DIGEST_CUR at 0x00, CONTENTS at 0x30, LENGTH (u16)
    /// at 0x60, PAGE_TYPE at 0x62, IMI_PAGE at 0x63, VMPL3/2/1 permissions at 0x64..0x67,
    /// a reserved byte at 0x67 and GPA (u64) at 0x68, all little-endian.
    pub fn to_bytes(&self) -> [u8; PAGE_INFO_SIZE] {
        let mut out = [0u8; PAGE_INFO_SIZE];
        out[0x00..0x30].copy_from_slice(&self.digest_cur);
        out[0x30..0x60].copy_from_slice(&self.contents);
        out[0x60..0x62].copy_from_slice(&(PAGE_INFO_SIZE as u16).to_le_bytes());
        out[0x62] = self.page_type as u8;
        out[0x63] = u8::from(self.imi);
        out[0x64] = self.vmpl3_perms;
        out[0x65] = self.vmpl2_perms;
        out[0x66] = self.vmpl1_perms;
        out[0x68..0x70].copy_from_slice(&self.gpa.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_offsets() {
        let info = PageInfo {
            digest_cur: [0x11; 48],
            contents: [0x22; 48],
            page_type: PageType::Cpuid,
            imi: true,
            vmpl3_perms: 3,
            vmpl2_perms: 2,
            vmpl1_perms: 1,
            gpa: 0x0102_0304_0506_0708,
        };
        let b = info.to_bytes();
        assert_eq!(b.len(), 0x70);
        assert!(b[..0x30].iter().all(|&x| x == 0x11));
        assert!(b[0x30..0x60].iter().all(|&x| x == 0x22));
        assert_eq!(&b[0x60..0x62], &[0x70, 0x00]);
        assert_eq!(&b[0x62..0x68], &[6, 1, 3, 2, 1, 0]);
        assert_eq!(&b[0x68..], &[8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn page_type_numbers() {
        for n in 1..=6u8 {
            assert_eq!(PageType::try_from(n).unwrap() as u8, n);
        }
        assert_eq!(PageType::try_from(0), Err(0));
        assert_eq!(PageType::try_from(7), Err(7));
        assert!(PageType::Normal.measures_contents() && PageType::Vmsa.measures_contents());
        assert!(!PageType::Zero.measures_contents() && !PageType::Cpuid.measures_contents());
    }
}
