//! The x86_64 boot structures every Veil guest starts from, built once for both boots: the
//! VMM's direct boot (writing them into guest memory) and `veil igvm build` (putting them into
//! the SNP image as measured pages).
//!
//! They live here rather than in veil-vmm because veil-vmm depends on veil-snp, not the other
//! way round; the zero page uses `linux_loader`'s `boot_params` rather than raw offsets.
//! The kernel ELF reader is here too, the one reader every part of Veil uses.

pub mod elf;
pub mod gdt;
pub mod layout;
pub mod page_tables;
pub mod zero_page;
