//! Shared by the shim's end-to-end tests: Debian's containerd started on private sockets and
//! directories, a busybox image built from the host's static busybox, the shim binary on
//! containerd's PATH with a process-sandbox config, and checks that nothing is left behind.

#![allow(dead_code)]

pub mod cri;
pub mod ctr;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use containerd_shim_veil_v2::sandbox;
use sha2::{Digest, Sha256};

pub const RUNTIME: &str = "io.containerd.veil.v2";
pub const IMAGE: &str = "docker.io/library/busybox:local";
pub const PAUSE_IMAGE: &str = "docker.io/library/pause:local";
pub const NAMESPACE: &str = "veiltest";

/// Why this host cannot run the tests, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (containerd, mounts and loop devices need root)".into());
    }
    for tool in [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/sbin/runc",
        "/bin/busybox",
        "/usr/sbin/mkfs.ext4",
        "/usr/sbin/losetup",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} missing (apt-get install containerd runc busybox-static e2fsprogs mount)"
            ));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    None
}

/// Skips the calling test when the host lacks something; in CI (`CI=true`) that fails it.
#[macro_export]
macro_rules! require_host {
    () => {
        if let Some(why) = common::missing_prerequisite() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("prerequisite missing in CI: {why}");
            }
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// The veil-agent binary for process sandboxes: the workspace's build of it, built now when
/// this test run did not build it already.
pub fn agent_binary() -> PathBuf {
    workspace_binary("veil-agent", "veil-agent")
}

/// The `veil` binary the shim runs jailed VMs with (found next to the shim), built now when
/// this test run did not build it already.
pub fn veil_binary() -> PathBuf {
    workspace_binary("veil", "veil")
}

/// `bin` of workspace package `package`, next to the shim, built when missing.
/// A binary of the workspace next to the shim, built (a no-op when fresh) unless this runs
/// inside the nested harness's L1, whose view of the workspace is read-only: the host side
/// of such a test builds it first.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-veil-v2"));
    let path = shim.with_file_name(bin);
    if !veil_tests::nested::inside_l1() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", package, "--bin", bin]);
        if shim.parent().and_then(|p| p.file_name()) == Some("release".as_ref()) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    path
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes an OCI image archive: one layer with static busybox and its applet links.
pub fn build_image(dir: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "false", "ls", "hostname", "id", "ps", "kill", "tty",
        "stty", // networking tests
        "nc", "ping", "httpd", "ip", "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer_tar = dir.join("layer.tar");
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("."));
    let layer = std::fs::read(&layer_tar).unwrap();
    let layer_digest = sha256_hex(&layer);
    std::fs::write(blobs.join(&layer_digest), &layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_hex(&config);
    std::fs::write(blobs.join(&config_digest), &config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = sha256_hex(&manifest);
    std::fs::write(blobs.join(&manifest_digest), &manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    archive
}

/// A containerd daemon of the test's own, with the shim on its PATH.
pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub address: PathBuf,
    /// The shim's config file (process sandbox).
    pub shim_config: PathBuf,
    pub shim_state: PathBuf,
    pub image_cache: PathBuf,
    pub log: PathBuf,
}

impl Containerd {
    /// Starts containerd and imports the busybox image into `NAMESPACE` and the pause image
    /// into `k8s.io`.
    pub fn start() -> Self {
        Self::start_with_shim_config("sandbox = \"process\"", "")
    }

    /// Like `start`, with the shim config's top-level `kind` line (`sandbox = ...`) and extra
    /// sections of its own.
    pub fn start_with_shim_config(kind: &str, sections: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("veil-shim-test")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let address = d.join("containerd.sock");
        let shim_state = d.join("shim-state");
        let image_cache = d.join("images");
        let shim_config = d.join("shim.toml");
        // 20 s unless `kind` sets its own (VMs booting inside L1 need more).
        let timeout = match kind.contains("agent_start_timeout_secs") {
            true => "",
            false => "agent_start_timeout_secs = 20\n",
        };
        std::fs::write(
            &shim_config,
            format!(
                "{kind}\nstate_dir = \"{}\"\nimage_cache_dir = \"{}\"\n{timeout}[process]\nagent = \"{}\"\n{sections}\n",
                shim_state.display(),
                image_cache.display(),
                agent_binary().display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("cni-conf")).unwrap();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{address}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
    bin_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.veil]
      runtime_type = "{RUNTIME}"
      pod_annotations = ["io.veil.*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.veil.options]
        ConfigPath = "{shim_config}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            address = address.display(),
            opt = d.join("opt").display(),
            cni = d.join("cni-conf").display(),
            shim_config = shim_config.display(),
        );
        let config_path = d.join("containerd.toml");
        std::fs::write(&config_path, config).unwrap();
        let shim_dir = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-veil-v2"))
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            shim_dir.display()
        );
        let log = d.join("containerd.log");
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .env("VEIL_SHIM_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting containerd");
        let mut c = Self {
            child,
            dir,
            address,
            shim_config,
            shim_state,
            image_cache,
            log,
        };
        c.wait_ready();
        let images = c.dir.path().join("img");
        let busybox = build_image(&images.join("busybox"), IMAGE, &["sh"]);
        c.import(NAMESPACE, &busybox);
        let pause = build_image(&images.join("pause"), PAUSE_IMAGE, &["sleep", "100000"]);
        c.import("k8s.io", &pause);
        c.import("k8s.io", &busybox);
        c
    }

    /// Waits (bounded) until containerd answers `ctr version`.
    fn wait_ready(&mut self) {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("containerd exited early: {status}\n{}", self.log_text());
            }
            let ok = Command::new("/usr/bin/ctr")
                .arg("-a")
                .arg(&self.address)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("containerd never answered\n{}", self.log_text());
    }

    fn import(&self, namespace: &str, archive: &Path) {
        run(self
            .ctr_cmd(namespace)
            .args(["images", "import"])
            .arg(archive));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads `child`'s stdout until a line equal to `want`. If stdout ends first, panics with
    /// how `child` ended, its stderr and containerd's log (where the shim says why a sandbox
    /// ended): `ctr run` itself prints nothing when its task just exits.
    pub fn read_until_line(
        &self,
        child: &mut Child,
        want: &str,
    ) -> std::io::BufReader<std::process::ChildStdout> {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).unwrap();
            if n == 0 {
                // Bounded: a child that closed stdout may still be running (it is killed then,
                // so that its stderr ends too).
                let ended = veil_tests::l2::wait_bounded(child, Duration::from_secs(10));
                let how = ended.status.map_or_else(
                    || "still running 10 s after closing stdout (killed)".to_string(),
                    |s| s.to_string(),
                );
                panic!(
                    "stdout ended before {want:?}; the child: {how}; stderr: {}\n\
                     --- containerd's log\n{}",
                    ended.stderr,
                    self.log_text()
                );
            }
            if line.trim_end() == want {
                return reader;
            }
        }
    }

    /// `ctr -a <sock> -n <namespace>`.
    pub fn ctr_cmd(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("/usr/bin/ctr");
        cmd.arg("-a").arg(&self.address).args(["-n", namespace]);
        cmd
    }

    /// `ctr run --rm` with the veil runtime and the busybox image, stdin from `input`.
    pub fn ctr_run(&self, id: &str, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut child = self.spawn_ctr_run(id, args, input.is_some());
        if let Some(data) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(data).unwrap();
            drop(stdin);
        }
        child.wait_with_output().unwrap()
    }

    /// Starts `ctr run --rm` (veil runtime, busybox image) with stdout and stderr piped.
    pub fn spawn_ctr_run(&self, id: &str, args: &[&str], stdin: bool) -> Child {
        let mut cmd = self.ctr_cmd(NAMESPACE);
        cmd.args(["run", "--rm", "--runtime", RUNTIME, "--runtime-config-path"])
            .arg(&self.shim_config)
            .args([IMAGE, id])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        cmd.spawn().expect("ctr run")
    }

    /// The shim's socket for a sandbox (containerd's naming).
    pub fn shim_socket(&self, namespace: &str, sandbox_id: &str) -> PathBuf {
        let addr = containerd_shim::socket_address(
            &self.address.display().to_string(),
            namespace,
            sandbox_id,
        );
        PathBuf::from(addr.trim_start_matches("unix://"))
    }

    /// Processes of this test's shims and agents (their command lines name our directory).
    pub fn our_processes(&self, exe_name: &str) -> Vec<i32> {
        let dir = self.dir.path().display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline);
            let mut parts = text.split('\0');
            let exe = parts.next().unwrap_or_default();
            if exe.ends_with(exe_name) && text.contains(&dir) {
                found.push(pid);
            }
        }
        found
    }

    /// What this test's shims left behind: processes, mounts, state, sockets, cgroups, loop
    /// devices (empty when nothing).
    pub fn leftovers(&self, sandbox_ids: &[&str]) -> Vec<String> {
        let mut left = Vec::new();
        for exe in ["containerd-shim-veil-v2", "veil-agent"] {
            for pid in self.our_processes(exe) {
                left.push(format!("{exe} process {pid}"));
            }
        }
        for m in mounts_under(&self.shim_state) {
            left.push(format!("mount {m}"));
        }
        if let Ok(entries) = std::fs::read_dir(&self.shim_state) {
            for e in entries.flatten() {
                left.push(format!("state {}", e.path().display()));
            }
        }
        for id in sandbox_ids {
            for ns in [NAMESPACE, "k8s.io"] {
                let socket = self.shim_socket(ns, id);
                if socket.exists() {
                    left.push(format!("socket {}", socket.display()));
                }
                let dir = sandbox::sandbox_dir(&self.shim_state, &socket);
                let cgroup = sandbox::process_cgroup_name(&dir);
                if let Some(cg) = cgroup2_mount() {
                    let dir = cg.join(&cgroup);
                    if dir.exists() {
                        left.push(format!("cgroup {}", dir.display()));
                    }
                }
                // Hybrid hosts: the v1 hierarchies' copies (/sys/fs/cgroup/<controller>/...).
                for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let dir = hierarchy.path().join(&cgroup);
                    if dir.is_dir() {
                        left.push(format!("cgroup {}", dir.display()));
                    }
                }
            }
        }
        for dev in loops_backed_by(&self.image_cache) {
            left.push(format!("loop device {dev}"));
        }
        left
    }

    /// Checks that the shim left nothing behind. Shims, agents and loop devices go away
    /// asynchronously (a loop device is freed when its last mount namespace is), so this
    /// waits for that, bounded, before failing.
    /// Asserts that `ctr run` ended with the status of a task whose sandbox died (the VMM or
    /// the agent killed) and that the shim's log says why.
    pub fn assert_sandbox_died(&self, status: std::process::ExitStatus) {
        assert_eq!(
            status.code(),
            Some(255),
            "ctr run reports the sandbox error status\n{}",
            self.log_text()
        );
        assert!(
            self.log_text().contains("sandbox died"),
            "the shim says why\n{}",
            self.log_text()
        );
    }

    pub fn assert_clean(&self, sandbox_ids: &[&str]) {
        let mut left = Vec::new();
        for _ in 0..500 {
            left = self.leftovers(sandbox_ids);
            if left.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("left behind: {left:?}\n{}", self.log_text());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..500 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever a failed test left: shims and agents, then mounts, then loop devices.
        for exe in ["containerd-shim-veil-v2", "veil-agent"] {
            for pid in self.our_processes(exe) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for m in mounts_under(self.dir.path()).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        for dev in loops_backed_by(&self.image_cache) {
            let _ = Command::new("/usr/sbin/losetup")
                .args(["-d", &dev])
                .status();
        }
    }
}

/// Mount points under `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Loop devices whose backing file is under `dir`.
pub fn loops_backed_by(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            if let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
                if backing.trim().starts_with(&prefix) {
                    found.push(format!("/dev/{name}"));
                }
            }
        }
    }
    found
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
