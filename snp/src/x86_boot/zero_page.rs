//! The Linux zero page (`struct boot_params`, Documentation/arch/x86/boot.rst) for the 64-bit
//! boot protocol, as `linux_loader`'s bindings of `arch/x86/include/uapi/asm/bootparam.h`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::layout::E820Entry;

/// `boot_flag` of a valid setup header.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header`: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;

/// What goes into the zero page.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPage<'a> {
    /// The setup header to start from: a bzImage's own, or [`setup_header_magic`]'s.
    pub header: setup_header,
    pub e820: &'a [E820Entry],
    pub cmdline_gpa: u64,
    /// Length without the terminating NUL.
    pub cmdline_len: u32,
    /// (GPA, length) of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// GPA of the SNP CC blob (`cc_blob_sev_info`); 0 for none.
    pub cc_blob_gpa: u32,
}

/// A setup header holding only its magic numbers, for a kernel that brought none (an ELF
/// vmlinux or a flat test guest).
pub fn setup_header_magic() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        ..Default::default()
    }
}

fn split(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

impl ZeroPage<'_> {
    /// The `boot_params`; e820 entries beyond the table's 128 are left out (the maps Veil
    /// builds have at most four).
    pub fn boot_params(&self) -> boot_params {
        let mut params = boot_params {
            hdr: self.header,
            ..Default::default()
        };
        params.hdr.type_of_loader = LOADER_UNDEFINED;
        (params.hdr.cmd_line_ptr, params.ext_cmd_line_ptr) = split(self.cmdline_gpa);
        params.hdr.cmdline_size = self.cmdline_len;
        if let Some((gpa, len)) = self.initrd {
            (params.hdr.ramdisk_image, params.ext_ramdisk_image) = split(gpa);
            (params.hdr.ramdisk_size, params.ext_ramdisk_size) = split(len);
        }
        params.cc_blob_address = self.cc_blob_gpa;
        let mut entries = 0u8;
        for (slot, e) in params.e820_table.iter_mut().zip(self.e820) {
            *slot = boot_e820_entry {
                addr: e.addr,
                size: e.size,
                r#type: e.kind as u32,
            };
            entries += 1;
        }
        params.e820_entries = entries;
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_boot::layout::E820Kind;
    use vm_memory::ByteValued;

    fn at<const N: usize>(page: &[u8], offset: usize) -> [u8; N] {
        page[offset..offset + N].try_into().unwrap()
    }

    #[test]
    fn fields_land_at_the_boot_protocol_offsets() {
        let e820 = [E820Entry {
            addr: 0x10_0000,
            size: 0x20_0000,
            kind: E820Kind::Ram,
        }];
        let params = ZeroPage {
            header: setup_header_magic(),
            e820: &e820,
            cmdline_gpa: 0x1_0002_0000,
            cmdline_len: 13,
            initrd: Some((0x1_2345_6000, 0x2_0000_1000)),
            cc_blob_gpa: 0x2000,
        }
        .boot_params();
        let page = params.as_slice();
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(page.len(), 4096);
        assert_eq!(at(page, 0x1fe), 0xaa55u16.to_le_bytes());
        assert_eq!(&at::<4>(page, 0x202), b"HdrS");
        assert_eq!(page[0x210], 0xff);
        assert_eq!(at(page, 0x228), 0x0002_0000u32.to_le_bytes());
        assert_eq!(at(page, 0x0c8), 1u32.to_le_bytes());
        assert_eq!(at(page, 0x238), 13u32.to_le_bytes());
        assert_eq!(at(page, 0x218), 0x2345_6000u32.to_le_bytes());
        assert_eq!(at(page, 0x0c0), 1u32.to_le_bytes());
        assert_eq!(at(page, 0x21c), 0x1000u32.to_le_bytes());
        assert_eq!(at(page, 0x0c4), 2u32.to_le_bytes());
        assert_eq!(at(page, 0x13c), 0x2000u32.to_le_bytes());
        assert_eq!(page[0x1e8], 1);
        assert_eq!(at(page, 0x2d0), 0x10_0000u64.to_le_bytes());
        assert_eq!(at(page, 0x2d8), 0x20_0000u64.to_le_bytes());
        assert_eq!(at(page, 0x2e0), 1u32.to_le_bytes());
    }
}
