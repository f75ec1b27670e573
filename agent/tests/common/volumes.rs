//! The pod-volume scenario the host-process and in-VM tests share: what Kubernetes volumes
//! need from the agent without a shared file system.

#![allow(dead_code)]

use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;
use veil_agent::testing::{
    bind_mount, copy_file_request, create_request, ephemeral_volume, process,
};

use super::{ctx, read_all, read_until, start_container};

/// A ConfigMap-like file copied into `cm_dir` with CopyFile is visible in container `writer`
/// through a read-only bind mount, and an update of it reaches the running container; an
/// emptyDir (guest tmpfs) written by `writer` is read by a second container, `reader`. Both
/// containers run from the busybox image on `device`; `writer` keeps running and `reader`
/// has exited when this returns, for the caller to look at further and remove.
pub async fn copied_file_and_shared_empty_dir(client: &AgentClient, device: &str, cm_dir: &str) {
    let key = format!("{cm_dir}/key");
    client
        .agent
        .copy_file(ctx(), &copy_file_request(&key, b"one\n"))
        .await
        .unwrap();
    let (volume, cache) = ephemeral_volume("cache");
    let mut writer = create_request(
        "writer",
        device,
        &[
            "sh",
            "-c",
            "echo shared > /cache/x; cat /etc/cm/key; sleep 600",
        ],
    );
    writer.storages.push(volume.clone());
    let spec = writer.OCI.as_mut().unwrap();
    spec.Mounts.push(bind_mount(cm_dir, "/etc/cm", true));
    spec.Mounts.push(bind_mount(&cache, "/cache", false));
    start_container(client, &writer).await;
    assert_eq!(
        read_until(client, "writer", "writer", "one\n").await,
        "one\n"
    );

    let mut reader = create_request("reader", device, &["cat", "/cache/x"]);
    reader.storages.push(volume);
    reader
        .OCI
        .as_mut()
        .unwrap()
        .Mounts
        .push(bind_mount(&cache, "/cache", false));
    start_container(client, &reader).await;
    assert_eq!(
        read_all(client, "reader", "reader", false).await,
        "shared\n"
    );

    client
        .agent
        .copy_file(ctx(), &copy_file_request(&key, b"two\n"))
        .await
        .unwrap();
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = "writer".into();
    exec.exec_id = "cat".into();
    exec.process = protobuf::MessageField::some(process(&["cat", "/etc/cm/key"]));
    client.agent.exec_process(ctx(), &exec).await.unwrap();
    assert_eq!(read_all(client, "writer", "cat", false).await, "two\n");
}
