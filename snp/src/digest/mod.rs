//! The SNP launch digest: the firmware's running SHA-384 over one PAGE_INFO per page added.
//!
//! `LD' = SHA-384(PAGE_INFO{DIGEST_CUR = LD, CONTENTS, ..., GPA})`. The chain is serial by
//! nature, but CONTENTS of NORMAL pages are independent, so a large range is hashed in parallel
//! first and then chained.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::OnceLock;

use sha2::{Digest, Sha384};

use crate::page_info::{PageInfo, PageType, DIGEST_SIZE, PAGE_SIZE, VMSA_GPA};

#[cfg(target_arch = "x86_64")]
mod sha384_x8;

const PAGE: usize = PAGE_SIZE as usize;
/// Below this many pages, starting threads costs more than it saves.
const PARALLEL_MIN_PAGES: usize = 256;
/// Highest GPA the PAGE_INFO can carry sensibly (52-bit physical addresses).
const MAX_GPA: u64 = 1 << 52;

/// Errors from measuring pages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("GPA {gpa:#x} of a {page_type} page is not 4 KiB aligned")]
    UnalignedGpa { gpa: u64, page_type: PageType },
    #[error("length {len:#x} of a {page_type} range at GPA {gpa:#x} is not a multiple of 4 KiB")]
    UnalignedLength {
        gpa: u64,
        len: u64,
        page_type: PageType,
    },
    #[error("{page_type} range at GPA {gpa:#x} with length {len:#x} goes past 2^52")]
    OutOfRange {
        gpa: u64,
        len: u64,
        page_type: PageType,
    },
    #[error("a VMSA page must be exactly 4096 bytes, got {0}")]
    VmsaSize(usize),
    #[error("{0} pages are measured by content: use update_normal or update_vmsa")]
    NeedsContents(PageType),
    #[error("launch digest {input:?} is not 96 hexadecimal characters: {reason}")]
    BadHex { input: String, reason: String },
}

/// A launch digest being accumulated, starting from 48 zero bytes like the firmware.
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    ld: [u8; DIGEST_SIZE],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LaunchDigest({})", self.hex())
    }
}

impl LaunchDigest {
    pub fn new() -> Self {
        Self {
            ld: [0; DIGEST_SIZE],
        }
    }

    /// Continues from a known digest (e.g. a precomputed firmware prefix).
    pub fn from_seed(ld: [u8; DIGEST_SIZE]) -> Self {
        Self { ld }
    }

    pub fn bytes(&self) -> [u8; DIGEST_SIZE] {
        self.ld
    }

