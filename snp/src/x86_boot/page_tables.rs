//! The identity page tables the boot vCPU starts on in long mode, with the C-bit where SNP
//! needs it (the VMM's plain boot builds them without).
//!
//! Under SEV, instruction fetches and page-table walks are always private, but a data access
//! through a leaf entry without the C-bit is a *shared* access: under SNP, to a private
//! (launch-updated) page that is an RMP fault. Linux's `startup_64` runs
//! on the loader's tables until `__startup_64` has built its own: it reads boot_params, the
//! CC blob and the CPUID page, writes its own data (`sev_verify_cbit` stores to kernel data
//! through these tables and reads it back through the new ones). So every leaf carries the
//! C-bit; the table entries and CR3 carry it too, as in Linux's own tables (the decompressor
//! ORs `sme_me_mask` into each level, `startup_64` loads CR3 with it).

use crate::page_info::PAGE_SIZE;

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_2M: u64 = 1 << 7;
/// Gigabytes the identity map covers: everything below 4 GiB (the kernel, the boot
/// structures, an initrd in low RAM, and for the VMM the 32-bit MMIO gap: devices, IOAPIC,
/// LAPIC).
pub const IDENTITY_GIB: u64 = 4;
/// Pages of page tables: PML4, PDPT and one page directory per GiB.
pub const PAGE_TABLE_PAGES: u64 = 2 + IDENTITY_GIB;

/// The identity map of the first [`IDENTITY_GIB`] GiB with 2 MiB pages, as consecutive
/// pages starting at `pml4_gpa`: PML4, PDPT, then the page directories. `c_bit` is the
/// encryption bit position (CPUID 0x8000001F EBX[5:0]); `None` builds plain tables.
pub fn identity_page_tables(pml4_gpa: u64, c_bit: Option<u8>) -> Vec<Vec<u8>> {
    let c = c_bit.map_or(0, |b| 1u64 << b);
    let entry_page = |entries: &mut dyn Iterator<Item = u64>| {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for (slot, e) in page.chunks_exact_mut(8).zip(entries) {
            slot.copy_from_slice(&e.to_le_bytes());
        }
        page
    };
    let pdpt_gpa = pml4_gpa + PAGE_SIZE;
    let pd_gpa = |gib: u64| pdpt_gpa + PAGE_SIZE * (1 + gib);
    let mut pages = vec![
        entry_page(&mut std::iter::once(pdpt_gpa | c | PRESENT_WRITABLE)),
        entry_page(&mut (0..IDENTITY_GIB).map(|g| pd_gpa(g) | c | PRESENT_WRITABLE)),
    ];
    for gib in 0..IDENTITY_GIB {
        pages.push(entry_page(&mut (0..512u64).map(|i| {
            ((gib << 30) | (i << 21)) | c | PRESENT_WRITABLE | HUGE_2M
        })));
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(page: &[u8], index: u64) -> u64 {
        let at = index as usize * 8;
        u64::from_le_bytes(page[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn walk_translates_identity_with_c_bit() {
        let base = 0x9000;
        let c = 1u64 << 51;
        let pages = identity_page_tables(base, Some(51));
        assert_eq!(pages.len() as u64, PAGE_TABLE_PAGES);
        let page_at = |gpa: u64| &pages[((gpa - base) / PAGE_SIZE) as usize];
        for va in [0u64, 0x7000, 0x100_0000, 0x1234_5678, 0xffff_ffff] {
            let pml4e = entry(&pages[0], va >> 39);
            assert_eq!(pml4e & (c | 1), c | 1);
            let pdpte = entry(page_at(pml4e & !c & !0xfff), (va >> 30) & 511);
            assert_eq!(pdpte & (c | 1), c | 1);
            let pde = entry(page_at(pdpte & !c & !0xfff), (va >> 21) & 511);
            assert_eq!(pde & (c | HUGE_2M | 1), c | HUGE_2M | 1);
            assert_eq!((pde & !c & !0x1f_ffff & !0xfff) | (va & 0x1f_ffff), va);
        }
    }
}
