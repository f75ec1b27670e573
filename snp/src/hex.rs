//! Lowercase hex encoding and strict decoding of fixed-size values.

pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes hex of any length (optional `0x` prefix); None on odd length or non-hex characters.
pub fn decode(input: &str) -> Option<Vec<u8>> {
    let s = input.strip_prefix("0x").unwrap_or(input).as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// Decodes exactly `N` bytes of hex.
pub fn decode_array<const N: usize>(input: &str) -> Option<[u8; N]> {
    decode(input)?.try_into().ok()
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_rejects() {
        assert_eq!(super::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(super::decode("00AB7f"), Some(vec![0, 0xab, 0x7f]));
        assert_eq!(super::decode("0x01"), Some(vec![1]));
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode("zz"), None);
        assert_eq!(super::decode_array::<2>("0102"), Some([1, 2]));
        assert_eq!(super::decode_array::<2>("010203"), None);
    }
}
