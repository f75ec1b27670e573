//! Shared helpers for the host-process integration tests: a busybox root image on a loop
//! device, an agent process on a Unix socket, and request builders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;
// Not every test file uses every builder.
#[allow(unused_imports)]
pub use veil_agent::testing::{create_request, process, read_req, sha256_hex, ALLOW_ALL};

/// Why this host cannot run the container tests, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mounts, loop devices and cgroups need root)".into());
    }
    for tool in ["/usr/sbin/mkfs.ext4", "/usr/sbin/losetup", "/bin/busybox"] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} missing (apt-get install e2fsprogs busybox-static mount)"
            ));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    None
}

/// Skips the calling test (returns from it) when the host lacks something, saying why.
#[macro_export]
macro_rules! require_host {
    () => {
        if let Some(why) = common::missing_prerequisite() {
            veil_tests::skip_or_fail(&why);
            return;
        }
    };
}

/// Where `BusyboxImage::with_verity` puts the hash tree (the ext4 image is 16 MiB).
pub const VERITY_HASH_OFFSET: u64 = veil_tests::l2::BUSYBOX_EXT4_BYTES;

/// An ext4 image with a static busybox and its applet links, attached read-only to a loop
/// device; detached on drop.
pub struct BusyboxImage {
    pub device: String,
    /// The image file behind the loop device.
    pub image: PathBuf,
    _dir: tempfile::TempDir,
}

impl BusyboxImage {
    pub fn new() -> Self {
        Self::build(false).0
    }

    /// Like `new`, with a dm-verity hash tree appended at [`VERITY_HASH_OFFSET`]; returns the
    /// root hash `veritysetup` printed.
    pub fn with_verity() -> (Self, String) {
        let (image, root) = Self::build(true);
        (image, root.expect("veritysetup printed a root hash"))
    }

    /// The same tree packed with mkfs.erofs instead of ext4.
    pub fn erofs() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = veil_tests::l2::busybox_root(dir.path()).unwrap();
        let image = dir.path().join("rootfs.erofs");
        run(Command::new("/usr/bin/mkfs.erofs").arg(&image).arg(&root));
        let device = attach(&image);
        Self {
            device,
            image,
            _dir: dir,
        }
    }

    fn build(verity: bool) -> (Self, Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        let image = veil_tests::l2::busybox_ext4(dir.path()).unwrap();
        let mut root_hash = None;
        if verity {
            let out = Command::new("/usr/sbin/veritysetup")
                .arg("format")
                .arg(format!("--hash-offset={VERITY_HASH_OFFSET}"))
                .arg(format!("--data-blocks={}", VERITY_HASH_OFFSET / 4096))
                .arg(&image)
                .arg(&image)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "veritysetup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            root_hash = text
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .map(|h| h.trim().to_string());
        }
        let device = attach(&image);
        (
            Self {
                device,
                image,
                _dir: dir,
            },
            root_hash,
        )
    }
}

impl Drop for BusyboxImage {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/losetup")
            .args(["-d", &self.device])
            .status();
    }
}

