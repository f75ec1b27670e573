//! Fault injection with real guests under KVM: what the `veil` binary does when the world
//! breaks under a running VM. Each test names the fault and checks both sides: what the guest
//! reports on its console and that the VMM lives on (or, for faults that end the VM, ends
//! cleanly with its documented exit status and leaves nothing behind).
//!
//! Exit statuses of `veil run` (see `veil/src/cli.rs`): 0 the guest ended the VM normally,
//! 1 an error before or while running, 2 the guest failed (triple fault, panic reset).
//!
//! Every wait is bounded by [`HANG_GUARD`]: it only turns a hang into a failure, never a
//! timing assertion.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::running::{RunningVeil, HANG_GUARD};
use veil_tests::Guest;

/// What the device buffers per connection for a host program that does not read
/// (`veil_devices::virtio::vsock::CONN_BUF_SIZE`).
const VSOCK_CONN_BUF: usize = 256 << 10;

/// Asserts the VM ended normally, the guest reached `done` and printed every `expected` line.
fn assert_survived(status: ExitStatus, out: &str, err: &str, expected: &[&str]) {
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.ends_with("done\n"),
        "guest did not finish: {out}\nstderr: {err}"
    );
    for line in expected {
        assert!(out.lines().any(|l| l == *line), "no {line:?} in: {out}");
    }
}

fn line_with<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in: {out}"))
}

/// The number after `prefix` up to the next space.
fn number_after(line: &str, prefix: &str) -> u64 {
    line.split(prefix)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?} in {line:?}"))
}

// ---- the backing disk ----

/// Starts the blk_fault guest on `image`, waits until it is ready, breaks the image with
/// `fault`, lets the guest go on and returns how the VM ended.
fn disk_fault(image: &Path, write_kib: u32, fault: impl FnOnce()) -> (ExitStatus, String, String) {
    let cmdline = format!("console=ttyS0 blk.write_kib={write_kib}");
    let mut vm = RunningVeil::start(
        Guest::BlkFault,
        &["--cmdline", &cmdline, "--disk", image.to_str().unwrap()],
    );
    vm.wait_line("fault ready capacity=");
    fault();
    vm.go();
    vm.finish()
}

#[test]
fn disk_truncated_mid_run_fails_reads_with_an_io_error_and_the_vmm_lives() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x11u8; 1 << 20]).unwrap();
    let (status, out, err) = disk_fault(&image, 64, || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(0)
            .unwrap()
    });
    // The capacity the guest was given no longer exists: reads fail with IOERR (1) rather
    // than returning stale guest memory; a write simply extends the file again.
    assert_survived(
        status,
        &out,
        &err,
        &[
            "fault ready capacity=2048",
            "read first status=1",
            "read last status=1",
            "write kib=64 status=0",
            "flush status=0",
            "reread first status=0",
        ],
    );
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(disk.len(), 64 << 10, "the guest's write extended the file");
    assert!(disk.iter().all(|&b| b == 0x5a));
}

#[test]
fn disk_removed_mid_run_keeps_serving_the_open_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x11u8; 1 << 20]).unwrap();
    let (status, out, err) = disk_fault(&image, 64, || std::fs::remove_file(&image).unwrap());
    // The VMM holds the image open: removing its name changes nothing for the guest.
    assert_survived(
        status,
        &out,
        &err,
        &[
            "read first status=0",
            "read last status=0",
            "write kib=64 status=0",
            "flush status=0",
            "reread first status=0",
        ],
    );
    assert!(!image.exists(), "the VMM recreated the removed image");
}

/// A tmpfs of `size` mounted on a fresh directory for the life of the guard.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "veil-enospc"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn enospc_on_write_is_an_io_error_for_the_guest_and_the_vmm_lives() {
    // A sparse 4 MiB image on a 256 KiB file system: the guest's writes run out of space.
    let Some(fs) = Tmpfs::mount("256k") else {
        veil_tests::skip_or_fail("cannot mount a tmpfs (needs root) for the ENOSPC test");
        return;
    };
    let image = fs.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let (status, out, err) = disk_fault(&image, 4096, || {});
    assert_survived(
        status,
        &out,
        &err,
        &["read first status=0", "read last status=0"],
    );
    let write = line_with(&out, "write kib=");
    assert!(write.ends_with(" status=1"), "{out}");
    let written = number_after(write, "kib=");
    assert!(
        written <= 256,
        "{written} KiB written to a 256 KiB file system: {out}"
    );
    // The device still answers once the disk is full.
    assert!(out.contains("reread first status=0\n"), "{out}");
}

// ---- vsock ----

fn vsock_args<'a>(uds: &'a str, cmdline: &'a str) -> Vec<&'a str> {
    vec!["--cmdline", cmdline, "--vsock-cid", "3", "--vsock-uds", uds]
}

/// A host listener for the guest's connects to port 1234 (`<uds>_1234`).
fn host_listener(uds: &Path) -> UnixListener {
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

fn accept(listener: &UnixListener) -> UnixStream {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(HANG_GUARD)).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("no guest connection: {e}"),
        }
    }
}