    /// 96 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.ld)
    }

    /// Parses 96 hexadecimal characters.
    pub fn parse_hex(input: &str) -> Result<[u8; DIGEST_SIZE], DigestError> {
        crate::hex::decode_array(input.trim()).map_err(|e| DigestError::BadHex {
            input: input.to_string(),
            reason: e.to_string(),
        })
    }

    /// Adds one page record with precomputed CONTENTS.
    pub fn update_page(&mut self, page_type: PageType, gpa: u64, contents: [u8; DIGEST_SIZE]) {
        let info = PageInfo {
            digest_cur: self.ld,
            contents,
            page_type,
            imi: false,
            vmpl3_perms: 0,
            vmpl2_perms: 0,
            vmpl1_perms: 0,
            gpa,
        };
        self.ld = Sha384::digest(info.to_bytes()).into();
    }

    /// Measures `data` as NORMAL pages starting at `gpa`; `data` must be whole pages.
    pub fn update_normal(&mut self, gpa: u64, data: &[u8]) -> Result<(), DigestError> {
        check_range(PageType::Normal, gpa, data.len() as u64)?;
        let hashes = hash_pages(data);
        for (i, contents) in hashes.into_iter().enumerate() {
            self.update_page(PageType::Normal, gpa + (i * PAGE) as u64, contents);
        }
        Ok(())
    }

    /// Measures `len` bytes of zeros at `gpa` as NORMAL pages (an IGVM page without data),
    /// without building or hashing the zeros: each page's CONTENTS is SHA-384 of a zero page.
    pub fn update_normal_zeros(&mut self, gpa: u64, len: u64) -> Result<(), DigestError> {
        check_range(PageType::Normal, gpa, len)?;
        let contents = zero_page_hash();
        for page in 0..len / PAGE_SIZE {
            self.update_page(PageType::Normal, gpa + page * PAGE_SIZE, contents);
        }
        Ok(())
    }

    /// Measures `len` bytes at `gpa` as pages of a type measured by GPA only
    /// (ZERO, UNMEASURED, SECRETS, CPUID).
    pub fn update_by_gpa(
        &mut self,
        page_type: PageType,
        gpa: u64,
        len: u64,
    ) -> Result<(), DigestError> {
        if page_type.measures_contents() {
            return Err(DigestError::NeedsContents(page_type));
        }
        check_range(page_type, gpa, len)?;
        for page in 0..len / PAGE_SIZE {
            self.update_page(page_type, gpa + page * PAGE_SIZE, [0; DIGEST_SIZE]);
        }
        Ok(())
    }

    pub fn update_zero(&mut self, gpa: u64, len: u64) -> Result<(), DigestError> {
        self.update_by_gpa(PageType::Zero, gpa, len)
    }
    pub fn update_unmeasured(&mut self, gpa: u64, len: u64) -> Result<(), DigestError> {
        self.update_by_gpa(PageType::Unmeasured, gpa, len)
    }
    pub fn update_secrets(&mut self, gpa: u64) -> Result<(), DigestError> {
        self.update_by_gpa(PageType::Secrets, gpa, PAGE_SIZE)
    }
    pub fn update_cpuid(&mut self, gpa: u64) -> Result<(), DigestError> {
        self.update_by_gpa(PageType::Cpuid, gpa, PAGE_SIZE)
    }

    /// Measures one vCPU's VMSA page, recorded by the firmware at [`VMSA_GPA`].
    pub fn update_vmsa(&mut self, page: &[u8]) -> Result<(), DigestError> {
        if page.len() != PAGE {
            return Err(DigestError::VmsaSize(page.len()));
        }
        self.update_page(PageType::Vmsa, VMSA_GPA, Sha384::digest(page).into());
        Ok(())
    }

    /// Measures pages of any type: `data` is required (and hashed) for NORMAL and VMSA, and
    /// only its length is used for the other types.
    pub fn update(
        &mut self,
        page_type: PageType,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), DigestError> {
        match page_type {
            PageType::Normal => self.update_normal(gpa, data),
            PageType::Vmsa => {
                check_range(page_type, gpa, data.len() as u64)?;
                data.chunks(PAGE)
                    .try_for_each(|page| self.update_vmsa(page))
            }
            other => self.update_by_gpa(other, gpa, data.len() as u64),
        }
    }
}

fn check_range(page_type: PageType, gpa: u64, len: u64) -> Result<(), DigestError> {
    if !gpa.is_multiple_of(PAGE_SIZE) {
        return Err(DigestError::UnalignedGpa { gpa, page_type });
    }
    if !len.is_multiple_of(PAGE_SIZE) {
        return Err(DigestError::UnalignedLength {
            gpa,
            len,
            page_type,
        });
    }
    match gpa.checked_add(len) {
        Some(end) if end <= MAX_GPA => Ok(()),
        _ => Err(DigestError::OutOfRange {
            gpa,
            len,
            page_type,
        }),
    }
}

