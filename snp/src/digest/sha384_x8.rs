//! SHA-384 of eight 4 KiB pages at once on one core: one page per 64-bit lane of the AVX-512
//! registers (a "multi-buffer" hash).
//!
//! Why ours: the launch digest hashes every NORMAL page, independent of the others, and the
//! single-stream SHA-512 code of the `sha2` crate, `ring` and `aws-lc-rs` all measured about
//! 0.75x `openssl speed -evp sha384` per core here (OpenSSL interleaves two blocks' message
//! schedules with AVX2; no Rust crate we found hashes several messages per core). Eight lanes
//! of the same rounds run on eight pages, so the per-core cost per page drops well below any
//! single stream. Inputs are public page contents, so lane-parallel code has no secrets to
//! leak. The tests check every lane against the `sha2` crate.
//!
//! The pages are exactly 4096 bytes: 32 message blocks, then one padding block that is the
//! same for every page.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use crate::page_info::DIGEST_SIZE;

const PAGE: usize = 4096;
const BLOCK: usize = 128;
/// Pages hashed by one call.
pub const LANES: usize = 8;

/// FIPS 180-4 SHA-512 round constants: the first 64 bits of the fractional parts of the cube
/// roots of the first 80 primes.
const K: [u64; 80] = [
    0x428a2f98d728ae22,
    0x7137449123ef65cd,
    0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc,
    0x3956c25bf348b538,
    0x59f111f1b605d019,
    0x923f82a4af194f9b,
    0xab1c5ed5da6d8118,
    0xd807aa98a3030242,
    0x12835b0145706fbe,
    0x243185be4ee4b28c,
    0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f,
    0x80deb1fe3b1696b1,
    0x9bdc06a725c71235,
    0xc19bf174cf692694,
    0xe49b69c19ef14ad2,
    0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5,
    0x240ca1cc77ac9c65,
    0x2de92c6f592b0275,
    0x4a7484aa6ea6e483,
    0x5cb0a9dcbd41fbd4,
    0x76f988da831153b5,
    0x983e5152ee66dfab,
    0xa831c66d2db43210,
    0xb00327c898fb213f,
    0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2,
    0xd5a79147930aa725,
    0x06ca6351e003826f,
    0x142929670a0e6e70,
    0x27b70a8546d22ffc,
    0x2e1b21385c26c926,
    0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df,
    0x650a73548baf63de,
    0x766a0abb3c77b2a8,
    0x81c2c92e47edaee6,
    0x92722c851482353b,
    0xa2bfe8a14cf10364,
    0xa81a664bbc423001,
    0xc24b8b70d0f89791,
    0xc76c51a30654be30,
    0xd192e819d6ef5218,
    0xd69906245565a910,
    0xf40e35855771202a,
    0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8,
    0x1e376c085141ab53,
    0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63,
    0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc,
    0x78a5636f43172f60,
    0x84c87814a1f0ab72,
    0x8cc702081a6439ec,
    0x90befffa23631e28,
    0xa4506cebde82bde9,
    0xbef9a3f7b2c67915,
    0xc67178f2e372532b,
    0xca273eceea26619c,
    0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e,
    0xf57d4f7fee6ed178,
    0x06f067aa72176fba,
    0x0a637dc5a2c898a6,
    0x113f9804bef90dae,
    0x1b710b35131c471b,
    0x28db77f523047d84,
    0x32caab7b40c72493,
    0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6,
    0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec,
    0x6c44198c4a475817,
];

/// FIPS 180-4 SHA-384 initial hash value: the first 64 bits of the fractional parts of the
/// square roots of the 9th through 16th primes.
const IV: [u64; 8] = [
    0xcbbb9d5dc1059ed8,
    0x629a292a367cd507,
    0x9159015a3070dd17,
    0x152fecd8f70e5939,
    0x67332667ffc00b31,
    0x8eb44a8768581511,
    0xdb0c2e0d64f98fa7,
    0x47b5481dbefa4fa4,
];

/// Whether this CPU runs [`hash_pages_x8`] (AVX-512 F and BW), asked once per process.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE
        .get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"))
}

/// SHA-384 of the eight 4 KiB pages of `data` that start at the byte offsets `pages` (any
/// order, repeats allowed). `None` when the CPU lacks AVX-512 or a page is not inside `data`.
pub fn hash_pages_x8(data: &[u8], pages: [usize; LANES]) -> Option<[[u8; DIGEST_SIZE]; LANES]> {
    let inside = pages
        .iter()
        .all(|&start| start.checked_add(PAGE).is_some_and(|end| end <= data.len()));
    if !available() || !inside || data.len() > i64::MAX as usize {
        return None;
    }
    let offsets = pages.map(|p| p as i64);
    // SAFETY: the CPU has AVX-512 F and BW (checked above), and every page lies inside
    // `data` (checked above), which is all the gathers read.
    Some(unsafe { hash_x8(data.as_ptr(), offsets) })
}

