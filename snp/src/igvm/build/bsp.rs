//! The BSP's long-mode entry state as an IGVM SNP VP context (see the parent module for
//! what Linux expects at `startup_64`).

use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use zerocopy::FromZeros;

use super::boot_tables::{CODE64_ATTRIB, CODE64_SELECTOR, DATA_ATTRIB, DATA_SELECTOR, GDT_ENTRIES};
use super::layout::{GDT_GPA, PML4_GPA, STACK_POINTER, ZERO_PAGE_GPA};
use crate::vmsa::DEFAULT_G_PAT;

fn selector(selector: u16, attrib: u16) -> SevSelector {
    SevSelector {
        selector,
        attrib,
        limit: 0xffff_ffff,
        base: 0,
    }
}

/// The BSP's long-mode entry state.
pub fn bsp_vmsa(entry: u64, c_bit: u8) -> Box<SevVmsa> {
    const CR0_PE_ET_PG: u64 = 0x8000_0011;
    const CR4_PAE: u64 = 0x20;
    const EFER_LME_LMA: u64 = 0x500;
    let mut v = Box::new(SevVmsa::new_zeroed());
    let data = selector(DATA_SELECTOR, DATA_ATTRIB);
    v.cs = selector(CODE64_SELECTOR, CODE64_ATTRIB);
    (v.ds, v.es, v.ss, v.fs, v.gs) = (data, data, data, data, data);
    v.gdtr = SevSelector {
        base: GDT_GPA,
        limit: (GDT_ENTRIES * 8 - 1) as u32,
        ..SevSelector::new_zeroed()
    };
    // The architectural reset values for LDTR and TR: Linux loads its own before use.
    v.ldtr = SevSelector {
        attrib: 0x82,
        limit: 0xffff,
        ..SevSelector::new_zeroed()
    };
    v.tr = SevSelector {
        attrib: 0x8b,
        limit: 0xffff,
        ..SevSelector::new_zeroed()
    };
    v.efer = EFER_LME_LMA;
    v.cr0 = CR0_PE_ET_PG;
    v.cr4 = CR4_PAE;
    v.cr3 = PML4_GPA | (1u64 << c_bit);
    v.rflags = 0x2;
    v.rip = entry;
    v.rsp = STACK_POINTER;
    v.rsi = ZERO_PAGE_GPA;
    v.pat = DEFAULT_G_PAT;
    v.xcr0 = 1;
    v.mxcsr = 0x1f80;
    v.x87_fcw = 0x37f;
    v.sev_features = SevFeatures::new().with_snp(true);
    v
}
