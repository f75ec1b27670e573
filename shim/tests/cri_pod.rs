//! The way Kubernetes drives the shim: containerd's CRI API (as kubelet uses it) with runtime
//! handler `veil`, a host-network pod of two containers sharing one sandbox (one shim, one
//! agent), exec into both, status, then stop and remove leave nothing behind.

mod common;

use common::cri::{self, *};
use common::*;
use k8s_cri::v1::{ContainerState, ContainerStatusRequest, ExecSyncRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_one_pod_sandbox() {
    require_host!();
    let c = Containerd::start();
    let mut client = cri::connect(&c.address).await;
    let logs = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod_config("veilpod", &logs);
    let pod_id = run_pod(&mut client, &pod, "veil").await;

    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let id = start_container(
            &mut client,
            &pod_id,
            &pod,
            name,
            IMAGE,
            &["sh", "-c", "echo up; while :; do sleep 1; done"],
        )
        .await;
        let exec = client
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), format!("echo hi from {name}")],
                timeout: 0,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        assert_eq!(exec.exit_code, 0, "{exec:?}");
        assert_eq!(
            String::from_utf8_lossy(&exec.stdout),
            format!("hi from {name}\n")
        );
        let status = client
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status");
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "{status:?}"
        );
        ids.push(id);
    }
    // One shim server and one agent serve the whole pod.
    assert_eq!(c.our_processes("containerd-shim-veil-v2").len(), 1);
    assert_eq!(c.our_processes("veil-agent").len(), 1);
    assert!(c.shim_socket("k8s.io", &pod_id).exists());
    // The containers' output reached CRI's log files.
    for name in ["first", "second"] {
        let log = std::fs::read_to_string(log_file(&logs, name)).unwrap_or_default();
        assert!(log.contains("stdout F up"), "{name}: {log:?}");
    }

    remove_pod(&mut client, &pod_id).await;
    c.assert_clean(&[&pod_id]);
}