/// The eight-lane compression of every page's 32 blocks and the shared padding block.
///
/// # Safety
/// The CPU must have AVX-512 F and BW, and `base + offsets[i] .. + 4096` must be readable
/// for every lane `i`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn hash_x8(base: *const u8, offsets: [i64; LANES]) -> [[u8; DIGEST_SIZE]; LANES] {
    let lanes = _mm512_loadu_si512(offsets.as_ptr().cast());
    // Reverses the bytes of each 64-bit word (SHA-512 words are big-endian); the byte shuffle
    // works within each 128-bit lane, so the pattern repeats.
    let swap = _mm512_set_epi64(
        0x08090a0b0c0d0e0f,
        0x0001020304050607,
        0x08090a0b0c0d0e0f,
        0x0001020304050607,
        0x08090a0b0c0d0e0f,
        0x0001020304050607,
        0x08090a0b0c0d0e0f,
        0x0001020304050607,
    );
    let mut state = IV.map(|v| _mm512_set1_epi64(v as i64));
    let mut w = [_mm512_setzero_si512(); 16];
    for block in 0..PAGE / BLOCK {
        for (j, word) in w.iter_mut().enumerate() {
            // SAFETY: every lane's page is readable (the caller's contract); this reads the
            // 8 bytes at `block * 128 + j * 8` of each.
            let at = base.add(block * BLOCK + j * 8);
            let gathered = _mm512_i64gather_epi64::<1>(lanes, at.cast());
            *word = _mm512_shuffle_epi8(gathered, swap);
        }
        compress(&mut state, &mut w);
    }
    // The padding block of a 4096-byte message: 0x80, zeros, the bit length (128-bit).
    w = [_mm512_setzero_si512(); 16];
    w[0] = _mm512_set1_epi64(0x8000_0000_0000_0000_u64 as i64);
    w[15] = _mm512_set1_epi64((PAGE * 8) as i64);
    compress(&mut state, &mut w);

    let mut words = [[0u64; LANES]; 6];
    for (out, s) in words.iter_mut().zip(&state) {
        _mm512_storeu_si512(out.as_mut_ptr().cast(), *s);
    }
    let mut digests = [[0u8; DIGEST_SIZE]; LANES];
    for (lane, digest) in digests.iter_mut().enumerate() {
        for (i, word) in words.iter().enumerate() {
            digest[i * 8..i * 8 + 8].copy_from_slice(&word[lane].to_be_bytes());
        }
    }
    digests
}

/// Ternary-logic truth tables: `a ^ b ^ c`, `a ? b : c` (Ch), majority (Maj).
const XOR3: i32 = 0x96;
const CHOOSE: i32 = 0xca;
const MAJORITY: i32 = 0xe8;

/// 80 rounds over the block in `w` (the schedule is extended in place, 16 words at a time).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn compress(state: &mut [__m512i; 8], w: &mut [__m512i; 16]) {
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (t, k) in K.iter().enumerate() {
        if t >= 16 {
            // W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], in a ring of 16.
            let w15 = w[(t + 1) % 16];
            let w2 = w[(t + 14) % 16];
            let s0 = _mm512_ternarylogic_epi64::<XOR3>(
                _mm512_ror_epi64::<1>(w15),
                _mm512_ror_epi64::<8>(w15),
                _mm512_srli_epi64::<7>(w15),
            );
            let s1 = _mm512_ternarylogic_epi64::<XOR3>(
                _mm512_ror_epi64::<19>(w2),
                _mm512_ror_epi64::<61>(w2),
                _mm512_srli_epi64::<6>(w2),
            );
            w[t % 16] = _mm512_add_epi64(
                _mm512_add_epi64(w[t % 16], s0),
                _mm512_add_epi64(w[(t + 9) % 16], s1),
            );
        }
        let sum1 = _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<14>(e),
            _mm512_ror_epi64::<18>(e),
            _mm512_ror_epi64::<41>(e),
        );
        let ch = _mm512_ternarylogic_epi64::<CHOOSE>(e, f, g);
        let t1 = _mm512_add_epi64(
            _mm512_add_epi64(h, sum1),
            _mm512_add_epi64(
                _mm512_add_epi64(ch, _mm512_set1_epi64(*k as i64)),
                w[t % 16],
            ),
        );
        let sum0 = _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<28>(a),
            _mm512_ror_epi64::<34>(a),
            _mm512_ror_epi64::<39>(a),
        );
        let maj = _mm512_ternarylogic_epi64::<MAJORITY>(a, b, c);
        let t2 = _mm512_add_epi64(sum0, maj);
        h = g;
        g = f;
        f = e;
        e = _mm512_add_epi64(d, t1);
        d = c;
        c = b;
        b = a;
        a = _mm512_add_epi64(t1, t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = _mm512_add_epi64(*s, v);
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha384};

    use super::*;

    /// Pages whose bytes differ page to page and within each page.
    fn pages(count: usize) -> Vec<u8> {
        (0..count * PAGE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect()
    }

    #[test]
    fn every_lane_equals_the_sha2_crate() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 F/BW; the scalar path serves it");
            return;
        }
        let data = pages(11);
        // Out of order, with a repeat and the last page of the buffer.
        let picks = [3, 0, 10, 7, 7, 1, 9, 2].map(|p| p * PAGE);
        let got = hash_pages_x8(&data, picks).unwrap();
        for (lane, start) in picks.iter().enumerate() {
            let want: [u8; DIGEST_SIZE] = Sha384::digest(&data[*start..start + PAGE]).into();
            assert_eq!(got[lane], want, "lane {lane} (page at {start:#x})");
        }
    }

    #[test]
    fn unaligned_page_starts_hash_the_bytes_there() {
        if !available() {
            return;
        }
        let data = pages(9);
        let picks = [1, 5, 100, 4097, 8000, 12345, 20000, 8 * PAGE - 1];
        let got = hash_pages_x8(&data, picks).unwrap();
        for (lane, start) in picks.iter().enumerate() {
            let want: [u8; DIGEST_SIZE] = Sha384::digest(&data[*start..start + PAGE]).into();
            assert_eq!(got[lane], want, "lane {lane}");
        }
    }

    #[test]
    fn a_page_past_the_end_is_refused() {
        let data = pages(8);
        let mut picks = [0usize; LANES];
        picks[5] = 7 * PAGE + 1;
        assert!(hash_pages_x8(&data, picks).is_none());
        picks[5] = usize::MAX - 10;
        assert!(hash_pages_x8(&data, picks).is_none());
    }
}
