//! Virtio devices over the virtio-mmio transport (virtio 1.x, modern interface only).
//!
//! A device model implements [`VirtioDevice`]; [`MmioTransport`] wraps it, serves the
//! virtio-mmio register window on the MMIO bus and hands the device its queues once the
//! driver sets DRIVER_OK. [`VirtioSubscriber`] plugs the device into the VMM's
//! `event_manager::EventManager` so queue notifications and back-end sockets are handled on
//! the event-loop thread. See `devices/INTEGRATION.md` for what the VMM has to do.

mod attach;
pub mod block;
mod drain;
mod interrupt;
mod mmio;
pub mod net;
mod subscriber;
#[cfg(test)]
pub(crate) mod testing;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use attach::{IoEventRegistration, MmioAttachment};
pub use interrupt::VirtioInterrupt;
pub use mmio::{kernel_cmdline_arg, MmioTransport, QueueNotifier, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
pub use subscriber::VirtioSubscriber;

/// Guest memory as the devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Feature bit: the device speaks virtio 1.x (the only mode we offer).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: the device accesses memory through the platform's DMA translation, which
/// SEV-SNP guests require (see [`MmioTransport::offer_access_platform`]).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Feature bit: notification suppression through `used_event` / `avail_event`. Devices that
/// offer it drain their queues through `drain::drain`, which publishes `avail_event`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Virtio device type ids (virtio 1.2, 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const VSOCK: u32 = 19;
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory, for the queues' rings and buffers.
    pub mem: GuestMemory,
    /// One queue per entry of [`VirtioDevice::queue_max_sizes`], configured and validated
    /// against `mem`.
    pub queues: Vec<Queue>,
    /// Used-buffer and configuration-change interrupts.
    pub interrupt: Arc<VirtioInterrupt>,
    /// Features the driver accepted (always includes [`VIRTIO_F_VERSION_1`]).
    pub acked_features: u64,
}

/// A change to the set of file descriptors a device wants the event loop to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdInterest {
    /// Start watching `fd` for `events`.
    Add(RawFd, EventSet),
    /// Replace the events watched on `fd`.
    Modify(RawFd, EventSet),
    /// Stop watching `fd` (call before the fd is closed).
    Remove(RawFd),
}

/// A virtio device model behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device type id (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// Features offered to the driver, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space at `offset` (guest-controlled: bound it).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; read-only by default.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            offset,
            len = data.len(),
            "ignored write to read-only virtio config"
        );
    }
    /// Starts the device with its queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Returns to the pre-activation state (driver wrote 0 to Status), dropping the queues.
    fn reset(&mut self);
    /// Handles a notification for queue `index` (only called while activated).
    fn process_queue(&mut self, index: usize);
    /// File descriptors besides the queue events the device wants watched from the start.
    fn initial_fds(&self) -> Vec<(RawFd, EventSet)> {
        Vec::new()
    }
    /// Handles readiness of one of the device's own file descriptors.
    fn process_fd(&mut self, _fd: RawFd, _events: EventSet) {}
    /// Drains the changes to the watched fd set accumulated since the last call.
    fn take_fd_changes(&mut self) -> Vec<FdInterest> {
        Vec::new()
    }
    /// Called once the changes from [`VirtioDevice::take_fd_changes`] reached the event
    /// loop: fds removed there may now be closed.
    fn fd_changes_applied(&mut self) {}
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("device needs {expected} queues, driver configured {got}")]
    QueueCount { expected: usize, got: usize },
    /// The device's back end failed.
    #[error("device back end failed to start: {0}")]
    Backend(String),
}
