//! Boot latency of the tiny PVH guest: spawn -> its console line, and spawn -> process exit,
//! for Veil, the floor and QEMU microvm in interleaved rounds. (Peak RSS is measured in the
//! memory section: see `launch.rs` for why not from these runs.)

use std::collections::BTreeMap;

use crate::bench::{expect_exit, rotated, Bench, Failures, RunError, TINY_TIMEOUT};
use crate::guest::EXIT_GREETING;
use crate::launch::{ms_between, Launched};
use crate::report::Section;
use crate::stats::median_ratio;
use crate::vmm::{Shape, Vmm};

/// Goal from issue 6: spawn -> line at most this times the floor's.
pub const TARGET_VS_FLOOR: f64 = 1.5;
/// Goal from issue 6: spawn -> line at most this times QEMU microvm's.
pub const TARGET_VS_QEMU: f64 = 0.1;

#[derive(Default)]
struct Samples {
    line_ms: Vec<f64>,
    exit_ms: Vec<f64>,
}

struct Run {
    line_ms: f64,
    exit_ms: f64,
}

/// The label of veil's runs without seccomp filters (the cost of seccomp: veil / this).
const VEIL_NO_SECCOMP: &str = "veil --no-seccomp";
/// The label of veil's jailed runs (the cost of seccomp + jail: this / veil --no-seccomp).
const VEIL_JAIL: &str = "veil --jail";

/// veil's variants beside the default, each run in every round: (label, extra arguments).
const VEIL_VARIANTS: [(&str, &str); 2] = [(VEIL_NO_SECCOMP, "--no-seccomp"), (VEIL_JAIL, "--jail")];

fn one_run(b: &Bench, vmm: Vmm, extra: Option<&str>) -> Option<Result<Run, RunError>> {
    let mut command = b.tools.tiny_guest(vmm, &b.exit_guest, Shape::SMALL)?;
    command.args(extra);
    Some((|| {
        let mut vm = Launched::spawn(command)?;
        let line_at = vm.wait_for_line(EXIT_GREETING, TINY_TIMEOUT)?;
        let ended = expect_exit(&mut vm, vmm.clean_exit_status())?;
        Ok(Run {
            line_ms: ms_between(vm.spawned_at, line_at),
            exit_ms: ms_between(vm.spawned_at, ended.at),
        })
    })())
}

pub fn run(b: &Bench) -> Section {
    let mut section = Section::new("Boot latency: tiny PVH guest, 1 vCPU / 128 MiB");
    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    let mut failures = Failures::default();
    for round in 0..b.plan.boot_rounds {
        // veil's variants (without seccomp, jailed) join every round, first or last in turn.
        let mut order: Vec<(&str, Vmm, Option<&str>)> = rotated(round)
            .into_iter()
            .map(|v| (v.name(), v, None))
            .collect();
        for (name, arg) in VEIL_VARIANTS {
            let variant = (name, Vmm::Veil, Some(arg));
            if round % 2 == 0 {
                order.insert(0, variant);
            } else {
                order.push(variant);
            }
        }
        for (name, vmm, extra) in order {
            match one_run(b, vmm, extra) {
                None => {}
                Some(Ok(r)) => {
                    let s = samples.entry(name).or_default();
                    s.line_ms.push(r.line_ms);
                    s.exit_ms.push(r.exit_ms);
                }
                Some(Err(e)) => failures.add(name, e),
            }
        }
    }
    let mut line = BTreeMap::new();
    let names = Vmm::ALL
        .iter()
        .map(|v| v.name())
        .chain(VEIL_VARIANTS.map(|(name, _)| name));
    for name in names {
        let Some(s) = samples.get(name) else {
            continue;
        };
        line.insert(
            name,
            section.figure(format!("{name}: spawn -> guest line"), "ms", &s.line_ms),
        );
        section.figure(format!("{name}: spawn -> process exit"), "ms", &s.exit_ms);
    }
    let get = |n: &str| line.get(n).copied().flatten();
    let veil = get(Vmm::Veil.name());
    section.ratio(
        "veil/floor, spawn -> guest line (medians)",
        median_ratio(veil.as_ref(), get(Vmm::Floor.name()).as_ref()),
        Some(TARGET_VS_FLOOR),
    );
    section.ratio(
        "veil/qemu, spawn -> guest line (medians)",
        median_ratio(veil.as_ref(), get(Vmm::Qemu.name()).as_ref()),
        Some(TARGET_VS_QEMU),
    );
    section.ratio(
        "veil/veil --no-seccomp, spawn -> guest line (medians): the cost of seccomp",
        median_ratio(veil.as_ref(), get(VEIL_NO_SECCOMP).as_ref()),
        None,
    );
    let jailed = get(VEIL_JAIL);
    section.ratio(
        "veil --jail/veil --no-seccomp, spawn -> guest line (medians): the cost of seccomp + jail",
        median_ratio(jailed.as_ref(), get(VEIL_NO_SECCOMP).as_ref()),
        None,
    );
    section.ratio(
        "veil --jail/veil, spawn -> guest line (medians): the cost of the jail",
        median_ratio(jailed.as_ref(), veil.as_ref()),
        None,
    );
    section.ratio(
        "veil --jail/floor, spawn -> guest line (medians)",
        median_ratio(jailed.as_ref(), get(Vmm::Floor.name()).as_ref()),
        Some(TARGET_VS_FLOOR),
    );
    section.ratio(
        "veil --jail/qemu, spawn -> guest line (medians)",
        median_ratio(jailed.as_ref(), get(Vmm::Qemu.name()).as_ref()),
        Some(TARGET_VS_QEMU),
    );
    if b.tools.qemu.is_none() {
        section.note("qemu-system-x86_64 not found: QEMU columns skipped");
    }
    section.note(format!(
        "{} interleaved rounds; the exit guest writes 0xfe to port 0x64 (veil, floor) and to isa-debug-exit at 0xf4 (QEMU)",
        b.plan.boot_rounds
    ));
    for n in failures.notes() {
        section.note(n);
    }
    section
}
