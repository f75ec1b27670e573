//! Sections of issue 6 that wait for parts of Veil that do not exist yet. Each is reported as
//! "not measured yet" with the reason, never with a made-up number. To add one, replace its
//! function here with a module like `boot.rs` (same `fn run(&Bench) -> Section` shape).

use crate::bench::Bench;
use crate::report::{Section, Status};

/// Extension point: containerd create+start -> first output byte, runc as the baseline.
pub fn pod_start(_: &Bench) -> Section {
    Section::not_run(
        "Pod start: containerd create+start -> first output byte",
        Status::NotYet(
            "the containerd shim does not exist yet; runc is the baseline once it does".into(),
        ),
    )
}
