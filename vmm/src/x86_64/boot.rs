//! Loading the kernel and initrd and writing what each boot protocol hands the kernel:
//! the PVH start info or the Linux zero page, the e820 map and the command line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::mem::size_of;
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use veil_snp::x86_boot::elf;
use veil_snp::x86_boot::zero_page::{setup_header_magic, ZeroPage};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;
use super::regs::EntryMode;
use crate::config::KernelSource;

/// Errors while loading the guest's kernel and initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "kernel {path} is neither an ELF vmlinux nor a bzImage (no ELF magic, no 'HdrS' at 0x202)"
    )]
    UnknownKernelFormat { path: PathBuf },
    #[error(
        "{path} is an IGVM file: it is launched through an SNP firmware, not loaded as a kernel"
    )]
    IgvmIsNotAKernel { path: PathBuf },
    #[error("kernel {path} is not a loadable x86_64 kernel: {reason}")]
    CorruptKernel { path: PathBuf, reason: String },
    #[error(
        "guest memory too small: the kernel needs memory up to {needed:#x} but RAM below 4 GiB \
         ends at {available:#x}; raise --mem-mib"
    )]
    KernelTooBig { needed: u64, available: u64 },
    #[error(
        "guest memory too small for kernel + initrd: the {initrd_len}-byte initrd must fit \
         between the kernel's end at {kernel_end:#x} and {limit:#x}; raise --mem-mib"
    )]
    InitrdTooBig {
        initrd_len: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("writing boot data to guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// What the vCPU setup needs to know after loading.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: EntryMode,
    /// First byte above the kernel's image (and, for a bzImage, above the space it
    /// decompresses into).
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    setup_header: Option<setup_header>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";

fn read_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BootError + 'a {
    move |source| BootError::Read {
        what,
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl ToString) -> BootError {
    BootError::CorruptKernel {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Loads the kernel into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    source: &KernelSource,
    mem_bytes: u64,
) -> Result<LoadedKernel, BootError> {
    let low_end = low_ram_end(mem_bytes);
    match source {
        KernelSource::Flat64(code) => {
            let end = HIMEM_START + code.len() as u64;
            if end > low_end {
                return Err(BootError::KernelTooBig {
                    needed: end,
                    available: low_end,
                });
            }
            mem.write_slice(code, GuestAddress(HIMEM_START))?;
            Ok(LoadedKernel {
                entry: EntryMode::Long64 { entry: HIMEM_START },
                end,
                setup_header: None,
            })
        }
        KernelSource::Igvm(path) => Err(BootError::IgvmIsNotAKernel { path: path.clone() }),
        KernelSource::Path(path) => {
            let mut file = File::open(path).map_err(|source| BootError::Open {
                what: "kernel",
                path: path.clone(),
                source,
            })?;
            let mut magic = [0u8; 4];
            file.read_exact(&mut magic)
                .map_err(read_err("kernel", path))?;
            if &magic == ELF_MAGIC {
                return load_elf(mem, &mut file, path, low_end);
            }
            let mut hdrs = [0u8; 4];
            let is_bzimage = file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET)).is_ok()
                && file.read_exact(&mut hdrs).is_ok()
                && &hdrs == BZIMAGE_MAGIC;
            if !is_bzimage {
                return Err(BootError::UnknownKernelFormat { path: path.clone() });
            }
            load_bzimage(mem, &mut file, path, low_end)
        }
    }
}

/// Where the ELF's loadable segments end, checked to be an x86_64 ELF whose segments lie in
/// the file and above 1 MiB (linux-loader checks neither before writing guest memory).
fn elf_extent(file: &mut File, path: &Path) -> Result<u64, BootError> {
    let file_len = file.metadata().map_err(read_err("kernel", path))?.len();
    let headers = elf::read_headers(file, file_len).map_err(|e| corrupt(path, e))?;
    let mut end = 0u64;
    for segment in headers.loads() {
        if segment.paddr < HIMEM_START {
            return Err(corrupt(
                path,
                format!("segment at {:#x} is below 1 MiB", segment.paddr),
            ));
        }
        // read_headers checked that this does not overflow.
        end = end.max(segment.paddr + segment.mem_size);
    }
    if end == 0 {
        return Err(corrupt(path, "no loadable segments"));
    }
    Ok(end)
}

fn load_elf(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
    low_end: u64,
) -> Result<LoadedKernel, BootError> {
    let needed = elf_extent(file, path)?;
    if needed > low_end {
        return Err(BootError::KernelTooBig {
            needed,
            available: low_end,
        });
    }
    let loaded = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| corrupt(path, e))?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryMode::Pvh { entry: addr.0 },
        _ => EntryMode::Long64 {
            entry: loaded.kernel_load.0,
        },
    };
    Ok(LoadedKernel {
        entry,
        end: loaded.kernel_end,
        setup_header: None,
    })
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
    low_end: u64,
) -> Result<LoadedKernel, BootError> {
    let file_len = file.metadata().map_err(read_err("kernel", path))?.len();
    if HIMEM_START + file_len > low_end {
        return Err(BootError::KernelTooBig {
            needed: HIMEM_START + file_len,
            available: low_end,
        });
    }
    let loaded = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| corrupt(path, e))?;
    let header = loaded
        .setup_header
        .ok_or_else(|| corrupt(path, "no setup header"))?;
    // The 64-bit protocol needs boot protocol 2.12+ (xloadflags bit 0: 64-bit entry at +0x200).
    if header.version < 0x020c || header.xloadflags & 1 == 0 {
        return Err(corrupt(
            path,
            format!("boot protocol {:#x} has no 64-bit entry point", {
                header.version
            }),
        ));
    }
    // The decompressor runs in place and extracts to pref_address; both must be RAM.
    let needed = (header.pref_address + u64::from(header.init_size)).max(loaded.kernel_end);
    if needed > low_end {
        return Err(BootError::KernelTooBig {
            needed,
            available: low_end,
        });
    }
    Ok(LoadedKernel {
        entry: EntryMode::Long64 {
            entry: loaded.kernel_load.0 + 0x200,
        },
        end: needed,
        setup_header: Some(header),
    })
}

