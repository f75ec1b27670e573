//! Where the VMM puts things in guest physical memory, and the e820 map that describes it.
//! The zero page, stack, page tables, command line, MMIO gap and e820 rules are
//! [`veil_snp::x86_boot::layout`]'s, shared with the SNP image builder; the rest is the VMM's.
//!
//! Everything the boot protocols need sits in the first megabyte, below the kernel:
//!
//! | range              | content                                             |
//! |--------------------|-----------------------------------------------------|
//! | 0x472              | BIOS warm-reset flag (read on a guest reset)        |
//! | 0x500              | GDT (5 entries), then an empty IDT at 0x528         |
//! | 0x6000             | PVH `hvm_start_info`, memory map right after it     |
//! | 0x7000             | Linux zero page (`boot_params`)                     |
//! | 0x8000..0x9000     | boot stack (grows down from 0x8ff0)                 |
//! | 0x9000..0xf000     | identity page tables for the first 4 GiB            |
//! | 0x20000            | kernel command line                                 |
//! | 0x9fc00..0x100000  | EBDA with the MP table, then the legacy hole        |
//! | 0x100000..         | kernel, then initrd at the top of low RAM           |
//! | 0xd000_0000        | boot timer, then one 4 KiB window per virtio device |
//! | ..4 GiB            | rest of the 32-bit MMIO gap: IOAPIC, LAPIC          |

use veil_snp::x86_boot::gdt::BOOT_GDT;
pub use veil_snp::x86_boot::layout::{
    low_ram_end, ram_regions, E820Entry, E820Kind, BOOT_STACK_POINTER, CMDLINE_MAX_LEN,
    CMDLINE_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PML4_START, ZERO_PAGE_START,
};

/// The BIOS data area's warm-reset flag (40:72h): the word a guest writes before a reset to
/// say warm (`BIOS_WARM_RESET`) or cold (0). Linux writes warm for a panic under
/// `reboot=panic_warm`, which is how the VMM tells a panic from a `reboot`.
pub const BIOS_WARM_RESET_FLAG: u64 = 0x472;
/// The flag's warm-reset value.
pub const BIOS_WARM_RESET: u16 = 0x1234;

/// GDT base.
pub const GDT_START: u64 = 0x500;
/// IDT base, right after the GDT (an empty IDT: the guest installs its own before enabling
/// interrupts).
pub const IDT_START: u64 = GDT_START + 8 * BOOT_GDT.len() as u64;
/// PVH start info.
pub const PVH_INFO_START: u64 = 0x6000;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// The boot timer's MMIO page: the guest writes 123 at offset 0 when it has booted.
pub const BOOT_TIMER_ADDR: u64 = MMIO_GAP_START;
/// First virtio-mmio window; each device takes the next 4 KiB page.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
/// IOAPIC base address (fixed by the in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) and identity-map page, placed just below the BIOS area.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// See [`KVM_TSS_START`].
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// Smallest guest memory the layout above can hold along with a tiny kernel.
pub const MIN_MEM_BYTES: u64 = 4 << 20;

/// The memory map given to the guest: low RAM up to the EBDA, the EBDA and legacy hole
/// reserved, RAM from 1 MiB to the end of each region.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    veil_snp::x86_boot::layout::e820_map(mem_bytes, EBDA_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_snp::x86_boot::page_tables::PAGE_TABLE_PAGES;

    #[test]
    fn ebda_and_legacy_hole_are_reserved() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map[..2],
            [
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820Kind::Reserved
                }
            ]
        );
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut areas = [
            (GDT_START, GDT_START + 8 * BOOT_GDT.len() as u64),
            (IDT_START, IDT_START + 8),
            (PVH_INFO_START, PVH_INFO_START + 0x1000),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (ZERO_PAGE_START + 0x1000, BOOT_STACK_POINTER),
            (PML4_START, PML4_START + PAGE_TABLE_PAGES * 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_LEN as u64 + 1),
            (EBDA_START, HIMEM_START),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
        assert!(areas.last().unwrap().1 <= HIMEM_START);
    }
}
