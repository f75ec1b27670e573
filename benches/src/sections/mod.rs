//! The harness's sections, in report order. Each is `fn(&Bench) -> Section`; add new ones to
//! [`ALL`].

pub mod boot;
pub mod demo;
pub mod density;
pub mod devices;
pub mod kernel;
pub mod memory;
pub mod nested;
pub mod net_nested;
pub mod pod_start;
pub mod pod_start_nested;
pub mod snp;

use crate::bench::Bench;
use crate::report::Section;

/// A named section: the name selects it on the command line (`--only`).
pub struct Entry {
    pub name: &'static str,
    pub run: fn(&Bench) -> Section,
}

/// Every section, in the order they run and are reported.
pub const ALL: &[Entry] = &[
    Entry {
        name: "boot",
        run: boot::run,
    },
    Entry {
        name: "demo",
        run: demo::run,
    },
    Entry {
        name: "kernel",
        run: kernel::run,
    },
    Entry {
        name: "memory",
        run: memory::run,
    },
    Entry {
        name: "density",
        run: density::run,
    },
    Entry {
        name: "devices",
        run: devices::run,
    },
    Entry {
        name: "snp",
        run: snp::run,
    },
    Entry {
        name: "nested",
        run: nested::run,
    },
    Entry {
        name: "net-nested",
        run: net_nested::run,
    },
    Entry {
        name: "pod-start",
        run: pod_start::run,
    },
    Entry {
        name: "pod-start-nested",
        run: pod_start_nested::run,
    },
];

/// The section names, for help and error messages.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|e| e.name).collect()
}
