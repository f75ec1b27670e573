//! The host's TSC rate, to turn the cycle counts the test guests report into seconds.
//!
//! The guests time themselves with `rdtsc`. KVM runs a guest's TSC at the host's rate unless
//! the VMM asks for TSC scaling (`KVM_SET_TSC_KHZ`), which veil does not; the device section
//! still checks every converted figure against the VM's wall time as seen from outside.

use std::time::{Duration, Instant};

/// Cycles per second of this CPU's time stamp counter, measured against the monotonic clock
/// over `window`.
pub fn host_tsc_hz(window: Duration) -> f64 {
    let (t0, c0) = (Instant::now(), read_tsc());
    std::thread::sleep(window);
    let (c1, t1) = (read_tsc(), Instant::now());
    c1.wrapping_sub(c0) as f64 / t1.duration_since(t0).as_secs_f64()
}

fn read_tsc() -> u64 {
    // SAFETY: rdtsc has no memory effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Seconds for `cycles` at `hz`.
pub fn seconds(cycles: u64, hz: f64) -> f64 {
    cycles as f64 / hz
}
