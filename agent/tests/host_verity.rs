//! dm-verity layers: a root hash that does not match the layer's hash tree is refused before
//! anything is mounted; a matching one is mounted through dm-verity (or, on a kernel without
//! device-mapper, refused as unsupported rather than mounted unverified). Needs root,
//! e2fsprogs, busybox-static and cryptsetup-bin (skips otherwise).

mod common;

use common::*;
use veil_agent::protocols::agent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_mounted_only_with_the_named_root_hash() {
    require_host!();
    if !std::path::Path::new("/usr/sbin/veritysetup").exists() {
        veil_tests::skip_or_fail("veritysetup missing (apt-get install cryptsetup-bin)");
        return;
    }
    let (image, root_hash) = BusyboxImage::with_verity();
    let mut agent = AgentProcess::start(&sha256_hex(ALLOW_ALL));
    let client = agent.connect().await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();

    // One flipped bit in the root hash: refused, and nothing is mounted or left behind.
    let wrong = wrong_root_hash(&root_hash);
    let mut req = create_request("badhash", &image.device, &["true"]);
    req.storages[0].driver_options = verity_options(&wrong);
    let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    assert!(msg.contains(&root_hash) && msg.contains(&wrong), "{msg}");
    assert!(mounts_under(&agent.state_dir).is_empty());
    assert!(!agent.state_dir.join("badhash").exists());
    assert!(!cgroup_dir("badhash").exists());

    // Root hashes that are not 64 ASCII hex digits (a 64-byte string with a two-byte
    // character, odd lengths) are refused with a message; the agent (PID 1 in a guest) lives.
    for bad in [
        format!("é{}", &root_hash[2..]),
        root_hash[1..].to_string(),
        format!("{root_hash}0"),
    ] {
        let mut req = create_request("oddhash", &image.device, &["true"]);
        req.storages[0].driver_options = verity_options(&bad);
        let (code, msg) = status_of(client.agent.create_container(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{bad:?}: {msg}");
        assert!(msg.contains("root hash must be 64 hex digits"), "{msg}");
        assert!(agent.is_running());
    }
    assert!(!agent.state_dir.join("oddhash").exists());

    // The right root hash.
    let id = "goodhash";
    let mut req = create_request(id, &image.device, &["echo", "verified"]);
    req.storages[0].driver_options = verity_options(&root_hash);
    let result = client.agent.create_container(ctx(), &req).await;
    if !std::path::Path::new("/dev/mapper/control").exists() {
        let (code, msg) = status_of(result);
        assert_eq!(code, ttrpc::Code::UNIMPLEMENTED, "{msg}");
        assert!(msg.contains("device-mapper"), "{msg}");
        assert!(mounts_under(&agent.state_dir).is_empty());
        assert!(!cgroup_dir(id).exists());
        eprintln!("no device-mapper on this kernel: checked the refusal, not the dm-verity mount");
        return;
    }
    result.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
    assert_eq!(read_all(&client, id, id, false).await, "verified\n");
    remove_container(&client, id).await;
    assert!(mounts_under(&agent.state_dir).is_empty());
    assert!(!std::path::Path::new("/dev/mapper/veil-goodhash").exists());
    assert!(agent.is_running());
}
