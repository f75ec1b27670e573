//! The real [`MemoryBackend`]: KVM_SET_MEMORY_ATTRIBUTES on the VM, and freeing of the stale
//! side of a converted range: `madvise(MADV_DONTNEED)` on the shared (anonymous, private)
//! mapping after a range goes private, `fallocate(PUNCH_HOLE)` on the guest_memfd after it
//! goes shared.

use std::os::fd::RawFd;
use std::sync::Arc;

use kvm_ioctls::VmFd;

use super::page_state::MemoryBackend;
use kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// One guest RAM range with both backings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivateRegion {
    pub gpa: u64,
    pub size: u64,
    /// Host address of the shared mapping of this range (anonymous, MAP_PRIVATE).
    pub shared_host_addr: usize,
    /// guest_memfd backing the private side.
    pub gmem_fd: RawFd,
    /// Offset of `gpa` in the guest_memfd.
    pub gmem_offset: u64,
}

/// Frees stale backing; separate from KVM so it can be tested on any host.
#[derive(Debug)]
pub struct StaleBacking {
    regions: Vec<PrivateRegion>,
}

impl StaleBacking {
    /// # Safety
    /// Each region's `shared_host_addr..+size` must be a mapping the caller owns for the life
    /// of this value and whose contents may be thrown away when the range is private (the
    /// guest cannot use the shared copy then), and `gmem_fd` must stay open.
    pub unsafe fn new(regions: Vec<PrivateRegion>) -> Self {
        Self { regions }
    }

    fn region(&self, gpa: u64, size: u64) -> Option<&PrivateRegion> {
        let end = gpa.checked_add(size)?;
        self.regions
            .iter()
            .find(|r| gpa >= r.gpa && r.gpa.checked_add(r.size).is_some_and(|e| end <= e))
    }

    /// Discards the side of `gpa..gpa+size` that is no longer in use.
    pub fn discard(&self, gpa: u64, size: u64, now_private: bool) -> Result<(), i32> {
        let region = self.region(gpa, size).ok_or(libc::EINVAL)?;
        let offset = gpa - region.gpa;
        let len = usize::try_from(size).map_err(|_| libc::EINVAL)?;
        if now_private {
            let addr = region.shared_host_addr + offset as usize;
            // SAFETY: addr..addr+len lies inside the shared mapping the constructor's contract
            // makes ours to discard; MADV_DONTNEED only drops its pages (reads give zeros).
            let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO));
            }
        } else {
            let at = i64::try_from(region.gmem_offset + offset).map_err(|_| libc::EINVAL)?;
            let len = i64::try_from(size).map_err(|_| libc::EINVAL)?;
            // SAFETY: fallocate on a file descriptor with plain integer arguments; punching a
            // hole with KEEP_SIZE frees the private pages without changing the file size.
            let rc = unsafe {
                libc::fallocate(
                    region.gmem_fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO));
            }
        }
        Ok(())
    }
}

/// KVM plus the two backings of each region. Shared by the vCPU threads, so it holds the VM
/// by `Arc`.
pub struct KvmGuestMemory {
    vm: Arc<VmFd>,
    stale: StaleBacking,
}

impl KvmGuestMemory {
    pub fn new(vm: Arc<VmFd>, stale: StaleBacking) -> Self {
        Self { vm, stale }
    }

    /// Frees the stale side of a range without changing its attributes (after the launch,
    /// for the pages LAUNCH_UPDATE made private).
    pub fn discard(&self, gpa: u64, size: u64, now_private: bool) -> Result<(), i32> {
        self.stale.discard(gpa, size, now_private)
    }
}

impl MemoryBackend for KvmGuestMemory {
    fn set_private(&mut self, gpa: u64, size: u64, private: bool) -> Result<(), i32> {
        let attr = kvm_bindings::kvm_memory_attributes {
            address: gpa,
            size,
            attributes: if private {
                u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE)
            } else {
                0
            },
            flags: 0,
        };
        self.vm.set_memory_attributes(attr).map_err(|e| e.errno())
    }

    fn discard_stale(&mut self, gpa: u64, size: u64, now_private: bool) -> Result<(), i32> {
        self.stale.discard(gpa, size, now_private)
    }
}

/// Enables KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE so conversions reach the VMM.
pub fn enable_map_gpa_range_exits(vm: &VmFd) -> Result<(), i32> {
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_EXIT_HYPERCALL,
        args: [1 << super::uapi::KVM_HC_MAP_GPA_RANGE, 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(|e| e.errno())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::{AsRawFd, FromRawFd};

    const SIZE: usize = 4 * 4096;

    /// An anonymous mapping standing in for the shared side, a memfd for guest_memfd
    /// (both support the same discard calls).
    struct Backings {
        map: *mut u8,
        memfd: std::fs::File,
    }

    impl Drop for Backings {
        fn drop(&mut self) {
            // SAFETY: unmapping the mapping this test created, exactly once.
            unsafe { libc::munmap(self.map as *mut libc::c_void, SIZE) };
        }
    }

    fn backings() -> Backings {
        // SAFETY: a fresh anonymous private mapping; checked for MAP_FAILED below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"veil-test-gmem".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh descriptor we own.
        let mut memfd = unsafe { std::fs::File::from_raw_fd(fd) };
        memfd.write_all(&[0xaa; SIZE]).unwrap();
        // SAFETY: map is SIZE bytes, writable.
        unsafe { std::ptr::write_bytes(map as *mut u8, 0xbb, SIZE) };
        Backings {
            map: map as *mut u8,
            memfd,
        }
    }

    #[test]
    fn stale_sides_are_freed_and_read_back_as_zero() {
        let mut b = backings();
        let region = PrivateRegion {
            gpa: 0x10_0000,
            size: SIZE as u64,
            shared_host_addr: b.map as usize,
            gmem_fd: b.memfd.as_raw_fd(),
            gmem_offset: 0,
        };
        // SAFETY: the mapping and memfd belong to this test and outlive `stale`.
        let stale = unsafe { StaleBacking::new(vec![region]) };

        // Page 1 became private: its shared copy is dropped, neighbours untouched.
        stale.discard(0x10_1000, 0x1000, true).unwrap();
        // SAFETY: reading inside the live mapping.
        let shared = unsafe { std::slice::from_raw_parts(b.map, SIZE) };
        assert!(shared[..0x1000].iter().all(|&x| x == 0xbb));
        assert!(shared[0x1000..0x2000].iter().all(|&x| x == 0));
        assert!(shared[0x2000..].iter().all(|&x| x == 0xbb));

        // Pages 2-3 became shared: their private copies are punched out.
        stale.discard(0x10_2000, 0x2000, false).unwrap();
        let mut contents = Vec::new();
        b.memfd.seek(SeekFrom::Start(0)).unwrap();
        b.memfd.read_to_end(&mut contents).unwrap();
        assert_eq!(contents.len(), SIZE);
        assert!(contents[..0x2000].iter().all(|&x| x == 0xaa));
        assert!(contents[0x2000..].iter().all(|&x| x == 0));

        // Outside the region: refused, nothing touched.
        assert_eq!(stale.discard(0x10_3000, 0x2000, true), Err(libc::EINVAL));
        assert_eq!(stale.discard(0, 0x1000, false), Err(libc::EINVAL));
    }
}
