//! virtio-blk driven through the MMIO transport and a driver-side ring in real guest memory.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};

use super::request::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use super::*;
use crate::bus::BusDevice;
use crate::virtio::testing::{guest_memory, init_device, r, read_reg, w, DriverRing};
use crate::virtio::{GuestMemory, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::EventFdTrigger;

const MEM_SIZE: usize = 1 << 20;
const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

struct Rig {
    image: tempfile::NamedTempFile,
    mem: GuestMemory,
    ring: DriverRing,
    dev: MmioTransport<Block>,
    irq: EventFdTrigger,
}

fn rig_with(contents: &[u8], read_only: bool) -> Rig {
    let mut image = tempfile::NamedTempFile::new().unwrap();
    image.write_all(contents).unwrap();
    let block = Block::new(BlockConfig {
        path: Some(image.path().to_owned()),
        read_only,
        id: "veil-disk-0".into(),
    })
    .unwrap();
    let mem = guest_memory(MEM_SIZE);
    let irq = EventFdTrigger::new().unwrap();
    let mut dev = MmioTransport::new(block, mem.clone(), irq.try_clone().unwrap()).unwrap();
    let ring = DriverRing::new(&mem, 0, 16);
    init_device(&mut dev, &[&ring]);
    Rig {
        image,
        mem,
        ring,
        dev,
        irq,
    }
}

fn rig(sectors: usize) -> Rig {
    rig_with(&vec![0u8; sectors * 512], false)
}

impl Rig {
    fn header(&self, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Makes the chain available, runs the queue, returns the used entries.
    fn run(&mut self, bufs: &[crate::virtio::testing::Buf]) -> Vec<(u32, u32)> {
        // A sentinel so that "status untouched" is visible.
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        self.ring.add_chain(bufs);
        self.dev.process_queue(0);
        self.ring.take_used()
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(self.image.path()).unwrap()
    }

    fn submit_read(&mut self, sector: u64, len: u32) -> Vec<(u32, u32)> {
        self.header(HDR, T_IN, sector);
        self.run(&[r(HDR, 16), w(DATA, len), w(STATUS, 1)])
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn write_flush_read_round_trip_with_split_buffers() {
    let mut rig = rig(8);
    let data = pattern(1024, 7);
    rig.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    rig.header(HDR, T_OUT, 2);
    // Header split 10 + 6 bytes, data split 100 + 924 bytes in non-adjacent buffers.
    let used = rig.run(&[
        r(HDR, 10),
        r(HDR + 10, 6),
        r(DATA, 100),
        r(DATA + 100, 924),
        w(STATUS, 1),
    ]);
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    assert_eq!(&rig.file()[1024..2048], &data[..]);
    assert!(rig.file()[..1024].iter().all(|&b| b == 0));

    rig.header(HDR, T_FLUSH, 0);
    let used = rig.run(&[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!(used.len(), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);

    rig.mem
        .write_slice(&[0u8; 1024], GuestAddress(DATA + 0x1000))
        .unwrap();
    rig.header(HDR, T_IN, 2);
    let used = rig.run(&[
        r(HDR, 16),
        w(DATA + 0x1000, 512),
        w(DATA + 0x3000, 512),
        w(STATUS, 1),
    ]);
    assert_eq!(used[0].1, 1025, "used length counts data and status");
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    let mut back = vec![0u8; 1024];
    rig.mem
        .read_slice(&mut back[..512], GuestAddress(DATA + 0x1000))
        .unwrap();
    rig.mem
        .read_slice(&mut back[512..], GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(back, data);

    // Used buffers raise the used-ring interrupt through the irqfd.
    assert!(rig.irq.read().unwrap() >= 1);
    assert_eq!(read_reg(&mut rig.dev, 0x60) & 1, 1);
    crate::virtio::testing::write_reg(&mut rig.dev, 0x64, 1);
    assert_eq!(read_reg(&mut rig.dev, 0x60), 0);
}

#[test]
fn read_only_disk_offers_ro_and_fails_writes() {
    let contents = pattern(2048, 3);
    let mut rig = rig_with(&contents, true);
    assert_ne!(rig.dev.device().features() & VIRTIO_BLK_F_RO, 0);
    rig.mem
        .write_slice(&[0x55; 512], GuestAddress(DATA))
        .unwrap();
    rig.header(HDR, T_OUT, 0);
    let used = rig.run(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]);
    assert_eq!(used.len(), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(rig.file(), contents);

    let used = rig.submit_read(1, 512);
    assert_eq!(used[0].1, 513);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    let mut back = vec![0u8; 512];
    rig.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, &contents[512..1024]);
}

#[test]
fn read_write_disk_does_not_offer_ro() {
    let rig = rig(1);
    let features = rig.dev.device().features();
    assert_eq!(features & VIRTIO_BLK_F_RO, 0);
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    assert_ne!(features & VIRTIO_BLK_F_FLUSH, 0);
}

#[test]
fn get_id_returns_the_padded_serial() {
    let mut rig = rig(1);
    rig.mem
        .write_slice(&[0xff; 20], GuestAddress(DATA))
        .unwrap();
    rig.header(HDR, T_GET_ID, 0);
    let used = rig.run(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    assert_eq!(used, vec![(0, 21)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    let mut id = [0u8; 20];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"veil-disk-0");
    assert!(id[11..].iter().all(|&b| b == 0));
}

#[test]
fn capacity_comes_from_the_file_and_follows_a_swap() {
    let mut rig = rig_with(&[0u8; 4096 + 100], false);
    let mut cap = [0u8; 8];
    rig.dev.read(0x100, &mut cap);
    assert_eq!(
        u64::from_le_bytes(cap),
        8,
        "partial trailing sector is not exposed"
    );
    let generation = read_reg(&mut rig.dev, 0xfc);

    let mut bigger = tempfile::NamedTempFile::new().unwrap();
    bigger.write_all(&pattern(64 * 512, 9)).unwrap();
    rig.dev.swap_disk(bigger.path()).unwrap();
    rig.dev.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 64);
    assert_ne!(read_reg(&mut rig.dev, 0xfc), generation);
    assert_eq!(
        read_reg(&mut rig.dev, 0x60) & 2,
        2,
        "config-change interrupt"
    );
    assert!(rig.irq.read().unwrap() >= 1);

    // Reads now come from the new file, including sectors the old one did not have.
    let used = rig.submit_read(40, 512);
    assert_eq!(used.len(), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    let mut back = vec![0u8; 512];
    rig.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, &pattern(64 * 512, 9)[40 * 512..41 * 512]);

    // A failed swap keeps the current file.
    assert!(rig
        .dev
        .swap_disk(std::path::Path::new("/nonexistent/veil.img"))
        .is_err());
    assert_eq!(rig.dev.device().capacity_sectors(), 64);
}

#[test]
fn placeholder_without_file_has_no_capacity_until_swapped() {
    let block = Block::new(BlockConfig {
        path: None,
        read_only: true,
        id: String::new(),
    })
    .unwrap();
    assert_eq!(block.capacity_sectors(), 0);
    assert!(matches!(
        Block::new(BlockConfig {
            path: None,
            read_only: false,
            id: "x".repeat(21),
        }),
        Err(BlockError::IdTooLong { .. })
    ));
}

// ---- malformed guest input: error status or dropped chain, never a panic, next request OK ----

/// After a malformed request, a well-formed read of sector 0 must still succeed.
fn assert_still_serving(rig: &mut Rig) {
    let used = rig.submit_read(0, 512);
    assert_eq!(used.len(), 1, "next request must be served");
    assert_eq!(used[0].1, 513);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
}

#[test]
fn writable_buffer_outside_guest_memory_drops_the_chain() {
    let mut rig = rig(4);
    rig.header(HDR, T_IN, 0);
    let used = rig.run(&[r(HDR, 16), w(0xffff_0000, 512), w(STATUS, 1)]);
    assert_eq!(used, vec![(0, 0)], "returned with nothing written");
    assert_eq!(rig.status(), 0xee, "status untouched");
    assert_still_serving(&mut rig);
}

#[test]
fn buffer_straddling_the_end_of_memory_is_not_partially_written() {
    let mut rig = rig_with(&pattern(2048, 1), false);
    let tail = MEM_SIZE as u64 - 512;
    rig.mem
        .write_slice(&[0xaa; 512], GuestAddress(tail))
        .unwrap();
    rig.header(HDR, T_IN, 0);
    let used = rig.run(&[r(HDR, 16), w(tail, 1024), w(STATUS, 1)]);
    assert_eq!(used[0].1, 0);
    let mut back = [0u8; 512];
    rig.mem.read_slice(&mut back, GuestAddress(tail)).unwrap();
    assert_eq!(
        back, [0xaa; 512],
        "no partial write into the in-bounds part"
    );
    assert_still_serving(&mut rig);
}

#[test]
fn readable_header_outside_guest_memory_answers_ioerr() {
    let mut rig = rig(4);
    let used = rig.run(&[r(u64::MAX - 8, 16), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!(used.len(), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    assert_still_serving(&mut rig);
}

#[test]
fn huge_lengths_are_refused() {
    let mut rig = rig(4);
    // A ~4 GiB readable data buffer: runs outside the 1 MiB guest.
    rig.header(HDR, T_OUT, 0);
    let used = rig.run(&[r(HDR, 16), r(DATA, u32::MAX - 0x1000), w(STATUS, 1)]);
    assert_eq!(used.len(), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    // A chain longer than 2^32 bytes in total ends before its status byte: dropped.
    let used = rig.run(&[r(HDR, 16), r(DATA, u32::MAX), w(STATUS, 1)]);
    assert_eq!(used, vec![(3, 0)]);
    assert_eq!(rig.status(), 0xee);
    assert!(rig.file().iter().all(|&b| b == 0));
    // A sector number that overflows when the length is added.
    rig.header(HDR, T_IN, u64::MAX);
    let used = rig.run(&[r(HDR, 16), w(DATA, 1024), w(STATUS, 1)]);
    assert_eq!(used.len(), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    assert_still_serving(&mut rig);
}

#[test]
fn out_of_bounds_and_unaligned_requests_answer_ioerr() {
    let mut rig = rig(4);
    let before = rig.file();
    rig.mem
        .write_slice(&[0x77; 1024], GuestAddress(DATA))
        .unwrap();
    // Sector 3 + 2 sectors runs past a 4-sector disk.
    rig.header(HDR, T_OUT, 3);
    rig.run(&[r(HDR, 16), r(DATA, 1024), w(STATUS, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(rig.file(), before, "nothing written past or before the end");
    rig.submit_read(4, 512);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    rig.submit_read(0, 100);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    assert_still_serving(&mut rig);
}

#[test]
fn wrong_direction_flags_answer_ioerr() {
    let mut rig = rig(4);
    // A read whose data buffer is device-readable.
    rig.header(HDR, T_IN, 0);
    rig.run(&[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    // A write whose data buffer is device-writable: the disk must not change.
    rig.header(HDR, T_OUT, 0);
    rig.mem
        .write_slice(&[0x66; 512], GuestAddress(DATA))
        .unwrap();
    rig.run(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    assert!(rig.file().iter().all(|&b| b == 0));
    // A header marked device-writable: no readable header at all.
    rig.header(HDR, T_IN, 0);
    rig.run(&[w(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    // No writable descriptor at all: nowhere to put a status, chain dropped.
    let used = rig.run(&[r(HDR, 16), r(DATA, 512), r(STATUS, 1)]);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 0);
    assert_eq!(rig.status(), 0xee);
    assert_still_serving(&mut rig);
}

#[test]
fn zero_lengths_are_handled() {
    let mut rig = rig(4);
    // Zero-length header.
    rig.header(HDR, T_IN, 0);
    rig.run(&[r(HDR, 0), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    // Zero-length status descriptor: dropped.
    let used = rig.run(&[r(HDR, 16), w(DATA, 0), w(STATUS, 0)]);
    assert_eq!(used[0].1, 0);
    // A read of zero bytes is a valid no-op.
    let used = rig.run(&[r(HDR, 16), w(DATA, 0), w(STATUS, 1)]);
    assert_eq!(used[0].1, 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    assert_still_serving(&mut rig);
}

#[test]
fn bad_request_type_answers_unsupp() {
    let mut rig = rig(4);
    rig.header(HDR, 99, 0);
    let used = rig.run(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!(used.len(), 1);
    assert_eq!(rig.status(), VIRTIO_BLK_S_UNSUPP);
    assert_still_serving(&mut rig);
}

#[test]
fn looping_chain_is_cut_at_queue_size() {
    let mut rig = rig(4);
    rig.header(HDR, T_IN, 0);
    // Descriptors 0 -> 1 -> 0 -> ... : the walk must stop after 16 descriptors.
    rig.ring.write_desc(0, HDR, 16, 1, 1);
    rig.ring.write_desc(1, STATUS, 1, 1 | 2, 0);
    rig.ring.push_avail(0);
    rig.dev.process_queue(0);
    let used = rig.ring.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, 0);
    // Eight 16-byte headers were read: the request is malformed, not executed.
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    // The driver's ring allocator does not know about the hand-written descriptors.
    rig.ring.write_desc(0, 0, 0, 0, 0);
    assert_still_serving(&mut rig);
}

#[test]
fn chain_longer_than_the_queue_or_out_of_range_indices_are_not_followed() {
    let mut rig = rig(4);
    rig.header(HDR, T_IN, 0);
    // A next index past the 16-entry table ends the walk: no status byte reached.
    rig.ring.write_desc(0, HDR, 16, 1, 200);
    rig.ring.push_avail(0);
    rig.dev.process_queue(0);
    assert_eq!(rig.ring.take_used(), vec![(0, 0)]);
    // An available head past the table cannot even be returned; it is skipped.
    rig.ring.push_avail(500);
    rig.dev.process_queue(0);
    assert_eq!(rig.ring.take_used(), vec![]);
    assert_still_serving(&mut rig);
}

#[test]
fn indirect_table_outside_memory_is_dropped() {
    let mut rig = rig(4);
    // VRING_DESC_F_INDIRECT pointing outside guest memory.
    rig.ring.write_desc(0, 0xdead_0000_0000, 16 * 4, 4, 0);
    rig.ring.push_avail(0);
    rig.dev.process_queue(0);
    assert_eq!(rig.ring.take_used(), vec![(0, 0)]);
    assert_still_serving(&mut rig);
}

#[test]
fn event_idx_publishes_avail_event_and_honours_used_event() {
    let mut rig = rig(4);
    assert_ne!(
        rig.dev.device().features() & crate::virtio::VIRTIO_RING_F_EVENT_IDX,
        0
    );
    let _ = rig.irq.read();
    // The driver asks for an interrupt only after the 3rd used buffer (used_event = 2).
    rig.ring.set_used_event(2);
    for expected_irq in [false, false, true] {
        rig.submit_read(0, 512);
        assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
        assert_eq!(rig.irq.read().is_ok(), expected_irq);
        // After each drain the device tells the driver to notify on the next buffer.
        assert_eq!(rig.ring.avail_event(), rig.ring.avail_idx());
    }
}

#[test]
fn an_available_index_far_ahead_of_the_ring_does_not_hang_the_device() {
    let mut rig = rig(4);
    rig.ring
        .force_avail_idx(Some(rig.ring.avail_idx().wrapping_add(1000)));
    // Returns (rather than spinning) without consuming anything.
    rig.dev.process_queue(0);
    assert_eq!(rig.ring.take_used(), vec![]);
    rig.ring.force_avail_idx(None);
    assert_still_serving(&mut rig);
}
