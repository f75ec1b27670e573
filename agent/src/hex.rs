//! Hex strings from the host (root hashes, HOST_DATA): decoded byte by byte, so any input,
//! non-ASCII or of odd length included, gives an error and never a panic.

/// Decodes exactly `N` bytes from `2 * N` hex digits (either case); `None` otherwise.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_cases() {
        assert_eq!(decode::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(encode(&[0x0a, 0xff]), "0aff");
    }

    #[test]
    fn refuses_non_ascii_odd_length_and_non_hex_without_panicking() {
        // 64 bytes, but "é" is two bytes: slicing by byte offsets would split it.
        let non_ascii = format!("é{}", "0".repeat(62));
        assert_eq!(non_ascii.len(), 64);
        assert_eq!(decode::<32>(&non_ascii), None);
        assert_eq!(decode::<32>(&"0".repeat(63)), None);
        assert_eq!(decode::<32>(&"0".repeat(65)), None);
        assert_eq!(decode::<32>(&"g".repeat(64)), None);
        assert_eq!(decode::<1>("+1"), None);
    }
}