/// SHA-384 of every 4 KiB page of `data` (whole pages only), using all cores for large inputs.
pub fn hash_pages(data: &[u8]) -> Vec<[u8; DIGEST_SIZE]> {
    let pages = data.len() / PAGE;
    let mut out = vec![[0u8; DIGEST_SIZE]; pages];
    if pages < PARALLEL_MIN_PAGES {
        hash_into(&data[..pages * PAGE], &mut out);
        return out;
    }
    // Asking for the core count reads cgroup files: once per process, not once per range.
    static THREADS: OnceLock<usize> = OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1)
    });
    if threads < 2 {
        hash_into(&data[..pages * PAGE], &mut out);
        return out;
    }
    let per_thread = pages.div_ceil(threads);
    std::thread::scope(|scope| {
        for (outs, chunk) in out
            .chunks_mut(per_thread)
            .zip(data.chunks(per_thread * PAGE))
        {
            scope.spawn(move || hash_into(chunk, outs));
        }
    });
    out
}

/// SHA-384 of a 4 KiB page of zeros, computed once.
pub fn zero_page_hash() -> [u8; DIGEST_SIZE] {
    static HASH: OnceLock<[u8; DIGEST_SIZE]> = OnceLock::new();
    *HASH.get_or_init(|| Sha384::digest([0u8; PAGE]).into())
}

fn hash_into(data: &[u8], out: &mut [[u8; DIGEST_SIZE]]) {
    // Guest RAM launched as NORMAL pages of zeros can be most of a launch; comparing with a
    // zero page (a memcmp) is far cheaper than hashing it.
    const ZEROS: [u8; PAGE] = [0; PAGE];
    let mut batch = PageBatch::default();
    for (index, page) in data.chunks_exact(PAGE).enumerate() {
        if page == ZEROS {
            out[index] = zero_page_hash();
        } else if !batch.push(data, index, out) {
            out[index] = Sha384::digest(page).into();
        }
    }
    batch.finish(data, out);
}

/// Pages waiting to be hashed eight at a time (`sha384_x8`) where the CPU can.
#[derive(Default)]
struct PageBatch {
    pages: [usize; 8],
    len: usize,
}

