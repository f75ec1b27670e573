//! Host-supplied IGVM files: parse the SNP view and, when that succeeds, measure the plan.
//!
//! IGVM's fixed header carries the file size and a CRC32 of the headers, so almost every
//! mutation would be refused at the checksum. The target fixes both up first (when the
//! header fields allow it) so that the fuzzer reaches the directives; inputs starting with
//! a zero byte are passed through untouched to keep the raw path covered too.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Offsets in the fixed header (IGVM_FIXED_HEADER, V2 adds 8 bytes).
const FORMAT_VERSION: usize = 4;
const VARIABLE_OFFSET: usize = 8;
const VARIABLE_SIZE: usize = 12;
const TOTAL_SIZE: usize = 16;
const CHECKSUM: usize = 20;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn fix_up(file: &mut [u8]) {
    let fixed_len = if u32_at(file, FORMAT_VERSION) == 2 {
        32
    } else {
        24
    };
    if file.len() < fixed_len {
        return;
    }
    let total = u32::try_from(file.len()).unwrap_or(u32::MAX);
    file[TOTAL_SIZE..TOTAL_SIZE + 4].copy_from_slice(&total.to_le_bytes());
    let start = u32_at(file, VARIABLE_OFFSET) as usize;
    let size = u32_at(file, VARIABLE_SIZE) as usize;
    let Some(headers) = start.checked_add(size).and_then(|end| file.get(start..end)) else {
        return;
    };
    let mut hasher = crc32fast::Hasher::new();
    let mut fixed = file[..fixed_len].to_vec();
    fixed[CHECKSUM..CHECKSUM + 4].fill(0);
    hasher.update(&fixed);
    hasher.update(headers);
    let crc = hasher.finalize();
    file[CHECKSUM..CHECKSUM + 4].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut file = data.to_vec();
    if file.len() >= 24 && file[0] != 0 {
        fix_up(&mut file);
    }
    if let Ok(plan) = veil_snp::igvm::load_igvm(&file) {
        let _ = plan.takes_command_line();
        let _ = plan.measured_bytes();
        let _ = plan.launch_digest(2, 0x00a0_0f11);
    }
});
