//! The Intel MultiProcessor Specification (1.4) table, through which a guest without ACPI
//! finds its processors, the IOAPIC and how legacy IRQs are routed.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START};

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table supports at most {max} vCPUs, {requested} requested")]
    TooManyCpus { requested: u32, max: u32 },
    #[error("writing the MP table to guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// APIC ids are 8 bits and the IOAPIC takes the id after the last CPU (0xff is broadcast).
pub const MAX_CPUS: u32 = 254;
/// Number of IOAPIC input pins of KVM's in-kernel IOAPIC.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REVISION: u8 = 4;
const ISA_BUS: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// The configuration table (header and entries) for `cpus` processors.
fn config_table(cpus: u8) -> Vec<u8> {
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC present).
        entries.extend(0x600u32.to_le_bytes());
        entries.extend(((1u32 << 0) | (1 << 9)).to_le_bytes());
        entries.extend([0u8; 8]);
    }
    entries.extend([ENTRY_BUS, ISA_BUS]);
    entries.extend(*b"ISA   ");
    let ioapic_id = cpus;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    // KVM's default GSI routing sends GSI n to IOAPIC pin n (and GSIs 0-15 to the PICs too),
    // so every pin, the PIT's IRQ 0 included, is an ordinary interrupt from the same-numbered
    // source. The PIC's ExtINT reaches the CPUs through LINT0 only: an IOAPIC pin announced as
    // ExtINT makes Linux trust the table over the (unprogrammed) IOAPIC and then find no
    // timer pin, which oopses stock kernels in setup_IO_APIC.
    for irq in 0..IOAPIC_PINS {
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS,
            irq,
            ioapic_id,
            irq,
        ]);
    }
    // LINT0 of every local APIC is the PIC's ExtINT, LINT1 is NMI.
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        ISA_BUS,
        0,
        0xff,
        0,
    ]);
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        ISA_BUS,
        0,
        0xff,
        1,
    ]);

    let entry_count = u16::from(cpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend(*b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.extend([SPEC_REVISION, 0]); // checksum patched below
    table.extend(*b"VEIL    ");
    table.extend(*b"MICROVM     ");
    table.extend(0u32.to_le_bytes()); // no OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(entry_count.to_le_bytes());
    table.extend((APIC_START as u32).to_le_bytes());
    table.extend(0u32.to_le_bytes()); // no extended entries
    table.extend(entries);
    table[7] = checksum(&table);
    table
}

/// The 16-byte floating pointer structure pointing at a table at `table_addr`.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut mpf = [0u8; 16];
    mpf[..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = SPEC_REVISION;
    // feature bytes stay 0: a configuration table is present
    mpf[10] = checksum(&mpf);
    mpf
}

/// Writes the MP floating pointer and table at the start of the EBDA, where Linux scans.
pub fn write_mptable(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus {
            requested: cpus,
            max: MAX_CPUS,
        });
    }
    let table_addr = EBDA_START + 16;
    mem.write_slice(
        &floating_pointer(table_addr as u32),
        GuestAddress(EBDA_START),
    )?;
    mem.write_slice(&config_table(cpus as u8), GuestAddress(table_addr))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Walks the table like a guest does and returns the APIC ids of enabled processors.
    fn processors(table: &[u8]) -> Vec<(u8, u8)> {
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = 44;
        let mut cpus = Vec::new();
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    cpus.push((table[at + 1], table[at + 3]));
                    at += 20;
                }
                1..=4 => at += 8,
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(at, table.len(), "entry count and length agree");
        cpus
    }

    #[test]
    fn table_checksums_and_lists_every_cpu() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_mptable(&mem, 3).unwrap();
        let mut mpf = [0u8; 16];
        mem.read_slice(&mut mpf, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(sum(&mpf), 0);
        let table_addr = u32::from_le_bytes(mpf[4..8].try_into().unwrap()) as u64;
        let mut header = [0u8; 44];
        mem.read_slice(&mut header, GuestAddress(table_addr))
            .unwrap();
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(sum(&table), 0);
        assert_eq!(
            processors(&table),
            vec![(0, 3), (1, 1), (2, 1)],
            "BSP first, all enabled"
        );
    }

    /// The I/O interrupt entries as (type, source bus IRQ, destination IOAPIC id, pin).
    fn io_interrupts(table: &[u8]) -> Vec<(u8, u8, u8, u8)> {
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = 44;
        let mut found = Vec::new();
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => at += 20,
                ENTRY_IO_INTERRUPT => {
                    let e = &table[at..at + 8];
                    found.push((e[1], e[5], e[6], e[7]));
                    at += 8;
                }
                _ => at += 8,
            }
        }
        found
    }

    #[test]
    fn ioapic_pins_follow_kvm_default_routing() {
        let table = config_table(2);
        let ioapic_id = 2;
        let interrupts = io_interrupts(&table);
        // Linux (setup_IO_APIC / check_timer) looks up ISA IRQ 0 as an ordinary interrupt to
        // route the timer, and takes an ExtINT IOAPIC pin from the table as a sign that
        // firmware wired the PIC through the IOAPIC, which KVM's IOAPIC never is at boot.
        assert!(
            interrupts.iter().all(|&(kind, ..)| kind == INT_TYPE_INT),
            "no IOAPIC pin is announced as ExtINT: {interrupts:?}"
        );
        // KVM's default routing: GSI n -> IOAPIC pin n, for every pin.
        let expected: Vec<_> = (0..IOAPIC_PINS)
            .map(|pin| (INT_TYPE_INT, pin, ioapic_id, pin))
            .collect();
        assert_eq!(interrupts, expected);
    }

    #[test]
    fn refuses_more_cpus_than_apic_ids() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            write_mptable(&mem, 255),
            Err(MptableError::TooManyCpus { requested: 255, .. })
        ));
        assert!(write_mptable(&mem, 254).is_ok());
    }
}
