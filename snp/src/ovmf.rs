//! Expected launch digest of an OVMF guest launched the way QEMU launches it on SNP: the
//! firmware volume mapped to end at 4 GiB measured as NORMAL pages, then the pages OVMF's SEV
//! metadata asks for, then one VMSA per vCPU (BSP at the reset vector, APs at the address of
//! the SEV-ES reset block).

use crate::cpu_types::{signature_of, CpuTypeError};
use crate::digest::{DigestError, LaunchDigest};
use crate::page_info::{DIGEST_SIZE, PAGE_SIZE};
use crate::vmsa::{Vmsa, RESET_EIP};

const FOUR_GIB: u64 = 1 << 32;
/// The GUIDed table ends this many bytes before the end of the image.
const FOOTER_GAP: usize = 32;
/// Each table entry ends with a u16 size and a GUID.
const ENTRY_HEADER: usize = 2 + 16;
const TABLE_FOOTER_GUID: &str = "96b582de-1fb2-45f7-baea-a366c55a082d";
const SEV_ES_RESET_BLOCK_GUID: &str = "00f771de-1a7e-4fcb-890e-68c77e2fb44e";
const SEV_METADATA_GUID: &str = "dc886566-984a-4798-a75e-5585a7bf67cc";
const METADATA_HEADER: usize = 16;
const METADATA_ITEM: usize = 12;
/// Largest firmware image accepted (OVMF images are 2-4 MiB; the window below 4 GiB is 16 MiB).
const MAX_IMAGE: usize = 16 << 20;
/// SEV_FEATURES QEMU gives an SNP guest by default: only SNP_ACTIVE.
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;

/// Errors from reading an OVMF image or computing its digest.
#[derive(Debug, thiserror::Error)]
pub enum OvmfError {
    #[error(
        "OVMF image of {0} bytes is not a whole number of 4 KiB pages between 4 KiB and 16 MiB"
    )]
    BadSize(usize),
    #[error("OVMF image has no GUIDed footer table (no SNP support)")]
    NoFooterTable,
    #[error("OVMF footer table is corrupt: {0}")]
    BadTable(&'static str),
    #[error("OVMF image lacks the {0} table entry")]
    MissingEntry(&'static str),
    #[error("OVMF SEV metadata is corrupt: {0}")]
    BadMetadata(&'static str),
    #[error("OVMF SEV metadata section {index} has unknown type {kind:#x}")]
    UnknownSection { index: usize, kind: u32 },
    #[error("vCPU count must be at least 1")]
    NoVcpus,
    #[error(transparent)]
    CpuType(#[from] CpuTypeError),
    #[error("measuring OVMF section: {0}")]
    Digest(#[from] DigestError),
}

/// Kinds of sections in OVMF's SEV metadata (OvmfPkg/ResetVector OvmfSevMetadata.asm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    /// Pre-validated memory: measured as ZERO pages.
    SnpSecMem,
    /// The secrets page.
    Secrets,
    /// The CPUID page.
    Cpuid,
    /// SVSM calling area: ZERO pages.
    SvsmCaa,
    /// Kernel hashes table: ZERO pages unless QEMU measures a direct-boot kernel.
    KernelHashes,
}

/// One SEV metadata section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    pub gpa: u64,
    pub size: u64,
    pub kind: SectionKind,
}

/// A parsed OVMF image.
#[derive(Debug)]
pub struct Ovmf<'a> {
    image: &'a [u8],
    sev_es_reset_eip: u32,
    sections: Vec<Section>,
}

impl<'a> Ovmf<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Self, OvmfError> {
        if image.is_empty() || image.len() > MAX_IMAGE || image.len() % PAGE_SIZE as usize != 0 {
            return Err(OvmfError::BadSize(image.len()));
        }
        let table = footer_table(image)?;
        let find = |guid: &str| {
            let want = guid_le(guid);
            table.iter().find(|(g, _)| *g == want).map(|(_, d)| *d)
        };
        let reset =
            find(SEV_ES_RESET_BLOCK_GUID).ok_or(OvmfError::MissingEntry("SEV-ES reset block"))?;
        let sev_es_reset_eip =
            read_u32(reset, 0).ok_or(OvmfError::BadTable("short reset block"))?;
        let meta = find(SEV_METADATA_GUID).ok_or(OvmfError::MissingEntry("SEV metadata"))?;
        let sections = metadata_sections(image, meta)?;
        Ok(Self {
            image,
            sev_es_reset_eip,
            sections,
        })
    }

    /// GPA of the first byte: the image ends at 4 GiB.
    pub fn gpa(&self) -> u64 {
        FOUR_GIB - self.image.len() as u64
    }
    pub fn sev_es_reset_eip(&self) -> u32 {
        self.sev_es_reset_eip
    }
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The digest QEMU + KVM + firmware produce for this image with `vcpus` vCPUs of the
    /// given CPUID signature and SEV_FEATURES (`sev-snp-measure --mode snp` without a kernel).
    pub fn launch_digest(
        &self,
        vcpus: u32,
        vcpu_signature: u32,
        guest_features: u64,
    ) -> Result<[u8; DIGEST_SIZE], OvmfError> {
        if vcpus == 0 {
            return Err(OvmfError::NoVcpus);
        }
        let mut ld = LaunchDigest::new();
        ld.update_normal(self.gpa(), self.image)?;
        for s in &self.sections {
            match s.kind {
                SectionKind::SnpSecMem | SectionKind::SvsmCaa | SectionKind::KernelHashes => {
                    ld.update_zero(s.gpa, s.size)?
                }
                SectionKind::Secrets => ld.update_secrets(s.gpa)?,
                SectionKind::Cpuid => ld.update_cpuid(s.gpa)?,
            }
        }
        let bsp = Vmsa::qemu_reset(RESET_EIP, guest_features, vcpu_signature).to_page();
        let ap = Vmsa::qemu_reset(self.sev_es_reset_eip, guest_features, vcpu_signature).to_page();
        ld.update_vmsa(&bsp)?;
        for _ in 1..vcpus {
            ld.update_vmsa(&ap)?;
        }
        Ok(ld.bytes())
    }
}