#[test]
fn vsock_host_peer_vanishing_mid_stream_ends_the_guest_stream_only() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = host_listener(&uds);
    let host = thread::spawn(move || {
        let mut s = accept(&listener);
        let mut some = vec![0u8; 64 << 10];
        s.read_exact(&mut some)
            .expect("the start of the guest's stream");
        // Then the host program goes away in the middle of the stream.
    });
    let cmdline =
        "console=ttyS0 vsock.connect=1234 vsock.bytes=4194304 vsock.buf=16384 vsock.refused=1235";
    let vm = RunningVeil::start(
        Guest::VirtioVsock,
        &vsock_args(uds.to_str().unwrap(), cmdline),
    );
    host.join().unwrap();
    let (status, out, err) = vm.finish();
    // The guest's stream ends (SHUTDOWN or RST) after what the host read, and the device
    // goes on serving: the next connect is answered.
    assert_survived(status, &out, &err, &["refused 1235 rst"]);
    let ended = line_with(&out, "connect stream ended by host after ");
    let sent = number_after(ended, "after ");
    assert!((64 << 10..4 << 20).contains(&sent), "{ended}");
    assert!(!uds.exists(), "the vsock socket outlived the VM");
}

#[test]
fn vsock_guest_flooding_past_its_credit_is_reset_and_vmm_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = host_listener(&uds);
    let (done_tx, done) = mpsc::channel::<()>();
    // The host program accepts and never reads until the test is over.
    let host = thread::spawn(move || {
        let s = accept(&listener);
        let _ = done.recv_timeout(HANG_GUARD);
        drop(s);
    });
    const FLOOD: u64 = 64 << 20;
    let cmdline = format!(
        "console=ttyS0 vsock.connect=1234 vsock.bytes={FLOOD} vsock.flood=1 vsock.refused=1235"
    );
    let mut vm = RunningVeil::start(
        Guest::VirtioVsock,
        &[
            &vsock_args(uds.to_str().unwrap(), &cmdline)[..],
            &["--mem-mib", "32"],
        ]
        .concat(),
    );
    let ended = vm.wait_line("connect stream ended by host after ");
    // The device resets a guest that sends past its credit once the host socket and the
    // connection's buffer are full: the rest of the 64 MiB never reaches the VMM.
    let peak_kib = vm.status_kib("VmHWM");
    done_tx.send(()).unwrap();
    host.join().unwrap();
    let (status, out, err) = vm.finish();
    assert_survived(status, &out, &err, &["refused 1235 rst"]);
    assert!(ended.contains(" rst=1"), "{ended}");
    let sent = number_after(&ended, "after ");
    assert!(
        sent < (VSOCK_CONN_BUF as u64) + (8 << 20),
        "{sent} bytes accepted from a guest ignoring credit: {ended}"
    );
    // 32 MiB of guest RAM at most, the VMM's own few MiB, and nothing that grows with the
    // flood (64 MiB of it).
    assert!(peak_kib < 64 << 10, "VMM peak RSS {peak_kib} KiB");
    eprintln!("flood: {sent} bytes taken before the reset, VMM peak RSS {peak_kib} KiB");
}

#[test]
fn sigkill_of_veil_gives_a_connected_vsock_client_eof_and_the_socket_path_is_reusable() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let uds_arg = uds.to_str().unwrap().to_string();
    let cmdline = "console=ttyS0 vsock.listen=1024 vsock.bytes=4096";
    for round in 0..2 {
        // The second VMM finds the socket file the killed one could not remove.
        let mut vm = RunningVeil::start(Guest::VirtioVsock, &vsock_args(&uds_arg, cmdline));
        vm.wait_line("listening 1024");
        let mut client = UnixStream::connect(&uds).unwrap();
        client.set_read_timeout(Some(HANG_GUARD)).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert!(ok.starts_with("OK "), "round {round}: answer {ok:?}");

        vm.child.kill().unwrap(); // SIGKILL
        let status = vm.child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // Whatever the guest already sent may still be read; then end of file, not a hang
        // or an error.
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).expect("EOF after SIGKILL");
        assert!(rest.len() <= 4096, "round {round}: {} bytes", rest.len());
    }
}

// ---- the guest itself ----

#[test]
fn mmio_storm_to_unmapped_and_device_addresses_neither_kills_nor_hangs_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let mut content = vec![0u8; 64 << 10];
    content[0] = 0xab;
    std::fs::write(&image, &content).unwrap();
    let uds = dir.path().join("v.sock");
    let vm = RunningVeil::start(
        Guest::MmioStorm,
        &[
            "--cmdline",
            "console=ttyS0 storm.rounds=2",
            "--mem-mib",
            "64",
            "--disk",
            image.to_str().unwrap(),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            uds.to_str().unwrap(),
        ],
    );
    let (status, out, err) = vm.finish();
    assert_survived(
        status,
        &out,
        &err,
        &["after storm read status=0 byte0=0xab"],
    );
    let accesses = number_after(line_with(&out, "storm accesses="), "accesses=");
    assert!(accesses > 1000, "{out}");
    eprintln!("storm: {accesses} accesses");
    assert!(!uds.exists(), "the vsock socket outlived the VM");
}

#[test]
fn triple_fault_ends_veil_with_status_2_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let uds = dir.path().join("v.sock");
    // `ud2` with no IDT: the exception cannot be delivered, the vCPU shuts down.
    let vm = RunningVeil::start(
        Guest::Crash,
        &[
            "--disk",
            image.to_str().unwrap(),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            uds.to_str().unwrap(),
        ],
    );
    let (status, out, err) = vm.finish();
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("veil: guest failed: vCPU 0"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.contains("survived"), "{out}");
    assert!(!uds.exists(), "the vsock socket outlived the VM");
    assert_eq!(std::fs::read(&image).unwrap(), vec![0u8; 4096]);
}
