//! Draining a queue without losing notifications, with or without VIRTIO_RING_F_EVENT_IDX.
//!
//! With EVENT_IDX the driver only notifies when its available index passes the `avail_event`
//! the device published, so a device must publish it (`enable_notification`) every time it
//! goes idle, and look again if buffers arrived in between. The device never turns driver
//! notifications off, so without EVENT_IDX every buffer is notified.

use virtio_queue::{Queue, QueueT};

use super::GuestMemory;

/// What one step of a drain did.
pub(crate) enum Step {
    /// Handled one chain.
    Processed,
    /// The queue has nothing more.
    Empty,
    /// The device cannot take more now; it will come back to the queue by itself.
    Stop,
}

/// Calls `step` until the queue is empty (re-arming notifications and re-checking), or
/// `step` stops. A ring whose available index claims buffers that cannot be popped ends the
/// drain after one empty round instead of spinning.
pub(crate) fn drain(
    queue: &mut Queue,
    mem: &GuestMemory,
    mut step: impl FnMut(&mut Queue) -> Step,
) {
    let mut rounds = 0u32;
    loop {
        let mut progressed = false;
        loop {
            match step(queue) {
                Step::Processed => progressed = true,
                Step::Empty => break,
                Step::Stop => return,
            }
        }
        if !progressed && rounds > 0 {
            tracing::warn!("virtio queue claims buffers that cannot be popped");
            return;
        }
        rounds += 1;
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => return,
            Err(e) => {
                tracing::warn!("cannot re-arm virtio queue notifications: {e}");
                return;
            }
        }
    }
}