/// Where an initrd was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub len: u64,
}

/// Places the initrd at the highest page-aligned address it fits below `limit`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_bytes: u64,
) -> Result<Initrd, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::Open {
        what: "initrd",
        path: path.to_owned(),
        source,
    })?;
    let len = file.metadata().map_err(read_err("initrd", path))?.len();
    let max_addr = kernel
        .setup_header
        .map_or(u64::from(u32::MAX), |h| u64::from(h.initrd_addr_max));
    let limit = low_ram_end(mem_bytes).min(max_addr.saturating_add(1));
    let addr = limit
        .checked_sub(len)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel.end);
    let Some(addr) = addr else {
        return Err(BootError::InitrdTooBig {
            initrd_len: len,
            kernel_end: kernel.end,
            limit,
        });
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len as usize)
        .map_err(|e| BootError::Read {
            what: "initrd",
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
    Ok(Initrd { addr, len })
}

/// Writes the command line and the boot protocol's parameter block.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<Initrd>,
    mem_bytes: u64,
) -> Result<(), BootError> {
    let mut cmdline_bytes = cmdline.as_bytes().to_vec();
    cmdline_bytes.push(0);
    mem.write_slice(&cmdline_bytes, GuestAddress(CMDLINE_START))?;
    let map = e820_map(mem_bytes);
    match kernel.entry {
        EntryMode::Pvh { .. } => write_pvh_info(mem, &map, initrd),
        EntryMode::Long64 { .. } => {
            write_zero_page(mem, kernel.setup_header, cmdline.len(), &map, initrd)
        }
    }
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    map: &[E820Entry],
    initrd: Option<Initrd>,
) -> Result<(), BootError> {
    const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
    let memmap_addr = PVH_INFO_START + size_of::<hvm_start_info>() as u64;
    let modlist_addr = memmap_addr + (map.len() * size_of::<hvm_memmap_table_entry>()) as u64;
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        mem.write_obj(
            entry,
            GuestAddress(memmap_addr + (i * size_of::<hvm_memmap_table_entry>()) as u64),
        )?;
    }
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.len,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))?;
    }
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: memmap_addr,
        memmap_entries: map.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { modlist_addr } else { 0 },
        ..Default::default()
    };
    mem.write_obj(info, GuestAddress(PVH_INFO_START))?;
    Ok(())
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    map: &[E820Entry],
    initrd: Option<Initrd>,
) -> Result<(), BootError> {
    /// Alignment a kernel without a setup header of its own is taken to need.
    const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
    let params = ZeroPage {
        header: header.unwrap_or(setup_header {
            kernel_alignment: KERNEL_MIN_ALIGNMENT,
            ..setup_header_magic()
        }),
        e820: map,
        cmdline_gpa: CMDLINE_START,
        cmdline_len: cmdline_len as u32,
        initrd: initrd.map(|i| (i.addr, i.len)),
        cc_blob_gpa: 0,
    }
    .boot_params();
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::bootparam::boot_params;

    fn memory(bytes: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = ram_regions(bytes)
            .into_iter()
            .map(|(a, s)| (GuestAddress(a), s as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn zero_page_carries_cmdline_e820_and_initrd() {
        let mem = memory(64 << 20);
        let kernel = load_kernel(&mem, &KernelSource::Flat64(vec![0xf4; 16]), 64 << 20).unwrap();
        let initrd = Initrd {
            addr: 0x300_0000,
            len: 0x1234,
        };
        write_boot_params(&mem, &kernel, "console=ttyS0", Some(initrd), 64 << 20).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 13);
        assert_eq!(
            ({ params.hdr.ramdisk_image }, { params.hdr.ramdisk_size }),
            (0x300_0000, 0x1234)
        );
        assert_eq!(params.e820_entries, 3);
        let last = params.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
    }

    #[test]
    fn flat_guest_must_fit() {
        let mem = memory(4 << 20);
        let err = load_kernel(&mem, &KernelSource::Flat64(vec![0; 4 << 20]), 4 << 20).unwrap_err();
        assert!(matches!(err, BootError::KernelTooBig { .. }), "{err}");
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram_page_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let mem = memory(32 << 20);
        let kernel = load_kernel(&mem, &KernelSource::Flat64(vec![0xf4]), 32 << 20).unwrap();
        let initrd = load_initrd(&mem, &path, &kernel, 32 << 20).unwrap();
        assert_eq!(
            initrd,
            Initrd {
                addr: (32 << 20) - 0x2000,
                len: 5000
            }
        );
        let byte: u8 = mem.read_obj(GuestAddress(initrd.addr + 4999)).unwrap();
        assert_eq!(byte, 7);

        std::fs::write(&path, vec![7u8; 32 << 20]).unwrap();
        let err = load_initrd(&mem, &path, &kernel, 32 << 20).unwrap_err();
        assert!(
            matches!(err, BootError::InitrdTooBig { initrd_len, .. } if initrd_len == 32 << 20),
            "{err}"
        );
    }

    #[test]
    fn unknown_and_truncated_kernels_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mem = memory(32 << 20);
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
        let err = load_kernel(&mem, &KernelSource::Path(junk.clone()), 32 << 20).unwrap_err();
        assert!(
            matches!(&err, BootError::UnknownKernelFormat { path } if *path == junk),
            "{err}"
        );

        let truncated = dir.path().join("truncated");
        std::fs::write(&truncated, b"\x7fELF\x02\x01\x01").unwrap();
        let err = load_kernel(&mem, &KernelSource::Path(truncated), 32 << 20).unwrap_err();
        assert!(err.to_string().contains("truncated ELF header"), "{err}");

        let missing = dir.path().join("missing");
        let err = load_kernel(&mem, &KernelSource::Path(missing), 32 << 20).unwrap_err();
        assert!(
            matches!(err, BootError::Open { what: "kernel", .. }),
            "{err}"
        );
    }
}
