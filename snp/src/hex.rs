//! Fixed-size SEV-SNP values (digests, HOST_DATA, GUIDs) from hex with an optional `0x`
//! prefix, through the `hex` crate (which has no prefix or fixed-size form of its own).

/// Decodes exactly `N` bytes from `2 * N` hex digits (either case, optional `0x` prefix).
/// Any other input, non-ASCII included, is an error saying what is wrong, never a panic.
pub fn decode_array<const N: usize>(input: &str) -> Result<[u8; N], hex::FromHexError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(input.strip_prefix("0x").unwrap_or(input), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode_array;

    #[test]
    fn fixed_size_with_optional_prefix() {
        assert_eq!(decode_array::<2>("0x01aB"), Ok([1, 0xab]));
        assert_eq!(decode_array::<2>("0102"), Ok([1, 2]));
        assert!(decode_array::<2>("010203").is_err());
        assert!(decode_array::<2>("abc").is_err());
        assert!(decode_array::<1>("zz").is_err());
        // Two bytes of UTF-8 where two digits belong: refused, not split.
        assert!(decode_array::<1>("é").is_err());
    }
}
