//! Pod start latency through containerd's CRI API, the way kubelet starts a pod:
//! RunPodSandbox + CreateContainer + StartContainer until the container's first output byte,
//! for veil's process sandbox and for runc on the host, interleaved in the same run. (VM
//! sandboxes need the nested kvm_amd harness, as guests cannot run user space under this
//! host's KVM: `pod_start_nested`.)

use crate::bench::{Bench, Failures};
use std::time::Duration;

use crate::pod::{self, Containerd, PodStarts, ShimSandbox};
use crate::report::{Section, Status};
use crate::stats::median_ratio;

const NAME: &str =
    "Pod start: CRI RunPodSandbox + CreateContainer + StartContainer -> first output byte";

pub fn run(b: &Bench) -> Section {
    if let Some(why) = pod::missing_prerequisite() {
        return Section::not_run(NAME, Status::Skipped(why));
    }
    let release = match pod::build_shim_and_agent() {
        Ok(r) => r,
        Err(e) => return Section::not_run(NAME, Status::Failed(e)),
    };
    let mut section = Section::new(NAME);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return Section::not_run(NAME, Status::Failed(e.to_string())),
    };
    let rounds = b.plan.pod_rounds;
    let result = runtime.block_on(async {
        let containerd = Containerd::start(
            &release,
            ShimSandbox::Process {
                agent: &release.join("veil-agent"),
            },
        )?;
        pod::interleaved_pod_starts(&containerd, rounds, pod::WAIT, Duration::MAX, |_| {}).await
    });
    let PodStarts {
        samples, failures, ..
    } = match result {
        Ok(r) => r,
        Err(e) => {
            section.fail(e.to_string());
            return section;
        }
    };
    let veil = section.figure(
        "veil process sandbox: pod start -> first output byte",
        "ms",
        &samples[0],
    );
    let runc = section.figure("runc: pod start -> first output byte", "ms", &samples[1]);
    section.ratio(
        "veil process sandbox / runc, pod start (medians)",
        median_ratio(veil.as_ref(), runc.as_ref()),
        None,
    );
    let mut failed = Failures::default();
    for (handler, error) in failures {
        failed.add(handler, error);
    }
    for note in failed.notes() {
        section.note(note);
    }
    if samples[0].is_empty() {
        section.fail("the veil process sandbox produced no successful pod start");
    }
    if samples[1].is_empty() {
        section.fail("runc started no pod through CRI: no baseline (see the failed runs above)");
    }
    section.note(format!(
        "{rounds} interleaved rounds (order alternating); host-network pods, busybox image built locally; \
         the process sandbox runs veil-agent on the host (no VM: this host's KVM cannot run guest user space) \
         and builds the image's ext4 block form on the first pod only (cached per layer chain)"
    ));
    section
}
