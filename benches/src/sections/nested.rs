//! The pod guest under a real KVM, inside one nested-KVM "L1" (see `crate::nested`): Veil
//! against QEMU microvm, spawn -> kernel's first line, -> agent's first answer, -> container's
//! first output byte.

use std::path::{Path, PathBuf};
use std::time::Duration;

use veil_tests::nested::{find_in_path, l1_image, L1Command};

use crate::bench::{Bench, Failures};
use crate::l1_run::{absolute, inner_script, tail};
use crate::nested::{InnerPlan, InnerResult, NestedVmm, RunRecord, MEM_MIB, RUN_LIMIT, VCPUS};
use crate::report::{Section, Status};
use crate::stats::median_ratio;

const TITLE: &str = "Nested KVM: the pod guest under veil and QEMU microvm inside one L1";

/// The plan's name in the scratch directory.
const PLAN_FILE: &str = "nested-plan.json";
/// The inner run's result in the scratch directory.
const RESULT_FILE: &str = "nested-result.json";

/// L1's boot and shutdown, on top of the measurements' own budget.
const L1_MARGIN: Duration = Duration::from_secs(240);

/// Why the section cannot run here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("{0}")]
    Missing(String),
    #[error("the nested harness: {0}")]
    Nested(#[from] veil_tests::nested::NestedError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn required(path: &Path, how: &str) -> Result<PathBuf, SetupError> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(SetupError::Missing(format!(
            "{} is missing ({how})",
            path.display()
        )))
    }
}

/// vhost-device-vsock: on PATH, or where `cargo install` puts it (absolute, as L1's PATH lacks
/// `~/.cargo/bin`).
fn vhost_device_vsock() -> Result<PathBuf, SetupError> {
    find_in_path("vhost-device-vsock")
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cargo/bin/vhost-device-vsock"))
                .filter(|p| p.is_file())
        })
        .ok_or_else(|| {
            SetupError::Missing(
                "vhost-device-vsock missing (cargo install vhost-device-vsock): QEMU's vsock needs it"
                    .into(),
            )
        })
}

/// What the L1 run gave back.
pub(crate) struct Outcome<R> {
    pub result: Option<R>,
    /// Why the inner run did not finish, if it did not.
    pub problem: Option<String>,
    pub l1_wall: Duration,
    pub l1_kernel: String,
    /// The end of what the inner run wrote on stderr.
    pub stderr: String,
}

/// The pod VM both VMMs boot in L1 (the binaries, the project's kernel and initramfs, and a
/// busybox layer written into `scratch`), with `rounds`, `budget` and the result file `out`.
pub(crate) fn pod_vm_plan(
    b: &Bench,
    scratch: &Path,
    out: PathBuf,
    rounds: usize,
    budget: Duration,
) -> Result<InnerPlan, SetupError> {
    if let Some(why) = veil_tests::nested::missing_prerequisite() {
        return Err(SetupError::Missing(why));
    }
    let qemu = b.tools.qemu.clone().ok_or_else(|| {
        SetupError::Missing("qemu-system-x86_64 missing (apt-get install qemu-system-x86)".into())
    })?;
    let vhost_vsock = vhost_device_vsock()?;
    let veil = required(&b.tools.veil, "build it: cargo build --release -p veil")?;
    let vmlinux = required(
        &b.vmlinux,
        "build it with guest/build-kernel.sh, or pass --vmlinux",
    )?;
    let initramfs = required(
        &b.initramfs,
        "build it with guest/build-initramfs.sh, or pass --initramfs",
    )?;
    let disk = veil_tests::l2::busybox_ext4(scratch).map_err(|source| SetupError::Io {
        what: "the busybox layer image".into(),
        source,
    })?;
    Ok(InnerPlan {
        veil: absolute(&veil),
        qemu: absolute(&qemu),
        vhost_vsock: absolute(&vhost_vsock),
        vmlinux: absolute(&vmlinux),
        initramfs: absolute(&initramfs),
        disk,
        rounds,
        budget_secs: budget.as_secs(),
        out,
    })
}

/// Writes `plan` as `plan_file` into `command`'s scratch directory, runs the command in L1
/// within `timeout`, and reads the inner run's JSON result from its stdout.
pub(crate) fn run_in_l1<P: serde::Serialize, R: serde::de::DeserializeOwned>(
    command: L1Command,
    plan_file: &str,
    plan: &P,
    timeout: Duration,
) -> Result<Outcome<R>, SetupError> {
    let l1_kernel = l1_image()?.kernel_package;
    let plan_path = command.scratch().join(plan_file);
    let json = serde_json::to_string_pretty(plan).expect("the plan serialises");
    std::fs::write(&plan_path, json).map_err(|source| SetupError::Io {
        what: format!("writing {}", plan_path.display()),
        source,
    })?;
    let ran = command.timeout(timeout).run();
    let result = ran
        .as_ref()
        .ok()
        .and_then(|o| serde_json::from_str::<R>(&o.stdout).ok());
    let stderr = ran
        .as_ref()
        .map(|o| tail(&o.stderr, 12))
        .unwrap_or_default();
    let (problem, l1_wall) = match ran {
        Ok(o) if o.status == 0 => (None, o.wall),
        Ok(o) => (
            Some(format!(
                "the measurements in L1 exited {}: {}",
                o.status,
                tail(&o.stderr, 12)
            )),
            o.wall,
        ),
        Err(e) => (
            Some(format!("L1: {}", tail(&e.to_string(), 20))),
            Duration::ZERO,
        ),
    };
    Ok(Outcome {
        result,
        problem,
        l1_wall,
        l1_kernel,
        stderr,
    })
}

