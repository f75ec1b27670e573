//! The OCI spec honoured in the real pod guest (libcontainer inside the project's image, under
//! the nested harness's L1), all in one boot to keep CI time down: an image of three layers
//! (a lower file shadowed, one deleted by a whiteout) shows the merged view; a seccomp profile
//! denying mkdir makes mkdir fail with EPERM; a masked path reads empty and a read-only path
//! refuses writes; a sysctl is set; a prestart hook runs; a ConfigMap-like file copied in with
//! CopyFile is visible and its update reaches the running container; an emptyDir is shared by
//! two containers of the pod.

mod common;

#[path = "common/pod_vm.rs"]
mod pod_vm;
#[path = "common/volumes.rs"]
mod volumes;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pod_vm::PodVm;
use veil_agent::protocols::{agent, oci};
use veil_tests::nested::run_test_in_l1;
use volumes::copied_file_and_shared_empty_dir;

/// Packs `tree` into an ext4 image with 4 KiB blocks.
fn ext4_image(tree: &Path, image: &Path) -> PathBuf {
    let out = Command::new("/usr/sbin/mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(tree)
        .arg(image)
        .arg("8M")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image.to_path_buf()
}

/// The three layers: busybox with /data/{keep,shadow,gone}; one replacing /data/shadow; one
/// deleting /data/gone (an overlayfs whiteout: a 0/0 character device).
fn three_layers(dir: &Path) -> [PathBuf; 3] {
    let base = veil_tests::l2::busybox_root(&dir.join("base")).unwrap();
    std::fs::create_dir_all(base.join("data")).unwrap();
    for name in ["keep", "shadow", "gone"] {
        std::fs::write(base.join("data").join(name), format!("lower {name}\n")).unwrap();
    }
    let upper = dir.join("upper/data");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(upper.join("shadow"), "upper shadow\n").unwrap();
    let top = dir.join("top/data");
    std::fs::create_dir_all(&top).unwrap();
    let whiteout = std::ffi::CString::new(top.join("gone").to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid path; the test runs as root.
    assert_eq!(
        unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR, 0) },
        0,
        "mknod whiteout: {}",
        std::io::Error::last_os_error()
    );
    [
        ext4_image(&base, &dir.join("layer0.ext4")),
        ext4_image(&dir.join("upper"), &dir.join("layer1.ext4")),
        ext4_image(&dir.join("top"), &dir.join("layer2.ext4")),
    ]
}

fn storage(device: &str) -> agent::Storage {
    let mut s = agent::Storage::new();
    s.driver = "blk".into();
    s.source = device.into();
    s.fstype = "ext4".into();
    s
}

/// A seccomp profile allowing everything but mkdir/mkdirat (EPERM).
fn deny_mkdir() -> oci::LinuxSeccomp {
    let mut rule = oci::LinuxSyscall::new();
    rule.Names = vec!["mkdir".into(), "mkdirat".into()];
    rule.Action = "SCMP_ACT_ERRNO".into();
    rule.ErrnoRet = Some(oci::linux_syscall::ErrnoRet::Errnoret(libc::EPERM as u32));
    let mut s = oci::LinuxSeccomp::new();
    s.DefaultAction = "SCMP_ACT_ALLOW".into();
    s.Architectures = vec!["SCMP_ARCH_X86_64".into()];
    s.Syscalls = vec![rule];
    s
}

#[test]
fn pod_guest_honours_the_oci_spec_and_kubernetes_volumes() {
    if !run_test_in_l1(
        "pod_guest_honours_the_oci_spec_and_kubernetes_volumes",
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
        .block_on(scenario());
}

async fn scenario() {
    let images = tempfile::tempdir().unwrap();
    let layers = three_layers(images.path());
    let dir = tempfile::tempdir_in("/run").unwrap();
    let mut vm = PodVm::with_disks(dir.path(), &sha256_hex(ALLOW_ALL), 3);
    let client = vm.connect(Duration::from_secs(900)).await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    client
        .agent
        .create_sandbox(ctx(), &agent::CreateSandboxRequest::new())
        .await
        .unwrap();
    for (disk, layer) in vm.disks.iter().zip(&layers) {
        disk.swap(layer).expect("swap a layer in");
    }
    let capture = vm.console.clone();
    let console = || format!("console:\n{}", capture.text());

    // Three layers merged: the lower file kept, the shadowed one from above, the deleted gone.
    let mut merged = create_request(
        "layers",
        "/dev/vda",
        &["sh", "-c", "cat /data/keep /data/shadow; ls /data"],
    );
    merged.storages = ["/dev/vda", "/dev/vdb", "/dev/vdc"]
        .into_iter()
        .map(storage)
        .collect();
    start_container(&client, &merged).await;
    assert_eq!(
        read_all(&client, "layers", "layers", false).await,
        "lower keep\nupper shadow\nkeep\nshadow\n",
        "{}",
        console()
    );
    remove_container(&client, "layers").await;

    // Seccomp, a masked path, a read-only path, a sysctl and a prestart hook in one container.
    // The hook runs in the guest (outside the container) and writes into the container's root,
    // which the agent mounts at /run/veil-agent/<id>/root/rootfs.
    let mut hardened = create_request(
        "hardened",
        "/dev/vda",
        &[
            "sh",
            "-c",
            "mkdir /tmp/d; echo mkdir=$?; wc -c < /proc/version; \
             touch /etc/new; echo touch=$?; cat /proc/sys/kernel/shmmax; cat /hook-ran",
        ],
    );
    {
        let spec = hardened.OCI.as_mut().unwrap();
        let linux = spec.Linux.mut_or_insert_default();
        linux.Seccomp = protobuf::MessageField::some(deny_mkdir());
        linux.MaskedPaths = vec!["/proc/version".into()];
        linux.ReadonlyPaths = vec!["/etc".into()];
        linux
            .Sysctl
            .insert("kernel.shmmax".into(), "123456789".into());
        let root = "/run/veil-agent/hardened/root/rootfs";
        let mut hook = oci::Hook::new();
        hook.Path = format!("{root}/bin/busybox");
        hook.Args = vec![
            "busybox".into(),
            "sh".into(),
            "-c".into(),
            format!("echo prestart > {root}/hook-ran"),
        ];
        spec.Hooks.mut_or_insert_default().Prestart = vec![hook];
    }
    start_container(&client, &hardened).await;
    let out = read_all(&client, "hardened", "hardened", false).await;
    let err = read_all(&client, "hardened", "hardened", true).await;
    assert_eq!(
        out,
        "mkdir=1\n0\ntouch=1\n123456789\nprestart\n",
        "stderr: {err}\n{}",
        console()
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    remove_container(&client, "hardened").await;

    // Volumes: a copied ConfigMap-like file and an emptyDir shared by two containers.
    let cm_dir = "/run/kata-containers/shared/containers/pod-cm";
    copied_file_and_shared_empty_dir(&client, "/dev/vda", cm_dir).await;
    remove_container(&client, "reader").await;
    remove_container(&client, "writer").await;

    client
        .agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    let outcome = vm.wait(Duration::from_secs(300));
    assert!(outcome.exit.is_clean(), "{}; {}", outcome.exit, console());
}
