//! The one ELF64 reader for x86_64 guest kernels: the VMM's direct boot checks a kernel's
//! program headers with it before linux-loader loads it, `veil igvm build` takes a vmlinux's
//! segments from it, and the benches' floor program its PVH guest's segments and notes.
//! Headers are decoded as linux-loader's `Elf64_Ehdr` / `Elf64_Phdr`. Every offset and length
//! is checked against the file before it is used: kernel files are input from the command
//! line.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr};
use vm_memory::ByteValued;

/// Errors in a kernel ELF file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("kernel is not an ELF file (no \\x7fELF magic)")]
    NotElf,
    #[error("kernel ELF is not a 64-bit little-endian x86_64 file")]
    WrongKind,
    #[error("kernel ELF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel ELF has {0} program headers, more than the 64 accepted")]
    TooManySegments(u16),
    #[error("cannot read the kernel ELF file: {0}")]
    Read(std::io::ErrorKind),
}

/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `p_type` of a note segment.
pub const PT_NOTE: u32 = 4;
/// `e_type` of an executable.
pub const ET_EXEC: u16 = 2;

const EHDR_SIZE: usize = std::mem::size_of::<Elf64_Ehdr>();
const PHDR_SIZE: usize = std::mem::size_of::<Elf64_Phdr>();
const MAX_PHDRS: u16 = 64;
const EM_X86_64: u16 = 62;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;

/// One program header, its file range checked to lie inside the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub kind: u32,
    pub offset: u64,
    pub paddr: u64,
    pub file_size: u64,
    pub mem_size: u64,
}

/// The checked headers of an x86_64 ELF64 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfHeaders {
    pub elf_type: u16,
    pub entry: u64,
    pub program_headers: Vec<ProgramHeader>,
}

impl ElfHeaders {
    /// The PT_LOAD headers, in file order.
    pub fn loads(&self) -> impl Iterator<Item = &ProgramHeader> {
        self.program_headers.iter().filter(|p| p.kind == PT_LOAD)
    }
}

fn read_error(e: std::io::Error) -> ElfError {
    ElfError::Read(e.kind())
}

/// Reads and checks the headers of the `file_len`-byte ELF file `file`: ELF64, little endian,
/// x86_64; at most 64 program headers, inside the file; PT_LOAD and PT_NOTE contents inside
/// the file; no PT_LOAD larger on file than in memory or ending past 2^64.
pub fn read_headers(file: &mut (impl Read + Seek), file_len: u64) -> Result<ElfHeaders, ElfError> {
    let mut ehdr = Elf64_Ehdr::default();
    file.rewind().map_err(read_error)?;
    let magic_len = file_len.min(4) as usize;
    file.read_exact(&mut ehdr.as_mut_slice()[..magic_len])
        .map_err(read_error)?;
    if ehdr.e_ident[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if file_len < EHDR_SIZE as u64 {
        return Err(ElfError::Malformed("truncated ELF header"));
    }
    file.read_exact(&mut ehdr.as_mut_slice()[4..])
        .map_err(read_error)?;
    if ehdr.e_ident[4] != ELFCLASS64
        || ehdr.e_ident[5] != ELFDATA2LSB
        || ehdr.e_machine != EM_X86_64
    {
        return Err(ElfError::WrongKind);
    }
    if usize::from(ehdr.e_phentsize) != PHDR_SIZE {
        return Err(ElfError::Malformed("program header size is not 56"));
    }
    if ehdr.e_phnum > MAX_PHDRS {
        return Err(ElfError::TooManySegments(ehdr.e_phnum));
    }
    let in_file = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= file_len);
    if !in_file(ehdr.e_phoff, u64::from(ehdr.e_phnum) * PHDR_SIZE as u64) {
        return Err(ElfError::Malformed("program headers lie outside the file"));
    }
    file.seek(SeekFrom::Start(ehdr.e_phoff))
        .map_err(read_error)?;
    let mut program_headers = Vec::with_capacity(usize::from(ehdr.e_phnum));
    for _ in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        file.read_exact(phdr.as_mut_slice()).map_err(read_error)?;
        let header = ProgramHeader {
            kind: phdr.p_type,
            offset: phdr.p_offset,
            paddr: phdr.p_paddr,
            file_size: phdr.p_filesz,
            mem_size: phdr.p_memsz,
        };
        if header.kind == PT_LOAD {
            if header.file_size > header.mem_size {
                return Err(ElfError::Malformed(
                    "segment file size exceeds its memory size",
                ));
            }
            if header.paddr.checked_add(header.mem_size).is_none() {
                return Err(ElfError::Malformed("segment physical address overflows"));
            }
        }
        if matches!(header.kind, PT_LOAD | PT_NOTE) && !in_file(header.offset, header.file_size) {
            return Err(ElfError::Malformed("segment data lies outside the file"));
        }
        program_headers.push(header);
    }
    Ok(ElfHeaders {
        elf_type: ehdr.e_type,
        entry: ehdr.e_entry,
        program_headers,
    })
}

