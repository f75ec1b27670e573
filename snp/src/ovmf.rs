//! Expected launch digest of an OVMF guest launched the way QEMU launches it on SNP: the
//! firmware volume mapped to end at 4 GiB measured as NORMAL pages, then the pages OVMF's SEV
//! metadata asks for, then one VMSA per vCPU (BSP at the reset vector, APs at the address of
//! the SEV-ES reset block).
//!
//! The `sev` crate computes the same digest (`sev::measurement::snp::snp_calc_launch_digest`,
//! with `ovmf::OVMF` and `sev_hashes`), and `tests/conformance.rs` checks this module equals it.
//! It is not used here because its OVMF parser only reads a file by path, whole and unbounded,
//! and slices the image at offsets taken from the image without checking them
//! (`OvmfSevMetadataHeader::bytes_from_offset`): a corrupt firmware file would panic the
//! VMM, where this parser bounds the image and names what is wrong. Its digest is also one
//! serial SHA-384 per page, where [`LaunchDigest`] streams large ranges on all cores.

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
const SEV_HASH_TABLE_RV_GUID: &str = "7255371f-3a3b-4b04-927b-1da6efa8d454";
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
    #[error(
        "a kernel was given but this OVMF has no SNP kernel hashes section (not an AmdSev build)"
    )]
    NoKernelHashesSection,
    #[error("the SEV hash table at page offset {0:#x} would cross its page")]
    HashTableOffset(usize),
    #[error("a kernel was given but this OVMF has no SEV hash table entry")]
    NoHashTableAddress,
    #[error("the SNP kernel hashes section at GPA {gpa:#x} is {size:#x} bytes; expected one page")]
    KernelHashesSize { gpa: u64, size: u64 },
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
    hash_table_gpa: Option<u32>,
}

