//! A CRI client the way kubelet talks to containerd: gRPC over containerd's Unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Containerd, IMAGE};

pub type Client = RuntimeServiceClient<Channel>;

/// Connects to containerd's CRI service on `socket`.
pub async fn connect(socket: &Path) -> Client {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connecting to containerd's CRI socket");
    RuntimeServiceClient::new(channel)
}

/// A host-network pod's sandbox config, logs under `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RunPodSandbox with the `handler` runtime; returns the sandbox id.
pub async fn run_pod(client: &mut Client, config: &PodSandboxConfig, handler: &str) -> String {
    client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

/// CreateContainer + StartContainer of a busybox container running `command`, its log at
/// `<log_dir>/<name>.log`; returns the container id.
pub async fn start_container(
    client: &mut Client,
    pod_id: &str,
    pod: &PodSandboxConfig,
    name: &str,
    image: &str,
    command: &[&str],
) -> String {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    };
    create_and_start(client, pod_id, pod, config).await
}

/// CreateContainer + StartContainer of `config` in pod `pod_id`; returns the container id.
pub async fn create_and_start(
    client: &mut Client,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

/// StopPodSandbox + RemovePodSandbox.
pub async fn remove_pod(client: &mut Client, pod_id: &str) {
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("StopPodSandbox");
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

/// The log file CRI writes a container's output to.
pub fn log_file(log_dir: &Path, name: &str) -> PathBuf {
    log_dir.join(format!("{name}.log"))
}

/// A host-network pod of two containers with runtime handler `veil`: one sandbox (one shim,
/// and `host_agents` agent processes on the host: 1 for a process sandbox, 0 for a VM), exec
/// into both, status, output in CRI's log files; stop and remove leave nothing behind.
pub async fn two_containers_share_one_pod_sandbox(c: &Containerd, host_agents: usize) {
    let mut client = connect(&c.address).await;
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
            .unwrap_or_else(|e| panic!("ExecSync: {e:?}\n{}", c.log_text()))
            .into_inner();
        assert_eq!(exec.exit_code, 0, "{exec:?}");
        assert_eq!(
            String::from_utf8_lossy(&exec.stdout),
            format!("hi from {name}\n")
        );
        let status = container_status(&mut client, &id).await;
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "{status:?}"
        );
        ids.push(id);
    }
    // CRI's /etc/hosts bind mount reached the sandbox (copied in with CopyFile).
    let hosts = client
        .exec_sync(ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec!["cat".into(), "/etc/hosts".into()],
            timeout: 0,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(hosts.exit_code, 0, "{hosts:?}");
    assert!(
        String::from_utf8_lossy(&hosts.stdout).contains("localhost"),
        "{hosts:?}"
    );
    // One shim server and one agent serve the whole pod.
    assert_eq!(c.our_processes("containerd-shim-veil-v2").len(), 1);
    assert_eq!(c.our_processes("veil-agent").len(), host_agents);
    assert!(c.shim_socket("k8s.io", &pod_id).exists());
    // The containers' output reached CRI's log files.
    for name in ["first", "second"] {
        let log = std::fs::read_to_string(log_file(&logs, name)).unwrap_or_default();
        assert!(log.contains("stdout F up"), "{name}: {log:?}");
    }

    remove_pod(&mut client, &pod_id).await;
    c.assert_clean(&[&pod_id]);
}

/// A container exceeding its memory limit is OOM-killed in the sandbox; the shim's TaskOOM
/// event makes CRI report the reason `OOMKilled`.
pub async fn an_oom_killed_container_is_reported_as_such(c: &Containerd) {
    let mut client = connect(&c.address).await;
    let logs = c.dir.path().join("oom-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod_config("oompod", &logs);
    let pod_id = run_pod(&mut client, &pod, "veil").await;
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "hog".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: [
            "sh",
            "-c",
            "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo ${#x}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        log_path: "hog.log".into(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 16 << 20,
                memory_swap_limit_in_bytes: 16 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = create_and_start(&mut client, &pod_id, &pod, config).await;
    let mut status = None;
    for _ in 0..600 {
        let s = container_status(&mut client, &id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            status = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut status = status.expect("the memory hog exits within a minute");
    // CRI sets the reason when the shim's TaskOOM event arrives, which may be just after the
    // exit (as kubelet sees it on its next look): give it a few seconds.
    for _ in 0..50 {
        if status.reason == "OOMKilled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = container_status(&mut client, &id).await;
    }
    assert_eq!(status.reason, "OOMKilled", "{status:?}\n{}", c.log_text());
    remove_pod(&mut client, &pod_id).await;
    c.assert_clean(&[&pod_id]);
}

/// ContainerStatus of container `id`.
async fn container_status(client: &mut Client, id: &str) -> ContainerStatus {
    client
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status")
}
