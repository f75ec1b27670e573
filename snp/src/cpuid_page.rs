//! The SNP CPUID page (AMD SNP ABI, "CPUID page"): the CPUID results the guest may trust,
//! checked by the firmware at LAUNCH_UPDATE and measured by GPA only.
//!
//! Layout: COUNT (u32), 12 reserved bytes, then up to 64 entries of 48 bytes:
//! EAX_IN, ECX_IN (u32), XCR0_IN, XSS_IN (u64), EAX, EBX, ECX, EDX (u32), 8 reserved bytes.
//! The firmware rejects a page whose values exceed what the hardware and policy allow; the
//! rejected page comes back with the accepted values, which [`CpuidPage::parse`] reads so
//! the VMM can report what changed.

use crate::page_info::PAGE_SIZE;

/// Most entries a CPUID page holds.
pub const MAX_CPUID_ENTRIES: usize = 64;
const HEADER: usize = 16;
const ENTRY: usize = 48;
/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf's result depends on ECX.
const KVM_CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// Errors from building or reading a CPUID page.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidPageError {
    #[error("{0} CPUID entries do not fit the SNP CPUID page (at most {MAX_CPUID_ENTRIES})")]
    TooManyEntries(usize),
    #[error("CPUID page is {0} bytes, expected 4096")]
    Size(usize),
    #[error("CPUID page claims {0} entries (at most {MAX_CPUID_ENTRIES})")]
    BadCount(u32),
}

