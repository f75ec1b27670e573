//! Attaching the configured devices to a VM: MMIO windows and IRQs, KVM irqfds and
//! ioeventfds, event-loop subscribers and the kernel command-line arguments that announce
//! the virtio-mmio devices.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use veil_devices::boot_timer::{BootTime, BootTimer, BOOT_TIMER_LEN};
use veil_devices::bus::{Bus, BusError};
use veil_devices::virtio::block::{Block, BlockConfig, BlockError};
use veil_devices::virtio::net::{Net, NetConfig, NetError};
use veil_devices::virtio::vsock::{Vsock, VsockConfig, VsockError};
use veil_devices::virtio::{GuestMemory, MmioAttachment, MmioTransport, VirtioDevice};

use crate::x86_64::layout::{BOOT_TIMER_ADDR, VIRTIO_MMIO_START};

/// First IRQ handed to virtio devices: 0-4 are the PIT, keyboard, cascade and COM ports.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Last IOAPIC pin.
pub const LAST_IRQ: u32 = 23;
/// Most virtio devices one VM can have (one IRQ each).
pub const MAX_VIRTIO_DEVICES: usize = (LAST_IRQ - FIRST_VIRTIO_IRQ + 1) as usize;

/// Errors while attaching devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("disk {index}: {source}")]
    Disk { index: usize, source: BlockError },
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("network device {index}: {source}")]
    Net { index: usize, source: NetError },
    #[error("{count} virtio devices requested; a VM has IRQs for at most {MAX_VIRTIO_DEVICES}")]
    TooManyDevices { count: usize },
    #[error("cannot create the event fds of a virtio device: {0}")]
    EventFd(std::io::Error),
    #[error("KVM refused to {action} for the device at {base:#x}: {source}")]
    Kvm {
        action: &'static str,
        base: u64,
        source: kvm_ioctls::Error,
    },
    #[error("device window clash: {0}")]
    Bus(#[from] BusError),
}

/// A handle on a virtio-blk drive, usable while the VM runs.
#[derive(Clone)]
pub struct DiskHandle(Arc<Mutex<MmioTransport<Block>>>);

impl DiskHandle {
    /// Replaces the drive's backing file (pods add containers after boot; virtio-mmio has no
    /// hotplug) and raises a configuration-change interrupt so the guest re-reads the
    /// capacity. A failed swap keeps the old file.
    pub fn swap(&self, path: &Path) -> Result<(), BlockError> {
        lock(&self.0).swap_disk(path)
    }

    /// [`swap`](Self::swap) with an image already open (what a jailed VMM gets over its
    /// control socket); `name` names it in messages.
    pub fn swap_open_file(&self, file: std::fs::File, name: &Path) -> Result<(), BlockError> {
        lock(&self.0).swap_disk_open_file(file, name)
    }
}

/// The devices attached to a VM.
#[derive(Default)]
pub struct Attached {
    pub disks: Vec<DiskHandle>,
    pub boot_time: Option<BootTime>,
    pub subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// `virtio_mmio.device=...` arguments, in attach order.
    pub cmdline_args: Vec<String>,
}

/// The virtio devices a VM is built with.
pub struct Wanted {
    pub disks: Vec<BlockConfig>,
    pub vsock: Option<VsockConfig>,
    pub nets: Vec<NetConfig>,
}

/// Attaches the boot timer (when asked for), the disks, vsock, then the network devices
/// (whose taps are opened here, in the caller's network namespace). For a `confidential`
/// (SEV-SNP) guest the virtio devices offer VIRTIO_F_ACCESS_PLATFORM, without which such a
/// guest refuses them.
pub fn attach(
    vm_fd: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    wanted: Wanted,
    boot_timer: Option<Instant>,
    confidential: bool,
) -> Result<Attached, DeviceError> {
    let Wanted { disks, vsock, nets } = wanted;
    let count = disks.len() + usize::from(vsock.is_some()) + nets.len();
    if count > MAX_VIRTIO_DEVICES {
        return Err(DeviceError::TooManyDevices { count });
    }
    let mut attached = Attached::default();
    if let Some(start) = boot_timer {
        let timer = BootTimer::new(start);
        attached.boot_time = Some(timer.boot_time());
        mmio.insert(Arc::new(Mutex::new(timer)), BOOT_TIMER_ADDR, BOOT_TIMER_LEN)?;
    }
    let mut slots = (0u64..).map(|i| (VIRTIO_MMIO_START + i * 0x1000, FIRST_VIRTIO_IRQ + i as u32));
    for (index, config) in disks.into_iter().enumerate() {
        let disk = Block::new(config).map_err(|source| DeviceError::Disk { index, source })?;
        let (base, irq) = slots.next().expect("endless");
        let transport = wire(vm_fd, mem, mmio, disk, base, irq, &mut attached)?;
        if confidential {
            lock(&transport).offer_access_platform();
        }
        attached.disks.push(DiskHandle(transport));
    }
    if let Some(config) = vsock {
        let (base, irq) = slots.next().expect("endless");
        let transport = wire(
            vm_fd,
            mem,
            mmio,
            Vsock::new(config)?,
            base,
            irq,
            &mut attached,
        )?;
        if confidential {
            lock(&transport).offer_access_platform();
        }
    }
    for (index, config) in nets.into_iter().enumerate() {
        let net = Net::new(config).map_err(|source| DeviceError::Net { index, source })?;
        let (base, irq) = slots.next().expect("endless");
        let transport = wire(vm_fd, mem, mmio, net, base, irq, &mut attached)?;
        if confidential {
            lock(&transport).offer_access_platform();
        }
    }
    Ok(attached)
}

fn wire<D: VirtioDevice + Send + 'static>(
    vm_fd: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    device: D,
    base: u64,
    irq: u32,
    attached: &mut Attached,
) -> Result<Arc<Mutex<MmioTransport<D>>>, DeviceError> {
    let kvm = |action: &'static str| {
        move |source| DeviceError::Kvm {
            action,
            base,
            source,
        }
    };
    let att = MmioAttachment::new(device, mem.clone(), base, irq).map_err(DeviceError::EventFd)?;
    mmio.insert(att.bus_device(), att.base, att.len)?;
    vm_fd
        .register_irqfd(&att.irq_fd, att.irq)
        .map_err(kvm("register the interrupt"))?;
    for ev in &att.ioevents {
        vm_fd
            .register_ioevent(&ev.event, &IoEventAddress::Mmio(ev.addr), ev.datamatch)
            .map_err(kvm("register a queue notifier"))?;
    }
    attached.subscribers.push(att.subscriber());
    attached.cmdline_args.push(att.cmdline_arg.clone());
    Ok(att.transport)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
