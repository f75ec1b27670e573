//! The floor: the least a VMM must do to boot the tiny PVH guest and show its line. It opens
//! KVM, creates a VM and one vCPU, maps guest memory, loads the ELF's segments, enters the PVH
//! entry in 32-bit protected mode and runs, copying COM1 writes to stdout. Nothing else: no
//! interrupt controller, no boot information for the guest, no device beyond the serial
//! transmit register and the i8042 reset command.

use std::io::Write;

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::pvh_elf::{ElfError, PvhElf};

const COM1_DATA: u16 = 0x3f8;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
const CR0_PE: u64 = 1;
/// Largest guest memory the floor accepts (64 GiB).
pub const MAX_MEM_MIB: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;

/// Why the floor could not run its guest.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("cannot read guest {path}: {source}")]
    ReadGuest {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("guest is not a PVH ELF: {0}")]
    Elf(#[from] ElfError),
    #[error("KVM refused to {action}: {source}")]
    Kvm {
        action: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {0} MiB is out of range: it must be between 2 and {MAX_MEM_MIB} MiB")]
    MemorySize(u64),
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    Memory { mib: u64, reason: String },
    #[error("segment at {paddr:#x} ({size} bytes) does not fit in {mib} MiB of guest memory")]
    SegmentOutside { paddr: u64, size: u64, mib: u64 },
    #[error("guest stopped unexpectedly: {0}")]
    UnexpectedExit(String),
    #[error("cannot write the console to stdout: {0}")]
    Console(std::io::Error),
}

fn kvm(action: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
    move |source| FloorError::Kvm { action, source }
}

/// How the guest ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FloorEnd {
    /// The guest asked the i8042 for a reset.
    Reset,
    /// The guest halted; with no interrupt controller nothing can wake it.
    Halted,
}

/// Boots `elf` in `mem_mib` MiB of memory and runs it until it resets or halts, writing its
/// COM1 output to `console` line by line.
pub fn run(elf: &[u8], mem_mib: u64, console: &mut dyn Write) -> Result<FloorEnd, FloorError> {
    if !(2..=MAX_MEM_MIB).contains(&mem_mib) {
        return Err(FloorError::MemorySize(mem_mib));
    }
    let elf = PvhElf::parse(elf)?;
    let kvm_sys = Kvm::new().map_err(kvm("open /dev/kvm"))?;
    let mem_bytes = mem_mib << 20;
    // Declared before the VM so that it is dropped after it.
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_bytes as usize)])
        .map_err(|e| FloorError::Memory {
            mib: mem_mib,
            reason: e.to_string(),
        })?;
    let vm = kvm_sys.create_vm().map_err(kvm("create a VM"))?;
    let host = memory
        .iter()
        .next()
        .map(|r| r.as_ptr())
        .ok_or(FloorError::Memory {
            mib: mem_mib,
            reason: "no region was mapped".into(),
        })?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: mem_bytes,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the host range belongs to `memory`, declared before `vm` and so dropped after
    // it: the range stays mapped for as long as KVM may access it.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm("map guest memory"))?;
    for s in &elf.segments {
        let outside = || FloorError::SegmentOutside {
            paddr: s.paddr,
            size: s.memsz,
            mib: mem_mib,
        };
        let end = s.paddr.checked_add(s.memsz).ok_or_else(outside)?;
        if end > mem_bytes {
            return Err(outside());
        }
        // Fresh anonymous memory is zero: only the file part needs writing.
        memory
            .write_slice(s.file, GuestAddress(s.paddr))
            .map_err(|_| outside())?;
    }
    let mut vcpu = vm.create_vcpu(0).map_err(kvm("create a vCPU"))?;
    enter_protected_mode(&vcpu, elf.pvh_entry)?;
    run_vcpu(&mut vcpu, console)
}

/// PVH entry state: flat 32-bit code and data segments, protection on, paging off.
fn enter_protected_mode(vcpu: &VcpuFd, entry: u32) -> Result<(), FloorError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("read special registers"))?;
    let flat = |selector, type_| kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(0x08, 0xb);
    let data = flat(0x10, 0x3);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr0 = (sregs.cr0 | CR0_PE) & !CR0_PG;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(kvm("set special registers"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: u64::from(entry),
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("set registers"))
}

fn run_vcpu(vcpu: &mut VcpuFd, console: &mut dyn Write) -> Result<FloorEnd, FloorError> {
    let mut line = Vec::with_capacity(128);
    let end = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(COM1_DATA, data)) => {
                line.extend_from_slice(data);
                if data.contains(&b'\n') {
                    flush(console, &mut line)?;
                }
            }
            Ok(VcpuExit::IoOut(I8042_COMMAND, [I8042_RESET])) => break FloorEnd::Reset,
            Ok(VcpuExit::IoOut(_, _)) => {}
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0),
            Ok(VcpuExit::Hlt) => break FloorEnd::Halted,
            Ok(other) => return Err(FloorError::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(kvm("run the vCPU")(e)),
        }
    };
    flush(console, &mut line)?;
    Ok(end)
}

fn flush(console: &mut dyn Write, line: &mut Vec<u8>) -> Result<(), FloorError> {
    if !line.is_empty() {
        console.write_all(line).map_err(FloorError::Console)?;
        console.flush().map_err(FloorError::Console)?;
        line.clear();
    }
    Ok(())
}