/// One CPUID page entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidPageEntry {
    pub eax_in: u32,
    pub ecx_in: u32,
    pub xcr0_in: u64,
    pub xss_in: u64,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl CpuidPageEntry {
    /// Converts one of KVM's CPUID entries (as given to KVM_SET_CPUID2). ECX_IN is the
    /// sub-leaf only where the leaf depends on it; for the XSAVE leaf 0xD sub-leaves 0 and 1,
    /// whose sizes depend on the enabled features, XCR0_IN is 1 (x87 only), the state a vCPU
    /// starts in, as QEMU fills the page.
    pub fn from_kvm(e: &kvm_bindings::kvm_cpuid_entry2) -> Self {
        let indexed = e.flags & KVM_CPUID_FLAG_SIGNIFICANT_INDEX != 0;
        Self {
            eax_in: e.function,
            ecx_in: if indexed { e.index } else { 0 },
            xcr0_in: u64::from(e.function == 0xd && (e.index == 0 || e.index == 1)),
            xss_in: 0,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

/// A CPUID page's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidPage {
    pub entries: Vec<CpuidPageEntry>,
}

impl CpuidPage {
    pub fn new(entries: Vec<CpuidPageEntry>) -> Result<Self, CpuidPageError> {
        if entries.len() > MAX_CPUID_ENTRIES {
            return Err(CpuidPageError::TooManyEntries(entries.len()));
        }
        Ok(Self { entries })
    }

    /// Builds the page from the vCPU's CPUID as set with KVM_SET_CPUID2. Entries whose
    /// outputs are all zero are left out: an SNP guest (Linux's `snp_cpuid`) reads a leaf
    /// missing from the page as zeros, so they say nothing, and hosts list enough of them
    /// (77 entries in all on one AMD EPYC host here) to overflow the page's 64 slots.
    pub fn from_kvm(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Result<Self, CpuidPageError> {
        Self::new(
            entries
                .iter()
                .filter(|e| (e.eax, e.ebx, e.ecx, e.edx) != (0, 0, 0, 0))
                .map(CpuidPageEntry::from_kvm)
                .collect(),
        )
    }

    pub fn to_page(&self) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        page[0..4].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let at = HEADER + i * ENTRY;
            let b = &mut page[at..at + ENTRY];
            b[0..4].copy_from_slice(&e.eax_in.to_le_bytes());
            b[4..8].copy_from_slice(&e.ecx_in.to_le_bytes());
            b[8..16].copy_from_slice(&e.xcr0_in.to_le_bytes());
            b[16..24].copy_from_slice(&e.xss_in.to_le_bytes());
            b[24..28].copy_from_slice(&e.eax.to_le_bytes());
            b[28..32].copy_from_slice(&e.ebx.to_le_bytes());
            b[32..36].copy_from_slice(&e.ecx.to_le_bytes());
            b[36..40].copy_from_slice(&e.edx.to_le_bytes());
        }
        page
    }

    /// Reads a page (e.g. the corrected one the firmware returns).
    pub fn parse(page: &[u8]) -> Result<Self, CpuidPageError> {
        if page.len() != PAGE_SIZE as usize {
            return Err(CpuidPageError::Size(page.len()));
        }
        let u32_at =
            |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at =
            |b: &[u8], at: usize| u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32;
        let count = u32_at(page, 0);
        if count as usize > MAX_CPUID_ENTRIES {
            return Err(CpuidPageError::BadCount(count));
        }
        let entries = (0..count as usize)
            .map(|i| {
                let b = &page[HEADER + i * ENTRY..HEADER + (i + 1) * ENTRY];
                CpuidPageEntry {
                    eax_in: u32_at(b, 0),
                    ecx_in: u32_at(b, 4),
                    xcr0_in: u64_at(b, 8),
                    xss_in: u64_at(b, 16),
                    eax: u32_at(b, 24),
                    ebx: u32_at(b, 28),
                    ecx: u32_at(b, 32),
                    edx: u32_at(b, 36),
                }
            })
            .collect();
        Ok(Self { entries })
    }

    /// Entries whose values differ between `self` (what was asked) and `corrected`, as
    /// "leaf/subleaf: register asked -> accepted" lines for the log.
    pub fn differences(&self, corrected: &CpuidPage) -> Vec<String> {
        let mut out = Vec::new();
        for (a, b) in self.entries.iter().zip(&corrected.entries) {
            for (reg, x, y) in [
                ("eax", a.eax, b.eax),
                ("ebx", a.ebx, b.ebx),
                ("ecx", a.ecx, b.ecx),
                ("edx", a.edx, b.edx),
            ] {
                if x != y {
                    out.push(format!(
                        "{:#x}/{:#x}: {reg} {x:#010x} -> {y:#010x}",
                        a.eax_in, a.ecx_in
                    ));
                }
            }
        }
        if self.entries.len() != corrected.entries.len() {
            out.push(format!(
                "entry count {} -> {}",
                self.entries.len(),
                corrected.entries.len()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn kvm_entry(function: u32, index: u32, flags: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: function + 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
            ..Default::default()
        }
    }

    #[test]
    fn layout_and_round_trip() {
        let page = CpuidPage::from_kvm(&[
            kvm_entry(0x0, 5, 0),
            kvm_entry(0x7, 1, KVM_CPUID_FLAG_SIGNIFICANT_INDEX),
            kvm_entry(0xd, 1, KVM_CPUID_FLAG_SIGNIFICANT_INDEX),
            kvm_entry(0xd, 2, KVM_CPUID_FLAG_SIGNIFICANT_INDEX),
        ])
        .unwrap();
        let bytes = page.to_page();
        assert_eq!(&bytes[0..4], &4u32.to_le_bytes());
        assert!(bytes[4..16].iter().all(|&b| b == 0));
        // Entry 0: leaf 0 with its sub-leaf ignored.
        assert_eq!(&bytes[16..24], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[16 + 24..16 + 28], &1u32.to_le_bytes());
        // Entry 1 starts 48 bytes later, sub-leaf kept.
        assert_eq!(&bytes[64..72], &[7, 0, 0, 0, 1, 0, 0, 0]);
        // 0xD/1 has XCR0_IN = 1, 0xD/2 has 0.
        assert_eq!(&bytes[112 + 8..112 + 16], &1u64.to_le_bytes());
        assert_eq!(&bytes[160 + 8..160 + 16], &0u64.to_le_bytes());
        assert_eq!(CpuidPage::parse(&bytes).unwrap(), page);
    }

    #[test]
    fn limits_are_enforced() {
        let many = vec![kvm_entry(1, 0, 0); 65];
        assert_eq!(
            CpuidPage::from_kvm(&many),
            Err(CpuidPageError::TooManyEntries(65))
        );
        assert!(CpuidPage::from_kvm(&many[..64]).is_ok());
        // All-zero leaves read the same whether listed or not: they take no slot.
        let mut zeros = vec![kvm_entry(1, 0, 0); 64];
        zeros.extend((0x8000_0002..0x8000_0020).map(|leaf| kvm_cpuid_entry2 {
            function: leaf,
            ..Default::default()
        }));
        assert_eq!(CpuidPage::from_kvm(&zeros).unwrap().entries.len(), 64);
        let mut bytes = vec![0u8; 4096];
        bytes[0] = 65;
        assert_eq!(CpuidPage::parse(&bytes), Err(CpuidPageError::BadCount(65)));
        assert_eq!(CpuidPage::parse(&[0; 16]), Err(CpuidPageError::Size(16)));
    }

    #[test]
    fn differences_name_leaf_and_register() {
        let asked = CpuidPage::from_kvm(&[kvm_entry(7, 0, 1)]).unwrap();
        let mut fixed = asked.clone();
        fixed.entries[0].ebx = 0;
        assert_eq!(
            asked.differences(&fixed),
            vec!["0x7/0x0: ebx 0x00000002 -> 0x00000000"]
        );
        assert!(asked.differences(&asked).is_empty());
    }
}
