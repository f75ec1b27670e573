//! Pod networking for real, inside the nested harness's L1: containerd's CRI runs a pod whose
//! network namespace a stand-in CNI plugin (a shell script written by the test) wires with a
//! veth to a peer namespace the test made, addresses from 198.18.0.0/15 (the range reserved
//! for network tests; L1 has no way out anyway). The shim ties a tap to the pod's veth (tc
//! redirects), the VM gets a virtio-net device on it, the agent configures the guest NIC from
//! UpdateInterface/UpdateRoutes, and then: a container serves HTTP to a client in the peer
//! namespace, an echo container returns 1 MiB byte for byte, and both sides ping each other.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cri::*;
use common::*;
use k8s_cri::v1::*;
use veil_tests::nested::run_test_in_l1;
use veil_tests::netns::{connect_retrying, echo_through, measure_echo, pattern, Netns};

const PEER_NETNS: &str = "veil-peer";
const POD_IP: &str = "198.18.0.2";
const PEER_IP: &str = "198.18.0.1";

/// A CNI plugin standing in for a real one: for the pod's interface a veth from the pod's
/// namespace to the peer namespace, addresses and a default route via the peer; installed as
/// `loopback` too (containerd always runs one for `lo`), where it brings `lo` up.
fn cni_plugin() -> String {
    format!(
        r#"#!/bin/sh
# Test stand-in for a CNI plugin (see shim/tests/nested_net.rs).
set -e
conf=$(cat)
ver=$(printf '%s' "$conf" | sed -n 's/.*"cniVersion" *: *"\([^"]*\)".*/\1/p')
ns=$(basename "$CNI_NETNS")
case "$CNI_COMMAND" in
ADD)
    if [ "$CNI_IFNAME" = lo ]; then
        ip -n "$ns" link set lo up
        printf '{{"cniVersion":"%s","interfaces":[{{"name":"lo","sandbox":"%s"}}],"ips":[{{"version":"4","address":"127.0.0.1/8","interface":0}}],"dns":{{}}}}' "$ver" "$CNI_NETNS"
        exit 0
    fi
    ip link add "$CNI_IFNAME" netns "$ns" type veth peer name peer0 netns {PEER_NETNS}
    ip -n "$ns" addr add {POD_IP}/24 dev "$CNI_IFNAME"
    ip -n "$ns" link set "$CNI_IFNAME" up
    ip -n "$ns" route add default via {PEER_IP}
    ip -n {PEER_NETNS} addr add {PEER_IP}/24 dev peer0
    ip -n {PEER_NETNS} link set peer0 up
    printf '{{"cniVersion":"%s","interfaces":[{{"name":"%s","sandbox":"%s"}}],"ips":[{{"version":"4","address":"{POD_IP}/24","gateway":"{PEER_IP}","interface":0}}],"dns":{{}}}}' "$ver" "$CNI_IFNAME" "$CNI_NETNS"
    ;;
DEL)
    [ "$CNI_IFNAME" = lo ] || ip -n {PEER_NETNS} link del peer0 2>/dev/null || true
    ;;
VERSION)
    printf '{{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}}'
    ;;
esac
"#
    )
}

fn sh(script: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", describe(&out));
}

/// Connects from the peer namespace, retrying while the server comes up.
fn connect_from_peer(port: u16) -> TcpStream {
    connect_retrying(POD_IP.parse().unwrap(), port, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("connect {POD_IP}:{port}: {e}"))
}

async fn exec(client: &mut Client, id: &str, cmd: &str) -> (i32, String) {
    let out = client
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout: 0,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.exit_code, text)
}

