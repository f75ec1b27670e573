//! The guest-physical layout both boots share, and the e820 map that describes it.
//!
//! | GPA                | content                                             |
//! |--------------------|-----------------------------------------------------|
//! | 0x7000             | Linux zero page (`boot_params`)                     |
//! | 0x8000..0x9000     | boot stack (grows down from 0x8ff0)                 |
//! | 0x9000..0xf000     | identity page tables for the first 4 GiB            |
//! | 0x20000            | kernel command line                                 |
//! | ..0x100000         | reserved from the caller's end of low RAM: legacy hole |
//! | 0x100000..         | kernel, then initrd at the top of low RAM           |
//! | 0xd000_0000..4 GiB | 32-bit MMIO gap; RAM beyond it continues at 4 GiB   |
//!
//! Each boot adds its own pages below 0x7000 (the VMM's GDT and PVH info, the SNP image's GDT,
//! CC blob, secrets and CPUID pages) and says where low RAM ends (the VMM reserves an EBDA for
//! its MP table).

/// Linux boot_params ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table (PML4); the PDPT and page directories follow it page by page.
pub const PML4_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line Linux x86 accepts (COMMAND_LINE_SIZE is 2048 with the NUL).
pub const CMDLINE_MAX_LEN: usize = 2047;
/// End of conventional memory; the legacy VGA/ROM hole follows.
pub const LOW_MEM_END: u64 = 0xa_0000;
/// First byte above the legacy hole: where the kernel goes.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

// The page tables (PML4, PDPT, 4 PDs) sit between the stack and the command line, and the
// command line with its NUL ends below the legacy hole.
const _: () = assert!(
    BOOT_STACK_POINTER < PML4_START
        && PML4_START + super::page_tables::PAGE_TABLE_PAGES * 0x1000 <= CMDLINE_START
);
const _: () = assert!(CMDLINE_START + (CMDLINE_MAX_LEN as u64) < LOW_MEM_END);

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

/// The end of RAM below the MMIO gap.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

/// The memory map given to the guest: RAM below `low_ram_top` (at most [`LOW_MEM_END`]),
/// reserved from there to 1 MiB, RAM from 1 MiB to the end of each region of
/// [`ram_regions`]. `mem_bytes` is above 1 MiB.
pub fn e820_map(mem_bytes: u64, low_ram_top: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: low_ram_top,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: low_ram_top,
            size: HIMEM_START - low_ram_top,
            kind: E820Kind::Reserved,
        },
    ];
    for (start, size) in ram_regions(mem_bytes) {
        let end = start + size;
        let start = start.max(HIMEM_START);
        map.push(E820Entry {
            addr: start,
            size: end - start,
            kind: E820Kind::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const EBDA: u64 = 0x9fc00;

    fn usable(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_has_low_ram_and_one_high_region() {
        let map = e820_map(128 << 20, EBDA);
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
        assert_eq!(usable(&map), (128 << 20) - (0x10_0000 - EBDA));
        assert_eq!(e820_map(128 << 20, LOW_MEM_END)[1].addr, LOW_MEM_END);
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let mem = 5u64 << 30;
        assert_eq!(
            ram_regions(mem),
            vec![(0, 0xd000_0000), (1 << 32, mem - 0xd000_0000)]
        );
        let map = e820_map(mem, LOW_MEM_END);
        assert_eq!(map.len(), 4);
        assert_eq!(
            (map[2].addr, map[2].addr + map[2].size),
            (HIMEM_START, MMIO_GAP_START)
        );
        let last = map.last().unwrap();
        assert_eq!(last.addr, 1 << 32);
        assert_eq!(last.addr + last.size, (1 << 32) + mem - 0xd000_0000);
        // All memory but the 384 KiB legacy hole is RAM.
        assert_eq!(usable(&map), mem - (HIMEM_START - LOW_MEM_END));
    }
}
