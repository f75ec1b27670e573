//! Measures launch-digest throughput on this machine: NORMAL pages of a 64 MiB range, hashed
//! in parallel and chained, and the single-threaded page hash alone. CPU time is reported
//! next to wall time because `openssl speed` divides by user CPU time by default; compare the
//! one-core CPU-time figure with `openssl speed -evp sha384 -bytes 4096`, and wall time with
//! `openssl speed -elapsed ...` on an idle machine.
//!
//! Run: `cargo run --release -p veil-snp --example digest_throughput`

use std::time::Instant;

use sha2::{Digest, Sha384};
use veil_snp::LaunchDigest;

fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    const MIB: usize = 1 << 20;
    const SIZE_MIB: f64 = 64.0;
    let data: Vec<u8> = (0..64 * MIB).map(|i| (i * 131 % 251) as u8).collect();

    let (wall, cpu) = (Instant::now(), cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID));
    let mut ld = LaunchDigest::new();
    ld.update_normal(0x10_0000, &data).expect("aligned range");
    let (full_wall, full_cpu) = (
        wall.elapsed().as_secs_f64(),
        cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu,
    );

    let (wall, cpu) = (Instant::now(), cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID));
    let mut sink = 0u8;
    for page in data.chunks_exact(4096) {
        sink ^= Sha384::digest(page)[0];
    }
    let (one_wall, one_cpu) = (
        wall.elapsed().as_secs_f64(),
        cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID) - cpu,
    );

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("digest {}", ld.hex());
    println!(
        "launch digest, {threads} threads + PAGE_INFO chain: {:.0} MiB/s wall ({:.2} ms per MiB), {:.0} MiB/s per CPU-second",
        SIZE_MIB / full_wall,
        full_wall * 1000.0 / SIZE_MIB,
        SIZE_MIB / full_cpu
    );
    println!(
        "SHA-384 of 4 KiB pages, one core: {:.0} MiB/s wall, {:.0} MiB/s per CPU-second (checksum {sink})",
        SIZE_MIB / one_wall,
        SIZE_MIB / one_cpu
    );
}
