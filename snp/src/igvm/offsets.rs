//! Bounds of an IGVM file's sections, checked before the `igvm` crate parses it.
//!
//! igvm 0.5 computes `variable_header_offset + variable_header_size` and
//! `file_offset - file_data_start` without overflow checks: debug builds panic on a file
//! whose headers run past 4 GiB or whose page data, parameter area or VP context points
//! before the file data section, and release builds wrap and then index out of bounds (the
//! header split, a VBS VP context). It also adds a parameter area's 64-bit size to its
//! offset unchecked, and subtracts a VP context's offset even when it is zero (which for
//! page data and parameter areas means "no data") or when the data is zero bytes long. A file
//! that fails these checks is malformed anyway: every directive's data, and every nonzero
//! file offset, must lie inside the file data section.

use igvm_defs::IgvmVariableHeaderType as VHT;

use super::plan::IgvmError;

const FIXED_HEADER: usize = 24;
const MAGIC: u32 = u32::from_le_bytes(*b"IGVM");
const VARIABLE_HEADER_OFFSET: usize = 8;
const VARIABLE_HEADER_SIZE: usize = 12;
/// Every variable header starts with its type and length (u32 each) and is 8-byte aligned.
const HEADER_PREFIX: usize = 8;
/// How much file data a directive with a `file_offset` reads there.
#[derive(Clone, Copy)]
enum DataLen {
    /// One page; a zero offset means no data.
    PageOrNone,
    /// `number_of_bytes` (u64 at the start of the body); a zero offset means no data.
    NumberOfBytesOrNone,
    /// At least one byte (the parser reads the rest); zero is not "no data" here.
    Some,
}

/// Directive types that carry a `file_offset` (u32 at byte 12 of their body).
const WITH_FILE_OFFSET: [(u32, DataLen); 3] = [
    (VHT::IGVM_VHT_PARAMETER_AREA.0, DataLen::NumberOfBytesOrNone),
    (VHT::IGVM_VHT_PAGE_DATA.0, DataLen::PageOrNone),
    (VHT::IGVM_VHT_VP_CONTEXT.0, DataLen::Some),
];
const FILE_OFFSET_IN_BODY: usize = 12;

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32_at(bytes, at)?) | u64::from(u32_at(bytes, at + 4)?) << 32)
}

/// Refuses a file whose variable headers do not lie inside it or whose directives point at
/// data outside its file data section. Files too short or without the IGVM magic are left
/// to the `igvm` crate to reject.
pub(super) fn check_section_bounds(bytes: &[u8]) -> Result<(), IgvmError> {
    if bytes.len() < FIXED_HEADER || u32_at(bytes, 0) != Some(MAGIC) {
        return Ok(());
    }
    let bad = |why: String| Err(IgvmError::Layout(why));
    let start = u32_at(bytes, VARIABLE_HEADER_OFFSET).unwrap_or(0) as usize;
    let size = u32_at(bytes, VARIABLE_HEADER_SIZE).unwrap_or(0) as usize;
    let Some(headers) = start
        .checked_add(size)
        .and_then(|end| bytes.get(start..end))
    else {
        return bad(format!(
            "variable headers at {start:#x} with {size:#x} bytes run past the {}-byte file",
            bytes.len()
        ));
    };
    // `start + size` fits: it is at most `bytes.len()`.
    let data_start = start + size;
    let mut at = 0;
    while let (Some(typ), Some(len)) = (u32_at(headers, at), u32_at(headers, at + 4)) {
        let body = at + HEADER_PREFIX;
        let kind = WITH_FILE_OFFSET
            .iter()
            .find_map(|&(t, kind)| (t == typ).then_some(kind));
        let offset = u32_at(headers, body + FILE_OFFSET_IN_BODY);
        if let (Some(kind), Some(offset)) = (kind, offset) {
            let data_len = match kind {
                DataLen::PageOrNone if offset == 0 => 0,
                DataLen::PageOrNone => 4096,
                DataLen::NumberOfBytesOrNone if offset == 0 => 0,
                DataLen::NumberOfBytesOrNone => u64_at(headers, body).unwrap_or(u64::MAX),
                DataLen::Some => 1,
            };
            let offset = u64::from(offset);
            let inside = offset >= data_start as u64
                && offset
                    .checked_add(data_len)
                    .is_some_and(|end| end <= bytes.len() as u64);
            // A nonzero offset is subtracted from the data start even for zero bytes.
            if (data_len != 0 || offset != 0) && !inside {
                return bad(format!(
                    "header type {typ:#x} at {:#x} reads {data_len:#x} bytes at file offset \
                     {offset:#x}, outside the file data ({data_start:#x}..{:#x})",
                    start + at,
                    bytes.len()
                ));
            }
        }
        let Some(next) = (len as usize)
            .checked_next_multiple_of(8)
            .and_then(|len| body.checked_add(len))
        else {
            break;
        };
        at = next;
    }
    Ok(())
}