/// `veil measure --ovmf`: the expected digest for an OVMF image, vCPU count and QEMU vCPU type.
pub fn ovmf_launch_digest(
    image: &[u8],
    vcpus: u32,
    vcpu_type: &str,
    guest_features: u64,
) -> Result<[u8; DIGEST_SIZE], OvmfError> {
    let signature = signature_of(vcpu_type)?;
    Ovmf::parse(image)?.launch_digest(vcpus, signature, guest_features)
}

/// Entries of the GUIDed table that ends 32 bytes before the image end, walked backwards:
/// each entry is `data, u16 size (including the header), GUID`.
/// One footer-table entry: its GUID (firmware byte order) and its data.
type TableEntry<'a> = ([u8; 16], &'a [u8]);

fn footer_table(image: &[u8]) -> Result<Vec<TableEntry<'_>>, OvmfError> {
    let footer_start = image
        .len()
        .checked_sub(FOOTER_GAP + ENTRY_HEADER)
        .ok_or(OvmfError::NoFooterTable)?;
    let footer = &image[footer_start..footer_start + ENTRY_HEADER];
    if footer[2..] != guid_le(TABLE_FOOTER_GUID) {
        return Err(OvmfError::NoFooterTable);
    }
    let table_len = usize::from(u16::from_le_bytes([footer[0], footer[1]]))
        .checked_sub(ENTRY_HEADER)
        .ok_or(OvmfError::BadTable("footer size smaller than its header"))?;
    let table_start = footer_start
        .checked_sub(table_len)
        .ok_or(OvmfError::BadTable("table larger than the image"))?;
    let mut rest = &image[table_start..footer_start];
    let mut entries = Vec::new();
    while rest.len() >= ENTRY_HEADER {
        let header = &rest[rest.len() - ENTRY_HEADER..];
        let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
        if size < ENTRY_HEADER || size > rest.len() {
            return Err(OvmfError::BadTable("entry size out of bounds"));
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&header[2..]);
        let entry = &rest[rest.len() - size..];
        entries.push((guid, &entry[..size - ENTRY_HEADER]));
        rest = &rest[..rest.len() - size];
    }
    Ok(entries)
}

