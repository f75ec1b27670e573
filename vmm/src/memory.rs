//! Guest RAM: anonymous host mappings registered with KVM, and for confidential guests a
//! guest_memfd per region holding the private side.
//!
//! An SEV-SNP guest's memory has two backings per range: the private pages live in a
//! guest_memfd that the host cannot map, the shared ones (device buffers, the GHCB) in the
//! ordinary mapping the VMM and its devices use. KVM picks one per page from the range's
//! memory attributes; the VMM converts ranges when the guest asks (`vcpu.rs`).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_userspace_memory_region, kvm_userspace_memory_region2,
    KVM_MEM_GUEST_MEMFD,
};
use kvm_ioctls::VmFd;
use veil_snp::kvm::PrivateRegion;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::x86_64::layout::ram_regions;

/// Whether guest RAM gets a private side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamBacking {
    /// One shared mapping per region: an ordinary VM.
    Shared,
    /// A shared mapping plus a guest_memfd per region: a confidential VM.
    SharedAndPrivate,
}

/// Errors while creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Allocate { mib: u64, reason: String },
    #[error("KVM refused to create a {size:#x}-byte guest_memfd for the private memory at {gpa:#x} (KVM_CREATE_GUEST_MEMFD): {source}")]
    GuestMemfd {
        gpa: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused to map guest memory at {gpa:#x} ({ioctl}): {source}")]
    Map {
        gpa: u64,
        ioctl: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// Guest RAM and, for a confidential VM, its private backing.
pub struct GuestRam {
    mmap: GuestMemoryMmap,
    /// One guest_memfd per region of `mmap`, in the same order (empty for a shared-only VM).
    guest_memfds: Vec<File>,
}

impl GuestRam {
    /// Allocates `mib` MiB of RAM (split around the MMIO gap) and registers each region as
    /// one KVM memslot.
    pub fn create(vm_fd: &VmFd, mib: u64, backing: RamBacking) -> Result<Self, MemoryError> {
        let ranges: Vec<(GuestAddress, usize)> = ram_regions(mib << 20)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let mmap = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocate {
            mib,
            reason: e.to_string(),
        })?;
        let mut guest_memfds = Vec::new();
        for (slot, region) in mmap.iter().enumerate() {
            let gpa = region.start_addr().0;
            let size = region.len();
            let userspace_addr = region.as_ptr() as u64;
            match backing {
                RamBacking::Shared => {
                    let desc = kvm_userspace_memory_region {
                        slot: slot as u32,
                        guest_phys_addr: gpa,
                        memory_size: size,
                        userspace_addr,
                        flags: 0,
                    };
                    // SAFETY: the mapping is owned by `mmap`, which the Vm keeps alive (and drops
                    // after the VM fd), so the host range stays valid while KVM may access it.
                    unsafe { vm_fd.set_user_memory_region(desc) }.map_err(|source| {
                        MemoryError::Map {
                            gpa,
                            ioctl: "KVM_SET_USER_MEMORY_REGION",
                            source,
                        }
                    })?;
                }
                RamBacking::SharedAndPrivate => {
                    let fd = vm_fd
                        .create_guest_memfd(kvm_create_guest_memfd {
                            size,
                            flags: 0,
                            reserved: [0; 6],
                        })
                        .map_err(|source| MemoryError::GuestMemfd { gpa, size, source })?;
                    // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new descriptor that nothing
                    // else owns; the File closes it.
                    let file = unsafe { File::from_raw_fd(fd) };
                    let desc = kvm_userspace_memory_region2 {
                        slot: slot as u32,
                        flags: KVM_MEM_GUEST_MEMFD,
                        guest_phys_addr: gpa,
                        memory_size: size,
                        userspace_addr,
                        guest_memfd_offset: 0,
                        guest_memfd: file.as_raw_fd() as u32,
                        pad1: 0,
                        pad2: [0; 14],
                    };
                    // SAFETY: as above for the shared mapping; the guest_memfd is kept open in
                    // `guest_memfds` for the life of the VM.
                    unsafe { vm_fd.set_user_memory_region2(desc) }.map_err(|source| {
                        MemoryError::Map {
                            gpa,
                            ioctl: "KVM_SET_USER_MEMORY_REGION2 with a guest_memfd",
                            source,
                        }
                    })?;
                    guest_memfds.push(file);
                }
            }
        }
        Ok(Self { mmap, guest_memfds })
    }

    /// The shared mapping: what the VMM and its devices read and write.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }

    /// Each region with both of its backings, for page conversion; empty without a private side.
    pub fn private_regions(&self) -> Vec<PrivateRegion> {
        self.mmap
            .iter()
            .zip(&self.guest_memfds)
            .map(|(region, gmem)| PrivateRegion {
                gpa: region.start_addr().0,
                size: region.len(),
                shared_host_addr: region.as_ptr() as usize,
                gmem_fd: gmem.as_raw_fd(),
                gmem_offset: 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::Bytes;

    /// Real-mode code at 0x1000: `mov al, 0x5a; out 0x80, al; hlt`.
    const GUEST: [u8; 5] = [0xb0, 0x5a, 0xe6, 0x80, 0xf4];

    /// Runs GUEST from RAM built with `backing` and returns the byte it wrote to port 0x80.
    fn run_guest(backing: RamBacking) -> Result<u8, MemoryError> {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().expect("create a VM");
        let ram = GuestRam::create(&vm, 8, backing)?;
        ram.mmap()
            .write_slice(&GUEST, GuestAddress(0x1000))
            .unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x80, data) => Ok(data[0]),
            other => panic!("expected the guest's port write, got {other:?}"),
        }
    }

    #[test]
    fn shared_ram_runs_a_guest() {
        assert_eq!(run_guest(RamBacking::Shared).unwrap(), 0x5a);
    }

    /// This host's KVM creates guest_memfds on a default VM (HOST-KVM.md) and runs the guest
    /// from the shared side, since nothing is private there; where a kernel has no
    /// guest_memfd the error names the ioctl.
    #[test]
    fn guest_memfd_backed_ram_registers_and_runs() {
        match run_guest(RamBacking::SharedAndPrivate) {
            Ok(byte) => assert_eq!(byte, 0x5a),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("guest_memfd"), "{msg}");
                println!("skipped the run: {msg}");
            }
        }
    }

    #[test]
    fn private_regions_pair_each_mapping_with_its_guest_memfd() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().expect("create a VM");
        let shared = GuestRam::create(&vm, 8, RamBacking::Shared).unwrap();
        assert!(shared.private_regions().is_empty());
        drop(shared);
        let vm = kvm.create_vm().expect("create a VM");
        let Ok(ram) = GuestRam::create(&vm, 16, RamBacking::SharedAndPrivate) else {
            println!("skipped: this KVM has no guest_memfd");
            return;
        };
        let regions = ram.private_regions();
        assert_eq!(regions.len(), 1);
        assert_eq!((regions[0].gpa, regions[0].size), (0, 16 << 20));
        assert_eq!(
            regions[0].shared_host_addr,
            ram.mmap().get_host_address(GuestAddress(0)).unwrap() as usize
        );
        // The guest_memfd is as large as the region.
        // SAFETY: fstat on a descriptor the GuestRam keeps open.
        let file = unsafe { std::mem::ManuallyDrop::new(File::from_raw_fd(regions[0].gmem_fd)) };
        assert_eq!(file.metadata().unwrap().len(), 16 << 20);
    }
}
