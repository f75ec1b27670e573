//! Pod start latency through containerd's CRI API, the way kubelet starts a pod:
//! RunPodSandbox + CreateContainer + StartContainer until the container's first output byte,
//! for veil's process sandbox and for runc on the host, interleaved in the same run. (The VM
//! sandbox's figure needs the nested kvm_amd harness: guests cannot run user space under this
//! host's KVM.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bench::{Bench, Failures};
use crate::pod::{self, Containerd};
use crate::report::{Section, Status};
use crate::stats::median_ratio;

const NAME: &str =
    "Pod start: CRI RunPodSandbox + CreateContainer + StartContainer -> first output byte";
/// Runtime handlers measured, in the order of the first round.
const HANDLERS: [&str; 2] = ["veil", "runc"];

/// `cargo build --release` of the shim and the agent; returns the release directory.
fn build_shim_and_agent() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    for (package, bin) in [
        ("containerd-shim-veil-v2", "containerd-shim-veil-v2"),
        ("veil-agent", "veil-agent"),
    ] {
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["build", "--release", "-p", package, "--bin", bin])
            .status()
            .map_err(|e| format!("cargo build {bin}: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build {bin}: {status}"));
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release"))
}

pub fn run(b: &Bench) -> Section {
    if let Some(why) = pod::missing_prerequisite() {
        return Section::not_run(NAME, Status::Skipped(why));
    }
    let release = match build_shim_and_agent() {
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
        let containerd = Containerd::start(&release, &release.join("veil-agent"))?;
        let mut client = containerd.cri().await?;
        let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut failures = Failures::default();
        for round in 0..rounds {
            for k in 0..HANDLERS.len() {
                let i = (k + round) % HANDLERS.len();
                let handler = HANDLERS[i];
                let logs = containerd
                    .dir
                    .path()
                    .join(format!("logs-{handler}-{round}"));
                std::fs::create_dir_all(&logs).map_err(|source| pod::PodError::Io {
                    what: "creating a log dir".into(),
                    source,
                })?;
                let name = format!("bench-{handler}-{round}");
                match pod::pod_start_ms(&mut client, handler, &name, &logs).await {
                    Ok(ms) => samples[i].push(ms),
                    Err(e) => failures.add(handler, e),
                }
            }
        }
        Ok::<_, pod::PodError>((samples, failures))
    });
    let (samples, failures) = match result {
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
    for note in failures.notes() {
        section.note(note);
    }
    if samples[0].is_empty() {
        section.fail("the veil process sandbox produced no successful pod start");
    }
    // runc is only the baseline: without it there is no ratio, but veil's figure stands.
    // (Seen here: runc under CRI fails in runc init, "can't get final child's PID from pipe".)
    if samples[1].is_empty() {
        section.skip(
            "veil process sandbox / runc, pod start (medians)",
            "runc started no pod through CRI on this host (see the failed runs above)",
        );
    }
    section.note(format!(
        "{rounds} interleaved rounds (order alternating); host-network pods, busybox image built locally; \
         the process sandbox runs veil-agent on the host (no VM: this host's KVM cannot run guest user space) \
         and builds the image's ext4 block form on the first pod only (cached per layer chain)"
    ));
    section
}
