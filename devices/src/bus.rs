//! Address-range dispatch for port I/O and MMIO exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest accesses inside the range it was attached at.
///
/// `offset` is relative to the start of that range and `data.len()` is the access size the
/// guest used (1, 2, 4 or 8 bytes for PIO/MMIO exits). Both come from the guest: implementations
/// must bound them and ignore what they do not understand.
pub trait BusDevice: Send {
    /// Fills `data` with the value read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (the event loop, the VMM).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors while building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("bus range at {base:#x} with length {len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    /// The range overlaps one that is already attached.
    #[error("bus range {base:#x}+{len:#x} overlaps the device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct Slot {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    slots: BTreeMap<u64, Slot>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The only ranges that can overlap are the last one starting below `end`.
        if let Some((&other, slot)) = self.slots.range(..end).next_back() {
            if other + slot.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.slots.insert(base, Slot { len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` inside its range.
    fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, slot) = self.slots.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < slot.len).then_some((&slot.device, offset))
    }

    /// Dispatches a read. Returns false (leaving `data` untouched) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write. Returns false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, carrying on past a poisoned lock: a panic on another vCPU thread has
/// already stopped the VM, and the device state is still the best we have for shutting down.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access it saw and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_to_the_covering_device_with_relative_offsets() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        bus.insert(probe.clone(), 0x3f8, 8).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(probe.lock().unwrap().last_write, Some((0, vec![0x41])));

        // Just outside the range on either side nothing answers.
        assert!(!bus.read(0x3f7, &mut data));
        assert!(!bus.write(0x400, &[0]));
    }

    #[test]
    fn rejects_overlapping_and_empty_ranges() {
        let mut bus = Bus::new();
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Probe::default())) };
        bus.insert(dev(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(dev(), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1,
                other: 0x1000
            })
        );
        assert_eq!(
            bus.insert(dev(), 0xf00, 0x101),
            Err(BusError::Overlap {
                base: 0xf00,
                len: 0x101,
                other: 0x1000
            })
        );
        assert_eq!(
            bus.insert(dev(), 0x2000, 0),
            Err(BusError::InvalidRange {
                base: 0x2000,
                len: 0
            })
        );
        assert_eq!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );
        // Adjacent ranges are fine.
        bus.insert(dev(), 0xf00, 0x100).unwrap();
        bus.insert(dev(), 0x1100, 0x100).unwrap();
    }
}
