//! Bad requests get errors, never a panic or a half-created container: unknown and duplicate
//! ids, path traversal in the root or mounts, oversized stdin writes, malformed protobuf.

mod common;

use common::*;
use veil_agent::protocols::agent;

async fn ready_agent() -> (AgentProcess, veil_agent::client::AgentClient) {
    let mut agent = AgentProcess::start(&sha256_hex(ALLOW_ALL));
    let client = agent.connect().await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    (agent, client)
}

/// After a refused create: no container, no mounts, no cgroup, no state directory.
fn assert_nothing_left(agent: &AgentProcess, id: &str) {
    assert!(
        mounts_under(&agent.state_dir).is_empty(),
        "mounts left behind"
    );
    assert!(
        !agent.state_dir.join(id).exists(),
        "state left behind for {id}"
    );
    if let Some(root) = veil_agent::container::detect_cgroup_root() {
        assert!(
            !root.join("veil").join(id).exists(),
            "cgroup left behind for {id}"
        );
    }
}

#[tokio::test]
async fn unknown_container_ids_are_not_found() {
    let (_agent, client) = ready_agent().await;
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "nosuch".into();
    let (code, msg) = status_of(client.agent.start_container(ctx(), &start).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    assert!(msg.contains("nosuch"), "{msg}");
    let mut wait = agent::WaitProcessRequest::new();
    wait.container_id = "nosuch".into();
    let (code, _) = status_of(client.agent.wait_process(ctx(), &wait).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
}

#[tokio::test]
async fn ids_that_could_traverse_are_refused() {
    let (agent, client) = ready_agent().await;
    for id in ["../escape", "a/b", ".."] {
        let req = create_request(id, "/dev/loop0", &["true"]);
        let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{id}: {msg}");
        assert!(msg.contains("invalid container id"), "{msg}");
    }
    assert!(!agent.dir.path().join("escape").exists());
}

#[tokio::test]
async fn malformed_protobuf_is_an_error_and_the_agent_keeps_serving() {
    let (mut agent, _client) = ready_agent().await;
    let stream = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    let raw = ttrpc::r#async::Client::new(stream.into());
    let mut req = ttrpc::Request::new();
    req.service = "grpc.AgentService".into();
    req.method = "CreateContainer".into();
    // A length-delimited field whose length runs past the end of the message.
    req.payload = vec![0x0a, 0xff, 0xff, 0x03, b'x'];
    let result = raw.request(req).await;
    assert!(result.is_err(), "malformed payload accepted: {result:?}");
    assert!(agent.is_running());
    let client = agent.connect().await;
    client
        .agent
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_in_root_or_mounts_leaves_nothing_behind() {
    require_host!();
    let image = BusyboxImage::new();
    let (agent, client) = ready_agent().await;

    let mut req = create_request("badroot", &image.device, &["true"]);
    req.OCI.as_mut().unwrap().Root.as_mut().unwrap().Path = "/run/../../etc".into();
    let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("root path"), "{msg}");
    assert_nothing_left(&agent, "badroot");

    // A bad mount is found after the root is mounted: everything must be rolled back.
    let mut req = create_request("badmount", &image.device, &["true"]);
    req.OCI.as_mut().unwrap().Mounts[0].destination = "/proc/../../../etc".into();
    let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("mount destination"), "{msg}");
    assert_nothing_left(&agent, "badmount");

    // A storage source outside /dev.
    let mut req = create_request("badsource", &image.device, &["true"]);
    req.storages[0].source = "/dev/../etc/passwd".into();
    let (code, _) = status_of(client.agent.create_container(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_nothing_left(&agent, "badsource");

    // A program that is not in the image.
    let req = create_request("noprog", &image.device, &["/bin/does-not-exist"]);
    let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert_nothing_left(&agent, "noprog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_and_huge_stdin_writes_are_refused() {
    require_host!();
    let image = BusyboxImage::new();
    let (agent, client) = ready_agent().await;
    let id = "dup";
    let req = create_request(id, &image.device, &["cat"]);
    client.agent.create_container(ctx(), &req).await.unwrap();
    let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);
    assert!(msg.contains(id), "{msg}");

    let mut write = agent::WriteStreamRequest::new();
    write.container_id = id.into();
    write.exec_id = id.into();
    write.data = vec![b'x'; 2 << 20];
    let (code, msg) = status_of(client.agent.write_stdin(ctx(), &write).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("exceeds"), "{msg}");

    // Exec into a container that has not started is refused, not half-done.
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = id.into();
    exec.exec_id = "early".into();
    exec.process = protobuf::MessageField::some(process(&["true"]));
    let (code, msg) = status_of(client.agent.exec_process(ctx(), &exec).await);
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");

    // The never-started container is removed cleanly.
    remove_container(&client, id).await;
    assert_nothing_left(&agent, id);
}
