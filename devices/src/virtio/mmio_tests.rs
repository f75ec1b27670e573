//! The virtio-mmio register interface and device life cycle, with a probe device.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use super::*;
use crate::virtio::testing::{guest_memory, init_device, read_reg, write_reg, DriverRing};
use crate::virtio::{ActivateError, MmioAttachment, VirtioDevice};

const FEATURE_X: u64 = 1 << 3;

#[derive(Default)]
struct Probe {
    activations: usize,
    resets: usize,
    notified: Vec<usize>,
    acked: u64,
    config: [u8; 4],
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        99
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | FEATURE_X
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.config.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        assert_eq!(ctx.queues.len(), 2);
        self.activations += 1;
        self.acked = ctx.acked_features;
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn process_queue(&mut self, index: usize) {
        self.notified.push(index);
    }
}

fn probe() -> (MmioTransport<Probe>, DriverRing, DriverRing, EventFdTrigger) {
    let mem = guest_memory(1 << 20);
    let irq = EventFdTrigger::new().unwrap();
    let t = MmioTransport::new(Probe::default(), mem.clone(), irq.try_clone().unwrap()).unwrap();
    let q0 = DriverRing::new(&mem, 0x1000, 16);
    let q1 = DriverRing::new(&mem, 0x2000, 8);
    (t, q0, q1, irq)
}

#[test]
fn identification_registers() {
    let (mut t, ..) = probe();
    assert_eq!(read_reg(&mut t, 0x00), 0x7472_6976, "magic 'virt'");
    assert_eq!(read_reg(&mut t, 0x04), 2, "modern virtio-mmio only");
    assert_eq!(read_reg(&mut t, 0x08), 99);
    write_reg(&mut t, 0x30, 1);
    assert_eq!(read_reg(&mut t, 0x34), 8, "QueueNumMax of queue 1");
    write_reg(&mut t, 0x30, 7);
    assert_eq!(read_reg(&mut t, 0x34), 0, "no queue 7");
    write_reg(&mut t, 0x14, 1);
    assert_eq!(read_reg(&mut t, 0x10), 1, "VERSION_1 is bit 32");
    write_reg(&mut t, 0x14, 0);
    assert_eq!(read_reg(&mut t, 0x10), FEATURE_X as u32);
    assert_eq!(read_reg(&mut t, 0xb0), u32::MAX, "no shared memory regions");
}

#[test]
fn registers_need_aligned_32_bit_accesses_and_config_is_bytewise() {
    let (mut t, ..) = probe();
    t.device_mut().config = [1, 2, 3, 4];
    let mut two = [0xffu8; 2];
    t.read(0x00, &mut two);
    assert_eq!(two, [0, 0], "narrow register read sees zeros");
    let mut four = [0xffu8; 4];
    t.read(0x02, &mut four);
    assert_eq!(four, [0; 4], "unaligned register read sees zeros");
    t.write(0x70, &[1]);
    assert_eq!(read_reg(&mut t, 0x70), 0, "narrow status write ignored");
    let mut cfg = [0u8; 2];
    t.read(0x102, &mut cfg);
    assert_eq!(cfg, [3, 4]);
}

#[test]
fn full_init_activates_with_the_acked_features() {
    let (mut t, q0, q1, _irq) = probe();
    init_device(&mut t, &[&q0, &q1]);
    assert_eq!(t.device().activations, 1);
    assert_eq!(t.device().acked, VIRTIO_F_VERSION_1 | FEATURE_X);
    write_reg(&mut t, 0x30, 0);
    assert_eq!(read_reg(&mut t, 0x44), 1, "queue 0 ready");
}

