//! The nested-KVM harness: runs a command inside "L1", a QEMU TCG guest whose real `kvm_amd`
//! gives it a hardware-style `/dev/kvm` (this host's own KVM is a software backend that cannot
//! run Linux user space; see ../shared/HOST-KVM.md).
//!
//! L1 is Debian's own 6.12 kernel with a busybox initramfs (`tests/nested/build-l1.sh`, built
//! once and cached under `target/nested-l1/`). It mounts this host's root file system
//! read-only over 9p and runs the command chrooted into it, so cargo's test binaries, the
//! `veil` binary, the guest kernel and Debian's tools run there unchanged. `/run`, `/tmp`,
//! `/var/tmp` and `/dev/shm` are fresh tmpfs inside L1 (they hide the host's; 9p cannot hold
//! Unix sockets, so put sockets under `/run`). A scratch directory, created per run, is
//! mounted writable at the same path inside L1: put inputs there and read results back.
//!
//! Everything in L1 is emulated, so only ratios of times measured inside the same L1 mean
//! anything.
//!
//! Tests usually re-run themselves inside L1 ([`run_test_in_l1`]): the test binary is on the
//! host's file system, so the same test function does the real work in L1, where
//! [`inside_l1`] is true.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Errors of the nested harness; each says what to install or look at.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    #[error("{0} not found: apt-get install qemu-system-x86 (the nested harness runs L1 under QEMU TCG)")]
    QemuMissing(String),
    #[error("building the L1 image failed (tests/nested/build-l1.sh):\n{0}")]
    ImageBuild(String),
    #[error("L1 could not run the command: {message}\nL1 console:\n{console}")]
    L1Setup { message: String, console: String },
    #[error("L1 ended without running the command to its end (QEMU {qemu_status}); L1 console:\n{console}")]
    NoStatus {
        qemu_status: String,
        console: String,
    },
    #[error("the command in L1 exceeded its limit of {limit:?}: QEMU killed; L1 console (tail):\n{console}")]
    Timeout { limit: Duration, console: String },
    #[error("L1 stopped: its heartbeat file was silent for {silent:?} (L1 or its 9p link froze under QEMU's TCG); QEMU killed; L1 console (tail):\n{console}")]
    Frozen { silent: Duration, console: String },
    #[error("nested harness I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> NestedError + '_ {
    move |source| NestedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a command run in L1 left behind.
#[derive(Debug)]
pub struct L1Output {
    /// The command's exit status (the shell's `$?`).
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    /// L1's serial console (its kernel's messages and the harness's own lines).
    pub console: String,
    /// Wall time from QEMU's start to its exit.
    pub wall: Duration,
}

impl L1Output {
    /// Panics with everything the run printed unless the command exited 0.
    pub fn assert_success(&self) {
        assert_eq!(
            self.status, 0,
            "command in L1 exited {}\n--- stdout\n{}\n--- stderr\n{}\n--- L1 console\n{}",
            self.status, self.stdout, self.stderr, self.console
        );
    }
}

/// The built L1 image.
#[derive(Debug, Clone)]
pub struct L1Image {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Debian package name and version of the kernel.
    pub kernel_package: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// True inside L1 (the harness's init sets `VEIL_L1=1` for the command).
pub fn inside_l1() -> bool {
    std::env::var_os("VEIL_L1").is_some_and(|v| v == "1")
}

/// Builds the L1 image once per process (cached on disk across runs by the script's key).
pub fn l1_image() -> Result<L1Image, NestedError> {
    static IMAGE: OnceLock<Result<L1Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = repo_root().join("tests/nested/build-l1.sh");
            let out = Command::new(&script)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let kernel_package = std::fs::read_to_string(dir.join("KERNEL"))
                .unwrap_or_default()
                .trim()
                .to_string();
            Ok(L1Image {
                kernel: dir.join("vmlinuz"),
                initramfs: dir.join("l1.cpio.gz"),
                kernel_package,
            })
        })
        .clone()
        .map_err(NestedError::ImageBuild)
}