impl PageBatch {
    /// Queues page `index`, hashing the batch when it is full; false when this CPU has no
    /// multi-buffer path (the caller hashes the page itself).
    #[cfg(target_arch = "x86_64")]
    fn push(&mut self, data: &[u8], index: usize, out: &mut [[u8; DIGEST_SIZE]]) -> bool {
        if !sha384_x8::available() {
            return false;
        }
        self.pages[self.len] = index;
        self.len += 1;
        if self.len == sha384_x8::LANES {
            self.flush(data, out);
        }
        true
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn push(&mut self, _: &[u8], _: usize, _: &mut [[u8; DIGEST_SIZE]]) -> bool {
        false
    }

    /// Hashes what is queued: a partial batch fills its idle lanes with its first page.
    fn finish(&mut self, data: &[u8], out: &mut [[u8; DIGEST_SIZE]]) {
        if self.len > 0 {
            self.flush(data, out);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn flush(&mut self, data: &[u8], out: &mut [[u8; DIGEST_SIZE]]) {
        let queued = &self.pages[..self.len];
        let starts = std::array::from_fn(|lane| queued.get(lane).unwrap_or(&queued[0]) * PAGE);
        match sha384_x8::hash_pages_x8(data, starts) {
            Some(hashes) => {
                for (&index, hash) in queued.iter().zip(hashes) {
                    out[index] = hash;
                }
            }
            // Unreachable while `push` checks the CPU and indexes come from `data`; hashing
            // one by one keeps it correct anyway.
            None => {
                for &index in queued {
                    out[index] = Sha384::digest(&data[index * PAGE..(index + 1) * PAGE]).into();
                }
            }
        }
        self.len = 0;
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn flush(&mut self, _: &[u8], _: &mut [[u8; DIGEST_SIZE]]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_hashes_equal_serial() {
        let data: Vec<u8> = (0..PAGE * 1000).map(|i| (i * 7 % 251) as u8).collect();
        let parallel = hash_pages(&data);
        assert_eq!(parallel.len(), 1000);
        for (i, h) in parallel.iter().enumerate() {
            let serial: [u8; 48] = Sha384::digest(&data[i * PAGE..(i + 1) * PAGE]).into();
            assert_eq!(*h, serial, "page {i}");
        }
    }

    #[test]
    fn batches_broken_by_zero_pages_and_partial_ones_hash_right() {
        // 13 pages, zeros at 2, 3 and 11: one batch of eight, then a partial one.
        let mut data: Vec<u8> = (0..PAGE * 13).map(|i| (i * 31 % 253) as u8 | 1).collect();
        for zero in [2, 3, 11] {
            data[zero * PAGE..(zero + 1) * PAGE].fill(0);
        }
        for (i, h) in hash_pages(&data).iter().enumerate() {
            let want: [u8; 48] = Sha384::digest(&data[i * PAGE..(i + 1) * PAGE]).into();
            assert_eq!(*h, want, "page {i}");
        }
    }

    #[test]
    fn zero_pages_hash_like_any_page() {
        let mut data = vec![0u8; PAGE * 300];
        data[PAGE * 7 + 5] = 1;
        let hashes = hash_pages(&data);
        let zero: [u8; 48] = Sha384::digest([0u8; PAGE]).into();
        let seven: [u8; 48] = Sha384::digest(&data[PAGE * 7..PAGE * 8]).into();
        assert_eq!((hashes[0], hashes[299], hashes[7]), (zero, zero, seven));
        let (mut a, mut b) = (LaunchDigest::new(), LaunchDigest::new());
        a.update_normal(0x10_0000, &[0u8; PAGE * 3]).unwrap();
        b.update_normal_zeros(0x10_0000, 3 * PAGE_SIZE).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn one_page_matches_hand_built_page_info() {
        let page = [0xabu8; PAGE];
        let mut ld = LaunchDigest::new();
        ld.update_normal(0x1000, &page).unwrap();
        let mut info = [0u8; 0x70];
        info[0x30..0x60].copy_from_slice(&Sha384::digest(page));
        info[0x60] = 0x70;
        info[0x62] = 1;
        info[0x69] = 0x10;
        let expected: [u8; 48] = Sha384::digest(info).into();
        assert_eq!(ld.bytes(), expected);
    }

    #[test]
    fn bad_ranges_named() {
        let mut ld = LaunchDigest::new();
        assert_eq!(
            ld.update_zero(0x1001, 0x1000),
            Err(DigestError::UnalignedGpa {
                gpa: 0x1001,
                page_type: PageType::Zero
            })
        );
        assert_eq!(
            ld.update_normal(0x1000, &[0u8; 10]),
            Err(DigestError::UnalignedLength {
                gpa: 0x1000,
                len: 10,
                page_type: PageType::Normal
            })
        );
        assert!(matches!(
            ld.update_unmeasured(!0xfff, 0x2000),
            Err(DigestError::OutOfRange { .. })
        ));
        assert_eq!(ld.update_vmsa(&[0; 10]), Err(DigestError::VmsaSize(10)));
        assert_eq!(
            ld.update_by_gpa(PageType::Normal, 0, 0x1000),
            Err(DigestError::NeedsContents(PageType::Normal))
        );
        // Nothing was measured by the failed calls.
        assert_eq!(ld, LaunchDigest::new());
    }

    #[test]
    fn gpa_and_type_change_digest() {
        let digest = |t: PageType, gpa: u64| {
            let mut ld = LaunchDigest::new();
            ld.update_by_gpa(t, gpa, PAGE_SIZE).unwrap();
            ld.bytes()
        };
        assert_ne!(digest(PageType::Zero, 0), digest(PageType::Zero, 0x1000));
        assert_ne!(digest(PageType::Zero, 0), digest(PageType::Unmeasured, 0));
        assert_ne!(digest(PageType::Secrets, 0), digest(PageType::Cpuid, 0));
    }

    #[test]
    fn hex_round_trip() {
        let mut ld = LaunchDigest::new();
        ld.update_secrets(0x5000).unwrap();
        assert_eq!(ld.hex().len(), 96);
        assert_eq!(LaunchDigest::parse_hex(&ld.hex()).unwrap(), ld.bytes());
        assert!(LaunchDigest::parse_hex("abc").is_err());
    }
}