/// One PT_LOAD segment: `file` bytes copied to `paddr`, zero-filled up to `memsz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub paddr: u64,
    pub file: &'a [u8],
    pub memsz: u64,
}

/// An ELF file in memory: its headers, loadable segments and note segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image<'a> {
    pub headers: ElfHeaders,
    /// PT_LOAD segments in file order.
    pub segments: Vec<Segment<'a>>,
    /// Contents of the PT_NOTE segments with their file offsets, in file order.
    pub notes: Vec<(u64, &'a [u8])>,
}

impl Image<'_> {
    /// `e_entry`.
    pub fn entry(&self) -> u64 {
        self.headers.entry
    }
}

/// Parses `bytes` as an x86_64 ELF64 file (see [`read_headers`] for what is checked).
pub fn parse(bytes: &[u8]) -> Result<Image<'_>, ElfError> {
    let headers = read_headers(&mut std::io::Cursor::new(bytes), bytes.len() as u64)?;
    // read_headers checked every PT_LOAD and PT_NOTE range against the file's length.
    let contents = |p: &ProgramHeader| &bytes[p.offset as usize..(p.offset + p.file_size) as usize];
    let segments = headers
        .loads()
        .map(|p| Segment {
            paddr: p.paddr,
            file: contents(p),
            memsz: p.mem_size,
        })
        .collect();
    let notes = headers
        .program_headers
        .iter()
        .filter(|p| p.kind == PT_NOTE)
        .map(|p| (p.offset, contents(p)))
        .collect();
    Ok(Image {
        headers,
        segments,
        notes,
    })
}

/// Builds a minimal ELF for tests: one PT_LOAD per `(paddr, data, memsz)`.
#[cfg(test)]
pub fn synthetic(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
    let mut out = vec![0u8; EHDR_SIZE + PHDR_SIZE * segments.len()];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
    out[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    out[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (paddr, data, memsz)) in segments.iter().enumerate() {
        let offset = out.len() as u64;
        out.extend_from_slice(data);
        let ph = EHDR_SIZE + i * PHDR_SIZE;
        out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        out[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        out[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_entry_are_read() {
        let elf = synthetic(0x100_0000, &[(0x100_0000, &[1, 2, 3], 0x2000)]);
        let k = parse(&elf).unwrap();
        assert_eq!(k.entry(), 0x100_0000);
        assert_eq!(k.headers.elf_type, ET_EXEC);
        assert_eq!(k.segments.len(), 1);
        assert_eq!(k.segments[0].paddr, 0x100_0000);
        assert_eq!(k.segments[0].file, &[1, 2, 3]);
        assert_eq!(k.segments[0].memsz, 0x2000);
    }

    #[test]
    fn malformed_files_are_named() {
        assert_eq!(parse(b"MZ\x90\x00").unwrap_err(), ElfError::NotElf);
        assert_eq!(
            parse(b"\x7fELF").unwrap_err(),
            ElfError::Malformed("truncated ELF header")
        );
        let mut elf = synthetic(0, &[(0x100_0000, &[1; 16], 16)]);
        // Segment offset beyond the end of the file.
        elf[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            parse(&elf).unwrap_err(),
            ElfError::Malformed("segment data lies outside the file")
        );
        let mut elf = synthetic(0, &[(0x100_0000, &[1; 16], 16)]);
        elf[18] = 3; // EM_386
        assert_eq!(parse(&elf).unwrap_err(), ElfError::WrongKind);
        let mut elf = synthetic(0, &[(0x100_0000, &[1; 16], 8)]);
        assert_eq!(
            parse(&elf).unwrap_err(),
            ElfError::Malformed("segment file size exceeds its memory size")
        );
        elf[56] = 0;
        assert_eq!(parse(&elf).unwrap().segments, vec![]);
        elf[56] = 65;
        assert_eq!(parse(&elf).unwrap_err(), ElfError::TooManySegments(65));
        elf[56] = 2;
        assert_eq!(
            parse(&elf).unwrap_err(),
            ElfError::Malformed("program headers lie outside the file")
        );
    }
}
