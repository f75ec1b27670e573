//! virtio-mmio register accesses in any order, at any offset and size, from a driver that
//! does not follow the initialisation sequence: reads and writes of every width across the
//! register window and beyond it, interleaved with queue processing, on a block or vsock
//! device. Guest memory holds fuzzer bytes, so whatever queues get activated point at noise.
//!
//! Checks: no panic; a read fills exactly the bytes asked for; the register window keeps
//! its identity (magic, version, device id) whatever was written.
#![no_main]

#[path = "common/input.rs"]
mod input;

use std::path::PathBuf;
use std::sync::OnceLock;

use input::Input;
use libfuzzer_sys::fuzz_target;
use veil_devices::bus::BusDevice;
use veil_devices::virtio::block::{Block, BlockConfig};
use veil_devices::virtio::vsock::{Vsock, VsockConfig};
use veil_devices::virtio::{GuestMemory, MmioTransport, VirtioDevice};
use veil_devices::EventFdTrigger;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 << 10;
const MAX_ACCESSES: usize = 256;

fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("veil-fuzz-mmio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        std::fs::write(dir.join("disk.img"), vec![0u8; 4096]).expect("disk image");
        dir
    })
}

fn read_u32<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn exercise<D: VirtioDevice>(device: D, device_id: u32, mem: &GuestMemory, input: &mut Input) {
    let irq = EventFdTrigger::new().expect("eventfd");
    let mut t = MmioTransport::new(device, mem.clone(), irq).expect("transport");
    for _ in 0..MAX_ACCESSES {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        // Mostly the registers, sometimes config space and past the window's end.
        let offset = match kind >> 6 {
            0 | 1 => u64::from(input.u8() & 0xfc),
            2 => 0x100 + u64::from(input.u8()),
            _ => u64::from(input.u16()),
        };
        let len = [1usize, 2, 4, 8, 3, 0][usize::from((kind >> 1) % 6)];
        if kind & 1 == 0 {
            let mut data = [0xa5u8; 9];
            t.read(offset, &mut data[..len]);
            assert_eq!(
                data[len], 0xa5,
                "read of {len} bytes at {offset:#x} wrote past its buffer"
            );
        } else {
            let value = input.u64().to_le_bytes();
            t.write(offset, &value[..len]);
        }
        if kind == 0xff {
            let queues = t.device().queue_max_sizes().len();
            if t.is_activated() {
                t.device_mut()
                    .process_queue(usize::from(input.u8()) % queues);
            }
        }
    }
    assert_eq!(read_u32(&mut t, 0), 0x7472_6976, "magic changed");
    assert_eq!(read_u32(&mut t, 4), 2, "version changed");
    assert_eq!(read_u32(&mut t, 8), device_id, "device id changed");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.u8();
    let noise = input.bytes(MEM_SIZE);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    mem.write_slice(noise, GuestAddress(0)).expect("fits");
    if which & 1 == 0 {
        let block = Block::new(BlockConfig {
            path: Some(scratch_dir().join("disk.img")),
            read_only: true,
            id: "fuzz".into(),
        })
        .expect("block device");
        exercise(block, 2, &mem, &mut input);
    } else {
        let vsock = Vsock::new(VsockConfig {
            guest_cid: 3,
            uds_path: scratch_dir().join("v.sock"),
        })
        .expect("vsock device");
        exercise(vsock, 19, &mem, &mut input);
    }
});
