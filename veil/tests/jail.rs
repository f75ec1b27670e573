//! `veil run --jail`: the VMM runs as an unprivileged user with no capabilities,
//! `no_new_privs` and a seccomp filter on every thread, in namespaces of its own with an empty
//! root; the guest still runs, its vsock socket is reachable from outside, the exit status and
//! SIGTERM are relayed, the control socket swaps disks, and bad input leaves nothing behind.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use veil_tests::Guest;
use veil_vmm::control::ControlClient;

/// The uid/gid of `nobody`, the jail's default user.
const NOBODY: &str = "65534";

/// A jailed `veil run` whose console lines arrive on a channel.
struct Jailed {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Jailed {
    fn start(guest: Guest, extra: &[&str]) -> Self {
        Self::start_with(guest, extra, |c| c)
    }

    fn start_with(
        guest: Guest,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Self {
        let mut command = Command::new(common::VEIL);
        command
            .args(["run", "--jail", "--kernel", guest.path().to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = prepare(&mut command).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    fn wait_line(&self, start: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no console line starting {start:?}"));
            if line.starts_with(start) {
                return line;
            }
        }
    }

    /// The jailed VMM: the only child of `veil`, PID 1 of its own PID namespace.
    fn vmm_pid(&self) -> String {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        let mut pids = children.split_whitespace();
        let vmm = pids.next().expect("veil has no child").to_string();
        assert_eq!(pids.next(), None, "more than one child");
        vmm
    }

    fn terminate(self) -> (std::process::ExitStatus, String) {
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        self.finish()
    }

    fn finish(self) -> (std::process::ExitStatus, String) {
        let out = self.child.wait_with_output().unwrap();
        (out.status, common::stderr(&out))
    }
}

/// One field of a `/proc/.../status` file.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

fn namespace(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn a_jailed_vmm_is_unprivileged_filtered_and_sees_no_host_file() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let vm = Jailed::start(
        Guest::VirtioVsock,
        &[
            "--vcpus",
            "2",
            "--vsock-cid",
            "3",
            "--vsock-uds",
            uds.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 vsock.listen=1024 vsock.bytes=4096",
            "--jail-max-open-files",
            "64",
            "--jail-max-memory-mib",
            "4096",
        ],
    );
    vm.wait_line("listening 1024");
    let vmm = vm.vmm_pid();

    let mut tasks = Vec::new();
    let jail_net = namespace(&vmm, "net");
    for task in std::fs::read_dir(format!("/proc/{vmm}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let name = field(&status, "Name:");
        // The network namespace is per thread: every one is in the jail's (the VM is built
        // on a thread of its own, left in the host's, which must be gone).
        let net = std::fs::read_link(task.join("ns/net")).unwrap();
        assert_eq!(net.display().to_string(), jail_net, "{name}");
        assert_eq!(field(&status, "Uid:"), [NOBODY; 4].join(" "), "{name}");
        assert_eq!(field(&status, "Gid:"), [NOBODY; 4].join(" "), "{name}");
        assert_eq!(field(&status, "Groups:"), "", "{name}");
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(&status, set), "0000000000000000", "{name} {set}");
        }
        assert_eq!(field(&status, "NoNewPrivs:"), "1", "{name}");
        assert_eq!(field(&status, "Seccomp:"), "2", "{name}");
        tasks.push(name);
    }
    for expected in [
        "veil",
        "veil-signals",
        "veil-events",
        "veil-vcpu0",
        "veil-vcpu1",
    ] {
        assert!(
            tasks.iter().any(|t| t == expected),
            "no {expected}: {tasks:?}"
        );
    }
    // Its root is an empty directory; none of the host's files are there.
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(root.is_empty(), "the jail's root holds {root:?}");
    assert!(!Path::new(&format!("/proc/{vmm}/root/etc/passwd")).exists());
    for kind in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_ne!(namespace(&vmm, kind), namespace("self", kind), "{kind}");
    }
    // It is PID 1 there.
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    assert!(field(&status, "NSpid:").ends_with(" 1"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().filter(|w| *w == "64").count() == 2),
        "{limits}"
    );
    let address_space = (4096u64 << 20).to_string();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max address space") && l.contains(&address_space)),
        "{limits}"
    );

    // The vsock socket is still reachable from outside, and the guest answers through it.
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut ok = [0u8; 3];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK ");
    vm.wait_line("accepted host_port=");

