//! Private <-> shared page conversion for a running SNP guest.
//!
//! The guest asks with the KVM_HC_MAP_GPA_RANGE hypercall (delivered to the VMM as
//! KVM_EXIT_HYPERCALL once KVM_CAP_EXIT_HYPERCALL enables it), or KVM reports an access whose
//! private/shared state disagrees with the range's attributes (KVM_EXIT_MEMORY_FAULT). Either
//! way the VMM flips KVM_MEMORY_ATTRIBUTE_PRIVATE on the range and discards the backing that
//! just became stale (shared pages after going private, guest_memfd pages after going shared),
//! so no old contents linger and no memory is held twice.
//!
//! All guest-provided values are checked against the guest's RAM before anything is done.

use super::uapi::{
    KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED, KVM_MAP_GPA_RANGE_PAGE_SZ_MASK,
};
use crate::page_info::PAGE_SIZE;

/// What the VMM's memory does for a conversion; the real one drives KVM and the mappings,
/// tests use a fake (this host's KVM has no memory attributes).
pub trait MemoryBackend {
    /// KVM_SET_MEMORY_ATTRIBUTES: private when `private`, shared otherwise.
    fn set_private(&mut self, gpa: u64, size: u64, private: bool) -> Result<(), i32>;
    /// Frees the now-unused backing of the other side of the range.
    fn discard_stale(&mut self, gpa: u64, size: u64, now_private: bool) -> Result<(), i32>;
}

/// Errors that stop the VM (the guest's own mistakes are answered to the guest instead).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageStateError {
    #[error("unexpected hypercall {0} (only KVM_HC_MAP_GPA_RANGE = 12 exits to the VMM)")]
    UnexpectedHypercall(u64),
    #[error("memory fault at GPA {gpa:#x} size {size:#x} outside guest RAM or unaligned")]
    BadFault { gpa: u64, size: u64 },
    #[error("setting GPA {gpa:#x}+{size:#x} {state} failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    Attributes {
        gpa: u64,
        size: u64,
        state: &'static str,
        errno: i32,
    },
    #[error("discarding stale backing of GPA {gpa:#x}+{size:#x} failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    Discard { gpa: u64, size: u64, errno: i32 },
}

/// Value returned to the guest in the hypercall's result register for a bad request.
pub const HYPERCALL_EINVAL: u64 = (-(libc::EINVAL as i64)) as u64;

/// Converts guest pages, bounded to the guest's RAM ranges.
#[derive(Clone, Debug)]
pub struct PageStateHandler {
    /// (start GPA, size) of each RAM range the guest may convert.
    ram: Vec<(u64, u64)>,
}

impl PageStateHandler {
    pub fn new(ram: Vec<(u64, u64)>) -> Self {
        Self { ram }
    }

