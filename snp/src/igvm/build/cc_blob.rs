//! The CC blob (`struct cc_blob_sev_info`, `arch/x86/include/asm/sev.h`) an SNP guest finds
//! through the zero page's `cc_blob_address`: where the secrets and CPUID pages are.
//! Linux's UAPI headers do not define it, so neither does `linux_loader`.

use crate::page_info::PAGE_SIZE;

/// `struct cc_blob_sev_info` magic, "AMDE" little endian (CC_BLOB_SEV_HDR_MAGIC).
pub const CC_BLOB_MAGIC: u32 = 0x4544_4d41;
/// Version written into the CC blob (Linux 6.1 reads only the magic and the two ranges).
pub const CC_BLOB_VERSION: u16 = 0;
/// Size of `struct cc_blob_sev_info`.
pub const CC_BLOB_SIZE: usize = 40;

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The CC blob page: `cc_blob_sev_info` at offset 0, the rest zero.
pub fn cc_blob_page(secrets_gpa: u64, cpuid_gpa: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE as usize];
    let page_len = PAGE_SIZE as u32;
    put(&mut p, 0, &CC_BLOB_MAGIC.to_le_bytes());
    put(&mut p, 4, &CC_BLOB_VERSION.to_le_bytes());
    put(&mut p, 8, &secrets_gpa.to_le_bytes());
    put(&mut p, 16, &page_len.to_le_bytes());
    put(&mut p, 24, &cpuid_gpa.to_le_bytes());
    put(&mut p, 32, &page_len.to_le_bytes());
    p
}
