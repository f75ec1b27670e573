//! Pod networking inside one nested-KVM L1 (see `crate::net_nested`): TCP request/response
//! latency and stream throughput between a container in the pod guest and a process in a peer
//! network namespace, the guest's NIC on the same tap setup under veil's virtio-net and under
//! QEMU's.

use std::time::Duration;

use veil_tests::nested::L1Command;

use crate::bench::Bench;
use crate::l1_run::inner_script;
use crate::nested::{MEM_MIB, VCPUS};
use crate::net_nested::{NetPlan, NetResult, NetRun, RUN_LIMIT};
use crate::report::{Section, Status};
use crate::sections::nested::{pod_vm_plan, report_veil_vs_qemu, run_in_l1, Measure, SetupError};

const TITLE: &str = "Pod network inside one L1: TCP between a guest container and a peer namespace, veil and QEMU virtio-net";

const PLAN_FILE: &str = "net-plan.json";
const RESULT_FILE: &str = "net-result.json";
/// L1's boot and shutdown, on top of the measurements' own budget.
const L1_MARGIN: Duration = Duration::from_secs(240);

fn measure(b: &Bench) -> Result<crate::sections::nested::Outcome<NetResult>, SetupError> {
    let script =
        inner_script("--net-inner", PLAN_FILE, RESULT_FILE).map_err(|source| SetupError::Io {
            what: "the harness's own path".into(),
            source,
        })?;
    let command = L1Command::new(script)?;
    let scratch = command.scratch().to_owned();
    let budget = b.plan.net_budget;
    let out = scratch.join(RESULT_FILE);
    let plan = NetPlan {
        vms: pod_vm_plan(b, &scratch, out, b.plan.net_rounds, budget)?,
        round_trips: b.plan.net_round_trips,
        stream_mib: b.plan.net_stream_mib,
    };
    run_in_l1(command, PLAN_FILE, &plan, budget + RUN_LIMIT + L1_MARGIN)
}

/// The two measures: label, unit, and the sample in a run.
const MEASURES: [Measure<NetRun>; 2] = [
    ("1-byte TCP request/response, median per VM", "us", |r| {
        r.rr_median_us
    }),
    ("TCP stream echoed (each way)", "MiB/s", |r| {
        r.stream_mib_per_s
    }),
];

/// Figures and veil/QEMU ratios; fails the section when either VMM has no figure.
pub fn report(section: &mut Section, result: &NetResult) {
    report_veil_vs_qemu(
        section,
        &result.runs,
        |r| (r.vmm, r.error.as_deref()),
        &MEASURES,
        result.rounds_skipped,
    );
}

pub fn run(b: &Bench) -> Section {
    let outcome = match measure(b) {
        Ok(o) => o,
        Err(e) => return Section::not_run(TITLE, Status::Failed(e.to_string())),
    };
    let mut section = Section::new(TITLE);
    if let Some(problem) = &outcome.problem {
        section.fail(problem.clone());
    }
    match &outcome.result {
        Some(result) => {
            report(&mut section, result);
            section.note(format!(
                "{} VM runs in one L1 ({}, QEMU TCG with nested SVM, {:.0} s wall of which {:.0} s \
                 measuring), interleaved veil, qemu, qemu, veil, ..., each failed run repeated once at the end (two at most); the pod guest ({VCPUS} vCPUs, \
                 {MEM_MIB} MiB, project kernel + initramfs) with a virtio-mmio NIC on a tap tied by tc \
                 mirred to a veth whose peer namespace runs the client; the agent configures the NIC \
                 (UpdateInterface/UpdateRoutes); a busybox `nc -e cat` container echoes; QEMU's NIC is \
                 its user-space virtio-net-device (vhost=off)",
                result.runs.len(),
                outcome.l1_kernel,
                outcome.l1_wall.as_secs_f64(),
                result.elapsed_s
            ));
        }
        None => section.fail(format!(
            "the measurements in L1 wrote no result; their stderr ends:\n{}",
            outcome.stderr
        )),
    }
    section.note(
        "everything in L1 is emulated: only the veil/qemu ratios mean anything, not the figures",
    );
    section
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::NestedVmm;

    fn run(vmm: NestedVmm, rr: f64, mib: f64) -> NetRun {
        NetRun {
            vmm: Some(vmm),
            rr_median_us: Some(rr),
            stream_mib_per_s: Some(mib),
            error: None,
        }
    }

    #[test]
    fn ratios_of_medians_per_measure() {
        let result = NetResult {
            runs: vec![
                run(NestedVmm::Veil, 300.0, 20.0),
                run(NestedVmm::Qemu, 200.0, 40.0),
            ],
            rounds_skipped: 0,
            elapsed_s: 1.0,
        };
        let mut s = Section::new("t");
        report(&mut s, &result);
        assert_eq!(s.status, Status::Ran);
        assert_eq!(s.ratios.len(), 2);
        assert!((s.ratios[0].value - 1.5).abs() < 1e-9);
        assert!((s.ratios[1].value - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_vmm_without_figures_fails_the_section() {
        let result = NetResult {
            runs: vec![
                run(NestedVmm::Veil, 300.0, 20.0),
                NetRun {
                    vmm: Some(NestedVmm::Qemu),
                    error: Some("no tap".into()),
                    ..NetRun::default()
                },
            ],
            rounds_skipped: 0,
            elapsed_s: 1.0,
        };
        let mut s = Section::new("t");
        report(&mut s, &result);
        assert!(matches!(&s.status, Status::Failed(w) if w.contains("qemu")));
        assert!(s.notes.iter().any(|n| n.contains("no tap")));
    }
}