/// Finds an executable on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// L1's CPUs unless a command asks for more: one. With two, QEMU 7.2's multi-threaded TCG
/// (a host thread per emulated CPU) corrupts state under nested paging: with a two-vCPU guest
/// in L1 starting programs as fast as it can, L1 went down within three minutes in each of
/// seven boots (an oops in a vCPU thread just after a VM exit, "stack guard page was hit" in
/// `error_entry`, or a reset that printed nothing), and where L1 lived the guest itself ended
/// in a triple fault: the rare triple faults of pod guests in the nested tests, which came at
/// moments of heavy page-table change. With one CPU, QEMU runs L1 on one thread, and the same
/// load ran 8 rounds of two minutes clean, at about half the speed
/// (`a_two_vcpu_guest_churning_page_tables_keeps_itself_and_l1_up` in `veil/tests/`).
pub const DEFAULT_CPUS: u32 = 1;

/// A command to run in L1, with its limits.
#[derive(Debug)]
pub struct L1Command {
    script: String,
    timeout: Duration,
    heartbeat_limit: Duration,
    memory_mib: u32,
    cpus: u32,
    scratch: tempfile::TempDir,
}

impl L1Command {
    /// A shell script to run in L1 (`sh`, cwd = the scratch directory, host's PATH).
    pub fn new(script: impl Into<String>) -> Result<Self, NestedError> {
        let base = std::env::temp_dir();
        let scratch = tempfile::Builder::new()
            .prefix("veil-l1-")
            .tempdir_in(&base)
            .map_err(io_error(&base))?;
        Ok(Self {
            script: script.into(),
            timeout: Duration::from_secs(600),
            heartbeat_limit: HEARTBEAT_LIMIT,
            memory_mib: 3072,
            cpus: DEFAULT_CPUS,
            scratch,
        })
    }

    /// The limit on the whole run (L1 boot included); QEMU is killed past it.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// How long L1's heartbeat may stay silent before L1 counts as frozen (default 60 s).
    pub fn heartbeat_limit(mut self, limit: Duration) -> Self {
        self.heartbeat_limit = limit;
        self
    }

    /// L1's memory (default 3 GiB).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// L1's CPUs (default [`DEFAULT_CPUS`], which says why more are a risk).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// The scratch directory: the same path on the host and in L1.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Boots L1, runs the command and returns its status and output.
    pub fn run(self) -> Result<L1Output, NestedError> {
        let qemu = find_in_path("qemu-system-x86_64")
            .ok_or_else(|| NestedError::QemuMissing("qemu-system-x86_64".into()))?;
        let image = l1_image()?;
        let command = self.scratch.path().join("l1-command.sh");
        std::fs::write(&command, &self.script).map_err(io_error(&command))?;
        match self.boot(&qemu, &image) {
            // L1's own kernel sometimes oopses on an int3 that its live code patching
            // (text_poke_bp) left for its other CPU: a race in QEMU's multi-threaded TCG,
            // not in what runs inside. The command did not finish, so it runs once more;
            // a failure that comes from the command itself fails both times.
            Err(NestedError::NoStatus {
                console,
                qemu_status,
            }) if l1_kernel_failed(&console) || l1_reset_itself(&qemu_status, &console) => {
                eprintln!(
                    "nested harness: L1's own kernel failed before the command ended; \
                     running it once more. L1 console:\n{console}"
                );
                self.boot(&qemu, &image)
            }
            // L1 as a whole (or the 9p link everything in it reads and writes through) stops
            // now and then under QEMU's TCG, mid-command, with nothing on its console: seen in
            // 2 of 86 runs of the nested pod test. Waiting out the command's limit would only
            // fail the run much later; it runs once more instead.
            Err(error @ NestedError::Frozen { .. }) => {
                eprintln!("nested harness: {error}\nrunning it once more");
                self.boot(&qemu, &image)
            }
            other => other,
        }
    }

    /// One boot of L1 running the command.
    fn boot(&self, qemu: &Path, image: &L1Image) -> Result<L1Output, NestedError> {
        let scratch = self.scratch.path();

        // One L1 at a time on this machine: they are CPU-bound, and several at once only make
        // each slower (and their timeouts meaningless).
        let lock_path = repo_root().join("target/nested-l1/.run-lock");
        let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(io_error(&lock_path)(std::io::Error::last_os_error()));
        }

