//! The interrupt line shared by a virtio-mmio transport and its device.

use std::sync::atomic::{AtomicU32, Ordering};

use vm_superio::Trigger;

use crate::EventFdTrigger;

/// InterruptStatus bit: the device used buffers in a queue.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the device configuration changed.
pub const INT_CONFIG: u32 = 2;

/// InterruptStatus bits plus the irqfd that raises the device's GSI.
///
/// Devices set bits and trigger from the event-loop thread; the guest reads and acknowledges
/// them through the transport from a vCPU thread, hence the atomics.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: EventFdTrigger,
}

impl VirtioInterrupt {
    /// An interrupt that raises `irq` (an eventfd the VMM registers as irqfd).
    pub fn new(irq: EventFdTrigger) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq,
        }
    }

    /// Tells the driver that buffers were returned on some queue.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver that the configuration space changed (and bumps its generation).
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }

    /// Bumps ConfigGeneration without an interrupt (before the driver is up).
    pub(crate) fn bump_config_generation(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            tracing::error!("virtio interrupt injection failed: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The InterruptACK register: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Clears pending status on device reset.
    pub(crate) fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The event fd behind the interrupt, for `KVM_IRQFD`.
    pub fn irq_fd(&self) -> &EventFdTrigger {
        &self.irq
    }
}
