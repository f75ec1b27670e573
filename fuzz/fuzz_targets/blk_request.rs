//! The virtio-blk request parser fed well-formed virtqueues: the fuzzer chooses each
//! request's type, sector, how the header, data and status are split over descriptors,
//! their directions and lengths (some outside guest memory), so the parser itself (not the
//! ring validation) sees the mutations.
//!
//! Checks: no panic; a used length never exceeds the chain's device-writable bytes; the
//! backing file never changes size (no write past the disk's end).
#![no_main]

#[path = "common/driver.rs"]
mod driver;
#[path = "common/input.rs"]
mod input;

use std::path::PathBuf;
use std::sync::OnceLock;

use driver::Ring;
use input::Input;
use libfuzzer_sys::fuzz_target;
use veil_devices::virtio::block::{Block, BlockConfig};
use veil_devices::virtio::{GuestMemory, MmioTransport};
use veil_devices::EventFdTrigger;
use vm_memory::GuestAddress;

const MEM_SIZE: u64 = 256 << 10;
const QUEUE_SIZE: u16 = 64;
/// Buffers are placed from here on; the ring sits below.
const DATA_START: u64 = 0x2000;
const MAX_REQUESTS: usize = 16;

fn disk_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("veil-fuzz-blk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir.join("disk.img")
    })
}

/// Hands out buffer addresses; a fuzzer-chosen few land outside guest memory or straddle
/// its end.
struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, input: &mut Input, len: u32) -> u64 {
        match input.u8() {
            0xff => MEM_SIZE - u64::from(len.min(64)) / 2,
            0xfe => u64::MAX - 8,
            0xfd => MEM_SIZE + 0x1000,
            _ => {
                let addr = self.next;
                self.next = (self.next + u64::from(len) + 7) & !7;
                if self.next >= MEM_SIZE {
                    self.next = DATA_START;
                }
                addr
            }
        }
    }
}

fn request_type(input: &mut Input) -> u32 {
    match input.u8() % 6 {
        0 => 0, // IN
        1 => 1, // OUT
        2 => 4, // FLUSH
        3 => 8, // GET_ID
        _ => input.u32(),
    }
}

fn sector(input: &mut Input, sectors: u64) -> u64 {
    match input.u8() {
        0xff => input.u64(),
        b => u64::from(b) % (sectors + 2),
    }
}

fn data_len(input: &mut Input) -> u32 {
    match input.u8() {
        b @ 0..=15 => u32::from(b) * 512,
        0xff => input.u32() % (1 << 20),
        b => u32::from(b) * 7,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let sectors = u64::from(input.u8() % 16);
    let placeholder = flags & 1 != 0;
    let path = disk_path();
    std::fs::write(path, vec![0u8; sectors as usize * 512]).expect("disk image");
    let block = Block::new(BlockConfig {
        path: (!placeholder).then(|| path.clone()),
        read_only: flags & 2 != 0,
        id: "fuzz".into(),
    })
    .expect("block device");
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory");
    let irq = EventFdTrigger::new().expect("eventfd");
    let mut t = MmioTransport::new(block, mem.clone(), irq).expect("transport");
    let mut ring = Ring::new(&mem, 0, QUEUE_SIZE);
    assert!(Ring::footprint(QUEUE_SIZE) <= DATA_START);
    if !driver::bring_up(&mut t, &[&ring], flags & 4 != 0) {
        return;
    }

    let mut placer = Placer { next: DATA_START };
    // Writable bytes of each chain, by head; chains never share descriptors.
    let mut writable_bytes = std::collections::HashMap::new();
    let mut descriptors = 0usize;
    for _ in 0..MAX_REQUESTS {
        if input.is_empty() {
            break;
        }
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&request_type(&mut input).to_le_bytes());
        header[8..16].copy_from_slice(&sector(&mut input, sectors).to_le_bytes());
        let header_len = match input.u8() % 8 {
            0 => input.u8() % 16,
            _ => 16,
        };
        let mut chain = Vec::new();
        let at = placer.place(&mut input, u32::from(header_len));
        let _ = vm_memory::Bytes::write_slice(
            &mem,
            &header[..usize::from(header_len)],
            GuestAddress(at),
        );
        chain.push((at, u32::from(header_len), input.u8() == 0xff));
        for _ in 0..input.u8() % 5 {
            let len = data_len(&mut input);
            let at = placer.place(&mut input, len);
            chain.push((at, len, input.bool()));
        }
        let status_len = match input.u8() % 8 {
            0 => 0,
            1 => 2 + u32::from(input.u8()),
            _ => 1,
        };
        let at = placer.place(&mut input, status_len);
        chain.push((at, status_len, input.u8() != 0xff));
        descriptors += chain.len();
        if descriptors > usize::from(QUEUE_SIZE) {
            break;
        }
        let writable: u64 = chain.iter().filter(|b| b.2).map(|b| u64::from(b.1)).sum();
        writable_bytes.insert(u32::from(ring.add_chain(&mem, &chain)), writable);
    }
    // Twice: a second notification with nothing new must not replay anything.
    for _ in 0..2 {
        use veil_devices::virtio::VirtioDevice;
        t.device_mut().process_queue(0);
    }
    let used = ring.take_used(&mem);
    assert!(
        used.len() <= writable_bytes.len(),
        "more used entries than requests"
    );
    for &(head, len) in &used {
        let writable = writable_bytes
            .remove(&head)
            .expect("a used head that was made available once");
        assert!(
            u64::from(len) <= writable,
            "used length {len} exceeds the {writable} writable bytes of the chain at {head}"
        );
    }
    let size = std::fs::metadata(path).expect("disk image").len();
    assert_eq!(size, sectors * 512, "the disk image changed size");
});
