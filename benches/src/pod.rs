//! A containerd of the harness's own for the pod-start sections: private config, sockets and
//! directories under a temporary directory, a busybox image (one layer, the host's static
//! busybox) as container and pause image in the `k8s.io` namespace, runc and the veil shim
//! (process or VM sandboxes) as runtime handlers, and a CRI client that talks to it the way
//! kubelet does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

/// The image both runtimes run; also the pause image (its command sleeps).
pub const IMAGE: &str = "docker.io/library/busybox:bench";
pub const PAUSE_IMAGE: &str = "docker.io/library/pause:bench";
/// Longest wait for containerd to answer, or (on the host) a container's first output.
pub const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} failed: {1}")]
    Command(String, String),
    #[error("containerd did not answer within {0:?}")]
    NotReady(Duration),
    #[error("CRI {call}: {status}")]
    Cri {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("CRI connection: {0}")]
    Connect(tonic::transport::Error),
    #[error("no output from container {0} within {1:?}")]
    NoOutput(String, Duration),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PodError {
    let what = what.into();
    move |source| PodError::Io { what, source }
}

/// `cargo build --release` of the shim and the agent; returns the release directory.
pub fn build_shim_and_agent() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    for (package, bin) in [
        ("containerd-shim-veil-v2", "containerd-shim-veil-v2"),
        ("veil-agent", "veil-agent"),
    ] {
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["build", "--release", "-p", package, "--bin", bin])
            .status()
            .map_err(|e| format!("cargo build {bin}: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build {bin}: {status}"));
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release"))
}

/// Why this host cannot run the section, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (containerd needs root)".into());
    }
    [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/sbin/runc",
        "/bin/busybox",
        "/usr/sbin/mkfs.ext4",
    ]
    .iter()
    .find(|t| !Path::new(t).exists())
    .map(|t| format!("{t} missing (apt-get install containerd runc busybox-static e2fsprogs)"))
}

fn run(cmd: &mut Command) -> Result<(), PodError> {
    let out = cmd.output().map_err(io(format!("{cmd:?}")))?;
    if !out.status.success() {
        return Err(PodError::Command(
            format!("{cmd:?}"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes an OCI image archive of one busybox layer whose default command is `cmd`.
fn build_image(dir: &Path, name: &str, cmd: &[&str]) -> Result<PathBuf, PodError> {
    let root = dir.join("root");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(io("creating image root"))?;
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).map_err(io("creating image root"))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(io("copying busybox"))?;
    for applet in ["sh", "echo", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(io("linking applets"))?;
    }
    let blobs = dir.join("layout/blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io("creating image layout"))?;
    let layer_tar = dir.join("layer.tar");
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("."))?;
    let blob = |bytes: &[u8]| -> Result<String, PodError> {
        let digest = sha256_hex(bytes);
        std::fs::write(blobs.join(&digest), bytes).map_err(io("writing a blob"))?;
        Ok(digest)
    };
    let layer = std::fs::read(&layer_tar).map_err(io("reading the layer"))?;
    let layer_digest = blob(&layer)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    }))
    .expect("json");
    let config_digest = blob(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    }))
    .expect("json");
    let manifest_digest = blob(&manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": name}}],
    });
    let layout = dir.join("layout");
    std::fs::write(layout.join("index.json"), index.to_string()).map_err(io("index.json"))?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io("oci-layout"))?;
    let archive = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."))?;
    Ok(archive)
}

/// The harness's containerd; stopped (and its leftovers removed) on drop.
pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

/// Which kind of sandbox the veil runtime handler gets.
#[derive(Debug, Clone, Copy)]
pub enum ShimSandbox<'a> {
    /// `veil-agent` as a host child (no VM): hosts whose KVM cannot run a guest.
    Process { agent: &'a Path },
    /// One veil VM per pod (a jailed `veil` process, the shim's default), booting this
    /// kernel and initramfs (needs a real KVM).
    Vm {
        veil: &'a Path,
        kernel: &'a Path,
        initrd: &'a Path,
    },
}

