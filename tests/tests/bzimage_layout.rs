//! The bzImage path of the loader, checked against the project's real bzImage without
//! running it: this host's software KVM spends minutes in the kernel's decompressor
//! (../shared/HOST-KVM.md), so instead of booting it these tests check what the 64-bit boot
//! protocol (Documentation/arch/x86/boot.rst) asks of the loader, byte by byte.

use linux_loader::bootparam::boot_params;
use veil_tests::guest_kernel;
use veil_vmm::x86_64::boot::{load_kernel, write_boot_params, Initrd};
use veil_vmm::x86_64::layout::{ram_regions, CMDLINE_START, ZERO_PAGE_START};
use veil_vmm::x86_64::regs::EntryMode;
use veil_vmm::KernelSource;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 256 << 20;

fn memory() -> GuestMemoryMmap {
    let ranges: Vec<_> = ram_regions(MEM)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

#[test]
fn bzimage_is_loaded_and_described_per_the_64bit_boot_protocol() {
    let path = guest_kernel("bzImage");
    let file = std::fs::read(&path).unwrap();
    let mem = memory();
    let kernel = load_kernel(&mem, &KernelSource::Path(path), MEM).unwrap();

    // The protected-mode kernel (everything after the setup sectors) sits at 1 MiB and the
    // 64-bit entry point is 0x200 bytes into it.
    let setup_sects = match file[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let payload = &file[(setup_sects + 1) * 512..];
    let mut loaded = vec![0u8; payload.len()];
    mem.read_slice(&mut loaded, GuestAddress(0x10_0000))
        .unwrap();
    assert!(
        loaded == payload,
        "protected-mode kernel not copied verbatim to 1 MiB"
    );
    assert_eq!(kernel.entry, EntryMode::Long64 { entry: 0x10_0200 });

    // The kernel extracts itself to pref_address and needs init_size bytes there.
    let pref_address = u64::from_le_bytes(file[0x258..0x260].try_into().unwrap());
    let init_size = u64::from(u32::from_le_bytes(file[0x260..0x264].try_into().unwrap()));
    assert!(kernel.end >= pref_address + init_size);

    let initrd = Initrd {
        addr: 0x800_0000,
        len: 4096,
    };
    let cmdline = "console=ttyS0 root=/dev/vda";
    write_boot_params(&mem, &kernel, cmdline, Some(initrd), MEM).unwrap();
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let hdr = params.hdr;
    // The setup header is the image's own (0x1f1..), with the loader's fields filled in.
    assert_eq!({ hdr.header }, 0x5372_6448, "HdrS");
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!(
        { hdr.version },
        u16::from_le_bytes([file[0x206], file[0x207]])
    );
    assert!(
        { hdr.version } >= 0x020c && { hdr.xloadflags } & 1 == 1,
        "64-bit entry available"
    );
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!(
        ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
        (0x800_0000, 4096)
    );
    let mut stored = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut stored, GuestAddress(CMDLINE_START))
        .unwrap();
    assert_eq!(&stored[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(stored[cmdline.len()], 0);
    let top = params.e820_table[..usize::from(params.e820_entries)]
        .iter()
        .filter(|e| { e.r#type } == 1)
        .map(|e| e.addr + e.size)
        .max()
        .unwrap();
    assert_eq!(top, MEM);
}

#[test]
fn bzimage_that_does_not_fit_is_refused_with_its_needs() {
    let path = guest_kernel("bzImage");
    let small = 8 << 20;
    let ranges: Vec<_> = ram_regions(small)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    let err = load_kernel(&mem, &KernelSource::Path(path), small).unwrap_err();
    assert!(err.to_string().contains("guest memory too small"), "{err}");
}