        // Left by an earlier boot of this command, it would read as a silence.
        let heartbeat = scratch.join(HEARTBEAT_FILE);
        let _ = std::fs::remove_file(&heartbeat);
        let console_path = scratch.join("l1-console.log");
        let console_file = File::create(&console_path).map_err(io_error(&console_path))?;
        let started = Instant::now();
        let mut child = Command::new(qemu)
            .args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
            .arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-m")
            .arg(format!("{}M", self.memory_mib))
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 veil_l1.scratch={}",
                scratch.display()
            ))
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=scratch,security_model=none",
                scratch.display()
            ))
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .stdin(Stdio::null())
            .stdout(console_file.try_clone().map_err(io_error(&console_path))?)
            .stderr(console_file)
            .spawn()
            .map_err(io_error(qemu))?;

        // Kills QEMU and returns the console's tail, for an L1 given up on.
        let give_up = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
            tail(&read_lossy(&console_path), 60)
        };
        let qemu_status = loop {
            if let Some(status) = child.try_wait().map_err(io_error(qemu))? {
                break status;
            }
            if started.elapsed() > self.timeout {
                return Err(NestedError::Timeout {
                    limit: self.timeout,
                    console: give_up(&mut child),
                });
            }
            let beat = std::fs::metadata(&heartbeat)
                .and_then(|m| m.modified())
                .ok();
            if let Some(silent) = silence(
                beat,
                SystemTime::now(),
                started.elapsed(),
                self.heartbeat_limit,
            ) {
                return Err(NestedError::Frozen {
                    silent,
                    console: give_up(&mut child),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let wall = started.elapsed();
        drop(lock);

        let console = read_lossy(&console_path);
        if let Some(message) = console
            .lines()
            .find_map(|l| l.split_once("veil-l1: error: ").map(|(_, m)| m.to_string()))
        {
            return Err(NestedError::L1Setup { message, console });
        }
        let status_path = scratch.join("l1-status");
        let status = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .ok_or_else(|| NestedError::NoStatus {
                qemu_status: qemu_status.to_string(),
                // Whole: L1's kernel is quiet, and a failure's trace must be seen entire.
                console: console.clone(),
            })?;
        Ok(L1Output {
            status,
            stdout: read_lossy(&scratch.join("l1-stdout")),
            stderr: read_lossy(&scratch.join("l1-stderr")),
            console,
            wall,
        })
    }
}

/// The file L1's init touches every 5 s once it is ready (`tests/nested/l1-init.sh`).
const HEARTBEAT_FILE: &str = "l1-heartbeat";
/// How long the heartbeat may be silent before L1 counts as frozen. Under load L1 took up
/// to 24 s to boot here; a running L1 touches the file every 5 s.
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(60);
/// How long L1 may take to start beating at all.
const FIRST_BEAT_LIMIT: Duration = Duration::from_secs(180);

/// How long L1 has been silent, when that is past `limit` (or past [`FIRST_BEAT_LIMIT`] with
/// no beat yet): `beat` is the heartbeat file's modification time, `running` how long QEMU
/// has run.
fn silence(
    beat: Option<SystemTime>,
    now: SystemTime,
    running: Duration,
    limit: Duration,
) -> Option<Duration> {
    let silent = match beat {
        // A clock step backwards reads as no silence.
        Some(beat) => now.duration_since(beat).unwrap_or_default(),
        None if running > FIRST_BEAT_LIMIT => return Some(running),
        None => return None,
    };
    (silent > limit).then_some(silent)
}

/// QEMU ended by itself (status 0, so not our timeout's kill) without L1's kernel shutting
/// down (no `reboot:` line): L1 reset under QEMU's `-no-reboot`, a triple fault of the
/// emulated machine that leaves nothing on the console. The command was cut short by it.
fn l1_reset_itself(qemu_status: &str, console: &str) -> bool {
    qemu_status == "exit status: 0" && !console.contains("reboot: ")
}

/// Whether L1's console (its kernel's messages only: `quiet`, and the command's output goes
/// to files) shows its own kernel failing.
fn l1_kernel_failed(console: &str) -> bool {
    ["Oops:", "BUG:", "Kernel panic"]
        .iter()
        .any(|mark| console.contains(mark))
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Why this host cannot run the nested harness, if it cannot (QEMU missing).
pub fn missing_prerequisite() -> Option<String> {
    find_in_path("qemu-system-x86_64")
        .is_none()
        .then(|| "qemu-system-x86_64 missing (apt-get install qemu-system-x86)".to_string())
}

/// Whether this host can run the nested harness. Where it cannot, says why: a failure under
/// `CI=true`, otherwise a skip (see [`crate::skip_or_fail`]).
pub fn available_or_skip() -> bool {
    match missing_prerequisite() {
        Some(why) => {
            crate::skip_or_fail(&why);
            false
        }
        None => true,
    }
}

/// Runs the calling test again inside L1, or returns `true` when already inside (the caller
/// then does the real work). On the host it returns `false` after the run in L1 passed,
/// and panics with L1's output when it failed. When the host lacks QEMU it panics under
/// `CI=true` and otherwise prints why and returns `false` (the test is skipped).
///
/// `test` is the test's full name as libtest prints it (`module::name`, or `name` at the top
/// of an integration test file). Environment variables in `env` are set for the test in L1.
pub fn run_test_in_l1(test: &str, timeout: Duration, env: &[(&str, &str)]) -> bool {
    if inside_l1() {
        return true;
    }
    if !available_or_skip() {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.push(("RUST_BACKTRACE".into(), "1".into()));
    match l1_image() {
        Ok(image) => vars.push(("VEIL_L1_KERNEL".into(), image.kernel.display().to_string())),
        Err(e) => panic!("nested harness for {test}: {e}"),
    }
    if let Ok(ci) = std::env::var("CI") {
        vars.push(("CI".into(), ci));
    }
    let mut script = String::from("set -e\n");
    for (k, v) in &vars {
        script += &format!("export {k}={}\n", shell_quote(v));
    }
    script += &format!(
        "exec {} --exact {} --nocapture --test-threads=1\n",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(test)
    );
    let output = L1Command::new(script)
        .and_then(|c| c.timeout(timeout).run())
        .unwrap_or_else(|e| panic!("nested harness for {test}: {e}"));
    // libtest prints "running 0 tests" when the name matched nothing: that is not a pass.
    assert!(
        output.stdout.contains("running 1 test"),
        "{test} did not run inside L1 (is the name exact?):\n{}\n{}",
        output.stdout,
        output.stderr
    );
    output.assert_success();
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    println!("L1 run of {test}: {:.1} s wall", output.wall.as_secs_f64());
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_l1_that_reset_itself_is_told_from_a_timeout_and_a_shutdown() {
        let quiet = "SeaBIOS\nveil-l1: ready\n[ 23.7] kvm: kvm [241]: vcpu0 ...\n";
        let status = |code: i32| {
            // A wait(2) status: the exit code in the second byte.
            std::os::unix::process::ExitStatusExt::from_raw(code << 8)
        };
        let exited: std::process::ExitStatus = status(0);
        assert!(l1_reset_itself(&exited.to_string(), quiet));
        assert!(!l1_reset_itself(
            &exited.to_string(),
            &format!("{quiet}[ 31.7] reboot: Power down\n")
        ));
        let killed: std::process::ExitStatus = std::os::unix::process::ExitStatusExt::from_raw(9);
        assert!(!l1_reset_itself(&killed.to_string(), quiet));
    }

    #[test]
    fn a_silent_heartbeat_counts_only_past_its_limits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let secs = Duration::from_secs;
        let limit = secs(60);
        // Booting: no beat yet, for as long as L1 may take to start beating.
        assert_eq!(silence(None, now, secs(30), limit), None);
        assert_eq!(silence(None, now, secs(181), limit), Some(secs(181)));
        // Beating.
        assert_eq!(silence(Some(now - secs(2)), now, secs(300), limit), None);
        assert_eq!(silence(Some(now - secs(60)), now, secs(300), limit), None);
        // Silent past the limit, however long L1 has run.
        assert_eq!(
            silence(Some(now - secs(61)), now, secs(70), limit),
            Some(secs(61))
        );
        // A beat "in the future" (the clock stepped back) is not a silence.
        assert_eq!(silence(Some(now + secs(5)), now, secs(300), limit), None);
    }
}
