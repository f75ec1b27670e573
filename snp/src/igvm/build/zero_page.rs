//! The Linux zero page (`struct boot_params`, Documentation/x86/boot.rst and
//! `arch/x86/include/uapi/asm/bootparam.h`) for a direct 64-bit boot, and the CC blob
//! (`struct cc_blob_sev_info`, `arch/x86/include/asm/sev.h`) an SNP guest finds through it.

use crate::page_info::PAGE_SIZE;

/// Offsets in `struct boot_params` (the setup header starts at 0x1f1).
mod offset {
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const CC_BLOB_ADDRESS: usize = 0x13c;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const E820_TABLE: usize = 0x2d0;
}

/// Entries the zero page's e820 table holds (E820_MAX_ENTRIES_ZEROPAGE).
pub const E820_MAX_ENTRIES: usize = 128;
const E820_ENTRY_SIZE: usize = 20;
/// `struct cc_blob_sev_info` magic, "AMDE" little endian (CC_BLOB_SEV_HDR_MAGIC).
pub const CC_BLOB_MAGIC: u32 = 0x4544_4d41;
/// Version written into the CC blob (Linux 6.1 reads only the magic and the two ranges).
pub const CC_BLOB_VERSION: u16 = 0;
/// Size of `struct cc_blob_sev_info`.
pub const CC_BLOB_SIZE: usize = 40;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot protocol 2.15: cc_blob_address and the ext_* fields are defined.
const BOOT_PROTOCOL_VERSION: u16 = 0x020f;
/// "Undefined" boot loader id.
const LOADER_UNDEFINED: u8 = 0xff;
/// LOADED_HIGH: the kernel sits at 1 MiB or above.
const LOADFLAGS_LOADED_HIGH: u8 = 0x01;

/// e820 entry types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
}

/// One e820 entry `[addr, addr + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

/// What goes into the zero page.
#[derive(Clone, Debug)]
pub struct ZeroPage<'a> {
    pub e820: &'a [E820Entry],
    pub cmdline_gpa: u64,
    /// Length without the terminating NUL.
    pub cmdline_len: u32,
    /// (GPA, length) of the initrd.
    pub initrd: Option<(u64, u64)>,
    pub cc_blob_gpa: u32,
}

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

impl ZeroPage<'_> {
    /// The 4 KiB page. The caller bounds the e820 table to [`E820_MAX_ENTRIES`].
    pub fn to_page(&self) -> Vec<u8> {
        use offset::*;
        let mut p = vec![0u8; PAGE_SIZE as usize];
        put(&mut p, BOOT_FLAG, &BOOT_FLAG_MAGIC.to_le_bytes());
        put(&mut p, HEADER, &HDRS_MAGIC.to_le_bytes());
        put(&mut p, VERSION, &BOOT_PROTOCOL_VERSION.to_le_bytes());
        p[TYPE_OF_LOADER] = LOADER_UNDEFINED;
        p[LOADFLAGS] = LOADFLAGS_LOADED_HIGH;
        let (lo, hi) = split(self.cmdline_gpa);
        put(&mut p, CMD_LINE_PTR, &lo.to_le_bytes());
        put(&mut p, EXT_CMD_LINE_PTR, &hi.to_le_bytes());
        put(&mut p, CMDLINE_SIZE, &self.cmdline_len.to_le_bytes());
        if let Some((gpa, len)) = self.initrd {
            let (lo, hi) = split(gpa);
            put(&mut p, RAMDISK_IMAGE, &lo.to_le_bytes());
            put(&mut p, EXT_RAMDISK_IMAGE, &hi.to_le_bytes());
            let (lo, hi) = split(len);
            put(&mut p, RAMDISK_SIZE, &lo.to_le_bytes());
            put(&mut p, EXT_RAMDISK_SIZE, &hi.to_le_bytes());
        }
        put(&mut p, CC_BLOB_ADDRESS, &self.cc_blob_gpa.to_le_bytes());
        let entries = &self.e820[..self.e820.len().min(E820_MAX_ENTRIES)];
        p[E820_ENTRIES] = entries.len() as u8;
        for (i, e) in entries.iter().enumerate() {
            let at = E820_TABLE + i * E820_ENTRY_SIZE;
            put(&mut p, at, &e.addr.to_le_bytes());
            put(&mut p, at + 8, &e.size.to_le_bytes());
            put(&mut p, at + 16, &(e.kind as u32).to_le_bytes());
        }
        p
    }
}

fn split(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// The CC blob page: `cc_blob_sev_info` at offset 0, the rest zero.
pub fn cc_blob_page(secrets_gpa: u64, cpuid_gpa: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE as usize];
    let page_len = PAGE_SIZE as u32;
    put(&mut p, 0, &CC_BLOB_MAGIC.to_le_bytes());
    put(&mut p, 4, &CC_BLOB_VERSION.to_le_bytes());
    put(&mut p, 8, &secrets_gpa.to_le_bytes());
    put(&mut p, 16, &page_len.to_le_bytes());
    put(&mut p, 24, &cpuid_gpa.to_le_bytes());
    put(&mut p, 32, &page_len.to_le_bytes());
    p
}
