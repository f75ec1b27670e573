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

use super::boot_tables::{CODE64_ATTRIB, CODE64_SELECTOR, DATA_ATTRIB, DATA_SELECTOR, GDT_ENTRIES};
use super::layout::{GDT_GPA, PML4_GPA, STACK_POINTER, ZERO_PAGE_GPA};
use crate::vmsa::{Segment, Vmsa, DEFAULT_G_PAT};

/// SEV_FEATURES bit 0: SNP active (the only feature the image asks for).
const SEV_FEATURES_SNP: u64 = 1;

fn flat(selector: u16, attrib: u16) -> Segment {
    Segment::new(selector, attrib, 0xffff_ffff, 0)
}

/// The BSP's long-mode entry registers.
pub fn bsp_state(entry: u64, c_bit: u8) -> Vmsa {
    const CR0_PE_ET_PG: u64 = 0x8000_0011;
    const CR4_PAE: u64 = 0x20;
    const EFER_LME_LMA: u64 = 0x500;
    let data = flat(DATA_SELECTOR, DATA_ATTRIB);
    Vmsa {
        cs: flat(CODE64_SELECTOR, CODE64_ATTRIB),
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
        cr3: PML4_GPA | (1u64 << c_bit),
        rflags: 0x2,
        rip: entry,
        rsp: STACK_POINTER,
        rsi: ZERO_PAGE_GPA,
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
}