/// Attaches `image` read-only to a free loop device.
fn attach(image: &Path) -> String {
    let out = Command::new("/usr/sbin/losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent process serving a Unix socket, killed on drop.
pub struct AgentProcess {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

impl AgentProcess {
    /// Starts the agent with the insecure attestation backend reporting `host_data_hex`.
    pub fn start(host_data_hex: &str) -> Self {
        Self::start_with(host_data_hex, &[])
    }

    /// Like `start`, with extra command-line arguments.
    pub fn start_with(host_data_hex: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let state_dir = dir.path().join("state");
        let child = Command::new(env!("CARGO_BIN_EXE_veil-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args([
                "--attestation",
                "insecure",
                "--insecure-host-data",
                host_data_hex,
            ])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .stdout(Stdio::null())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            dir,
            socket,
            state_dir,
        }
    }

    /// Connects once the socket accepts connections (bounded number of attempts).
    pub async fn connect(&mut self) -> AgentClient {
        for _ in 0..1000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("agent exited early: {status}");
            }
            if let Ok(stream) = tokio::net::UnixStream::connect(&self.socket).await {
                return AgentClient::from_stream(stream);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("agent socket {} never accepted", self.socket.display());
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits for the agent process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for AgentProcess {
    /// SIGTERM first, so that a failed test still has the agent remove its containers
    /// (mounts, cgroups); SIGKILL if it has not exited after a bounded wait.
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..500 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// The ttrpc status code and message of a failed call.
pub fn status_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

/// Reads stdout (or stderr) until end of stream.
pub async fn read_all(client: &AgentClient, id: &str, exec_id: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let req = read_req(id, exec_id);
        let resp = if stderr {
            client.agent.read_stderr(ctx(), &req).await.unwrap()
        } else {
            client.agent.read_stdout(ctx(), &req).await.unwrap()
        };
        if resp.data.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&resp.data);
    }
}

/// Reads stdout until `want` has been seen.
pub async fn read_until(client: &AgentClient, id: &str, exec_id: &str, want: &str) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(want) {
        let resp = client
            .agent
            .read_stdout(ctx(), &read_req(id, exec_id))
            .await
            .unwrap();
        assert!(
            !resp.data.is_empty(),
            "stdout ended before {want:?}; got {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&resp.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points (from /proc/self/mountinfo) under `dir`.
/// Waits for process `exec_id` of container `id` and returns its exit status.
pub async fn wait_status(client: &AgentClient, id: &str, exec_id: &str) -> i32 {
    let mut wait = agent::WaitProcessRequest::new();
    wait.container_id = id.into();
    wait.exec_id = exec_id.into();
    client
        .agent
        .wait_process(ctx(), &wait)
        .await
        .unwrap()
        .status
}

/// Creates and starts a container, naming it in any failure.
pub async fn start_container(client: &AgentClient, create: &agent::CreateContainerRequest) {
    client
        .agent
        .create_container(ctx(), create)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e:?}", create.container_id));
    let mut start = agent::StartContainerRequest::new();
    start.container_id = create.container_id.clone();
    client
        .agent
        .start_container(ctx(), &start)
        .await
        .unwrap_or_else(|e| panic!("start {}: {e:?}", create.container_id));
}

/// Removes container `id`, which must succeed.
pub async fn remove_container(client: &AgentClient, id: &str) {
    let mut remove = agent::RemoveContainerRequest::new();
    remove.container_id = id.into();
    client.agent.remove_container(ctx(), &remove).await.unwrap();
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// The cgroup directory libcontainer makes for container `id`: in the unified hierarchy, or
/// (hybrid hosts, where libcgroups uses cgroup v1) in the v1 `pids` hierarchy.
pub fn cgroup_dir(id: &str) -> PathBuf {
    let root = veil_agent::container::detect_cgroup_root().expect("cgroup v2 hierarchy");
    let base = if root == Path::new("/sys/fs/cgroup") {
        root
    } else {
        PathBuf::from("/sys/fs/cgroup/pids")
    };
    base.join("veil").join(id)
}

/// Whether a process with `pid` exists.
pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The dm-verity options of a layer whose hash tree sits at [`VERITY_HASH_OFFSET`].
pub fn verity_options(root_hash: &str) -> Vec<String> {
    vec![
        format!("verity.root_hash={root_hash}"),
        format!("verity.hash_offset={VERITY_HASH_OFFSET}"),
    ]
}

/// `root_hash` with its first hex digit changed.
pub fn wrong_root_hash(root_hash: &str) -> String {
    let first = if root_hash.starts_with('0') { "1" } else { "0" };
    format!("{first}{}", &root_hash[1..])
}

/// On an agent with `device` holding a [`BusyboxImage::with_verity`] layer: a container's
/// root is mounted through dm-verity with the right root hash (its `/` is the overlay), and
/// create is refused with a wrong one. `on_error` describes the guest when create fails.
pub async fn check_verity_layer(
    client: &AgentClient,
    device: &str,
    root_hash: &str,
    on_error: impl Fn() -> String,
) {
    let id = "verified";
    let mut create = create_request(id, device, &["cat", "/proc/mounts"]);
    create.storages[0].driver_options = verity_options(root_hash);
    if let Err(e) = client.agent.create_container(ctx(), &create).await {
        panic!("verity create: {e:?}; {}", on_error());
    }
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client.agent.start_container(ctx(), &start).await.unwrap();
    let mounts = read_all(client, id, id, false).await;
    assert!(mounts.starts_with("overlay / overlay"), "{mounts}");
    remove_container(client, id).await;

    let mut create = create_request("unverified", device, &["true"]);
    create.storages[0].driver_options = verity_options(&wrong_root_hash(root_hash));
    let (code, msg) = status_of(client.agent.create_container(ctx(), &create).await);
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{msg}");
}
