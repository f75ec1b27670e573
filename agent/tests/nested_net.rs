//! The pod guest's network for real, library level (no shim, no containerd): inside the nested
//! harness's L1, the test makes two network namespaces joined by a veth (198.18.0.0/15, the
//! range reserved for network tests; L1 has no way out anyway) and a tap tied to the veth in
//! one of them; the VMM library runs the project's kernel and initramfs with a virtio-net
//! device on that tap; the test tells the agent the interface and its default route
//! (UpdateInterface / UpdateRoutes) itself, starts an echo container, and a process in the
//! other namespace sends it 1 MiB that must come back byte for byte; both sides ping each
//! other. The namespaces (and the veth and tap in them) go when the test ends, also on failure.

mod common;

#[path = "common/pod_vm.rs"]
mod pod_vm;

use std::path::Path;
use std::time::Duration;

use common::*;
use pod_vm::PodVm;
use veil_agent::client::AgentClient;
use veil_agent::protocols::{agent, oci};
use veil_agent::testing::{interface_request, routes_request};
use veil_tests::nested::run_test_in_l1;
use veil_tests::netns::{connect_retrying, echo_through, pattern, TapNetwork};

const NAMESPACES: &str = "veil-agent-net";
const TAP: &str = "vtap0";
const GUEST_MAC: &str = "02:00:c6:12:00:02";
const ECHO_PORT: u16 = 7000;

#[test]
fn guest_container_exchanges_tcp_and_ping_with_a_peer_namespace() {
    if !run_test_in_l1(
        "guest_container_exchanges_tcp_and_ping_with_a_peer_namespace",
        Duration::from_secs(1200),
        &[],
    ) {
        return;
    }
    let net = TapNetwork::create(NAMESPACES, TAP).expect("the test's namespaces");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario(&net));
    let paths = [net.vm.path(), net.peer.path()];
    drop(net);
    for path in paths {
        assert!(!path.exists(), "{} outlived the test", path.display());
    }
}

async fn start_container(client: &AgentClient, id: &str, args: &[&str]) {
    let create = veil_agent::testing::create_request(id, "/dev/vda", args);
    client
        .agent
        .create_container(ctx(), &create)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
}

/// Runs `args` as a second process of container `id` with CAP_NET_RAW (ping's raw socket);
/// returns its exit status and output.
async fn exec_with_net_raw(client: &AgentClient, id: &str, args: &[&str]) -> (i32, String) {
    let mut caps = oci::LinuxCapabilities::new();
    let net_raw = vec!["CAP_NET_RAW".to_string()];
    caps.Bounding = net_raw.clone();
    caps.Effective = net_raw.clone();
    caps.Permitted = net_raw;
    let mut process = veil_agent::testing::process(args);
    process.Capabilities = protobuf::MessageField::some(caps);
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = id.into();
    exec.exec_id = "ping".into();
    exec.process = protobuf::MessageField::some(process);
    client.agent.exec_process(ctx(), &exec).await.unwrap();
    let out = read_all(client, id, "ping", false).await;
    (wait_status(client, id, "ping").await, out)
}

async fn scenario(net: &TapNetwork) {
    let host_data = sha256_hex(ALLOW_ALL);
    let image = BusyboxImage::new();
    // Sockets cannot live on 9p: /run is a tmpfs inside L1.
    let dir = tempfile::tempdir_in("/run").unwrap();
    let nic = format!("tap={TAP},mac={GUEST_MAC},mtu={}", TapNetwork::MTU)
        .parse()
        .unwrap();
    let mut vm = PodVm::with_net(dir.path(), &host_data, nic, &net.vm);
    let client = vm.connect(Duration::from_secs(900)).await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();

    // The host's view of the pod's interface, as a shim would pass it on: found by its MAC,
    // renamed, addressed, and a default route via the peer.
    let configured = client
        .agent
        .update_interface(
            ctx(),
            &interface_request(
                "eth1",
                GUEST_MAC,
                TapNetwork::GUEST_IP,
                TapNetwork::PREFIX,
                TapNetwork::MTU,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("UpdateInterface: {e:?}\n{}", vm.console.text()));
    assert_eq!(configured.name, "eth1");
    client
        .agent
        .update_routes(
            ctx(),
            &routes_request(
                "eth1",
                TapNetwork::GUEST_IP,
                TapNetwork::PREFIX,
                TapNetwork::PEER_IP,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("UpdateRoutes: {e:?}"));
    let routes = client
        .agent
        .list_routes(ctx(), &agent::ListRoutesRequest::new())
        .await
        .unwrap();
    assert!(
        routes
            .Routes
            .iter()
            .any(|r| r.device == "eth1" && r.gateway == TapNetwork::PEER_IP.to_string()),
        "no default route via the peer: {routes:?}"
    );

    // The container shares the guest's network namespace (the spec names none).
    vm.disks[0].swap(&image.image).expect("swap the layer in");
    let port = ECHO_PORT.to_string();
    start_container(
        &client,
        "echo",
        &["busybox", "nc", "-ll", "-p", &port, "-e", "cat"],
    )
    .await;

    // 1 MiB from the peer namespace to the container and back, byte for byte.
    let echoed = net
        .peer
        .run(|| {
            let stream =
                connect_retrying(TapNetwork::GUEST_IP, ECHO_PORT, Duration::from_secs(120))?;
            echo_through(stream, pattern(1 << 20))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("echo through the guest: {e}\n{}", vm.console.text()));
    assert_eq!(echoed.len(), 1 << 20);
    assert!(echoed == pattern(1 << 20), "echoed bytes differ");

    // Ping both ways.
    let peer_ip = TapNetwork::PEER_IP.to_string();
    let (code, out) = exec_with_net_raw(
        &client,
        "echo",
        &["busybox", "ping", "-c", "3", "-W", "5", &peer_ip],
    )
    .await;
    assert_eq!(code, 0, "container -> peer ping: {out}");
    assert!(out.contains("3 packets received"), "{out}");
    let out = net
        .peer
        .run(|| {
            std::process::Command::new("busybox")
                .args(["ping", "-c", "3", "-W", "5"])
                .arg(TapNetwork::GUEST_IP.to_string())
                .output()
                .unwrap()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "peer -> guest ping: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // DestroySandbox ends the VM cleanly, leaving nothing in its directory.
    client
        .agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    let outcome = vm.wait(Duration::from_secs(300));
    assert!(
        outcome.exit.is_clean(),
        "{}; console:\n{}",
        outcome.exit,
        vm.console.text()
    );
    assert!(
        !Path::new(&vm.uds).exists(),
        "the vsock socket outlived the VM"
    );
}
