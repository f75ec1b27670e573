//! The floor program's PVH guest: its loadable segments (read by Veil's one ELF reader,
//! `veil_snp::x86_boot::elf`) and the Xen PVH entry note, which only the floor looks for
//! itself (the VMM gets it from linux-loader). The file is untrusted input: every offset and
//! size is checked against it.

pub use veil_snp::x86_boot::elf::Segment;
use veil_snp::x86_boot::elf::{self, Image};

/// ELF note type of the PVH 32-bit entry point (XEN_ELFNOTE_PHYS32_ENTRY).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A PVH-bootable ELF.
#[derive(Debug)]
pub struct PvhElf<'a> {
    pub segments: Vec<Segment<'a>>,
    pub pvh_entry: u32,
}

/// What makes a file unusable as a PVH guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    #[error("no Xen PVH entry note (type 18) in any PT_NOTE segment")]
    NoPvhNote,
    #[error("malformed note at file offset {0:#x}")]
    BadNote(usize),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> PvhElf<'a> {
    /// Reads the segments and the PVH entry of `file`.
    pub fn parse(file: &'a [u8]) -> Result<Self, ElfError> {
        let Image {
            segments, notes, ..
        } = elf::parse(file)?;
        let mut pvh_entry = None;
        for (offset, contents) in notes {
            if let Some(entry) = find_pvh_entry(contents, offset as usize)? {
                pvh_entry = Some(entry);
            }
        }
        Ok(Self {
            segments,
            pvh_entry: pvh_entry.ok_or(ElfError::NoPvhNote)?,
        })
    }
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|n| n & !3)
}

/// Walks the notes of one PT_NOTE segment; `base` is its file offset, for error messages.
fn find_pvh_entry(notes: &[u8], base: usize) -> Result<Option<u32>, ElfError> {
    let mut at = 0;
    while at + 12 <= notes.len() {
        let bad = || ElfError::BadNote(base + at);
        let name_len = u32_at(notes, at) as usize;
        let desc_len = u32_at(notes, at + 4) as usize;
        let kind = u32_at(notes, at + 8);
        let name_start = at + 12;
        let name_end = name_start.checked_add(name_len).ok_or_else(bad)?;
        let desc_start = align4(name_len)
            .and_then(|n| name_start.checked_add(n))
            .ok_or_else(bad)?;
        let desc_end = desc_start.checked_add(desc_len).ok_or_else(bad)?;
        let name = notes.get(name_start..name_end).ok_or_else(bad)?;
        let desc = notes.get(desc_start..desc_end).ok_or_else(bad)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            // The entry is a 32-bit address; some linkers emit it as a 64-bit value.
            return match desc.len() {
                4 => Ok(Some(u32_at(desc, 0))),
                8 => u32::try_from(u64_at(desc, 0)).map(Some).map_err(|_| bad()),
                _ => Err(bad()),
            };
        }
        at = align4(desc_end).ok_or_else(bad)?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHDR_SIZE: usize = 56;

    /// A hand-made ELF64: one PT_LOAD of `code` at 1 MiB and one PT_NOTE holding `note`.
    fn elf(code: &[u8], note: &[u8]) -> Vec<u8> {
        let phoff = 64u64;
        let code_off = phoff + 2 * PHDR_SIZE as u64;
        let note_off = code_off + code.len() as u64;
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        for (kind, off, len) in [
            (elf::PT_LOAD, code_off, code.len() as u64),
            (elf::PT_NOTE, note_off, note.len() as u64),
        ] {
            let mut ph = [0u8; PHDR_SIZE];
            ph[0..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
            ph[32..40].copy_from_slice(&len.to_le_bytes());
            ph[40..48].copy_from_slice(&(len + 16).to_le_bytes());
            f.extend_from_slice(&ph);
        }
        f.extend_from_slice(code);
        f.extend_from_slice(note);
        f
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn reads_segments_and_the_pvh_entry_after_other_notes() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen\0", 18, &0x10_0040u32.to_le_bytes()));
        let file = elf(&[0xf4, 0x90], &notes);
        let parsed = PvhElf::parse(&file).unwrap();
        assert_eq!(parsed.pvh_entry, 0x10_0040);
        assert_eq!(
            parsed.segments,
            vec![Segment {
                paddr: 0x10_0000,
                file: &[0xf4, 0x90],
                memsz: 18
            }]
        );
    }

    #[test]
    fn accepts_a_64_bit_entry_value_that_fits() {
        let file = elf(&[0xf4], &note(b"Xen\0", 18, &0x20_0000u64.to_le_bytes()));
        assert_eq!(PvhElf::parse(&file).unwrap().pvh_entry, 0x20_0000);
        let file = elf(&[0xf4], &note(b"Xen\0", 18, &(1u64 << 32).to_le_bytes()));
        assert!(matches!(PvhElf::parse(&file), Err(ElfError::BadNote(_))));
    }

    #[test]
    fn rejects_files_without_the_note_or_with_bad_bounds() {
        let file = elf(&[0xf4], &note(b"Xen\0", 17, &[0; 4]));
        assert_eq!(PvhElf::parse(&file).unwrap_err(), ElfError::NoPvhNote);
        assert_eq!(
            PvhElf::parse(b"\x7fELF\x02\x01").unwrap_err(),
            ElfError::Elf(elf::ElfError::Malformed("truncated ELF header"))
        );
        let mut file = elf(&[0xf4], &note(b"Xen\0", 18, &[0; 4]));
        file[4] = 1; // ELF32
        assert_eq!(
            PvhElf::parse(&file).unwrap_err(),
            ElfError::Elf(elf::ElfError::WrongKind)
        );
        let mut file = elf(&[0xf4], &note(b"Xen\0", 18, &[0; 4]));
        // First program header's file size: far past the end of the file.
        file[64 + 32..64 + 40].copy_from_slice(&0x1000_0000u64.to_le_bytes());
        file[64 + 40..64 + 48].copy_from_slice(&0x1000_0000u64.to_le_bytes());
        assert_eq!(
            PvhElf::parse(&file).unwrap_err(),
            ElfError::Elf(elf::ElfError::Malformed(
                "segment data lies outside the file"
            ))
        );
        let mut bad_note = note(b"Xen\0", 18, &[0; 4]);
        bad_note[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes()); // desc size
        let file = elf(&[0xf4], &bad_note);
        assert!(matches!(PvhElf::parse(&file), Err(ElfError::BadNote(_))));
    }
}
