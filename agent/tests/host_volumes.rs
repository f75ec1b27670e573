//! Kubernetes volumes without a shared file system, on the host agent: a ConfigMap-like file
//! copied in with CopyFile is visible through a bind mount and an update reaches the running
//! container; an emptyDir (guest tmpfs) is shared by two containers; an OOM kill in a
//! container with a small memory limit is reported by GetOOMEvent; ListProcesses and
//! GetMetrics answer. Needs root, e2fsprogs and busybox-static (skips otherwise).

mod common;
#[path = "common/volumes.rs"]
mod volumes;

use std::time::Duration;

use common::*;
use veil_agent::protocols::{agent, oci};
use veil_agent::testing::copy_file_request;
use volumes::copied_file_and_shared_empty_dir;

const CM_DIR: &str = "/run/kata-containers/shared/containers/pod1-config";

async fn ready_agent() -> (AgentProcess, veil_agent::client::AgentClient) {
    let mut agent = AgentProcess::start(&sha256_hex(ALLOW_ALL));
    let client = agent.connect().await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    client
        .agent
        .create_sandbox(ctx(), &agent::CreateSandboxRequest::new())
        .await
        .unwrap();
    (agent, client)
}

async fn start(client: &veil_agent::client::AgentClient, id: &str) {
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_files_and_empty_dirs_reach_the_pods_containers() {
    require_host!();
    let image = BusyboxImage::new();
    let (agent, client) = ready_agent().await;
    // CopyFile outside the shared directory is refused.
    let (code, msg) = status_of(
        client
            .agent
            .copy_file(ctx(), &copy_file_request("/etc/passwd", b"x"))
            .await,
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");

    copied_file_and_shared_empty_dir(&client, &image.device, CM_DIR).await;

    let mut list = agent::ListProcessesRequest::new();
    list.container_id = "writer".into();
    list.format = "json".into();
    let pids: Vec<i32> = serde_json::from_slice(
        &client
            .agent
            .list_processes(ctx(), &list)
            .await
            .unwrap()
            .process_list,
    )
    .unwrap();
    assert!(!pids.is_empty());
    let metrics = client
        .agent
        .get_metrics(ctx(), &agent::GetMetricsRequest::new())
        .await
        .unwrap()
        .metrics;
    assert!(metrics.contains("veil_agent_containers 2"), "{metrics}");

    remove_container(&client, "reader").await;
    remove_container(&client, "writer").await;
    client
        .agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    assert!(mounts_under(&agent.state_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_reported_by_get_oom_event() {
    require_host!();
    let image = BusyboxImage::new();
    let (_agent, client) = ready_agent().await;
    let id = "hog";
    // A shell variable far larger than the memory limit.
    let mut req = create_request(
        id,
        &image.device,
        &[
            "sh",
            "-c",
            "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
    );
    let mut memory = oci::LinuxMemory::new();
    memory.Limit = 16 << 20;
    memory.Swap = 16 << 20;
    let mut linux = oci::Linux::new();
    linux.Resources.mut_or_insert_default().Memory = protobuf::MessageField::some(memory);
    req.OCI.as_mut().unwrap().Linux = protobuf::MessageField::some(linux);
    client.agent.create_container(ctx(), &req).await.unwrap();
    start(&client, id).await;
    let event = tokio::time::timeout(
        Duration::from_secs(60),
        client
            .agent
            .get_oom_event(ctx(), &agent::GetOOMEventRequest::new()),
    )
    .await
    .expect("an OOM event within a minute")
    .unwrap();
    assert_eq!(event.container_id, id);
    remove_container(&client, id).await;
}