fn metadata_sections(image: &[u8], entry: &[u8]) -> Result<Vec<Section>, OvmfError> {
    let from_end = read_u32(entry, 0).ok_or(OvmfError::BadMetadata("short table entry"))? as usize;
    let start = image
        .len()
        .checked_sub(from_end)
        .ok_or(OvmfError::BadMetadata("offset beyond the image"))?;
    let header = image
        .get(start..start + METADATA_HEADER)
        .ok_or(OvmfError::BadMetadata("header beyond the image"))?;
    if &header[0..4] != b"ASEV" {
        return Err(OvmfError::BadMetadata("signature is not ASEV"));
    }
    let size = read_u32(header, 4).unwrap_or(0) as usize;
    if read_u32(header, 8) != Some(1) {
        return Err(OvmfError::BadMetadata("version is not 1"));
    }
    let count = read_u32(header, 12).unwrap_or(0) as usize;
    let items = size
        .checked_sub(METADATA_HEADER)
        .and_then(|len| image.get(start + METADATA_HEADER..start + METADATA_HEADER + len))
        .ok_or(OvmfError::BadMetadata("size beyond the image"))?;
    if count > items.len() / METADATA_ITEM {
        return Err(OvmfError::BadMetadata("more sections than its size holds"));
    }
    (0..count)
        .map(|index| {
            let item = &items[index * METADATA_ITEM..(index + 1) * METADATA_ITEM];
            let field = |i| u64::from(read_u32(item, i).unwrap_or(0));
            let kind = match field(8) {
                1 => SectionKind::SnpSecMem,
                2 => SectionKind::Secrets,
                3 => SectionKind::Cpuid,
                4 => SectionKind::SvsmCaa,
                0x10 => SectionKind::KernelHashes,
                other => {
                    return Err(OvmfError::UnknownSection {
                        index,
                        kind: other as u32,
                    })
                }
            };
            Ok(Section {
                gpa: field(0),
                size: field(4),
                kind,
            })
        })
        .collect()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// A GUID in its textual form converted to the mixed-endian byte order firmware stores.
fn guid_le(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let b: [u8; 16] = crate::hex::decode_array(&hex).unwrap_or([0; 16]);
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal image: metadata with the given items, a reset block and the footer table.
    fn synthetic_image(items: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut img = vec![0u8; 0x4000];
        let meta_at = 0x1000;
        img[meta_at..meta_at + 4].copy_from_slice(b"ASEV");
        let size = (METADATA_HEADER + items.len() * METADATA_ITEM) as u32;
        img[meta_at + 4..meta_at + 8].copy_from_slice(&size.to_le_bytes());
        img[meta_at + 8..meta_at + 12].copy_from_slice(&1u32.to_le_bytes());
        img[meta_at + 12..meta_at + 16].copy_from_slice(&(items.len() as u32).to_le_bytes());
        for (i, (gpa, len, kind)) in items.iter().enumerate() {
            let at = meta_at + 16 + i * 12;
            img[at..at + 4].copy_from_slice(&gpa.to_le_bytes());
            img[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
            img[at + 8..at + 12].copy_from_slice(&kind.to_le_bytes());
        }
        let mut table = Vec::new();
        let mut entry = |data: &[u8], guid: &str| {
            table.extend_from_slice(data);
            table.extend_from_slice(&((data.len() + ENTRY_HEADER) as u16).to_le_bytes());
            table.extend_from_slice(&guid_le(guid));
        };
        entry(
            &((0x4000 - meta_at) as u32).to_le_bytes(),
            SEV_METADATA_GUID,
        );
        entry(&0xffff_b000u32.to_le_bytes(), SEV_ES_RESET_BLOCK_GUID);
        let footer_len = (table.len() + ENTRY_HEADER) as u16;
        table.extend_from_slice(&footer_len.to_le_bytes());
        table.extend_from_slice(&guid_le(TABLE_FOOTER_GUID));
        let end = img.len() - FOOTER_GAP;
        img[end - table.len()..end].copy_from_slice(&table);
        img
    }

    #[test]
    fn parses_synthetic_image() {
        let img = synthetic_image(&[(0x80_0000, 0x2000, 1), (0x80_2000, 0x1000, 2)]);
        let ovmf = Ovmf::parse(&img).unwrap();
        assert_eq!(ovmf.gpa(), 0xffff_c000);
        assert_eq!(ovmf.sev_es_reset_eip(), 0xffff_b000);
        assert_eq!(
            ovmf.sections(),
            &[
                Section {
                    gpa: 0x80_0000,
                    size: 0x2000,
                    kind: SectionKind::SnpSecMem
                },
                Section {
                    gpa: 0x80_2000,
                    size: 0x1000,
                    kind: SectionKind::Secrets
                },
            ]
        );
        let one = ovmf.launch_digest(1, 0x00a0_0f11, 1).unwrap();
        let two = ovmf.launch_digest(2, 0x00a0_0f11, 1).unwrap();
        let other_sig = ovmf.launch_digest(1, 0x0080_0f12, 1).unwrap();
        assert_ne!(one, two);
        assert_ne!(one, other_sig);
        assert!(matches!(
            ovmf.launch_digest(0, 1, 1),
            Err(OvmfError::NoVcpus)
        ));
    }

    #[test]
    fn rejects_corrupt_images() {
        assert!(matches!(
            Ovmf::parse(&[0u8; 100]),
            Err(OvmfError::BadSize(100))
        ));
        assert!(matches!(
            Ovmf::parse(&vec![0u8; 0x2000]),
            Err(OvmfError::NoFooterTable)
        ));
        let bad_kind = synthetic_image(&[(0x80_0000, 0x1000, 9)]);
        assert!(matches!(
            Ovmf::parse(&bad_kind),
            Err(OvmfError::UnknownSection { index: 0, kind: 9 })
        ));
        // Claim more sections than the metadata holds.
        let mut img = synthetic_image(&[(0x80_0000, 0x1000, 1)]);
        img[0x100c..0x1010].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(Ovmf::parse(&img), Err(OvmfError::BadMetadata(_))));
        // Footer with a size larger than the image.
        let mut img = synthetic_image(&[]);
        let footer = img.len() - FOOTER_GAP - ENTRY_HEADER;
        img[footer..footer + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(Ovmf::parse(&img), Err(OvmfError::BadTable(_))));
        // Unaligned section.
        let unaligned = synthetic_image(&[(0x80_0800, 0x1000, 1)]);
        let ovmf = Ovmf::parse(&unaligned).unwrap();
        assert!(matches!(
            ovmf.launch_digest(1, 1, 1),
            Err(OvmfError::Digest(DigestError::UnalignedGpa { .. }))
        ));
    }
}
