//! `veil igvm build`: an IGVM file that boots a Linux `vmlinux` directly as an SEV-SNP guest,
//! without firmware, in the form [`super::load_igvm`] reads.
//!
//! What the BSP finds at entry (Linux's 64-bit boot protocol, as the decompressor leaves it
//! for `startup_64` in an SNP guest): long mode, CS = flat 64-bit code 0x10, data segments
//! 0x18, paging on an identity map of the first 4 GiB whose entries and CR3 carry the C-bit,
//! RIP = `e_entry` (the physical address of `startup_64`), RSI = the zero page, whose
//! `cc_blob_address` points at the CC blob naming the secrets and CPUID pages.
//!
//! What is launched and how (see [`layout`] for the GPAs):
//! - NORMAL with data (contents measured): the PT_LOAD segments, the initrd, the zero page,
//!   the command line, the CC blob, the GDT and the page tables; pages that are entirely
//!   zero are written without data instead (the same measurement, no data in the file).
//! - SECRETS and CPUID pages for the firmware (the VMM fills the CPUID page).
//! - NORMAL without data for every other page of RAM in the e820 map: by the IGVM rule a
//!   page without data is a NORMAL page of zeros, launched and measured as such (never the
//!   firmware's native ZERO type, which no IGVM page type names). Linux 6.1 cannot validate
//!   its own RAM when booted this way: it has no unaccepted-memory support (that arrived in
//!   6.5, and only through the EFI unaccepted-memory table), so every RAM page it touches
//!   must already be validated, and touching one that is not ends the guest (#VC, "page not
//!   validated"). The only pages Linux 6.1 validates itself are those it converts at run
//!   time. The legacy hole (0xa0000..0x100000) is left out: the kernel skips its ROM, MP
//!   table and PCI IRQ scans in an SNP guest because nothing there is validated.
//!
//! The memory map is fixed at build time from `--mem-mib` and measured inside the zero page,
//! as is the command line: the host cannot change either without changing the digest. The
//! VMM must give the guest exactly that much RAM (the file's RequiredMemory directives).

mod bsp;
pub mod cc_blob;
mod igvm_file;
pub mod layout;

use std::collections::BTreeMap;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use crate::page_info::PAGE_SIZE;
use crate::x86_boot::elf;
use crate::x86_boot::page_tables::identity_page_tables;
use crate::x86_boot::zero_page::{setup_header_magic, ZeroPage};
use cc_blob::cc_blob_page;
use layout::*;

/// Largest memory size accepted (every RAM page is one page directive in the file).
pub const MAX_MEM_MIB: u64 = 16 << 10;
/// C-bit position on every SEV-SNP capable EPYC (Milan, Genoa, Turin): CPUID
/// 0x8000001F EBX[5:0] = 51.
pub const DEFAULT_C_BIT: u8 = 51;

/// Errors building the image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    #[error("kernel ELF is not an executable (e_type is not ET_EXEC)")]
    NotExecutable,
    #[error("kernel ELF has no PT_LOAD segment")]
    NoSegments,
    #[error("kernel segment at {paddr:#x} is below 1 MiB, where the boot structures live")]
    SegmentTooLow { paddr: u64 },
    #[error("kernel segments overlap at {0:#x}")]
    SegmentsOverlap(u64),
    #[error("kernel entry point {0:#x} is not inside a loaded segment")]
    EntryOutside(u64),
    #[error("kernel ends at {end:#x} but RAM below the MMIO gap ends at {ram_end:#x} with --mem-mib {mem_mib}; raise --mem-mib")]
    KernelTooBig {
        end: u64,
        ram_end: u64,
        mem_mib: u64,
    },
    #[error("initrd is {len} bytes but only {room} bytes are free between the kernel's end at {kernel_end:#x} and the end of low RAM with --mem-mib {mem_mib}; raise --mem-mib")]
    InitrdTooBig {
        len: u64,
        room: u64,
        kernel_end: u64,
        mem_mib: u64,
    },
    #[error("command line is {len} bytes, longer than the {CMDLINE_MAX_LEN} Linux accepts")]
    CmdlineTooLong { len: usize },
    #[error("command line contains a NUL byte at offset {0}")]
    CmdlineNul(usize),
    #[error("--mem-mib {0} is outside 2..={MAX_MEM_MIB}")]
    BadMemSize(u64),
    #[error("C-bit position {0} is outside 32..=51")]
    BadCBit(u8),
    #[error("writing the IGVM file: {0}")]
    Igvm(String),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildInput<'a> {
    /// The uncompressed ELF `vmlinux`.
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    /// Guest RAM; fixes the e820 map and the pages validated at launch.
    pub mem_mib: u64,
    /// SNP guest policy recorded in the file.
    pub policy: u64,
    /// Page-table encryption bit (CPUID 0x8000001F EBX[5:0]).
    pub c_bit: u8,
}

