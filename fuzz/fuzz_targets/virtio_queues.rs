//! Guest-controlled virtqueues: the whole of a small guest memory (descriptor tables,
//! available rings, request headers, packets) comes from the fuzzer; the device is brought
//! up through its virtio-mmio registers as a driver would, then every queue is processed.
//!
//! Input: byte 0 picks the device (bit 0: block or vsock), whether EVENT_IDX is accepted
//! (bit 1) and whether the disk is read-only (bit 2); byte 1 the queue size (a power of two
//! up to 256, or anything else to exercise refusal); the rest is guest memory from 0.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_devices::bus::BusDevice;
use veil_devices::virtio::block::{Block, BlockConfig};
use veil_devices::virtio::vsock::{Vsock, VsockConfig};
use veil_devices::virtio::{status, GuestMemory, MmioTransport, VirtioDevice};
use veil_devices::EventFdTrigger;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 << 10;
/// Queue i's rings: descriptors at i * 0x2000, available ring 0x1000 later, used 0x1400.
const QUEUE_STRIDE: u64 = 0x2000;
const DISK_SECTORS: usize = 8;

fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("veil-fuzz-virtio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

fn disk_image() -> PathBuf {
    let path = scratch_dir().join("disk.img");
    // Rewritten every run so that one input's writes do not change the next one's capacity.
    std::fs::write(&path, vec![0u8; DISK_SECTORS * 512]).expect("disk image");
    path
}

fn write_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn read_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Driver-side initialisation (virtio 1.2, 3.1.1); returns whether the device activated.
fn bring_up<D: VirtioDevice>(t: &mut MmioTransport<D>, queue_size: u32, event_idx: bool) -> bool {
    write_reg(t, 0x70, status::ACKNOWLEDGE);
    write_reg(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        write_reg(t, 0x14, sel);
        let mut offered = read_reg(t, 0x10);
        if sel == 0 && !event_idx {
            offered &= !(1 << 29);
        }
        write_reg(t, 0x24, sel);
        write_reg(t, 0x20, offered);
    }
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write_reg(t, 0x70, s);
    let queues = t.device().queue_max_sizes().len() as u64;
    for i in 0..queues {
        let base = i * QUEUE_STRIDE;
        write_reg(t, 0x30, i as u32);
        write_reg(t, 0x38, queue_size);
        write_reg(t, 0x80, base as u32);
        write_reg(t, 0x90, (base + 0x1000) as u32);
        write_reg(t, 0xa0, (base + 0x1400) as u32);
        write_reg(t, 0x44, 1);
    }
    write_reg(t, 0x70, s | status::DRIVER_OK);
    t.is_activated()
}

fn exercise<D: VirtioDevice>(device: D, mem: &GuestMemory, queue_size: u32, event_idx: bool) {
    let irq = EventFdTrigger::new().expect("eventfd");
    let mut t = MmioTransport::new(device, mem.clone(), irq).expect("transport");
    if !bring_up(&mut t, queue_size, event_idx) {
        return;
    }
    let queues = t.device().queue_max_sizes().len();
    // Twice: the second pass sees the device's own used-ring and avail_event writes.
    for _ in 0..2 {
        for q in 0..queues {
            t.device_mut().process_queue(q);
        }
    }
    // Config space reads at guest-chosen offsets.
    let mut buf = [0u8; 8];
    t.read(0x100 + u64::from(queue_size % 64), &mut buf);
}

fuzz_target!(|data: &[u8]| {
    let [flags, size, contents @ ..] = data else {
        return;
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let contents = &contents[..contents.len().min(MEM_SIZE)];
    mem.write_slice(contents, GuestAddress(0)).expect("fits");
    let queue_size = if *size < 9 {
        1u32 << size
    } else {
        u32::from(*size)
    };
    let event_idx = flags & 2 != 0;
    if flags & 1 == 0 {
        let block = Block::new(BlockConfig {
            path: Some(disk_image()),
            read_only: flags & 4 != 0,
            id: "fuzz-disk".into(),
        })
        .expect("block device");
        exercise(block, &mem, queue_size, event_idx);
    } else {
        let vsock = Vsock::new(VsockConfig {
            guest_cid: 3,
            uds_path: scratch_dir().join("vsock.sock"),
        })
        .expect("vsock device");
        exercise(vsock, &mem, queue_size, event_idx);
    }
});
