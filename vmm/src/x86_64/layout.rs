//! Where the VMM puts things in guest physical memory, and the e820 map that describes it.
//!
//! Everything the boot protocols need sits in the first megabyte, below the kernel:
//!
//! | range              | content                                             |
//! |--------------------|-----------------------------------------------------|
//! | 0x472              | BIOS warm-reset flag (read on a guest reset)        |
//! | 0x500              | GDT (5 entries), then an empty IDT                  |
//! | 0x6000             | PVH `hvm_start_info`, memory map right after it     |
//! | 0x7000             | Linux zero page (`boot_params`)                     |
//! | 0x8000..0x9000     | boot stack (grows down from 0x8ff0)                 |
//! | 0x9000..0xf000     | identity page tables for the first 4 GiB            |
//! | 0x20000            | kernel command line                                 |
//! | 0x9fc00..0x100000  | EBDA with the MP table, then the legacy hole        |
//! | 0x100000..         | kernel, then initrd at the top of low RAM           |
//! | 0xd000_0000        | boot timer, then one 4 KiB window per virtio device |
//! | ..4 GiB            | rest of the 32-bit MMIO gap: IOAPIC, LAPIC          |

/// The BIOS data area's warm-reset flag (40:72h): the word a guest writes before a reset to
/// say warm (`BIOS_WARM_RESET`) or cold (0). Linux writes warm for a panic under
/// `reboot=panic_warm`, which is how the VMM tells a panic from a `reboot`.
pub const BIOS_WARM_RESET_FLAG: u64 = 0x472;
/// The flag's warm-reset value.
pub const BIOS_WARM_RESET: u16 = 0x1234;
/// GDT base.
pub const GDT_START: u64 = 0x500;
/// IDT base (an empty IDT: the guest installs its own before enabling interrupts).
pub const IDT_START: u64 = 0x520;
/// PVH start info.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux boot_params ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table (PML4).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages) mapping 0..4 GiB.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line Linux x86 accepts (COMMAND_LINE_SIZE is 2048 with the NUL).
pub const CMDLINE_MAX_LEN: usize = 2047;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole: where the kernel goes.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
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

/// Type of an e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the guest must not use it as RAM.
    Reserved = 2,
}

/// One e820 entry: `[addr, addr + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// The guest RAM regions for `mem_bytes` of memory: one below the MMIO gap and, when the
/// memory does not fit there, one starting at 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// The memory map given to the guest: low RAM up to the EBDA, the EBDA and legacy hole
/// reserved, RAM from 1 MiB to the end of each region.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    for (start, size) in ram_regions(mem_bytes) {
        let start = start.max(HIMEM_START);
        let end = if start == HIMEM_START {
            size
        } else {
            start + size
        };
        map.push(E820Entry {
            addr: start,
            size: end - start,
            kind: E820Kind::Ram,
        });
    }
    map
}

/// The end of RAM below the MMIO gap.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_has_low_ram_and_one_high_region() {
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0x10_0000,
                size: (128 << 20) - 0x10_0000,
                kind: E820Kind::Ram
            }
        );
        // Everything but the EBDA and the legacy hole is usable.
        assert_eq!(usable(&map), (128 << 20) - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let mem = 5u64 << 30;
        assert_eq!(
            ram_regions(mem),
            vec![(0, 0xd000_0000), (1 << 32, mem - 0xd000_0000)]
        );
        let map = e820_map(mem);
        let last = map.last().unwrap();
        assert_eq!(last.addr, 1 << 32);
        assert_eq!(last.addr + last.size, (1 << 32) + mem - 0xd000_0000);
        assert_eq!(usable(&map), mem - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut areas = [
            (GDT_START, IDT_START + 8),
            (PVH_INFO_START, PVH_INFO_START + 0x1000),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (ZERO_PAGE_START + 0x1000, BOOT_STACK_POINTER),
            (PML4_START, PDE_START + 4 * 0x1000),
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