#[test]
fn cri_pod_network_reaches_a_peer_namespace() {
    // On the host (L1 sees the workspace read-only): the `veil` the shim runs jailed for each
    // VM sandbox (the default), found next to the shim.
    veil_binary();
    if !run_test_in_l1(
        "cri_pod_network_reaches_a_peer_namespace",
        Duration::from_secs(1800),
        &[],
    ) {
        return;
    }
    require_host!();
    // CNI's result cache lives in /var/lib/cni, and L1's root is the host's, read-only: give
    // this throwaway L1 a writable /var/lib (nothing else running here reads it).
    sh("mount -t tmpfs -o mode=0755 tmpfs /var/lib");
    let peer = Netns::create(PEER_NETNS).unwrap();
    let kernel = veil_tests::guest_kernel("vmlinux");
    // This tree's own initramfs (its agent serves the network calls); target/guest-kernel may
    // be a symlink into another tree, so it cannot be reached through the kernel's path.
    let initrd =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-initramfs/initramfs.cpio.gz");
    assert!(
        initrd.is_file(),
        "{} is missing: run guest/build-initramfs.sh",
        initrd.display()
    );
    let c = Containerd::start_with_shim_config(
        "sandbox = \"vm\"",
        &format!(
            "[vm]\nkernel = \"{}\"\ninitrd = \"{}\"\nvcpus = 2\nmemory_mib = 512\n",
            kernel.display(),
            initrd.display()
        ),
    );
    let cni = c.dir.path().join("cni-conf");
    for name in ["veil-test-cni", "loopback"] {
        let plugin = cni.join(name);
        std::fs::write(&plugin, cni_plugin()).unwrap();
        std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    std::fs::write(
        cni.join("10-veil-test.conflist"),
        r#"{"cniVersion":"0.4.0","name":"veil-test","plugins":[{"type":"veil-test-cni"}]}"#,
    )
    .unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(pod_scenario(&c, &peer));
}

async fn pod_scenario(c: &Containerd, peer: &Netns) {
    let mut client = connect(&c.address).await;
    let logs = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut pod = pod_config("netpod", &logs);
    // A pod network namespace (CRI asks the CNI plugin to wire it), not the node's.
    pod.linux = None;
    // containerd loads the CNI config from its directory asynchronously: wait until CRI
    // reports the network ready.
    let started = Instant::now();
    loop {
        let status = client
            .status(StatusRequest { verbose: false })
            .await
            .expect("CRI Status")
            .into_inner();
        let ready = status.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "NetworkReady" && c.status)
        });
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "CRI never loaded the test's CNI config\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pod_id = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: "veil".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_text()))
        .into_inner()
        .pod_sandbox_id;

    let web = start_container(
        &mut client,
        &pod_id,
        &pod,
        "web",
        IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo hello from a veil pod > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www",
        ],
    )
    .await;
    let echo = start_container(
        &mut client,
        &pod_id,
        &pod,
        "echo",
        IMAGE,
        &["nc", "-ll", "-p", "7000", "-e", "cat"],
    )
    .await;

    // The guest NIC got the CNI interface's address and routes from the agent.
    let (code, addr) = exec(&mut client, &web, "ip addr show eth0; ip route").await;
    assert_eq!(code, 0, "{addr}");
    assert!(addr.contains(&format!("inet {POD_IP}/24")), "{addr}");
    assert!(addr.contains(&format!("default via {PEER_IP}")), "{addr}");

    // HTTP served by a container, read by a client in the peer namespace.
    let page = peer
        .run(|| {
            let mut s = connect_from_peer(8080);
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            let mut page = String::new();
            s.read_to_string(&mut page).unwrap();
            page
        })
        .unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.ends_with("hello from a veil pod\n"), "{page}");

    // 1 MiB to the echo container and back, byte for byte.
    let echoed = peer
        .run(|| echo_through(connect_from_peer(7000), pattern(1 << 20)))
        .unwrap()
        .expect("echo through the pod");
    assert_eq!(echoed.len(), 1 << 20);
    assert!(echoed == pattern(1 << 20), "echoed bytes differ");

    // Figures for the record (TCG-emulated L1: only ratios against another VMM in the same
    // L1 would mean anything; nothing is asserted on them).
    let figures = peer
        .run(|| measure_echo(connect_from_peer(7000), 200, 16 << 20))
        .unwrap()
        .expect("timed echo through the pod");
    let mut rtts = figures.round_trip_us.clone();
    rtts.sort_by(f64::total_cmp);
    println!(
        "pod network in L1: 16 MiB echoed through the pod at {:.1} MiB/s each way; \
         1-byte request/response median {:.0} us",
        figures.stream_mib_per_s,
        rtts[rtts.len() / 2]
    );

    // Ping both ways.
    let (code, out) = exec(&mut client, &web, &format!("ping -c 3 -W 5 {PEER_IP}")).await;
    assert_eq!(code, 0, "guest -> peer ping: {out}");
    let out = peer
        .run(|| {
            std::process::Command::new("busybox")
                .args(["ping", "-c", "3", "-W", "5", POD_IP])
                .output()
                .unwrap()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "peer -> guest ping: {}",
        describe(&out)
    );
    let _ = echo;

    remove_pod(&mut client, &pod_id).await;
    c.assert_clean(&[&pod_id]);
    let namespaces: Vec<String> = Path::new("/run/netns")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        namespaces,
        vec![PEER_NETNS.to_string()],
        "the pod's namespace outlived the pod"
    );
}