/// How a page is launched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Page {
    Normal(Vec<u8>),
    /// A NORMAL page of zeros, written without data.
    Zero,
    Secrets,
    Cpuid,
}

/// Counts of what the file launches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildSummary {
    /// NORMAL pages with data in the file.
    pub normal_pages: u64,
    /// NORMAL pages of zeros, without data in the file.
    pub zero_pages: u64,
    pub secrets_pages: u64,
    pub cpuid_pages: u64,
    /// The kernel's entry point (RIP).
    pub entry: u64,
    /// Where the initrd was placed.
    pub initrd_gpa: Option<u64>,
}

impl BuildSummary {
    /// Bytes whose contents are measured (NORMAL pages, with data or of zeros).
    pub fn measured_bytes(&self) -> u64 {
        (self.normal_pages + self.zero_pages) * PAGE_SIZE
    }

    /// Bytes of page data the file carries.
    pub fn data_bytes(&self) -> u64 {
        self.normal_pages * PAGE_SIZE
    }
}

/// The serialized IGVM file and what it contains.
#[derive(Clone, Debug)]
pub struct BuiltIgvm {
    pub bytes: Vec<u8>,
    pub summary: BuildSummary,
}

fn page_floor(v: u64) -> u64 {
    v & !(PAGE_SIZE - 1)
}

fn page_ceil(v: u64) -> u64 {
    page_floor(v.saturating_add(PAGE_SIZE - 1))
}

/// Writes `data` at `gpa` into the page map, zero-filled up to `len` bytes.
fn place(pages: &mut BTreeMap<u64, Page>, gpa: u64, data: &[u8], len: u64) {
    let end = gpa + len;
    let mut page = page_floor(gpa);
    while page < end {
        let entry = pages
            .entry(page)
            .or_insert_with(|| Page::Normal(vec![0; PAGE_SIZE as usize]));
        if let Page::Normal(bytes) = entry {
            let from = gpa.max(page);
            let to = end.min(page + PAGE_SIZE);
            let dst = &mut bytes[(from - page) as usize..(to - page) as usize];
            // Bytes past the end of `data` (a segment's BSS) are zero.
            let src_from = ((from - gpa) as usize).min(data.len());
            let src_to = ((to - gpa) as usize).min(data.len());
            let copied = src_to - src_from;
            dst[..copied].copy_from_slice(&data[src_from..src_to]);
            dst[copied..].fill(0);
        }
        page += PAGE_SIZE;
    }
}

/// Loads the kernel's segments; returns the end of the highest one.
fn place_kernel(
    pages: &mut BTreeMap<u64, Page>,
    kernel: &elf::Image<'_>,
    ram_end: u64,
    mem_mib: u64,
) -> Result<u64, BuildError> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for seg in &kernel.segments {
        if seg.paddr < HIMEM_START {
            return Err(BuildError::SegmentTooLow { paddr: seg.paddr });
        }
        let end = seg.paddr + seg.memsz;
        if end > ram_end {
            return Err(BuildError::KernelTooBig {
                end,
                ram_end,
                mem_mib,
            });
        }
        if let Some(&(s, _)) = ranges.iter().find(|(s, e)| seg.paddr < *e && *s < end) {
            return Err(BuildError::SegmentsOverlap(seg.paddr.max(s)));
        }
        ranges.push((seg.paddr, end));
        place(pages, seg.paddr, seg.file, seg.memsz);
    }
    if !ranges
        .iter()
        .any(|(s, e)| (*s..*e).contains(&kernel.entry()))
    {
        return Err(BuildError::EntryOutside(kernel.entry()));
    }
    Ok(ranges.iter().map(|r| r.1).max().unwrap_or(HIMEM_START))
}

