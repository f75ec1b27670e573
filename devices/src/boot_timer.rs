//! The boot timer: the guest writes [`BOOT_TIMER_MAGIC`] to offset 0 of the device's MMIO
//! window when it has booted, and the device records how long that took since VMM start.
//!
//! The convention is Firecracker's (a byte write of 123 at offset 0); any access width is
//! accepted as long as the little-endian value is 123. Only the first such write counts.
//! Reading 8 bytes at offset 0 returns the recorded time in microseconds (0 until then), so a
//! test guest can check its write landed.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// The value that marks "boot done".
pub const BOOT_TIMER_MAGIC: u64 = 123;
/// Size of the MMIO window the VMM reserves for the device.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// Where the VMM reads the recorded boot time from (clone freely).
#[derive(Clone, Debug, Default)]
pub struct BootTime(Arc<OnceLock<Duration>>);

impl BootTime {
    /// Time from VMM start to the guest's write, once it happened.
    pub fn get(&self) -> Option<Duration> {
        self.0.get().copied()
    }
}

/// The boot timer device.
pub struct BootTimer {
    start: Instant,
    recorded: BootTime,
}

impl BootTimer {
    /// A timer measuring from `vmm_start` (take it as early as possible in `main`).
    pub fn new(vmm_start: Instant) -> Self {
        Self {
            start: vmm_start,
            recorded: BootTime::default(),
        }
    }

    /// A handle on the recorded time.
    pub fn boot_time(&self) -> BootTime {
        self.recorded.clone()
    }
}

fn le_value(data: &[u8]) -> Option<u64> {
    if data.is_empty() || data.len() > 8 {
        return None;
    }
    let mut bytes = [0u8; 8];
    bytes[..data.len()].copy_from_slice(data);
    Some(u64::from_le_bytes(bytes))
}

impl BusDevice for BootTimer {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            let micros = self.recorded.get().map_or(0, |d| d.as_micros() as u64);
            let bytes = micros.to_le_bytes();
            let n = data.len().min(8);
            data[..n].copy_from_slice(&bytes[..n]);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || le_value(data) != Some(BOOT_TIMER_MAGIC) {
            tracing::debug!(offset, ?data, "boot timer write ignored");
            return;
        }
        let elapsed = self.start.elapsed();
        if self.recorded.0.set(elapsed).is_ok() {
            tracing::info!("guest boot done after {} us", elapsed.as_micros());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_the_magic_value_at_offset_zero_once() {
        let start = Instant::now();
        let mut timer = BootTimer::new(start);
        let handle = timer.boot_time();
        timer.write(0, &[122]);
        timer.write(4, &[123]);
        timer.write(0, &[123, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            handle.get(),
            None,
            "wrong value, offset or width must not count"
        );

        let before = start.elapsed();
        timer.write(0, &123u32.to_le_bytes());
        let after = start.elapsed();
        let first = handle.get().expect("magic write must be recorded");
        assert!(before <= first && first <= after);

        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[123]);
        assert_eq!(handle.get(), Some(first), "only the first write counts");

        let mut data = [0u8; 8];
        timer.read(0, &mut data);
        assert_eq!(u64::from_le_bytes(data), first.as_micros() as u64);
    }
}
