//! Sections of issue 6 that wait for parts of Veil that do not exist yet. Each is reported as
//! "not measured yet" with the reason, never with a made-up number. To add one, replace its
//! function here with a module like `boot.rs` (same `fn run(&Bench) -> Section` shape).

use crate::bench::Bench;
use crate::report::{Section, Status};

/// Extension point: virtio-blk sequential / random 4 KiB throughput and vsock stream
/// throughput and round-trip latency, each driven by a test guest.
pub fn devices(_: &Bench) -> Section {
    Section::not_run(
        "Devices: virtio-blk and vsock throughput",
        Status::NotYet(
            "virtio-blk and virtio-vsock are not wired into the VMM yet; add a test guest that drives them and time it here"
                .into(),
        ),
    )
}

/// Extension point: launch-digest throughput (MiB/s of measured pages) against
/// `openssl speed -evp sha384` on 4 KiB blocks in the same run, measured bytes for the demo
/// guest and the kernel + initramfs IGVM, and the software model's full launch sequence time.
pub fn snp(_: &Bench) -> Section {
    Section::not_run(
        "SNP: launch digest and launch sequence",
        Status::NotYet(
            "the veil-snp launch digest and firmware model are not callable from the VMM yet; compare against `openssl speed -evp sha384` when they are"
                .into(),
        ),
    )
}

/// Extension point: containerd create+start -> first output byte, runc as the baseline.
pub fn pod_start(_: &Bench) -> Section {
    Section::not_run(
        "Pod start: containerd create+start -> first output byte",
        Status::NotYet(
            "the containerd shim does not exist yet; runc is the baseline once it does".into(),
        ),
    )
}
