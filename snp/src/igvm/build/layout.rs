//! Where `veil igvm build` puts things in guest physical memory, and the e820 map for a
//! given memory size. Re-derived for the SNP image (not shared with the VMM's normal boot):
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

use super::zero_page::{E820Entry, E820Type};

pub const GDT_GPA: u64 = 0x1000;
pub const CC_BLOB_GPA: u64 = 0x2000;
pub const SECRETS_GPA: u64 = 0x3000;
pub const CPUID_GPA: u64 = 0x4000;
pub const ZERO_PAGE_GPA: u64 = 0x7000;
pub const STACK_POINTER: u64 = 0x8ff0;
pub const PML4_GPA: u64 = 0x9000;
pub const CMDLINE_GPA: u64 = 0x20000;
/// Longest command line (Linux x86 COMMAND_LINE_SIZE is 2048 with the NUL).
pub const CMDLINE_MAX_LEN: usize = 2047;
/// End of conventional memory; the legacy VGA/ROM hole follows.
pub const LOW_MEM_END: u64 = 0xa_0000;
/// First byte above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (the VMM's devices, IOAPIC, LAPIC); RAM resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;

// The page tables (6 pages) end before the command line and miss the stack page; the
// command line and its NUL end below the legacy hole.
const _: () = assert!(PML4_GPA + 6 * 0x1000 <= CMDLINE_GPA && STACK_POINTER < PML4_GPA);
const _: () = assert!(CMDLINE_GPA + (CMDLINE_MAX_LEN as u64) < LOW_MEM_END);

/// RAM below the MMIO gap for `mem_bytes` of memory.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

/// The guest's memory map: conventional memory, the legacy hole reserved, RAM from 1 MiB
/// to the MMIO gap, and the rest from 4 GiB. `mem_bytes` is at least 2 MiB.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let ram = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820Type::Ram,
    };
    let mut map = vec![
        ram(0, LOW_MEM_END),
        E820Entry {
            addr: LOW_MEM_END,
            size: HIMEM_START - LOW_MEM_END,
            kind: E820Type::Reserved,
        },
        ram(HIMEM_START, low_ram_end(mem_bytes)),
    ];
    if mem_bytes > MMIO_GAP_START {
        map.push(ram(MMIO_GAP_END, MMIO_GAP_END + mem_bytes - MMIO_GAP_START));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_guest_continues_above_4g() {
        let mem = 5u64 << 30;
        let map = e820_map(mem);
        assert_eq!(map.len(), 4);
        assert_eq!(
            (map[2].addr, map[2].addr + map[2].size),
            (HIMEM_START, MMIO_GAP_START)
        );
        assert_eq!(map[3].addr, 1 << 32);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        // All memory but the 384 KiB legacy hole is RAM.
        assert_eq!(ram, mem - (HIMEM_START - LOW_MEM_END));
    }

    #[test]
    fn boot_structures_sit_in_low_ram_apart() {
        let mut pages = [
            GDT_GPA,
            CC_BLOB_GPA,
            SECRETS_GPA,
            CPUID_GPA,
            ZERO_PAGE_GPA,
            CMDLINE_GPA,
        ];
        pages.sort();
        assert!(pages.windows(2).all(|w| w[0] + 0x1000 <= w[1]));
    }
}
