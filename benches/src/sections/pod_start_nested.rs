//! Pod start with real VM sandboxes, inside one nested-KVM L1 (see `crate::nested_pod`):
//! CRI RunPodSandbox + CreateContainer + StartContainer until the container's first output
//! byte, for the veil shim's VM sandbox (a veil VM per pod) and for runc, interleaved.

use std::time::Duration;

use veil_tests::nested::L1Command;

use crate::bench::{Bench, Failures};
use crate::l1_run::{absolute, inner_script, tail};
use crate::nested_pod::{PodPlan, WAIT_IN_L1};
use crate::pod::{self, PodStarts};
use crate::report::{Section, Status};
use crate::stats::median_ratio;

const NAME: &str = "Pod start inside one L1: veil VM sandboxes and runc through CRI";

const PLAN_FILE: &str = "pod-start-plan.json";
const RESULT_FILE: &str = "pod-start-result.json";
/// L1's boot and shutdown, containerd's start and the image imports, on top of the budget.
const L1_MARGIN: Duration = Duration::from_secs(300);

/// Runs the inner measurements in L1; returns their figures, or why there are none.
fn measure(b: &Bench) -> Result<(PodStarts, Duration), Status> {
    if let Some(why) = veil_tests::nested::missing_prerequisite() {
        return Err(Status::Failed(why));
    }
    if let Some(why) = pod::missing_prerequisite() {
        return Err(Status::Failed(why));
    }
    for (file, how) in [
        (&b.vmlinux, "guest/build-kernel.sh"),
        (&b.initramfs, "guest/build-initramfs.sh"),
    ] {
        if !file.is_file() {
            return Err(Status::Failed(format!(
                "{} is missing (build it with {how})",
                file.display()
            )));
        }
    }
    let release = pod::build_shim_and_agent().map_err(Status::Failed)?;
    let script = inner_script("--pod-start-inner", PLAN_FILE, RESULT_FILE)
        .map_err(|e| Status::Failed(format!("the harness's own path: {e}")))?;
    let command = L1Command::new(script).map_err(|e| Status::Failed(e.to_string()))?;
    let scratch = command.scratch().to_owned();
    let budget = b.plan.nested_pod_budget;
    let plan = PodPlan {
        release: absolute(&release),
        veil: absolute(&b.tools.veil),
        kernel: absolute(&b.vmlinux),
        initrd: absolute(&b.initramfs),
        rounds: b.plan.nested_pod_rounds,
        budget_secs: budget.as_secs(),
        out: scratch.join(RESULT_FILE),
    };
    let plan_path = scratch.join(PLAN_FILE);
    std::fs::write(
        &plan_path,
        serde_json::to_string_pretty(&plan).expect("the plan serialises"),
    )
    .map_err(|e| Status::Failed(format!("writing {}: {e}", plan_path.display())))?;
    // The last round may start just before the budget ends: two pod starts of WAIT_IN_L1 each.
    let out = command
        .timeout(budget + 2 * WAIT_IN_L1 + L1_MARGIN)
        .run()
        .map_err(|e| Status::Failed(format!("L1: {e}")))?;
    match serde_json::from_str::<PodStarts>(&out.stdout) {
        Ok(starts) if out.status == 0 => Ok((starts, out.wall)),
        _ => Err(Status::Failed(format!(
            "the measurements in L1 exited {} without figures; their stderr ends:\n{}",
            out.status,
            tail(&out.stderr, 15)
        ))),
    }
}

/// Figures, the ratio and notes from the inner run's figures; fails the section when either
/// runtime has no successful pod start.
pub fn report(section: &mut Section, starts: &PodStarts) {
    let veil = section.figure(
        "veil VM sandbox (in L1): pod start -> first output byte",
        "ms",
        &starts.samples[0],
    );
    let runc = section.figure(
        "runc (in L1): pod start -> first output byte",
        "ms",
        &starts.samples[1],
    );
    section.ratio(
        "veil VM sandbox / runc in L1, pod start (medians)",
        median_ratio(veil.as_ref(), runc.as_ref()),
        None,
    );
    let mut failed = Failures::default();
    for (handler, error) in &starts.failures {
        failed.add(handler.as_str(), error);
    }
    for note in failed.notes() {
        section.note(note);
    }
    if starts.rounds_skipped > 0 {
        section.note(format!(
            "{} round(s) not run: the time budget in L1 ran out",
            starts.rounds_skipped
        ));
    }
    for (i, handler) in pod::HANDLERS.iter().enumerate() {
        if starts.samples[i].is_empty() {
            section.fail(format!("no {handler} pod started in L1"));
        }
    }
}

pub fn run(b: &Bench) -> Section {
    let (starts, wall) = match measure(b) {
        Ok(r) => r,
        Err(status) => return Section::not_run(NAME, status),
    };
    let mut section = Section::new(NAME);
    report(&mut section, &starts);
    section.note(format!(
        "interleaved rounds in one L1 (QEMU TCG with nested SVM, {:.0} s wall), order alternating; \
         host-network pods, busybox image built locally; each veil pod is a VM in a jailed `veil` process ({} vCPUs, \
         {} MiB, project kernel + initramfs) whose rootfs is the image's ext4 + dm-verity block form \
         (built on the first veil pod, cached per layer chain); everything in L1 is emulated: \
         only the ratio means anything",
        wall.as_secs_f64(),
        crate::nested::VCPUS,
        crate::nested::MEM_MIB,
    ));
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_of_medians_and_failures_as_notes() {
        let starts = PodStarts {
            samples: [vec![30.0, 10.0, 20.0], vec![4.0, 5.0]],
            failures: vec![
                ("veil".into(), "boom".into()),
                ("veil".into(), "boom".into()),
            ],
            rounds_skipped: 1,
        };
        let mut s = Section::new("t");
        report(&mut s, &starts);
        assert_eq!(s.status, Status::Ran);
        assert_eq!(s.ratios.len(), 1);
        // Medians 20 and 4.5.
        assert!((s.ratios[0].value - 20.0 / 4.5).abs() < 1e-9);
        assert!(s
            .notes
            .iter()
            .any(|n| n.contains("boom") && n.contains("2 times")));
        assert!(s.notes.iter().any(|n| n.contains("1 round(s) not run")));
    }

    #[test]
    fn a_runtime_without_a_pod_start_fails_the_section() {
        let starts = PodStarts {
            samples: [vec![30.0], vec![]],
            failures: vec![("runc".into(), "runc init failed".into())],
            rounds_skipped: 0,
        };
        let mut s = Section::new("t");
        report(&mut s, &starts);
        assert!(matches!(&s.status, Status::Failed(w) if w.contains("runc")));
        assert!(s.ratios.is_empty());
    }
}