    /// Within one RAM range, page aligned, non-empty, no overflow.
    fn valid(&self, gpa: u64, size: u64) -> bool {
        if size == 0 || !gpa.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return false;
        }
        let Some(end) = gpa.checked_add(size) else {
            return false;
        };
        self.ram
            .iter()
            .any(|&(start, len)| gpa >= start && start.checked_add(len).is_some_and(|e| end <= e))
    }

    fn convert(
        &self,
        mem: &mut dyn MemoryBackend,
        gpa: u64,
        size: u64,
        private: bool,
    ) -> Result<(), PageStateError> {
        let state = if private { "private" } else { "shared" };
        tracing::debug!("converting GPA {gpa:#x}+{size:#x} to {state}");
        mem.set_private(gpa, size, private)
            .map_err(|errno| PageStateError::Attributes {
                gpa,
                size,
                state,
                errno,
            })?;
        mem.discard_stale(gpa, size, private)
            .map_err(|errno| PageStateError::Discard { gpa, size, errno })
    }

    /// Handles KVM_EXIT_HYPERCALL. Returns the value to store in `kvm_run.hypercall.ret`:
    /// 0 on success, -EINVAL for a malformed request from the guest.
    pub fn handle_hypercall(
        &self,
        mem: &mut dyn MemoryBackend,
        nr: u64,
        args: [u64; 6],
    ) -> Result<u64, PageStateError> {
        if nr != KVM_HC_MAP_GPA_RANGE {
            return Err(PageStateError::UnexpectedHypercall(nr));
        }
        let (gpa, npages, attrs) = (args[0], args[1], args[2]);
        let page_size = match attrs & KVM_MAP_GPA_RANGE_PAGE_SZ_MASK {
            0 => PAGE_SIZE,
            1 => 2 << 20,
            2 => 1 << 30,
            _ => return Ok(HYPERCALL_EINVAL),
        };
        let known = KVM_MAP_GPA_RANGE_PAGE_SZ_MASK | KVM_MAP_GPA_RANGE_ENCRYPTED;
        if attrs & !known != 0 {
            return Ok(HYPERCALL_EINVAL);
        }
        let Some(size) = npages.checked_mul(page_size) else {
            return Ok(HYPERCALL_EINVAL);
        };
        if !self.valid(gpa, size) {
            tracing::warn!("guest asked to convert GPA {gpa:#x} x {npages} pages outside its RAM");
            return Ok(HYPERCALL_EINVAL);
        }
        self.convert(mem, gpa, size, attrs & KVM_MAP_GPA_RANGE_ENCRYPTED != 0)?;
        Ok(0)
    }

    /// Handles KVM_EXIT_MEMORY_FAULT: the access's kind (private or shared) wins.
    pub fn handle_memory_fault(
        &self,
        mem: &mut dyn MemoryBackend,
        gpa: u64,
        size: u64,
        flags: u64,
    ) -> Result<(), PageStateError> {
        if !self.valid(gpa, size) {
            return Err(PageStateError::BadFault { gpa, size });
        }
        self.convert(
            mem,
            gpa,
            size,
            flags & u64::from(kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE) != 0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Tracks each page's state and backing like KVM plus the two memories would.
    #[derive(Default)]
    struct FakeMemory {
        private: BTreeMap<u64, bool>,
        /// Pages with data in the shared mapping / in guest_memfd.
        shared_backed: BTreeMap<u64, bool>,
        gmem_backed: BTreeMap<u64, bool>,
        calls: Vec<String>,
        fail_attrs: Option<i32>,
    }

    impl MemoryBackend for FakeMemory {
        fn set_private(&mut self, gpa: u64, size: u64, private: bool) -> Result<(), i32> {
            if let Some(e) = self.fail_attrs {
                return Err(e);
            }
            self.calls
                .push(format!("attrs {gpa:#x}+{size:#x} {private}"));
            for page in (gpa..gpa + size).step_by(PAGE_SIZE as usize) {
                self.private.insert(page, private);
            }
            Ok(())
        }
        fn discard_stale(&mut self, gpa: u64, size: u64, now_private: bool) -> Result<(), i32> {
            self.calls
                .push(format!("discard {gpa:#x}+{size:#x} {now_private}"));
            let stale = if now_private {
                &mut self.shared_backed
            } else {
                &mut self.gmem_backed
            };
            for page in (gpa..gpa + size).step_by(PAGE_SIZE as usize) {
                stale.insert(page, false);
            }
            Ok(())
        }
    }

    fn handler() -> PageStateHandler {
        PageStateHandler::new(vec![(0, 0x8000_0000), (0x1_0000_0000, 0x4000_0000)])
    }

    #[test]
    fn map_gpa_range_converts_both_ways_and_discards_stale_backing() {
        let mut mem = FakeMemory::default();
        mem.shared_backed.insert(0x20_0000, true);
        let h = handler();
        let ret = h
            .handle_hypercall(
                &mut mem,
                12,
                [0x20_0000, 2, KVM_MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0],
            )
            .unwrap();
        assert_eq!(ret, 0);
        assert_eq!(mem.private.get(&0x20_0000), Some(&true));
        assert_eq!(mem.private.get(&0x20_1000), Some(&true));
        assert_eq!(mem.private.get(&0x20_2000), None);
        assert_eq!(mem.shared_backed.get(&0x20_0000), Some(&false));

        mem.gmem_backed.insert(0x20_1000, true);
        let ret = h
            .handle_hypercall(&mut mem, 12, [0x20_1000, 1, 0, 0, 0, 0])
            .unwrap();
        assert_eq!(ret, 0);
        assert_eq!(mem.private.get(&0x20_1000), Some(&false));
        assert_eq!(mem.gmem_backed.get(&0x20_1000), Some(&false));
        assert_eq!(
            mem.calls,
            vec![
                "attrs 0x200000+0x2000 true",
                "discard 0x200000+0x2000 true",
                "attrs 0x201000+0x1000 false",
                "discard 0x201000+0x1000 false"
            ]
        );
    }

    #[test]
    fn large_page_sizes_scale_the_range() {
        let mut mem = FakeMemory::default();
        let h = handler();
        let two_mib = KVM_MAP_GPA_RANGE_ENCRYPTED | 1;
        assert_eq!(
            h.handle_hypercall(&mut mem, 12, [0x40_0000, 3, two_mib, 0, 0, 0]),
            Ok(0)
        );
        assert_eq!(mem.calls[0], "attrs 0x400000+0x600000 true");
        assert_eq!(
            h.handle_hypercall(&mut mem, 12, [0x1_0000_0000, 1, 2, 0, 0, 0]),
            Ok(0)
        );
        assert_eq!(mem.calls[2], "attrs 0x100000000+0x40000000 false");
    }

    #[test]
    fn malformed_guest_requests_get_einval_and_change_nothing() {
        let mut mem = FakeMemory::default();
        let h = handler();
        let bad = [
            [0x1001, 1, 0, 0, 0, 0],        // unaligned
            [0x1000, 0, 0, 0, 0, 0],        // empty
            [0x7fff_f000, 2, 0, 0, 0, 0],   // runs past the end of RAM
            [0x8000_0000, 1, 0, 0, 0, 0],   // in the hole between ranges
            [0x1000, u64::MAX, 0, 0, 0, 0], // size overflows
            [!0xfff, 2, 0, 0, 0, 0],        // end overflows
            [0x1000, 1, 3, 0, 0, 0],        // reserved page size
            [0x1000, 1, 1 << 8, 0, 0, 0],   // unknown attribute bit
        ];
        for args in bad {
            assert_eq!(
                h.handle_hypercall(&mut mem, 12, args),
                Ok(HYPERCALL_EINVAL),
                "{args:x?}"
            );
        }
        assert!(mem.calls.is_empty());
        assert_eq!(
            h.handle_hypercall(&mut mem, 11, [0; 6]),
            Err(PageStateError::UnexpectedHypercall(11))
        );
    }

    #[test]
    fn memory_fault_follows_the_access_kind() {
        let mut mem = FakeMemory::default();
        let h = handler();
        h.handle_memory_fault(
            &mut mem,
            0x3000,
            0x1000,
            u64::from(kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE),
        )
        .unwrap();
        assert_eq!(mem.private.get(&0x3000), Some(&true));
        h.handle_memory_fault(&mut mem, 0x3000, 0x1000, 0).unwrap();
        assert_eq!(mem.private.get(&0x3000), Some(&false));
        assert_eq!(
            h.handle_memory_fault(&mut mem, 0x9000_0000, 0x1000, 0),
            Err(PageStateError::BadFault {
                gpa: 0x9000_0000,
                size: 0x1000
            })
        );
    }

    #[test]
    fn backend_failures_stop_the_vm_with_the_range_named() {
        let mut mem = FakeMemory {
            fail_attrs: Some(libc::EINVAL),
            ..FakeMemory::default()
        };
        let err = handler()
            .handle_hypercall(
                &mut mem,
                12,
                [0x5000, 1, KVM_MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0],
            )
            .unwrap_err();
        assert!(matches!(
            err,
            PageStateError::Attributes {
                gpa: 0x5000,
                size: 0x1000,
                ..
            }
        ));
        assert!(err.to_string().contains("private"), "{err}");
    }
}