impl<'a> Ovmf<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Self, OvmfError> {
        if image.is_empty()
            || image.len() > MAX_IMAGE
            || !image.len().is_multiple_of(PAGE_SIZE as usize)
        {
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
        let hash_table_gpa = find(SEV_HASH_TABLE_RV_GUID).and_then(|d| read_u32(d, 0));
        Ok(Self {
            image,
            sev_es_reset_eip,
            sections,
            hash_table_gpa,
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
    ///
    /// With `kernel_hashes` (QEMU's `kernel-hashes=on` direct boot), the kernel hashes section
    /// holds QEMU's SEV hash table and is measured as a NORMAL page.
    pub fn launch_digest(
        &self,
        vcpus: u32,
        vcpu_signature: u32,
        guest_features: u64,
        kernel_hashes: Option<&KernelHashes>,
    ) -> Result<[u8; DIGEST_SIZE], OvmfError> {
        if vcpus == 0 {
            return Err(OvmfError::NoVcpus);
        }
        if kernel_hashes.is_some()
            && !self
                .sections
                .iter()
                .any(|s| s.kind == SectionKind::KernelHashes)
        {
            return Err(OvmfError::NoKernelHashesSection);
        }
        let mut ld = LaunchDigest::new();
        ld.update_normal(self.gpa(), self.image)?;
        for s in &self.sections {
            match s.kind {
                SectionKind::KernelHashes if kernel_hashes.is_some() => {
                    let hashes = kernel_hashes.ok_or(OvmfError::NoKernelHashesSection)?;
                    let table_gpa = self.hash_table_gpa.ok_or(OvmfError::NoHashTableAddress)?;
                    if s.size != PAGE_SIZE {
                        return Err(OvmfError::KernelHashesSize {
                            gpa: s.gpa,
                            size: s.size,
                        });
                    }
                    let offset = table_gpa as usize % PAGE_SIZE as usize;
                    let page = hashes
                        .page(offset)
                        .ok_or(OvmfError::HashTableOffset(offset))?;
                    ld.update_normal(s.gpa, &page)?
                }
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
    kernel_hashes: Option<&KernelHashes>,
) -> Result<[u8; DIGEST_SIZE], OvmfError> {
    let signature = signature_of(vcpu_type)?;
    Ovmf::parse(image)?.launch_digest(vcpus, signature, guest_features, kernel_hashes)
}

/// QEMU's SEV hash table for a direct kernel boot with OVMF: SHA-256 of the kernel, the
/// initrd (empty when none) and the NUL-terminated command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHashes {
    pub kernel: [u8; 32],
    pub initrd: [u8; 32],
    pub cmdline: [u8; 32],
}

const HASH_TABLE_GUID: &str = "9438d606-4f22-4cc9-b479-a793d411fd21";
const KERNEL_ENTRY_GUID: &str = "4de79437-abd2-427f-b835-d5b172d2045b";
const INITRD_ENTRY_GUID: &str = "44baf731-3a2f-4bd7-9af1-41e29169781d";
const CMDLINE_ENTRY_GUID: &str = "97d02dd8-bd20-4c94-aa78-e7714d36ab2a";
/// GUID + u16 length + SHA-256.
const HASH_ENTRY: usize = 16 + 2 + 32;
/// GUID + u16 length + three entries (cmdline, initrd, kernel).
const HASH_TABLE: usize = 16 + 2 + 3 * HASH_ENTRY;
/// The table is padded to 16 bytes.
const HASH_TABLE_PADDED: usize = HASH_TABLE.div_ceil(16) * 16;

impl KernelHashes {
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> Self {
        use sha2::{Digest, Sha256};
        let mut line = cmdline.unwrap_or("").as_bytes().to_vec();
        line.push(0);
        Self {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or(&[])).into(),
            cmdline: Sha256::digest(&line).into(),
        }
    }

    /// The padded table: header GUID and length, then cmdline, initrd, kernel entries.
    pub fn table(&self) -> [u8; HASH_TABLE_PADDED] {
        let mut t = [0u8; HASH_TABLE_PADDED];
        t[..16].copy_from_slice(&guid_le(HASH_TABLE_GUID));
        t[16..18].copy_from_slice(&(HASH_TABLE as u16).to_le_bytes());
        let entries = [
            (CMDLINE_ENTRY_GUID, &self.cmdline),
            (INITRD_ENTRY_GUID, &self.initrd),
            (KERNEL_ENTRY_GUID, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.iter().enumerate() {
            let at = 18 + i * HASH_ENTRY;
            t[at..at + 16].copy_from_slice(&guid_le(guid));
            t[at + 16..at + 18].copy_from_slice(&(HASH_ENTRY as u16).to_le_bytes());
            t[at + 18..at + HASH_ENTRY].copy_from_slice(*hash);
        }
        t
    }

    /// A page holding the table at `offset` (the table address within its page), or None
    /// when the table would cross the page end.
    pub fn page(&self, offset: usize) -> Option<Vec<u8>> {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        page.get_mut(offset..offset.checked_add(HASH_TABLE_PADDED)?)?
            .copy_from_slice(&self.table());
        Some(page)
    }
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
        let one = ovmf.launch_digest(1, 0x00a0_0f11, 1, None).unwrap();
        let two = ovmf.launch_digest(2, 0x00a0_0f11, 1, None).unwrap();
        let other_sig = ovmf.launch_digest(1, 0x0080_0f12, 1, None).unwrap();
        assert_ne!(one, two);
        assert_ne!(one, other_sig);
        assert!(matches!(
            ovmf.launch_digest(0, 1, 1, None),
            Err(OvmfError::NoVcpus)
        ));
    }

    #[test]
    fn hash_table_layout_and_bounds() {
        let h = KernelHashes::new(b"k", Some(b"i"), Some("c"));
        let t = h.table();
        assert_eq!(t.len(), 176);
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        assert_eq!(&t[18 + 16..18 + 18], &50u16.to_le_bytes());
        assert_eq!(&t[18 + 18..18 + 50], &h.cmdline);
        assert_eq!(&t[118 + 18..118 + 50], &h.kernel);
        assert!(t[168..].iter().all(|&b| b == 0));
        assert_eq!(h.page(0xc00).unwrap()[0xc00..0xc00 + 176], t[..]);
        assert!(h.page(4096 - 176).is_some());
        assert!(h.page(4096 - 175).is_none());
        assert!(h.page(usize::MAX).is_none());
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
            ovmf.launch_digest(1, 1, 1, None),
            Err(OvmfError::Digest(DigestError::UnalignedGpa { .. }))
        ));
    }
}
