//! Boot-time vCPU state: registers, segments, page tables, FPU, MSRs and the local APIC.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use veil_snp::x86_boot::gdt::{self, BOOT_GDT};
use veil_snp::x86_boot::page_tables::identity_page_tables;

use super::layout::*;

/// Errors while putting a vCPU in its boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing the boot GDT, IDT or page tables to guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM rejected the vCPU's {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM set only {set} of {wanted} boot MSRs; the first it refused is {refused:#x}")]
    Msrs {
        set: usize,
        wanted: usize,
        refused: u32,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// How the boot vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info` address.
    Pvh { entry: u64 },
    /// Linux 64-bit boot protocol: long mode, identity-mapped, RSI = `boot_params` address.
    Long64 { entry: u64 },
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the GDT, an empty IDT and the page tables every vCPU shares.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, desc) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(desc.to_gdt_entry(), GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))?;

    // Identity-map 0..4 GiB with 2 MiB pages: the kernel, the boot structures and the 32-bit
    // MMIO gap (devices, IOAPIC, LAPIC) are all reachable before the guest builds its own.
    for (i, table) in identity_page_tables(PML4_START, None).iter().enumerate() {
        mem.write_slice(table, GuestAddress(PML4_START + 0x1000 * i as u64))?;
    }
    Ok(())
}

/// The general-purpose registers at entry.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = PVH_INFO_START;
        }
        EntryMode::Long64 { entry } => {
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// The special registers at entry, starting from what KVM reports after vCPU creation.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let code = match mode {
        EntryMode::Pvh { .. } => gdt::CODE32_SELECTOR,
        EntryMode::Long64 { .. } => gdt::CODE64_SELECTOR,
    };
    sregs.cs = gdt::descriptor(code).to_kvm_segment(code);
    let data = gdt::descriptor(gdt::DATA_SELECTOR).to_kvm_segment(gdt::DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::descriptor(gdt::TSS_SELECTOR).to_kvm_segment(gdt::TSS_SELECTOR);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    match mode {
        EntryMode::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Long64 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// x87 control state as after FNINIT. KVM_SET_FPU does not load MXCSR (KVM keeps its reset
/// value, 0x1f80, which is what the boot protocols expect); the field is set for readers only.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs the boot protocols expect in a defined state.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    // MTRRs enabled, default memory type write-back: without it the guest runs uncached.
    const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets `entries` on the vCPU, failing with the first MSR KVM refused.
pub fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), RegsError> {
    let msrs = Msrs::from_entries(entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
        refused: entries.first().map_or(0, |e| e.index),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
            refused: entries[set].index,
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: Vec<u8> = state.regs[offset..offset + 4]
        .iter()
        .map(|b| *b as u8)
        .collect();
    u32::from_le_bytes(bytes.try_into().expect("four bytes"))
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as the MP table announces and as a
/// PC's firmware would leave them.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    let with_mode = |value: u32, mode: u32| (value & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(&mut lapic, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

/// Puts the boot vCPU in its entry state. Application processors stay in KVM's
/// wait-for-SIPI state: the guest starts them itself.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mode: EntryMode) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs, mode))
        .map_err(kvm("special registers"))?;
    vcpu.set_regs(&boot_regs(mode)).map_err(kvm("registers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_identity_map_the_first_4g() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & 3, 3);
        // Walk a few addresses by hand: 2 MiB pages, phys == virt, no C-bit.
        for addr in [0u64, 0x20_0000, 0x1234_5678, 0xfee0_0000, 0xffff_ffff] {
            let pdpte: u64 = mem
                .read_obj(GuestAddress((pml4 & !0xfff) + (addr >> 30) * 8))
                .unwrap();
            assert_eq!(pdpte & 3, 3);
            let pde: u64 = mem
                .read_obj(GuestAddress((pdpte & !0xfff) + ((addr >> 21) & 511) * 8))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB");
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
    }

    #[test]
    fn gdt_and_idt_do_not_overlap_in_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        for (i, desc) in BOOT_GDT.iter().enumerate() {
            let entry: u64 = mem
                .read_obj(GuestAddress(GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(entry, desc.to_gdt_entry(), "GDT entry {i}");
        }
    }

    #[test]
    fn long_mode_entry_state() {
        let sregs = boot_sregs(
            kvm_sregs::default(),
            EntryMode::Long64 { entry: 0x100_0000 },
        );
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x10, 1));
        let regs = boot_regs(EntryMode::Long64 { entry: 0x100_0000 });
        assert_eq!((regs.rip, regs.rsi), (0x100_0000, ZERO_PAGE_START));
    }

    #[test]
    fn pvh_entry_state() {
        let sregs = boot_sregs(kvm_sregs::default(), EntryMode::Pvh { entry: 0x100_0400 });
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.selector, sregs.cs.db, sregs.cs.l), (0x08, 1, 0));
        let regs = boot_regs(EntryMode::Pvh { entry: 0x100_0400 });
        assert_eq!((regs.rip, regs.rbx), (0x100_0400, PVH_INFO_START));
    }
}
