//! The way Kubernetes drives the shim: containerd's CRI API (as kubelet uses it) with runtime
//! handler `veil`, a host-network pod of two containers sharing one sandbox (one shim, one
//! agent), exec into both, status, then stop and remove leave nothing behind.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_one_pod_sandbox() {
    require_host!();
    cri::two_containers_share_one_pod_sandbox(&Containerd::start(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_container_is_reported_as_such() {
    require_host!();
    cri::an_oom_killed_container_is_reported_as_such(&Containerd::start()).await;
}
