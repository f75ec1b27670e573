//! Where `veil igvm build` puts things in guest physical memory, and the e820 map for a
//! given memory size. The zero page, stack, page tables, command line and memory map are
//! those of [`crate::x86_boot::layout`], shared with the VMM's direct boot; the pages below
//! the zero page are the SNP image's own:
//!
//! | GPA                  | content                          | SNP page type        |
//! |----------------------|----------------------------------|----------------------|
//! | 0x1000               | GDT (null, -, code64 0x10, data 0x18) | NORMAL          |
//! | 0x2000               | CC blob (`cc_blob_sev_info`)     | NORMAL               |
//! | 0x3000               | secrets page                     | SECRETS              |
//! | 0x4000               | CPUID page (filled by the VMM)   | CPUID                |
//! | 0x7000               | zero page (`boot_params`)        | NORMAL               |
//! | 0x8000..0x9000       | boot stack (RSP 0x8ff0)          | NORMAL zeros         |
//! | 0x9000..0xf000       | PML4, PDPT, 4 PDs (C-bit set)    | NORMAL               |
//! | 0x20000              | kernel command line              | NORMAL               |
//! | other RAM < 0xa0000  | RAM                              | NORMAL zeros         |
//! | 0xa0000..0x100000    | legacy hole, e820 reserved       | not launched         |
//! | kernel p_paddr..     | PT_LOAD segments                 | NORMAL               |
//! | top of low RAM       | initrd                           | NORMAL               |
//! | other RAM            | RAM, below 0xd000_0000 and from 4 GiB | NORMAL zeros    |
//!
//! "NORMAL zeros": a page directive without data (all-zero data pages are written so too).

pub use crate::x86_boot::layout::{
    low_ram_end, E820Entry, E820Kind, BOOT_STACK_POINTER, CMDLINE_MAX_LEN, CMDLINE_START,
    HIMEM_START, LOW_MEM_END, PML4_START, ZERO_PAGE_START,
};

pub const GDT_GPA: u64 = 0x1000;
pub const CC_BLOB_GPA: u64 = 0x2000;
pub const SECRETS_GPA: u64 = 0x3000;
pub const CPUID_GPA: u64 = 0x4000;

/// The guest's memory map: conventional memory, the legacy hole reserved (no EBDA: the SNP
/// guest gets no MP table), RAM from 1 MiB to the MMIO gap, and the rest from 4 GiB.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    crate::x86_boot::layout::e820_map(mem_bytes, LOW_MEM_END)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_sit_in_low_ram_apart() {
        let mut pages = [
            GDT_GPA,
            CC_BLOB_GPA,
            SECRETS_GPA,
            CPUID_GPA,
            ZERO_PAGE_START,
            CMDLINE_START,
        ];
        pages.sort();
        assert!(pages.windows(2).all(|w| w[0] + 0x1000 <= w[1]));
        assert_eq!(e820_map(64 << 20)[1].addr, LOW_MEM_END);
    }
}
