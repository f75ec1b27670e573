//! Seccomp: a forbidden system call from a filtered vCPU thread kills the whole process while
//! allowed ones do not, every thread of a running `veil` is filtered (and none with
//! `--no-seccomp`), and the library filters only the threads it creates.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use veil_tests::Guest;
use veil_vmm::seccomp::{self, ThreadKind};
use veil_vmm::{Console, KernelSource, SeccompLevel, Vm, VmConfig, VmExit};

/// The environment variable telling [`seccomp_child`] what to do when this binary re-runs
/// itself as a helper process.
const CHILD: &str = "VEIL_SECCOMP_CHILD";
/// What the helper prints once the allowed calls went through.
const SURVIVED: &str = "allowed calls survived";

/// Not a test on its own: the helper process of the tests below. Without [`CHILD`] set it
/// does nothing. With it, a thread named like a vCPU thread installs the vCPU filter, makes
/// calls a vCPU thread makes, then the call named by [`CHILD`] (if any).
#[test]
fn seccomp_child() {
    let Ok(forbidden) = std::env::var(CHILD) else {
        return;
    };
    let vcpu = std::thread::Builder::new()
        .name("veil-vcpu0".into())
        .spawn(move || {
            seccomp::apply_to_current_thread(ThreadKind::Vcpu).unwrap();
            // Allowed: KVM_RUN (on no fd: EBADF), writes, memory, locks.
            // SAFETY: ioctl on an invalid fd only fails.
            let rc = unsafe { libc::ioctl(-1, 0xae80, 0) };
            assert_eq!(rc, -1);
            let buf = vec![0u8; 1 << 20];
            drop(buf);
            let lock = Mutex::new(1);
            *lock.lock().unwrap() += 1;
            let mut err = std::io::stderr();
            writeln!(err, "{SURVIVED}").unwrap();
            err.flush().unwrap();
            match forbidden.as_str() {
                // A socket: nothing a vCPU thread does.
                "socket" => {
                    // SAFETY: plain socket(2); the fd, if any, is leaked in a dying process.
                    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                }
                // Opening a host file is refused (EACCES), not fatal: glibc's malloc may open
                // /proc/sys/vm/overcommit_memory from any thread.
                "openat" => {
                    let err = std::fs::File::open("/etc/hostname").unwrap_err();
                    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
                }
                // An ioctl number outside the vCPU list (KVM_CREATE_VM): the argument filter.
                "ioctl" => {
                    // SAFETY: ioctl on an invalid fd only fails, if allowed at all.
                    unsafe { libc::ioctl(-1, 0xae01, 0) };
                }
                // Starting a program.
                "execve" => {
                    let _ = Command::new("/bin/true").status();
                }
                _ => {}
            }
        })
        .unwrap();
    vcpu.join().unwrap();
    println!("the process lived on");
}

/// Runs [`seccomp_child`] in a new process with [`CHILD`] = `call`.
fn run_child(call: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, call)
        .output()
        .unwrap()
}

#[test]
fn allowed_calls_from_a_filtered_vcpu_thread_do_not_kill() {
    for call in ["none", "openat"] {
        let out = run_child(call);
        let err = common::stderr(&out);
        assert!(out.status.success(), "{call}: {:?}: {err}", out.status);
        assert!(err.contains(SURVIVED), "{call}: {err}");
        assert!(common::stdout(&out).contains("lived on"), "{call}");
    }
}

#[test]
fn a_forbidden_call_from_a_filtered_vcpu_thread_kills_the_process() {
    for call in ["socket", "ioctl", "execve"] {
        let out = run_child(call);
        let err = common::stderr(&out);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{call}: {:?}: {err}",
            out.status
        );
        // The allowed calls before it went through; the process did not go on.
        assert!(err.contains(SURVIVED), "{call}: {err}");
        assert!(!common::stdout(&out).contains("lived on"), "{call}");
    }
}

