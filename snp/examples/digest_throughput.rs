//! Measures launch-digest throughput on this machine: NORMAL pages of a 64 MiB range, hashed
//! in parallel and chained, and the single-threaded page hash alone for comparison with
//! `openssl speed -evp sha384 -bytes 4096`.
//!
//! Run: `cargo run --release -p veil-snp --example digest_throughput`

use std::time::Instant;

use sha2::{Digest, Sha384};
use veil_snp::LaunchDigest;

fn main() {
    const MIB: usize = 1 << 20;
    let size = 64 * MIB;
    let data: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();

    let start = Instant::now();
    let mut ld = LaunchDigest::new();
    ld.update_normal(0x10_0000, &data).expect("aligned range");
    let full = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut sink = 0u8;
    for page in data.chunks_exact(4096) {
        sink ^= Sha384::digest(page)[0];
    }
    let single = start.elapsed().as_secs_f64();

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("digest {}", ld.hex());
    println!(
        "launch digest (NORMAL pages, {threads} threads + PAGE_INFO chain): {:.0} MiB/s, {:.2} ms per MiB",
        64.0 / full,
        full * 1000.0 / 64.0
    );
    println!(
        "SHA-384 of 4 KiB pages, one core: {:.0} MiB/s (checksum {sink})",
        64.0 / single
    );
}