impl ShimSandbox<'_> {
    /// The shim config's lines for this sandbox kind.
    fn config(&self) -> String {
        match self {
            Self::Process { agent } => format!(
                "sandbox = \"process\"\n[process]\nagent = \"{}\"\n",
                agent.display()
            ),
            Self::Vm {
                veil,
                kernel,
                initrd,
            } => format!(
                "sandbox = \"vm\"\n[vm]\nveil = \"{}\"\nkernel = \"{}\"\ninitrd = \"{}\"\nvcpus = {}\nmemory_mib = {}\n",
                veil.display(),
                kernel.display(),
                initrd.display(),
                crate::nested::VCPUS,
                crate::nested::MEM_MIB,
            ),
        }
    }
}

/// Where containerd's own log goes: the file `VEIL_BENCH_CONTAINERD_LOG` names (to see why a
/// runtime failed), else nowhere.
fn containerd_log() -> Result<Stdio, PodError> {
    match std::env::var_os("VEIL_BENCH_CONTAINERD_LOG") {
        Some(path) => {
            let file = std::fs::File::create(&path).map_err(io(format!(
                "creating VEIL_BENCH_CONTAINERD_LOG={}",
                Path::new(&path).display()
            )))?;
            Ok(file.into())
        }
        None => Ok(Stdio::null()),
    }
}

impl Containerd {
    /// Starts containerd with runtime handlers `runc` and `veil` (the shim in `bin_dir`, with
    /// `sandbox`), and imports the images.
    pub fn start(bin_dir: &Path, sandbox: ShimSandbox<'_>) -> Result<Self, PodError> {
        let dir = tempfile::Builder::new()
            .prefix("veil-bench-pod")
            .tempdir_in("/tmp")
            .map_err(io("creating a temporary directory"))?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let shim_config = d.join("shim.toml");
        // Top-level keys first: the sandbox's own table follows.
        std::fs::write(
            &shim_config,
            format!(
                "state_dir = \"{}\"\nimage_cache_dir = \"{}\"\n{}",
                d.join("shim-state").display(),
                d.join("images").display(),
                sandbox.config()
            ),
        )
        .map_err(io("writing the shim config"))?;
        std::fs::create_dir_all(d.join("cni")).map_err(io("creating the CNI dir"))?;
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        // `restrict_oom_score_adj`: CRI gives a pod sandbox oom_score_adj -998, and lowering it
        // needs CAP_SYS_RESOURCE, which root lacks on some hosts (these CI machines among them:
        // runc init then dies with "can't get final child's PID from pipe"). The option caps
        // the value at containerd's own, for both runtimes alike.
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             [{cri}]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  restrict_oom_score_adj = true\n\
             [{cri}.cni]\n  conf_dir = \"{cni}\"\n  bin_dir = \"{cni}\"\n\
             [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n\
             [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.containerd.runtimes.veil]\n  runtime_type = \"io.containerd.veil.v2\"\n\
             [{cri}.containerd.runtimes.veil.options]\n  ConfigPath = \"{shim_config}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
            cni = d.join("cni").display(),
            shim_config = shim_config.display(),
        );
        let config_path = d.join("containerd.toml");
        std::fs::write(&config_path, config).map_err(io("writing containerd's config"))?;
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir.display()
        );
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(containerd_log()?)
            .spawn()
            .map_err(io("starting containerd"))?;
        let c = Self { child, dir, socket };
        c.wait_ready()?;
        for (name, cmd) in [
            (IMAGE, &["sh"][..]),
            (PAUSE_IMAGE, &["sleep", "100000"][..]),
        ] {
            let archive =
                build_image(&c.dir.path().join(name.replace([':', '/'], "_")), name, cmd)?;
            run(c.ctr().args(["images", "import"]).arg(&archive))?;
        }
        Ok(c)
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/ctr");
        cmd.arg("-a").arg(&self.socket).args(["-n", "k8s.io"]);
        cmd
    }

    fn wait_ready(&self) -> Result<(), PodError> {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            let ok = self
                .ctr()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(PodError::NotReady(WAIT))
    }

    /// A CRI client on containerd's socket.
    pub async fn cri(&self) -> Result<RuntimeServiceClient<Channel>, PodError> {
        let socket = self.socket.clone();
        let channel = Endpoint::try_from("http://[::]")
            .expect("static URI")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .map_err(PodError::Connect)?;
        Ok(RuntimeServiceClient::new(channel))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots and runc's rootfs mounts live under the temporary directory.
        let prefix = self.dir.path().display().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        for m in mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// One pod start with runtime `handler`: RunPodSandbox + CreateContainer + StartContainer until
/// the container's first output byte lands in its CRI log. The pod is removed afterwards
/// (untimed). Returns milliseconds.
pub async fn pod_start_ms(
    client: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    name: &str,
    log_dir: &Path,
    wait: Duration,
) -> Result<f64, PodError> {
    let cri = |call| move |status| PodError::Cri { call, status };
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        // No hostname: a host-network pod shares the host's UTS namespace (runc refuses one).
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
    };
    let log = log_dir.join("c.log");
    let start = Instant::now();
    let pod_id = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map_err(cri("RunPodSandbox"))?
        .into_inner()
        .pod_sandbox_id;
    let result = async {
        let container = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: ["sh", "-c", "echo up; sleep 100000"]
                .map(String::from)
                .to_vec(),
            log_path: "c.log".into(),
            ..Default::default()
        };
        let id = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map_err(cri("CreateContainer"))?
            .into_inner()
            .container_id;
        client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(cri("StartContainer"))?;
        // CRI writes each output line to the log file as it arrives; poll it finely.
        while std::fs::metadata(&log).map_or(0, |m| m.len()) == 0 {
            if start.elapsed() > wait {
                return Err(PodError::NoOutput(id, wait));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    }
    .await;
    let stop = client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .map_err(cri("StopPodSandbox"));
    let remove = client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .map_err(cri("RemovePodSandbox"));
    let _ = std::fs::remove_file(&log);
    let ms = result?;
    stop?;
    remove?;
    Ok(ms)
}

/// Runtime handlers compared, in the order of the first round.
pub const HANDLERS: [&str; 2] = ["veil", "runc"];

/// What a series of interleaved pod starts gave: milliseconds per handler (in `HANDLERS`
/// order) and the runs that failed, as (handler, error).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct PodStarts {
    pub samples: [Vec<f64>; 2],
    pub failures: Vec<(String, String)>,
    /// Rounds not started because the time budget ran out.
    pub rounds_skipped: usize,
}

