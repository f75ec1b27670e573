//! The driver's side of a virtio-mmio device for the structured fuzz targets: register
//! access, the initialisation sequence, and split virtqueues written into guest memory.
//! Shared through `#[path]`: each target is its own binary.
#![allow(dead_code)]

use veil_devices::bus::BusDevice;
use veil_devices::virtio::{status, GuestMemory, MmioTransport, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

pub fn write_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

pub fn read_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// A split virtqueue laid out at `base`: descriptors, then the available ring, then the used
/// ring (4-byte aligned).
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        for (addr, len) in [(avail, 4u64), (used, 4)] {
            mem.write_slice(&vec![0u8; len as usize], GuestAddress(addr))
                .expect("ring in guest memory");
        }
        Self {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Bytes the ring occupies from `desc`.
    pub fn footprint(size: u16) -> u64 {
        let avail = 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        used + 6 + 8 * u64::from(size)
    }

    /// Writes a chain of `(addr, len, device_writable)` buffers, makes it available and
    /// returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc % self.size;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = (index + 1) % self.size;
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(index)));
        }
        self.next_desc = self.next_desc.wrapping_add(bufs.len() as u16);
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head.to_le(), GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2));
        head
    }

    /// Used entries `(id, len)` the device published since the last call.
    pub fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0);
        let mut out = Vec::new();
        while self.used_seen != idx && out.len() < usize::from(self.size) {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Driver initialisation (virtio 1.2, 3.1.1) with every offered feature but EVENT_IDX unless
/// `event_idx`; returns whether the device activated.
pub fn bring_up<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    rings: &[&Ring],
    event_idx: bool,
) -> bool {
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
    for (i, ring) in rings.iter().enumerate() {
        write_reg(t, 0x30, i as u32);
        write_reg(t, 0x38, u32::from(ring.size));
        for (reg, addr) in [(0x80, ring.desc), (0x90, ring.avail), (0xa0, ring.used)] {
            write_reg(t, reg, addr as u32);
            write_reg(t, reg + 4, (addr >> 32) as u32);
        }
        write_reg(t, 0x44, 1);
    }
    write_reg(t, 0x70, s | status::DRIVER_OK);
    t.is_activated()
}