fn check_cmdline(cmdline: &str) -> Result<(), BuildError> {
    if cmdline.len() > CMDLINE_MAX_LEN {
        return Err(BuildError::CmdlineTooLong { len: cmdline.len() });
    }
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(BuildError::CmdlineNul(at));
    }
    Ok(())
}

/// Builds the IGVM file.
pub fn build_igvm(input: &BuildInput<'_>) -> Result<BuiltIgvm, BuildError> {
    if !(2..=MAX_MEM_MIB).contains(&input.mem_mib) {
        return Err(BuildError::BadMemSize(input.mem_mib));
    }
    if !(32..=51).contains(&input.c_bit) {
        return Err(BuildError::BadCBit(input.c_bit));
    }
    check_cmdline(input.cmdline)?;
    let kernel = elf::parse(input.kernel)?;
    if kernel.headers.elf_type != elf::ET_EXEC {
        return Err(BuildError::NotExecutable);
    }
    if kernel.segments.is_empty() {
        return Err(BuildError::NoSegments);
    }
    let mem_bytes = input.mem_mib << 20;
    let ram_end = low_ram_end(mem_bytes);

    let mut pages: BTreeMap<u64, Page> = BTreeMap::new();
    let kernel_end = page_ceil(place_kernel(&mut pages, &kernel, ram_end, input.mem_mib)?);
    let initrd = match input.initrd {
        Some(data) => {
            let len = data.len() as u64;
            let room = ram_end.saturating_sub(kernel_end);
            if page_ceil(len) > room {
                return Err(BuildError::InitrdTooBig {
                    len,
                    room,
                    kernel_end,
                    mem_mib: input.mem_mib,
                });
            }
            let gpa = page_floor(ram_end - len);
            place(&mut pages, gpa, data, len);
            Some((gpa, len))
        }
        None => None,
    };

    let map = e820_map(mem_bytes);
    let zero = ZeroPage {
        header: setup_header(),
        e820: &map,
        cmdline_gpa: CMDLINE_START,
        cmdline_len: input.cmdline.len() as u32,
        initrd,
        cc_blob_gpa: CC_BLOB_GPA as u32,
    };
    let mut cmdline = input.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    let fixed = [
        (GDT_GPA, Page::Normal(bsp::gdt_page())),
        (
            CC_BLOB_GPA,
            Page::Normal(cc_blob_page(SECRETS_GPA, CPUID_GPA)),
        ),
        (SECRETS_GPA, Page::Secrets),
        (CPUID_GPA, Page::Cpuid),
        (
            ZERO_PAGE_START,
            Page::Normal(zero.boot_params().as_slice().to_vec()),
        ),
    ];
    pages.extend(fixed);
    place(&mut pages, CMDLINE_START, &cmdline, cmdline.len() as u64);
    let tables = identity_page_tables(PML4_START, Some(input.c_bit));
    for (i, table) in tables.into_iter().enumerate() {
        pages.insert(PML4_START + i as u64 * PAGE_SIZE, Page::Normal(table));
    }

    // Every other RAM page is launched as a page of zeros; so are all-zero data pages.
    for e in map.iter().filter(|e| e.kind == E820Kind::Ram) {
        for gpa in (e.addr..e.addr + e.size).step_by(PAGE_SIZE as usize) {
            pages.entry(gpa).or_insert(Page::Zero);
        }
    }
    for page in pages.values_mut() {
        if matches!(page, Page::Normal(d) if d.iter().all(|&b| b == 0)) {
            *page = Page::Zero;
        }
    }

    let summary = BuildSummary {
        normal_pages: count(&pages, |p| matches!(p, Page::Normal(_))),
        zero_pages: count(&pages, |p| *p == Page::Zero),
        secrets_pages: count(&pages, |p| *p == Page::Secrets),
        cpuid_pages: count(&pages, |p| *p == Page::Cpuid),
        entry: kernel.entry(),
        initrd_gpa: initrd.map(|(gpa, _)| gpa),
    };
    tracing::info!(
        "IGVM for a direct SNP Linux boot: {} measured bytes, {} of them page data, {} pages of zeros",
        summary.measured_bytes(),
        summary.data_bytes(),
        summary.zero_pages
    );
    let bytes = igvm_file::serialize(pages, &map, input, kernel.entry())?;
    Ok(BuiltIgvm { bytes, summary })
}

