//! Everything the VMM needs to wire one virtio-mmio device, built in one call.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::{kernel_cmdline_arg, GuestMemory, MmioTransport, VirtioDevice, VirtioSubscriber};
use super::{MMIO_LEN, QUEUE_NOTIFY_OFFSET};
use crate::bus::SharedDevice;
use crate::EventFdTrigger;

/// One `KVM_IOEVENTFD` registration: a 4-byte MMIO write of `datamatch` (register it as a
/// `u32` so KVM matches 4-byte writes) at `addr` signals `event`.
pub struct IoEventRegistration {
    pub addr: u64,
    pub datamatch: u32,
    pub event: EventFd,
}

/// A virtio device placed at `base` with interrupt `irq`, and the pieces the VMM registers.
pub struct MmioAttachment<D: VirtioDevice + 'static> {
    /// The device; keep it to reach the model later (e.g. `swap_disk`).
    pub transport: Arc<Mutex<MmioTransport<D>>>,
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Length of the window to reserve on the MMIO bus ([`MMIO_LEN`]).
    pub len: u64,
    /// GSI the device interrupts on.
    pub irq: u32,
    /// Register with `KVM_IRQFD` for `irq`.
    pub irq_fd: EventFd,
    /// Register each with `KVM_IOEVENTFD` (optional: without them QueueNotify writes exit to
    /// the VMM and the transport forwards them, only slower).
    pub ioevents: Vec<IoEventRegistration>,
    /// Append to the guest kernel command line.
    pub cmdline_arg: String,
}

impl<D: VirtioDevice + 'static> MmioAttachment<D> {
    /// Wraps `device` in a transport at `base` raising `irq`.
    pub fn new(device: D, mem: GuestMemory, base: u64, irq: u32) -> std::io::Result<Self> {
        let irq_trigger = EventFdTrigger::new()?;
        // The EventFd behind the trigger, as KVM_IRQFD wants it.
        let irq_fd = (*irq_trigger).try_clone()?;
        let transport = MmioTransport::new(device, mem, irq_trigger)?;
        let ioevents = transport
            .queue_notifiers()?
            .into_iter()
            .map(|n| IoEventRegistration {
                addr: base + QUEUE_NOTIFY_OFFSET,
                datamatch: n.datamatch,
                event: n.event,
            })
            .collect();
        Ok(Self {
            transport: Arc::new(Mutex::new(transport)),
            base,
            len: MMIO_LEN,
            irq,
            irq_fd,
            ioevents,
            cmdline_arg: kernel_cmdline_arg(base, irq),
        })
    }

    /// The device as the MMIO bus holds it: `bus.insert(a.bus_device(), a.base, a.len)`.
    pub fn bus_device(&self) -> SharedDevice {
        self.transport.clone()
    }

    /// The event-loop subscriber: `event_manager.add_subscriber(a.subscriber())`.
    pub fn subscriber(&self) -> Arc<Mutex<VirtioSubscriber<D>>> {
        Arc::new(Mutex::new(VirtioSubscriber::new(self.transport.clone())))
    }
}
