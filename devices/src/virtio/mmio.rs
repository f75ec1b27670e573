//! The virtio-mmio transport (virtio 1.2, 4.2), modern interface (Version 2) only.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{status, ActivateContext, GuestMemory, VirtioDevice, VirtioInterrupt};
use super::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// Size of one device's register window; the VMM spaces devices by this much.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register, where the VMM registers the queues' ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5645_494c; // "VEIL"
const CONFIG_SPACE: u64 = 0x100;

mod reg {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const DEVICE_ID: u64 = 0x08;
    pub const VENDOR_ID: u64 = 0x0c;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const QUEUE_NOTIFY: u64 = 0x50;
    pub const INTERRUPT_STATUS: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    pub const QUEUE_DRIVER_LOW: u64 = 0x90;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x94;
    pub const QUEUE_DEVICE_LOW: u64 = 0xa0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0xa4;
    pub const SHM_LEN_LOW: u64 = 0xb0;
    pub const SHM_BASE_HIGH: u64 = 0xbc;
    pub const CONFIG_GENERATION: u64 = 0xfc;
}

/// The `virtio_mmio.device=` kernel command-line argument announcing a device at `base`
/// (window [`MMIO_LEN`]) raising `irq`.
pub fn kernel_cmdline_arg(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// What the VMM registers with `KVM_IOEVENTFD` for one queue: a 4-byte MMIO write of
/// `datamatch` at `base + QUEUE_NOTIFY_OFFSET` signals `event`.
pub struct QueueNotifier {
    /// Queue index, also the value the driver writes.
    pub datamatch: u32,
    /// The event fd to register (a clone of the one the device watches).
    pub event: EventFd,
}

/// Register-level state of one queue before it is handed to the device.
#[derive(Default, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<QueueConfig>,
    queue_events: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    activated: bool,
    /// Transport-level feature bits offered on top of the device's.
    extra_features: u64,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`; `mem` is the guest memory its queues live in and `irq` the event fd the
    /// VMM registers as the device's irqfd. Creates one queue event fd per queue.
    pub fn new(device: D, mem: GuestMemory, irq: EventFdTrigger) -> std::io::Result<Self> {
        let queues: Vec<QueueConfig> = device
            .queue_max_sizes()
            .iter()
            .map(|&max_size| QueueConfig {
                max_size,
                size: max_size,
                ..QueueConfig::default()
            })
            .collect();
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            queues,
            queue_events,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            activated: false,
            extra_features: 0,
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (e.g. to swap a disk's backing file).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The shared interrupt (its `irq_fd()` is what the VMM registers as irqfd).
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Tells the driver the device configuration changed: bumps ConfigGeneration and, once
    /// the driver is up (DRIVER_OK), raises the config-change interrupt.
    pub fn notify_config_change(&self) {
        if self.activated {
            self.interrupt.signal_config_change();
        } else {
            self.interrupt.bump_config_generation();
        }
    }

    /// One ioeventfd registration per queue.
    pub fn queue_notifiers(&self) -> std::io::Result<Vec<QueueNotifier>> {
        self.queue_events
            .iter()
            .zip(0u32..)
            .map(|(event, datamatch)| {
                Ok(QueueNotifier {
                    datamatch,
                    event: event.try_clone()?,
                })
            })
            .collect()
    }

    /// The queue event fds (the subscriber watches these).
    pub(crate) fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Offers `VIRTIO_F_ACCESS_PLATFORM`. Confidential (SEV-SNP) Linux guests refuse virtio
    /// devices without it, because they must route device DMA through shared bounce buffers;
    /// for the device nothing changes (it still sees guest-physical addresses). Call before
    /// the guest boots.
    pub fn offer_access_platform(&mut self) {
        self.extra_features |= VIRTIO_F_ACCESS_PLATFORM;
    }

    /// Features offered to the driver: the device's plus the transport's.
    fn offered_features(&self) -> u64 {
        self.device.features() | self.extra_features
    }

    /// Whether the driver has set DRIVER_OK and the device accepted its queues.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: their length reads as all ones (virtio 1.2, 4.2.2).
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                tracing::debug!(offset, "read of unknown or write-only virtio-mmio register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NOTIFY => self.notify_queue(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            _ => tracing::debug!(
                offset,
                value,
                "write to unknown or read-only virtio-mmio register"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiable only between DRIVER and FEATURES_OK.
        if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            tracing::warn!(
                status = self.status,
                "driver features written outside negotiation"
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                tracing::warn!(sel, "driver features select out of range");
                return;
            }
        };
        self.acked_features &= !(u64::from(u32::MAX) << shift);
        self.acked_features |= u64::from(value) << shift;
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        // Queues are configured after FEATURES_OK and before DRIVER_OK.
        if self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            != status::FEATURES_OK
        {
            tracing::warn!(
                offset,
                status = self.status,
                "queue register written out of order"
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            tracing::warn!(offset, "queue register written with no such queue selected");
            return;
        };
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            // Bounded against QueueNumMax and power of two when the queue is built.
            reg::QUEUE_NUM => q.size = value.try_into().unwrap_or(0),
            reg::QUEUE_READY => q.ready = value == 1,
            reg::QUEUE_DESC_LOW => q.desc = low(q.desc),
            reg::QUEUE_DESC_HIGH => q.desc = high(q.desc),
            reg::QUEUE_DRIVER_LOW => q.avail = low(q.avail),
            reg::QUEUE_DRIVER_HIGH => q.avail = high(q.avail),
            reg::QUEUE_DEVICE_LOW => q.used = low(q.used),
            reg::QUEUE_DEVICE_HIGH => q.used = high(q.used),
            _ => {}
        }
    }

    /// A plain QueueNotify write (no ioeventfd registered for it): forward to the queue's
    /// event fd so the event loop handles it like an ioeventfd notification.
    fn notify_queue(&mut self, index: u32) {
        match self.queue_events.get(index as usize) {
            Some(event) => {
                if let Err(e) = event.write(1) {
                    tracing::error!(index, "queue notification failed: {e}");
                }
            }
            None => tracing::warn!(index, "notification for a queue that does not exist"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (virtio 1.2, 2.1.2).
        if value & self.status != self.status {
            tracing::warn!(
                old = self.status,
                new = value,
                "driver cleared device status bits"
            );
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            tracing::warn!(acked = self.acked_features, "driver features rejected");
            self.status = value & !status::FEATURES_OK;
            return;
        }
        if added & status::DRIVER_OK != 0 {
            if self.status & status::FEATURES_OK == 0 {
                tracing::warn!("DRIVER_OK before FEATURES_OK");
                return;
            }
            self.status = value;
            if let Err(e) = self.activate() {
                tracing::error!("virtio device activation failed: {e}");
                self.status |= status::DEVICE_NEEDS_RESET;
                self.interrupt.signal_config_change();
            }
            return;
        }
        self.status = value;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features();
        self.acked_features & VIRTIO_F_VERSION_1 != 0 && self.acked_features & !offered == 0
    }

    fn activate(&mut self) -> Result<(), String> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, cfg) in self.queues.iter().enumerate() {
            let mut queue = Queue::new(cfg.max_size).map_err(|e| format!("queue {index}: {e}"))?;
            queue
                .try_set_size(cfg.size)
                .map_err(|e| format!("queue {index} size {}: {e}", cfg.size))?;
            for (what, addr, result) in [
                (
                    "descriptor table",
                    cfg.desc,
                    queue.try_set_desc_table_address(vm_memory::GuestAddress(cfg.desc)),
                ),
                (
                    "available ring",
                    cfg.avail,
                    queue.try_set_avail_ring_address(vm_memory::GuestAddress(cfg.avail)),
                ),
                (
                    "used ring",
                    cfg.used,
                    queue.try_set_used_ring_address(vm_memory::GuestAddress(cfg.used)),
                ),
            ] {
                result.map_err(|e| format!("queue {index} {what} at {addr:#x}: {e}"))?;
            }
            queue.set_ready(cfg.ready);
            queue.set_event_idx(self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
            if cfg.ready && !queue.is_valid(&self.mem) {
                return Err(format!("queue {index} rings lie outside guest memory"));
            }
            queues.push(queue);
        }
        self.device
            .activate(ActivateContext {
                mem: self.mem.clone(),
                queues,
                interrupt: self.interrupt.clone(),
                acked_features: self.acked_features,
            })
            .map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig {
                max_size: q.max_size,
                size: q.max_size,
                ..QueueConfig::default()
            };
        }
        self.interrupt.reset();
        // Drop notifications that arrived for the old queues.
        for event in &self.queue_events {
            let _ = event.read();
        }
    }

    /// Called by the subscriber when queue `index`'s event fd fired.
    pub(crate) fn process_queue(&mut self, index: usize) {
        if self.activated {
            self.device.process_queue(index);
        } else {
            tracing::debug!(index, "queue notification before activation ignored");
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and must be accessed as such (virtio 1.2, 4.2.2.2).
        let len = data.len();
        match <&mut [u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => *bytes = self.read_register(offset).to_le_bytes(),
            _ => tracing::warn!(
                offset,
                len,
                "unaligned or non 32-bit virtio-mmio register read"
            ),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => tracing::warn!(offset, len = data.len(), "bad virtio-mmio register write"),
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
