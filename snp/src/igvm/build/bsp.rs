//! The BSP's long-mode entry state (see the parent module for what Linux expects at
//! `startup_64`) and the IGVM SNP VP context that carries it.
//!
//! The VP context holds the VMSA page exactly as KVM will build and measure it from these
//! registers ([`Vmsa::as_kvm_builds`]: EFER.SVME, CR4.MCE, CPL from SS, GDTR/IDTR reduced),
//! not the registers alone: a tool that measures the file's VMSA bytes as they are (such as
//! `igvmmeasure`) then gets the digest the hardware reports. Loading it back gives the same
//! registers, because [`Vmsa::as_kvm_builds`] changes nothing it has already applied.

use igvm::snp_defs::SevVmsa;
use zerocopy::{FromZeros, IntoBytes};

use super::layout::{BOOT_STACK_POINTER, GDT_GPA, PML4_START, ZERO_PAGE_START};
use crate::page_info::PAGE_SIZE;
use crate::vmsa::{Segment, Vmsa, DEFAULT_G_PAT};
use crate::x86_boot::gdt::{descriptor, CODE64_SELECTOR, DATA_SELECTOR};

/// The image's GDT has four entries: null, unused, the 64-bit code and the data segments of
/// the shared boot GDT at their selectors (the 32-bit code and TSS entries the VMM's direct
/// boot also has are not needed by the 64-bit entry and were never in the measured page).
const GDT_ENTRIES: usize = 4;

/// SEV_FEATURES bit 0: SNP active (the only feature the image asks for).
const SEV_FEATURES_SNP: u64 = 1;

/// The GDT page.
pub fn gdt_page() -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for selector in [CODE64_SELECTOR, DATA_SELECTOR] {
        let at = usize::from(selector);
        page[at..at + 8].copy_from_slice(&descriptor(selector).to_gdt_entry().to_le_bytes());
    }
    page
}

/// The segment register loaded from `selector` of the boot GDT.
fn flat(selector: u16) -> Segment {
    let desc = descriptor(selector);
    Segment::new(selector, desc.vmsa_attributes(), desc.expanded_limit(), 0)
}

/// The BSP's long-mode entry registers.
pub fn bsp_state(entry: u64, c_bit: u8) -> Vmsa {
    const CR0_PE_ET_PG: u64 = 0x8000_0011;
    const CR4_PAE: u64 = 0x20;
    const EFER_LME_LMA: u64 = 0x500;
    let data = flat(DATA_SELECTOR);
    Vmsa {
        cs: flat(CODE64_SELECTOR),
        ds: data,
        es: data,
        ss: data,
        fs: data,
        gs: data,
        gdtr: Segment::new(0, 0, (GDT_ENTRIES * 8 - 1) as u32, GDT_GPA),
        // The architectural reset values for LDTR and TR: Linux loads its own before use.
        ldtr: Segment::new(0, 0x82, 0xffff, 0),
        tr: Segment::new(0, 0x8b, 0xffff, 0),
        efer: EFER_LME_LMA,
        cr0: CR0_PE_ET_PG,
        cr4: CR4_PAE,
        cr3: PML4_START | (1u64 << c_bit),
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        g_pat: DEFAULT_G_PAT,
        xcr0: 1,
        mxcsr: 0x1f80,
        x87_fcw: 0x37f,
        sev_features: SEV_FEATURES_SNP,
        ..Vmsa::default()
    }
}

/// The VP context for the file: the VMSA page KVM builds from `regs`.
pub fn kvm_vmsa(regs: &Vmsa) -> Box<SevVmsa> {
    let page = regs.as_kvm_builds().to_page();
    // `SevVmsa` is the architectural save area, the layout `Vmsa::to_page` writes, and no
    // larger than the page (checked below).
    let mut vmsa = Box::new(SevVmsa::new_zeroed());
    let bytes = vmsa.as_mut_bytes();
    let len = bytes.len();
    bytes.copy_from_slice(&page[..len]);
    vmsa
}

const _: () = assert!(size_of::<SevVmsa>() <= crate::page_info::PAGE_SIZE as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_vmsa_is_the_page_kvm_measures() {
        let regs = bsp_state(0x100_0040, 51);
        let vmsa = kvm_vmsa(&regs);
        let mut bytes = vmsa.as_bytes().to_vec();
        bytes.resize(4096, 0);
        assert_eq!(bytes, regs.as_kvm_builds().to_page());
        // What KVM forces is in the file: EFER.SVME, CR4.MCE.
        assert_eq!((vmsa.efer, vmsa.cr4), (0x1500, 0x60));
        assert_eq!(regs.as_kvm_builds().as_kvm_builds(), regs.as_kvm_builds());
    }

    #[test]
    fn gdt_page_holds_flat_code64_and_data() {
        let page = gdt_page();
        let entry = |i: usize| u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().unwrap());
        // Architectural encodings of flat 64-bit code and flat 32-bit data descriptors.
        assert_eq!(entry(2), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(3), 0x00cf_9300_0000_ffff);
        assert_eq!((entry(0), entry(1), entry(4)), (0, 0, 0));
        let regs = bsp_state(0x100_0040, 51);
        assert_eq!((regs.cs.attrib, regs.ds.attrib), (0xa09b, 0xc093));
    }
}
