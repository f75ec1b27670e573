//! The agent as PID 1 in a real guest: QEMU (TCG) boots the project's guest kernel with the
//! initramfs from guest/build-initramfs.sh; vhost-device-vsock gives the guest a vsock device
//! behind the same hybrid Unix-socket protocol `veil` serves. A host client then loads the
//! policy, runs a busybox container from a virtio-blk disk, and destroys the sandbox, which
//! powers the VM off.
//!
//! Needs: target/guest-kernel/bzImage (guest/build-kernel.sh), target/guest-initramfs/
//! initramfs.cpio.gz (guest/build-initramfs.sh), qemu-system-x86_64, vhost-device-vsock,
//! root, busybox-static and e2fsprogs. Skips, saying which is missing, otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let home_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home_bin)
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// Kills a child process on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_as_init_runs_a_container_in_a_qemu_guest() {
    require_host!();
    let kernel = repo_root().join("target/guest-kernel/bzImage");
    let initramfs = repo_root().join("target/guest-initramfs/initramfs.cpio.gz");
    for (path, how) in [
        (&kernel, "guest/build-kernel.sh"),
        (&initramfs, "guest/build-initramfs.sh"),
    ] {
        if !path.exists() {
            veil_tests::skip_or_fail(&format!("{} missing (run {how})", path.display()));
            return;
        }
    }
    let Some(qemu) = find_in_path("qemu-system-x86_64") else {
        veil_tests::skip_or_fail("qemu-system-x86_64 missing (apt-get install qemu-system-x86)");
        return;
    };
    let Some(vhost) = find_in_path("vhost-device-vsock") else {
        veil_tests::skip_or_fail("vhost-device-vsock missing (cargo install vhost-device-vsock)");
        return;
    };

    // With veritysetup the disk also carries a dm-verity hash tree after the ext4 data, so
    // the same disk serves a plain layer and a verified one.
    if !Path::new("/usr/sbin/veritysetup").exists() {
        veil_tests::skip_or_fail("veritysetup missing (apt-get install cryptsetup-bin)");
        return;
    }
    // The disk carries a dm-verity hash tree after the ext4 data, so the same disk serves a
    // plain layer and a verified one.
    let (image, root_hash) = BusyboxImage::with_verity();
    let dir = tempfile::tempdir().unwrap();
    let vhost_socket = dir.path().join("vhost.sock");
    let uds = dir.path().join("vsock.uds");
    let _vhost = Killed(
        Command::new(&vhost)
            .args(["--guest-cid", "3", "--socket"])
            .arg(&vhost_socket)
            .arg("--uds-path")
            .arg(&uds)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..500 {
        if vhost_socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let host_data = sha256_hex(ALLOW_ALL);
    let console = dir.path().join("console.log");
    let mut qemu = Killed(
        Command::new(&qemu)
            .args([
                "-M",
                "microvm,acpi=off,memory-backend=mem",
                "-accel",
                "tcg",
                "-cpu",
                "max",
            ])
            .args([
                "-m",
                "256M",
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
            ])
            .args(["-nographic", "-no-reboot", "-nodefaults", "-serial"])
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 VEIL_ATTESTATION=insecure \
                 VEIL_INSECURE_HOST_DATA={host_data} RUST_LOG=info"
            ))
            .arg("-chardev")
            .arg(format!("socket,id=c0,path={}", vhost_socket.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=c0"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d0,format=raw,readonly=on",
                image.device
            ))
            .args(["-device", "virtio-blk-device,drive=d0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Wait (bounded) for the agent in the guest to accept a connection.
    let mut client = None;
    for _ in 0..600 {
        if let Ok(c) = AgentClient::connect_hybrid_vsock(&uds, 1024).await {
            let details = c
                .agent
                .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
                .await;
            // No policy yet: the agent answers, refusing.
            if details.is_err() {
                client = Some(c);
                break;
            }
        }
        if qemu.0.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();
    let client =
        client.unwrap_or_else(|| panic!("agent never answered; console:\n{}", console_text()));

    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    let details = client
        .agent
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .unwrap();
    assert!(
        details.agent_details.init_daemon,
        "agent is not PID 1 in the guest"
    );

    let id = "inguest";
    let create = create_request(
        id,
        "/dev/vda",
        &["sh", "-c", "echo hi from $(hostname) as pid $$"],
    );
    client.agent.create_container(ctx(), &create).await.unwrap();
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
    assert_eq!(
        read_all(&client, id, id, false).await,
        "hi from veil-test as pid 1\n"
    );
    assert_eq!(wait_status(&client, id, id).await, 0);

    // dm-verity needs the disk exclusively: the plain mount must go first.
    remove_container(&client, id).await;

    // The guest kernel has device-mapper: the layer is mounted through dm-verity.
    check_verity_layer(&client, "/dev/vda", &root_hash, || {
        format!("console:\n{}", console_text())
    })
    .await;

    client
        .agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    // Power-off makes QEMU exit (bounded wait).
    let mut exited = false;
    for _ in 0..600 {
        if qemu.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(exited, "VM did not power off; console:\n{}", console_text());
    assert!(
        console_text().contains("powering off"),
        "{}",
        console_text()
    );
}