#[test]
fn features_without_version_1_or_not_offered_are_refused() {
    for (low, high) in [(FEATURE_X as u32, 0), (FEATURE_X as u32 | 1 << 7, 1)] {
        let (mut t, ..) = probe();
        write_reg(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        write_reg(&mut t, 0x24, 0);
        write_reg(&mut t, 0x20, low);
        write_reg(&mut t, 0x24, 1);
        write_reg(&mut t, 0x20, high);
        write_reg(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(
            read_reg(&mut t, 0x70) & status::FEATURES_OK,
            0,
            "FEATURES_OK must not stick for {low:#x}/{high:#x}"
        );
    }
}

#[test]
fn queue_registers_are_ignored_outside_configuration_and_after_driver_ok() {
    let (mut t, q0, q1, _irq) = probe();
    // Before FEATURES_OK.
    write_reg(&mut t, 0x30, 0);
    write_reg(&mut t, 0x44, 1);
    assert_eq!(read_reg(&mut t, 0x44), 0);
    init_device(&mut t, &[&q0, &q1]);
    // After DRIVER_OK the queue cannot be torn down behind the device's back.
    write_reg(&mut t, 0x30, 0);
    write_reg(&mut t, 0x44, 0);
    assert_eq!(read_reg(&mut t, 0x44), 1);
}

#[test]
fn rings_outside_guest_memory_or_bad_sizes_fail_activation_with_needs_reset() {
    let mem = guest_memory(1 << 20);
    for (size, desc) in [(16u32, 0xfff0_0000u64), (12, 0x1000)] {
        let irq = EventFdTrigger::new().unwrap();
        let mut t =
            MmioTransport::new(Probe::default(), mem.clone(), irq.try_clone().unwrap()).unwrap();
        let s = status::ACKNOWLEDGE | status::DRIVER;
        write_reg(&mut t, 0x70, s);
        write_reg(&mut t, 0x24, 1);
        write_reg(&mut t, 0x20, 1);
        write_reg(&mut t, 0x70, s | status::FEATURES_OK);
        write_reg(&mut t, 0x30, 0);
        write_reg(&mut t, 0x38, size);
        write_reg(&mut t, 0x80, desc as u32);
        write_reg(&mut t, 0x90, 0x3000);
        write_reg(&mut t, 0xa0, 0x4000);
        write_reg(&mut t, 0x44, 1);
        write_reg(&mut t, 0x70, s | status::FEATURES_OK | status::DRIVER_OK);
        assert!(
            !t.is_activated(),
            "size {size} desc {desc:#x} must not activate"
        );
        assert_eq!(t.device().activations, 0);
        assert_ne!(read_reg(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(
            irq.read().unwrap(),
            1,
            "driver is told through a config interrupt"
        );
    }
}

#[test]
fn status_zero_resets_the_device() {
    let (mut t, q0, q1, _irq) = probe();
    init_device(&mut t, &[&q0, &q1]);
    write_reg(&mut t, 0x70, 0);
    assert!(!t.is_activated());
    assert_eq!(t.device().resets, 1);
    assert_eq!(read_reg(&mut t, 0x70), 0);
    write_reg(&mut t, 0x30, 0);
    assert_eq!(read_reg(&mut t, 0x44), 0, "queues are unconfigured again");
    // And it can be brought up again.
    init_device(&mut t, &[&q0, &q1]);
    assert_eq!(t.device().activations, 2);
}

#[test]
fn driver_cannot_clear_status_bits_without_a_reset() {
    let (mut t, ..) = probe();
    write_reg(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    write_reg(&mut t, 0x70, status::ACKNOWLEDGE);
    assert_eq!(read_reg(&mut t, 0x70), status::ACKNOWLEDGE | status::DRIVER);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, q0, q1, irq) = probe();
    init_device(&mut t, &[&q0, &q1]);
    t.interrupt().signal_used_queue();
    t.notify_config_change();
    assert_eq!(read_reg(&mut t, 0x60), 3);
    assert_eq!(irq.read().unwrap(), 2);
    write_reg(&mut t, 0x64, 1);
    assert_eq!(read_reg(&mut t, 0x60), 2);
    write_reg(&mut t, 0x64, 2);
    assert_eq!(read_reg(&mut t, 0x60), 0);
}

#[test]
fn config_change_before_driver_ok_bumps_generation_without_interrupt() {
    let (mut t, ..) = probe();
    let generation = read_reg(&mut t, 0xfc);
    t.notify_config_change();
    assert_eq!(read_reg(&mut t, 0xfc), generation.wrapping_add(1));
    assert_eq!(read_reg(&mut t, 0x60), 0);
}

#[test]
fn plain_queue_notify_write_and_ioeventfd_both_reach_the_device_through_the_event_loop() {
    let mem = guest_memory(1 << 20);
    let att = MmioAttachment::new(Probe::default(), mem.clone(), 0xd000_0000, 5).unwrap();
    assert_eq!(att.cmdline_arg, "virtio_mmio.device=4K@0xd0000000:5");
    assert_eq!(att.len, 0x1000);
    let addrs: Vec<(u64, u32)> = att.ioevents.iter().map(|e| (e.addr, e.datamatch)).collect();
    assert_eq!(addrs, vec![(0xd000_0050, 0), (0xd000_0050, 1)]);

    let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    events.add_subscriber(att.subscriber());
    let bus_dev = att.bus_device();
    let mut bus = crate::bus::Bus::new();
    bus.insert(bus_dev, att.base, att.len).unwrap();

    let q0 = DriverRing::new(&mem, 0x1000, 16);
    let q1 = DriverRing::new(&mem, 0x2000, 8);
    init_device(&mut att.transport.lock().unwrap(), &[&q0, &q1]);

    // What KVM does on a matching write when the ioeventfd is registered.
    att.ioevents[1].event.write(1).unwrap();
    events.run_with_timeout(1000).unwrap();
    // A QueueNotify write that exits to the VMM instead.
    assert!(bus.write(0xd000_0050, &0u32.to_le_bytes()));
    events.run_with_timeout(1000).unwrap();
    // A notification for a queue that does not exist is ignored.
    assert!(bus.write(0xd000_0050, &9u32.to_le_bytes()));
    assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    assert_eq!(att.transport.lock().unwrap().device().notified, vec![1, 0]);

    // The irqfd the VMM registers is the one the device raises.
    att.transport
        .lock()
        .unwrap()
        .interrupt()
        .signal_used_queue();
    assert_eq!(att.irq_fd.read().unwrap(), 1);
}

#[test]
fn cmdline_format() {
    assert_eq!(
        kernel_cmdline_arg(0xc000_1000, 12),
        "virtio_mmio.device=4K@0xc0001000:12"
    );
}

#[test]
fn access_platform_is_offered_only_on_request_and_then_negotiable() {
    let (mut t, q0, q1, _irq) = probe();
    write_reg(&mut t, 0x14, 1);
    assert_eq!(read_reg(&mut t, 0x10), 1, "not offered by default");
    t.offer_access_platform();
    assert_eq!(
        read_reg(&mut t, 0x10),
        0b11,
        "VERSION_1 and ACCESS_PLATFORM"
    );
    init_device(&mut t, &[&q0, &q1]);
    assert_ne!(t.device().acked & VIRTIO_F_ACCESS_PLATFORM, 0);
}