/// (thread name, `Seccomp:` mode) of every thread of `pid`.
fn seccomp_modes(pid: &str) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        modes.push((field("Name:"), field("Seccomp:")));
    }
    modes.sort();
    modes
}

/// Starts `veil run` on the idle guest with 2 vCPUs, waits for its first console line,
/// returns the seccomp mode of each of its threads and stops it with SIGTERM.
fn veil_thread_modes(extra: &[&str]) -> (Vec<(String, String)>, String) {
    let guest = Guest::Idle.path().to_str().unwrap();
    let mut child = Command::new(common::VEIL)
        .args(["run", "--kernel", guest, "--vcpus", "2"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "veil-test-guest idle\n");
    let modes = seccomp_modes(&child.id().to_string());
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{:?}: {}",
        out.status,
        common::stderr(&out)
    );
    (modes, common::stderr(&out))
}

#[test]
fn every_thread_of_a_running_veil_is_filtered() {
    let (modes, _) = veil_thread_modes(&[]);
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "veil",
        "veil-events",
        "veil-signals",
        "veil-vcpu0",
        "veil-vcpu1",
    ] {
        assert!(names.contains(&expected), "no {expected} thread: {modes:?}");
    }
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name} is not filtered: {modes:?}");
    }
}

#[test]
fn no_seccomp_runs_unfiltered_and_warns() {
    let (modes, stderr) = veil_thread_modes(&["--no-seccomp"]);
    assert!(modes.len() >= 4, "{modes:?}");
    for (name, mode) in &modes {
        assert_eq!(mode, "0", "thread {name} is filtered: {modes:?}");
    }
    assert!(stderr.contains("without seccomp"), "{stderr}");
}

/// A console writer that reports the first complete line.
#[derive(Clone)]
struct FirstLine(Arc<Mutex<(String, Option<mpsc::Sender<()>>)>>);

impl Write for FirstLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.lock().unwrap();
        state.0.push_str(&String::from_utf8_lossy(buf));
        if state.0.contains('\n') {
            if let Some(tx) = state.1.take() {
                let _ = tx.send(());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The library's default filters the vCPU and event-loop threads it creates and leaves the
/// embedding program's threads (the caller of `Vm::run` included) alone.
#[test]
fn the_library_filters_only_the_threads_it_creates() {
    let (tx, first_line) = mpsc::channel();
    let mut config = VmConfig::new(KernelSource::Path(Guest::Idle.path().into()));
    assert_eq!(config.seccomp, SeccompLevel::VmThreads);
    config.vcpus = 2;
    config.console = Console::Writer(Box::new(FirstLine(Arc::new(Mutex::new((
        String::new(),
        Some(tx),
    ))))));
    let vm = Vm::new(config).unwrap();
    let stop = vm.stop_handle();
    let runner = std::thread::Builder::new()
        .name("embedder-run".into())
        .spawn(move || {
            let outcome = vm.run().unwrap();
            // The calling thread is not filtered: it can still do anything.
            std::fs::read_to_string("/proc/self/status").unwrap();
            outcome
        })
        .unwrap();
    first_line.recv().unwrap();
    let modes = seccomp_modes("self");
    stop.stop();
    let outcome = runner.join().unwrap();
    assert_eq!(outcome.exit, VmExit::StopRequested);
    // KVM's own worker (kvm-nx-lpage-recovery) lives in the process too, but runs only
    // kernel code; it inherits the mode of whichever thread made it.
    for (name, mode) in modes.iter().filter(|(n, _)| !n.starts_with("kvm-")) {
        let want = if name.starts_with("veil-") { "2" } else { "0" };
        assert_eq!(mode, want, "thread {name}: {modes:?}");
    }
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["veil-events", "veil-vcpu0", "veil-vcpu1", "embedder-run"] {
        assert!(names.contains(&expected), "no {expected} thread: {modes:?}");
    }
}