    // SIGTERM to veil stops the jailed VM cleanly, with veil's usual status; the socket the
    // jailed VMM could not remove is gone too.
    let (status, err) = vm.terminate();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(!err.contains("killed by signal"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_guest_exit_status_is_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.json");
    // A guest that resets: 0, and the metrics file opened before the jail closed is filled.
    let out = common::veil(&[
        "run",
        "--jail",
        "--kernel",
        Guest::BootInfo.path().to_str().unwrap(),
        "--metrics-json",
        metrics.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let json = std::fs::read_to_string(&metrics).unwrap();
    assert!(json.contains("\"clean_exit\": true"), "{json}");
    // A crashing guest: 2, with the reason.
    let out = common::veil(&[
        "run",
        "--jail",
        "--kernel",
        Guest::Crash.path().to_str().unwrap(),
    ]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("veil: guest failed"), "{err}");
}

#[test]
fn bad_jail_input_is_refused_by_name_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let uds = uds.to_str().unwrap();
    let idle = Guest::Idle.path().to_str().unwrap();
    let vsock = ["--vsock-cid", "3", "--vsock-uds", uds];
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--jail"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&vsock);
        common::veil(&args)
    };
    let out = run(&["--kernel", idle, "--jail-user", "no-such-user-veil"]);
    common::assert_refused(&out, &["--jail", "no-such-user-veil"]);
    let out = run(&["--kernel", idle, "--jail-user", "nobody:no-such-group-veil"]);
    common::assert_refused(&out, &["no-such-group-veil"]);
    let out = run(&["--kernel", idle, "--jail-user", "root"]);
    common::assert_refused(&out, &["must not be root"]);
    let out = run(&["--kernel", "/nonexistent/veil-kernel"]);
    common::assert_refused(&out, &["/nonexistent/veil-kernel"]);
    let out = run(&["--kernel", idle, "--control-fd", "1"]);
    common::assert_refused(&out, &["--control-fd 1"]);
    let out = common::veil(&["run", "--kernel", idle, "--jail-user", "nobody"]);
    assert_eq!(out.status.code(), Some(1), "--jail-user without --jail");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The control socket swaps an image passed as a file descriptor into a placeholder drive
/// (the jailed VMM could not open its path), refuses bad requests by name, and stops the VM
/// when its owner closes it.
#[test]
fn the_control_socket_swaps_disks_and_its_closing_stops_the_vm() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs_fd = theirs.as_raw_fd();
    let vm = Jailed::start_with(
        Guest::Idle,
        &[
            "--disk",
            ",ro,id=slot0",
            "--disk",
            ",ro,id=slot1",
            "--control-fd",
            "3",
        ],
        |command| {
            // SAFETY: dup2 is async-signal-safe; fd 3 is the child's end, without CLOEXEC.
            unsafe {
                command.pre_exec(move || {
                    if libc::dup2(theirs_fd, 3) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            }
        },
    );
    drop(theirs);
    vm.wait_line("veil-test-guest idle");
    let mut control = ControlClient::new(ours);
    if let Err(e) = control.swap(0, &File::open(&image).unwrap()) {
        panic!("swap: {e}; veil: {:?}", vm.finish());
    }
    control.swap(1, &File::open(&image).unwrap()).unwrap();
    control.swap(0, &File::open(&image).unwrap()).unwrap();
    let err = control
        .swap(2, &File::open(&image).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no drive 2"), "{err}");
    drop(control);
    let (status, err) = vm.finish();
    assert_eq!(status.code(), Some(0), "{err}");
}

/// SIGKILL of `veil` (the relay) takes the jailed VMM with it: nothing keeps running.
#[test]
fn the_jailed_vmm_dies_with_its_relay() {
    let mut vm = Jailed::start(Guest::Idle, &[]);
    vm.wait_line("veil-test-guest idle");
    let vmm = vm.vmm_pid();
    vm.child.kill().unwrap();
    vm.child.wait().unwrap();
    // Reaped by init (or left a zombie for a moment): either way it runs no more.
    let gone = (0..600).any(|_| {
        let state = std::fs::read_to_string(format!("/proc/{vmm}/stat")).unwrap_or_default();
        let running = state
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X");
        if running {
            std::thread::sleep(Duration::from_millis(50));
        }
        !running
    });
    assert!(gone, "the jailed VMM {vmm} outlived its relay");
}
