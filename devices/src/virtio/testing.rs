//! Test helpers: guest memory, a driver-side split virtqueue, and the driver's side of the
//! virtio-mmio initialisation sequence.

use vm_memory::{Bytes, GuestAddress};

use super::{status, GuestMemory, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// Guest memory of `size` bytes at address 0.
pub fn guest_memory(size: usize) -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// One buffer of a chain: address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub fn r(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}
pub fn w(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// The driver's view of a split virtqueue laid out at `base`.
pub struct DriverRing {
    mem: GuestMemory,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverRing {
    pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let ring = Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        // Zero the rings so stale bytes from a previous user are not read as entries.
        let end = used + 6 + 8 * u64::from(size);
        mem.write_slice(&vec![0; (end - base) as usize], GuestAddress(base))
            .unwrap();
        ring
    }

    /// Writes descriptor `index` verbatim.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Makes descriptor `head` available.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Builds a well-linked chain from `bufs` in fresh descriptors and makes it available.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if buf.write { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(index, buf.addr, buf.len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.push_avail(head);
        head
    }

    /// The device's `avail_event` (EVENT_IDX): the driver notifies once its available index
    /// passes it.
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// Sets the driver's `used_event` (EVENT_IDX): interrupt me once the used index passes it.
    pub fn set_used_event(&self, value: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(value, GuestAddress(at)).unwrap();
    }

    /// Overwrites the available index in memory (a lying driver); `None` restores the truth.
    pub fn force_avail_idx(&self, value: Option<u16>) {
        let value = value.unwrap_or(self.avail_idx);
        self.mem
            .write_obj(value, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// How many chains the driver has made available so far.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Used-ring entries (id, len) the device added since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used + 4 + 8 * slot;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

pub fn write_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

pub fn read_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Runs the driver side of device initialisation (virtio 1.2, 3.1.1) accepting every offered
/// feature, with one ring per queue.
pub fn init_device<D: VirtioDevice>(t: &mut MmioTransport<D>, rings: &[&DriverRing]) {
    init_device_with_features(t, rings, u64::MAX);
}

/// [`init_device`] accepting only the offered features that are also in `accept`.
pub fn init_device_with_features<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    rings: &[&DriverRing],
    accept: u64,
) {
    write_reg(t, 0x70, status::ACKNOWLEDGE);
    write_reg(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        write_reg(t, 0x14, sel);
        let offered = read_reg(t, 0x10) & (accept >> (32 * sel)) as u32;
        write_reg(t, 0x24, sel);
        write_reg(t, 0x20, offered);
    }
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write_reg(t, 0x70, s);
    assert_eq!(read_reg(t, 0x70), s, "device refused features");
    for (i, ring) in rings.iter().enumerate() {
        write_reg(t, 0x30, i as u32);
        write_reg(t, 0x38, u32::from(ring.size));
        write_reg(t, 0x80, ring.desc as u32);
        write_reg(t, 0x84, (ring.desc >> 32) as u32);
        write_reg(t, 0x90, ring.avail as u32);
        write_reg(t, 0x94, (ring.avail >> 32) as u32);
        write_reg(t, 0xa0, ring.used as u32);
        write_reg(t, 0xa4, (ring.used >> 32) as u32);
        write_reg(t, 0x44, 1);
    }
    write_reg(t, 0x70, s | status::DRIVER_OK);
    assert!(t.is_activated(), "device did not activate");
    let _ = VIRTIO_F_VERSION_1;
}