/// The zero page's setup header for a vmlinux, which brings none: boot protocol 2.15 (the
/// first with `cc_blob_address` and the `ext_*` fields), LOADED_HIGH (the kernel is above
/// 1 MiB).
fn setup_header() -> setup_header {
    const BOOT_PROTOCOL_2_15: u16 = 0x020f;
    const LOADFLAGS_LOADED_HIGH: u8 = 0x01;
    setup_header {
        version: BOOT_PROTOCOL_2_15,
        loadflags: LOADFLAGS_LOADED_HIGH,
        ..setup_header_magic()
    }
}

fn count(pages: &BTreeMap<u64, Page>, pred: impl Fn(&Page) -> bool) -> u64 {
    pages.values().filter(|p| pred(p)).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kernel: &[u8]) -> BuildInput<'_> {
        BuildInput {
            kernel,
            initrd: None,
            cmdline: "",
            mem_mib: 64,
            policy: 0x30000,
            c_bit: 51,
        }
    }

    #[test]
    fn bad_kernels_are_refused() {
        let low = elf::synthetic(0x8_0000, &[(0x8_0000, &[1; 16], 16)]);
        assert!(matches!(
            build_igvm(&input(&low)),
            Err(BuildError::SegmentTooLow { paddr: 0x8_0000 })
        ));
        let overlap = elf::synthetic(
            0x100_0000,
            &[(0x100_0000, &[1; 16], 0x2000), (0x100_1000, &[2; 16], 16)],
        );
        assert!(matches!(
            build_igvm(&input(&overlap)),
            Err(BuildError::SegmentsOverlap(0x100_1000))
        ));
        let outside = elf::synthetic(0x200_0000, &[(0x100_0000, &[1; 16], 16)]);
        assert!(matches!(
            build_igvm(&input(&outside)),
            Err(BuildError::EntryOutside(0x200_0000))
        ));
        let huge = elf::synthetic(0x100_0000, &[(0x100_0000, &[1; 16], 64 << 20)]);
        let err = build_igvm(&input(&huge)).unwrap_err().to_string();
        assert!(err.contains("raise --mem-mib"), "{err}");
        let mut shared_object = elf::synthetic(0x100_0000, &[(0x100_0000, &[1; 16], 16)]);
        shared_object[16] = 3; // ET_DYN
        assert!(matches!(
            build_igvm(&input(&shared_object)),
            Err(BuildError::NotExecutable)
        ));
        let empty = elf::synthetic(0x100_0000, &[]);
        assert!(matches!(
            build_igvm(&input(&empty)),
            Err(BuildError::NoSegments)
        ));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let k = elf::synthetic(0x100_0000, &[(0x100_0000, &[1; 16], 16)]);
        let nul = BuildInput {
            cmdline: "a\0b",
            ..input(&k)
        };
        assert!(matches!(build_igvm(&nul), Err(BuildError::CmdlineNul(1))));
        let c_bit = BuildInput {
            c_bit: 63,
            ..input(&k)
        };
        assert!(matches!(build_igvm(&c_bit), Err(BuildError::BadCBit(63))));
        let mem = BuildInput {
            mem_mib: 1,
            ..input(&k)
        };
        assert!(matches!(build_igvm(&mem), Err(BuildError::BadMemSize(1))));
    }
}
