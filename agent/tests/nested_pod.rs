//! The pod guest for real: inside the nested harness's L1 (a hardware-style KVM, see
//! `veil_tests::nested`), the VMM library boots the project's kernel and initramfs with
//! `veil-agent` as PID 1, and this test drives the agent through veil's own hybrid vsock
//! socket, the way the shim does: layers swapped into a placeholder drive after boot,
//! containers, exec, the policy bound to HOST_DATA, dm-verity, and DestroySandbox ending the
//! VM cleanly.

mod common;

#[path = "common/pod_vm.rs"]
mod pod_vm;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use pod_vm::PodVm;
use veil_agent::protocols::agent;
use veil_tests::nested::run_test_in_l1;

/// Allows everything but exec'ing `id`: the request the test shows being denied.
fn pod_policy() -> String {
    ALLOW_ALL.replace(
        "default ExecProcessRequest := true\n",
        "default ExecProcessRequest := false\n\
         ExecProcessRequest {\n    input.process.Args[0] != \"id\"\n}\n",
    )
}

fn exec_request(id: &str, exec_id: &str, args: &[&str]) -> agent::ExecProcessRequest {
    let mut r = agent::ExecProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec_id.into();
    r.process = protobuf::MessageField::some(process(args));
    r
}

#[test]
fn pod_guest_under_veil_runs_containers_bound_to_its_policy() {
    if !run_test_in_l1(
        "pod_guest_under_veil_runs_containers_bound_to_its_policy",
        Duration::from_secs(2400),
        &[],
    ) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(pod_scenario());
}

async fn pod_scenario() {
    let policy = pod_policy();
    let host_data = sha256_hex(&policy);
    let (image, root_hash) = BusyboxImage::with_verity();
    // Sockets cannot live on 9p: /run is a tmpfs inside L1.
    let dir = tempfile::tempdir_in("/run").unwrap();
    let mut vm = PodVm::start(dir.path(), &host_data);
    let client = vm.connect(Duration::from_secs(900)).await;
    println!(
        "pod VM: spawn -> agent's first answer {:.1?}",
        vm.spawned.elapsed()
    );

    // A policy whose digest is not HOST_DATA is refused; the one that matches is taken.
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    let (code, msg) = status_of(client.agent.set_policy(ctx(), &set).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    set.policy = policy.clone();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    let details = client
        .agent
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .unwrap();
    assert!(details.agent_details.init_daemon, "the agent is not PID 1");

    // The layer arrives after boot, as the shim adds containers.
    vm.disks[0].swap(&image.image).expect("swap the layer in");

    let create = create_request("hello", "/dev/vda", &["echo", "hello"]);
    let before_create = Instant::now();
    start_container(&client, &create).await;
    assert_eq!(read_all(&client, "hello", "hello", false).await, "hello\n");
    println!(
        "pod VM: create+start -> container output {:.1?}; spawn -> container output {:.1?}",
        before_create.elapsed(),
        vm.spawned.elapsed()
    );
    assert_eq!(wait_status(&client, "hello", "hello").await, 0);
    remove_container(&client, "hello").await;

    start_container(
        &client,
        &create_request("seven", "/dev/vda", &["sh", "-c", "exit 7"]),
    )
    .await;
    assert_eq!(wait_status(&client, "seven", "seven").await, 7);
    remove_container(&client, "seven").await;

    // A second process in a running container; the policy's one denial.
    start_container(
        &client,
        &create_request("long", "/dev/vda", &["sleep", "600"]),
    )
    .await;
    let exec = exec_request(
        "long",
        "second",
        &["sh", "-c", "echo second process in $(hostname)"],
    );
    client.agent.exec_process(ctx(), &exec).await.unwrap();
    assert_eq!(
        read_all(&client, "long", "second", false).await,
        "second process in veil-test\n"
    );
    assert_eq!(wait_status(&client, "long", "second").await, 0);
    let (code, msg) = status_of(
        client
            .agent
            .exec_process(ctx(), &exec_request("long", "denied", &["id"]))
            .await,
    );
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
    assert!(msg.contains("ExecProcessRequest"), "{msg}");
    let mut kill = agent::SignalProcessRequest::new();
    kill.container_id = "long".into();
    kill.exec_id = "long".into();
    kill.signal = libc::SIGKILL as u32;
    client.agent.signal_process(ctx(), &kill).await.unwrap();
    assert_eq!(
        wait_status(&client, "long", "long").await,
        128 + libc::SIGKILL
    );
    remove_container(&client, "long").await;

    // The same layer through dm-verity; a wrong root hash is refused.
    check_verity_layer(&client, "/dev/vda", &root_hash, || {
        format!("console:\n{}", vm.console.text())
    })
    .await;

    // DestroySandbox powers the guest off: the VM ends cleanly and leaves nothing behind.
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
    assert!(!vm.uds.exists(), "the vsock socket outlived the VM");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "files left in the VM's directory: {left:?}"
    );

    vm_gone_under_a_waiting_client(&policy, &host_data, &image.image).await;
}

/// The VM going away (the VMM stopped, or the guest's PID 1 dying, which panics the kernel)
/// while a client waits on a process: the wait ends with an error, not a hang.
async fn vm_gone_under_a_waiting_client(policy: &str, host_data: &str, layer: &Path) {
    let dir = tempfile::tempdir_in("/run").unwrap();
    let mut vm = PodVm::start(dir.path(), host_data);
    let client = vm.connect(Duration::from_secs(900)).await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = policy.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    vm.disks[0].swap(layer).expect("swap the layer in");
    start_container(
        &client,
        &create_request("waited", "/dev/vda", &["sleep", "600"]),
    )
    .await;
    let waiter = {
        let agent = client.agent.clone();
        tokio::spawn(async move {
            let mut wait = agent::WaitProcessRequest::new();
            wait.container_id = "waited".into();
            wait.exec_id = "waited".into();
            agent.wait_process(ctx(), &wait).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the wait returned while the process ran"
    );
    vm.stop.stop();
    let outcome = vm.wait(Duration::from_secs(60));
    assert_eq!(outcome.exit, veil_vmm::VmExit::StopRequested);
    let waited = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the client's wait hung after the VM was gone")
        .unwrap();
    let err = waited.expect_err("a wait answered by a VM that is gone");
    println!("client's error once the VM was gone: {err}");
    assert!(!vm.uds.exists(), "the vsock socket outlived the VM");
}
