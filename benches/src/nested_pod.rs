//! Pod start with real VM sandboxes: the host side boots one L1 (`veil_tests::nested`) and
//! re-runs this binary inside it (`--pod-start-inner PLAN`), which starts a containerd of its
//! own with runc and the veil shim (VM sandboxes: one veil VM per pod, the project's kernel and
//! initramfs) and times interleaved CRI pod starts for both. The inner run writes its figures
//! as JSON after every pod start, so a run cut short still leaves what it measured.
//!
//! Everything in L1 is emulated: only the veil/runc ratio measured inside the same L1 means
//! anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pod::{self, Containerd, PodError, PodStarts, ShimSandbox};

/// How long one pod's container may take to print in L1 (a VM sandbox boots a kernel under
/// nested, emulated KVM first).
pub const WAIT_IN_L1: Duration = Duration::from_secs(300);

/// What the host hands the inner run.
#[derive(Debug, Serialize, Deserialize)]
pub struct PodPlan {
    /// Where the release shim and agent are.
    pub release: PathBuf,
    /// The `veil` binary the shim runs (jailed) for each pod.
    pub veil: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rounds: usize,
    /// No round starts after this many seconds.
    pub budget_secs: u64,
    /// Where the figures go (in the scratch directory shared with the host).
    pub out: PathBuf,
}

/// Errors of the inner run.
#[derive(Debug, thiserror::Error)]
pub enum NestedPodError {
    #[error("cannot read the plan {path}: {source}")]
    ReadPlan {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the plan {path} is not valid: {source}")]
    Plan {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the figures to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Pod(#[from] PodError),
}

/// The inner run: containerd with runc and veil VM sandboxes, interleaved pod starts.
pub fn inner_main(plan_path: &Path) -> Result<(), NestedPodError> {
    let text = std::fs::read_to_string(plan_path).map_err(|source| NestedPodError::ReadPlan {
        path: plan_path.to_owned(),
        source,
    })?;
    let plan: PodPlan = serde_json::from_str(&text).map_err(|source| NestedPodError::Plan {
        path: plan_path.to_owned(),
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NestedPodError::Runtime)?;
    let mut write_error = None;
    let starts = runtime.block_on(async {
        let containerd = Containerd::start(
            &plan.release,
            ShimSandbox::Vm {
                veil: &plan.veil,
                kernel: &plan.kernel,
                initrd: &plan.initrd,
            },
        )?;
        pod::interleaved_pod_starts(
            &containerd,
            plan.rounds,
            WAIT_IN_L1,
            Duration::from_secs(plan.budget_secs),
            |so_far| {
                eprintln!("pod-start in L1: {so_far:?}");
                if let Err(e) = write_figures(&plan.out, so_far) {
                    write_error.get_or_insert(e);
                }
            },
        )
        .await
    })?;
    if let Some(e) = write_error {
        return Err(e);
    }
    write_figures(&plan.out, &starts)
}

fn write_figures(path: &Path, starts: &PodStarts) -> Result<(), NestedPodError> {
    let json = serde_json::to_string_pretty(starts).expect("the figures serialise");
    std::fs::write(path, json).map_err(|source| NestedPodError::Write {
        path: path.to_owned(),
        source,
    })
}
