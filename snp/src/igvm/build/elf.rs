//! The part of an x86_64 ELF `vmlinux` an SNP direct boot needs: the loadable segments at
//! their physical addresses and the entry point. Every offset and length is checked against
//! the file before it is used: the kernel file is input from the command line.

/// Errors in the kernel ELF file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("kernel is not an ELF file (no \\x7fELF magic)")]
    NotElf,
    #[error("kernel ELF is not a 64-bit little-endian x86_64 executable")]
    WrongKind,
    #[error("kernel ELF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel ELF has no PT_LOAD segment")]
    NoSegments,
    #[error("kernel ELF has {0} program headers, more than the 64 accepted")]
    TooManySegments(u16),
}

/// One PT_LOAD segment: `file` bytes copied to `paddr`, zero-filled up to `memsz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub paddr: u64,
    pub file: &'a [u8],
    pub memsz: u64,
}

/// A parsed kernel: segments in file order and the entry point (`e_entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel<'a> {
    pub entry: u64,
    pub segments: Vec<Segment<'a>>,
}

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const MAX_PHDRS: u16 = 64;
const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Parses `bytes` as a vmlinux: ELF64, little endian, x86_64, ET_EXEC.
pub fn parse(bytes: &[u8]) -> Result<Kernel<'_>, ElfError> {
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if bytes.len() < EHDR_SIZE {
        return Err(ElfError::Malformed("truncated ELF header"));
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little endian.
    if bytes[4] != 2 || bytes[5] != 1 || u16_at(bytes, 18) != EM_X86_64 {
        return Err(ElfError::WrongKind);
    }
    if u16_at(bytes, 16) != ET_EXEC {
        return Err(ElfError::Malformed(
            "not an executable (e_type is not ET_EXEC)",
        ));
    }
    let entry = u64_at(bytes, 24);
    let phoff = u64_at(bytes, 32);
    let phentsize = u16_at(bytes, 54);
    let phnum = u16_at(bytes, 56);
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::Malformed("program header size is not 56"));
    }
    if phnum > MAX_PHDRS {
        return Err(ElfError::TooManySegments(phnum));
    }
    let table_len = u64::from(phnum) * PHDR_SIZE as u64;
    let table_end = phoff
        .checked_add(table_len)
        .filter(|&end| end <= bytes.len() as u64)
        .ok_or(ElfError::Malformed("program headers lie outside the file"))?;
    let table = &bytes[phoff as usize..table_end as usize];
    let mut segments = Vec::new();
    for ph in table.chunks_exact(PHDR_SIZE) {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(ElfError::Malformed(
                "segment file size exceeds its memory size",
            ));
        }
        let file_end = offset
            .checked_add(filesz)
            .filter(|&end| end <= bytes.len() as u64)
            .ok_or(ElfError::Malformed("segment data lies outside the file"))?;
        if paddr.checked_add(memsz).is_none() {
            return Err(ElfError::Malformed("segment physical address overflows"));
        }
        segments.push(Segment {
            paddr,
            file: &bytes[offset as usize..file_end as usize],
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    Ok(Kernel { entry, segments })
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
        assert_eq!(k.entry, 0x100_0000);
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
        assert_eq!(parse(&elf).unwrap_err(), ElfError::NoSegments);
    }
}