fn measure(b: &Bench) -> Result<Outcome<InnerResult>, SetupError> {
    let script = inner_script("--nested-inner", PLAN_FILE, RESULT_FILE).map_err(|source| {
        SetupError::Io {
            what: "the harness's own path".into(),
            source,
        }
    })?;
    let command = L1Command::new(script)?;
    let scratch = command.scratch().to_owned();
    let budget = b.plan.nested_budget;
    let plan = pod_vm_plan(
        b,
        &scratch,
        scratch.join(RESULT_FILE),
        b.plan.nested_rounds,
        budget,
    )?;
    run_in_l1(command, PLAN_FILE, &plan, budget + RUN_LIMIT + L1_MARGIN)
}

/// The three measures: label, unit, and the sample in a run.
const MEASURES: [Measure<RunRecord>; 3] = [
    ("spawn -> kernel's first line", "ms", |r| r.first_line_ms),
    ("spawn -> agent's first answer", "ms", |r| r.agent_ms),
    ("spawn -> container's first output byte", "ms", |r| {
        r.output_ms
    }),
];

/// Figures and ratios from the inner run's records; fails the section when a figure is
/// missing for either VMM.
pub fn report(section: &mut Section, result: &InnerResult) {
    report_veil_vs_qemu(
        section,
        &result.runs,
        |r| (r.vmm, r.error.as_deref()),
        &MEASURES,
        result.rounds_skipped,
    );
}

/// A measure of an L1 section's runs: label, unit, and its sample in a run.
pub type Measure<R> = (&'static str, &'static str, fn(&R) -> Option<f64>);

/// Each VMM's figures of every measure over `runs` and the veil/QEMU ratios of their
/// medians, the runs' errors by VMM, and the rounds the time budget cut; fails the section
/// when either VMM has no figure. `identity` gives a run's VMM and error.
pub fn report_veil_vs_qemu<R>(
    section: &mut Section,
    runs: &[R],
    identity: fn(&R) -> (Option<NestedVmm>, Option<&str>),
    measures: &[Measure<R>],
    rounds_skipped: usize,
) {
    let mut failures = Failures::default();
    for r in runs {
        if let (Some(vmm), Some(e)) = identity(r) {
            failures.add(vmm.name(), e);
        }
    }
    for (label, unit, get) in measures {
        let mut summaries = Vec::new();
        for vmm in [NestedVmm::Veil, NestedVmm::Qemu] {
            let samples: Vec<f64> = runs
                .iter()
                .filter(|r| identity(r).0 == Some(vmm))
                .filter_map(get)
                .collect();
            let s = section.figure(format!("{}: {label}", vmm.name()), unit, &samples);
            if s.is_none() {
                section.fail(format!("no {} run measured {label}", vmm.name()));
            }
            summaries.push(s);
        }
        section.ratio(
            format!("veil/qemu, {label} (medians)"),
            median_ratio(summaries[0].as_ref(), summaries[1].as_ref()),
            None,
        );
    }
    for n in failures.notes() {
        section.note(n);
    }
    if rounds_skipped > 0 {
        section.note(format!(
            "{rounds_skipped} round(s) not run: the time budget in L1 ran out"
        ));
    }
}

pub fn run(b: &Bench) -> Section {
    let mut section = Section::new(TITLE);
    let outcome = match measure(b) {
        Ok(o) => o,
        Err(e) => return Section::not_run(TITLE, Status::Failed(e.to_string())),
    };
    if let Some(problem) = &outcome.problem {
        section.fail(problem.clone());
    }
    match &outcome.result {
        Some(result) => {
            report(&mut section, result);
            section.note(format!(
                "{} runs in one L1 ({}, QEMU TCG with nested SVM, {:.0} s wall of which {:.0} s \
                 measuring), interleaved veil, qemu, qemu, veil, ..., each failed run repeated once at the end (two at most); {VCPUS} vCPUs, {MEM_MIB} MiB, \
                 project kernel + initramfs, busybox ext4 layer as a read-only virtio-blk disk",
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
        "everything in L1 is emulated: only the veil/qemu ratios mean anything, not the times",
    );
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(vmm: NestedVmm, base: f64) -> RunRecord {
        RunRecord {
            vmm: Some(vmm),
            first_line_ms: Some(base),
            agent_ms: Some(base * 10.0),
            output_ms: Some(base * 20.0),
            exit_status: Some(0),
            error: None,
        }
    }

    #[test]
    fn figures_and_ratios_of_medians() {
        let result = InnerResult {
            runs: vec![
                record(NestedVmm::Veil, 1.0),
                record(NestedVmm::Qemu, 2.0),
                record(NestedVmm::Qemu, 4.0),
                record(NestedVmm::Veil, 3.0),
            ],
            rounds_skipped: 0,
            elapsed_s: 1.0,
        };
        let mut s = Section::new("t");
        report(&mut s, &result);
        assert_eq!(s.status, Status::Ran);
        assert_eq!(s.figures.len(), 6);
        assert_eq!(s.ratios.len(), 3);
        assert!(s.ratios.iter().all(|r| (r.value - 2.0 / 3.0).abs() < 1e-9));
    }

    #[test]
    fn a_vmm_without_samples_fails_the_section() {
        let mut bad = record(NestedVmm::Qemu, 2.0);
        bad.output_ms = None;
        bad.error = Some("no container output".into());
        let result = InnerResult {
            runs: vec![record(NestedVmm::Veil, 1.0), bad],
            rounds_skipped: 1,
            elapsed_s: 1.0,
        };
        let mut s = Section::new("t");
        report(&mut s, &result);
        assert!(matches!(&s.status, Status::Failed(w) if w.contains("qemu")));
        assert_eq!(s.ratios.len(), 2);
        assert!(s.notes.iter().any(|n| n.contains("no container output")));
        assert!(s.notes.iter().any(|n| n.contains("1 round(s) not run")));
    }
}