/// `rounds` rounds of one pod start per handler, the order alternating between rounds so
/// neither handler always runs on a warmer machine. No round starts after `budget`;
/// `after_each` sees the figures so far after every pod start.
pub async fn interleaved_pod_starts(
    containerd: &Containerd,
    rounds: usize,
    wait: Duration,
    budget: Duration,
    mut after_each: impl FnMut(&PodStarts),
) -> Result<PodStarts, PodError> {
    let started = Instant::now();
    let mut client = containerd.cri().await?;
    let mut starts = PodStarts::default();
    for round in 0..rounds {
        if started.elapsed() > budget {
            starts.rounds_skipped = rounds - round;
            break;
        }
        for k in 0..HANDLERS.len() {
            let i = (k + round) % HANDLERS.len();
            let handler = HANDLERS[i];
            let logs = containerd
                .dir
                .path()
                .join(format!("logs-{handler}-{round}"));
            std::fs::create_dir_all(&logs).map_err(io("creating a log dir"))?;
            let name = format!("bench-{handler}-{round}");
            match pod_start_ms(&mut client, handler, &name, &logs, wait).await {
                Ok(ms) => starts.samples[i].push(ms),
                Err(e) => {
                    tracing::warn!("{handler} pod start failed: {e}");
                    starts.failures.push((handler.to_string(), e.to_string()));
                }
            }
            after_each(&starts);
        }
    }
    Ok(starts)
}
