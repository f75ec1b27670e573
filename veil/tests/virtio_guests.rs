//! Boots the virtio test guests (minimal freestanding virtio-mmio drivers) under real KVM
//! through the `veil` binary: virtio-blk against a raw image, virtio-vsock against host
//! programs on the hybrid Unix sockets, and the boot timer. Each test checks the guest's
//! report on the serial console and the host side of the same I/O.
//!
//! Every wait is bounded by [`HANG_GUARD`]: a generous limit that only turns a hang into a
//! failure, never a timing assertion.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::running::{RunningVeil, HANG_GUARD};
use veil_tests::Guest;

const SECTOR: usize = 512;

/// Runs a guest to completion and checks it ended cleanly with `done` and no failure.
fn run_to_done(guest: Guest, args: &[&str]) -> String {
    let (status, out, err) = RunningVeil::start(guest, args).finish();
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.ends_with("done\n"), "guest did not finish: {out}");
    out
}

fn line_with<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in: {out}"))
}

/// The value of ` key=` in a console line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

// ---- virtio-blk ----

/// What the blk guest writes: byte `i` of sector `s`.
fn blk_pattern(sector: usize, i: usize) -> u8 {
    (sector * 31 + i * 7 + 1) as u8
}

/// Deterministic, non-repeating content for the read-only image.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect()
}

/// The blk guest's hash of a sector.
fn sector_hash(sector: &[u8]) -> u64 {
    sector
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

#[test]
fn blk_guest_pattern_reaches_the_host_file_and_read_only_writes_fail() {
    let dir = tempfile::tempdir().unwrap();
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).unwrap();
    let ro_content = noise(64 << 10, 7);
    std::fs::write(&ro, &ro_content).unwrap();

    let rw_arg = format!("{},id=veil-disk-a", rw.display());
    let ro_arg = format!("{},ro", ro.display());
    let out = run_to_done(
        Guest::VirtioBlk,
        &[
            "--cmdline",
            "console=ttyS0",
            "--disk",
            &rw_arg,
            "--disk",
            &ro_arg,
        ],
    );

    // The guest found both disks where the VMM announced them, with their sizes and modes.
    let blk0 = line_with(&out, "blk0 addr=");
    assert_eq!(field(blk0, "addr"), "0xd0001000", "{out}");
    assert_eq!(field(blk0, "irq"), "5", "{out}");
    assert_eq!(field(blk0, "capacity"), "2048", "{out}");
    assert_eq!(field(blk0, "ro"), "0", "{out}");
    assert_eq!(field(blk0, "flush"), "1", "{out}");
    let blk1 = line_with(&out, "blk1 addr=");
    assert_eq!(field(blk1, "addr"), "0xd0002000", "{out}");
    assert_eq!(field(blk1, "capacity"), "128", "{out}");
    assert_eq!(field(blk1, "ro"), "1", "{out}");

    for expected in [
        "blk0 write 0-7 status=0",
        "blk0 write 8-15 split status=0",
        "blk0 write last status=0",
        "blk0 write beyond end status=1",
        "blk0 flush status=0",
        "blk0 readback 0-15 ok",
        "blk0 readback last ok",
        "blk0 read beyond end status=1",
        "blk0 id=[veil-disk-a]",
        // Eight requests in flight at once; the used-buffer interrupt bit, cleared by ACK.
        "blk0 batch of 8 ok",
        "blk0 interrupt status=1 after_ack=0",
        // A reset clears the status and the queue, and a fresh setup works.
        "blk0 reset status=0 queue_ready=0",
        "blk0 readback after reset ok",
        "blk1 write status=1",
        "blk1 read status=0",
    ] {
        assert!(out.lines().any(|l| l == expected), "no {expected:?}: {out}");
    }
    let hash = format!("{:#x}", sector_hash(&ro_content[..SECTOR]));
    assert_eq!(
        field(line_with(&out, "blk1 sector0"), "hash"),
        hash,
        "{out}"
    );

    // The host file holds exactly what the guest wrote; the refused write left no trace.
    let disk = std::fs::read(&rw).unwrap();
    assert_eq!(disk.len(), 1 << 20, "the image changed size");
    for (sector, data) in disk.chunks(SECTOR).enumerate() {
        let written = !(16..2040).contains(&sector);
        for (i, &b) in data.iter().enumerate() {
            let want = if written { blk_pattern(sector, i) } else { 0 };
            assert_eq!(b, want, "byte {i} of sector {sector}");
        }
    }
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_content,
        "read-only image changed"
    );
}

#[test]
fn blk_guest_sees_no_disk_without_a_disk_and_a_placeholder_as_empty() {
    // Without --disk the guest finds nothing to drive and says so.
    let (status, out, _) = RunningVeil::start(Guest::VirtioBlk, &[]).finish();
    assert_eq!(status.code(), Some(0));
    assert!(out.contains("blk devices=0\n"), "{out}");
    assert!(out.contains("FAIL: no virtio-blk device"), "{out}");

    // A placeholder drive (no file yet) has capacity 0: every read is out of bounds.
    let (status, out, _) = RunningVeil::start(
        Guest::VirtioBlk,
        &["--cmdline", "console=ttyS0", "--disk", ",id=later"],
    )
    .finish();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        field(line_with(&out, "blk0 addr="), "capacity"),
        "0",
        "{out}"
    );
    assert!(out.contains("FAIL: blk0 too small"), "{out}");
}

#[test]
fn blk_bench_mode_moves_the_data_intact() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bench.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let out = run_to_done(
        Guest::VirtioBlk,
        &[
            "--cmdline",
            "console=ttyS0 blk.bench_mib=4",
            "--disk",
            img.to_str().unwrap(),
        ],
    );
    let line = line_with(&out, "bench blk ");
    assert_eq!(field(line, "mib"), "4", "{out}");
    assert!(field(line, "write_cycles").parse::<u64>().unwrap() > 0);
    let random = line_with(&out, "bench blk4k ");
    assert_eq!(field(random, "ops"), "1024", "{out}");
    assert!(field(random, "read_cycles").parse::<u64>().unwrap() > 0);
    // The guest wrote 0x5a over the whole disk (the random pass writes the same byte).
    let disk = std::fs::read(&img).unwrap();
    if let Some(i) = disk.iter().position(|&b| b != 0x5a) {
        panic!("byte {i} of the disk is {:#x}", disk[i]);
    }
}

// ---- virtio-vsock ----

/// Byte `k` of the guest's vsock test stream `stream` (periodic with a prime period).
fn stream_byte(stream: u32, k: u32) -> u8 {
    ((k % 251) * 7 + stream * 29 + 3) as u8
}

fn stream(stream: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|k| stream_byte(stream, k)).collect()
}

fn check_stream(which: u32, got: &[u8]) {
    if let Some(k) = (0..got.len()).find(|&k| got[k] != stream_byte(which, k as u32)) {
        panic!("stream {which} differs at byte {k} of {}", got.len());
    }
}

fn set_timeouts(s: &UnixStream) {
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.set_write_timeout(Some(HANG_GUARD)).unwrap();
}

/// Accepts one connection on a non-blocking listener within the hang guard.
fn accept(listener: &UnixListener) -> UnixStream {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                set_timeouts(&s);
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("no guest connection: {e}"),
        }
    }
}

/// Bytes each way: more than the device's 256 KiB buffer for guest data plus what a Unix
/// socket buffers, and many times the guest's 16 KiB receive buffer, so both directions run
/// out of credit and must wait.
const VSOCK_BYTES: usize = 1 << 20;

fn vsock_args<'a>(uds: &'a str, cmdline: &'a str) -> Vec<&'a str> {
    vec!["--cmdline", cmdline, "--vsock-cid", "3", "--vsock-uds", uds]
}

#[test]
fn vsock_guest_connects_to_a_host_listener_and_is_refused_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (stalled_tx, stalled) = mpsc::channel::<()>();
    let host = thread::spawn(move || {
        let mut s = accept(&listener);
        // Read nothing until the guest has run out of credit.
        stalled.recv_timeout(HANG_GUARD).expect("guest stalled");
        let mut got = vec![0u8; VSOCK_BYTES];
        s.read_exact(&mut got).expect("guest data");
        check_stream(1, &got);
        s.write_all(&stream(2, VSOCK_BYTES)).expect("reply");
        // Closing is what the guest waits for next (SHUTDOWN from the device).
    });

    let cmdline = format!(
        "console=ttyS0 vsock.connect=1234 vsock.refused=1235 vsock.bytes={VSOCK_BYTES} vsock.buf=16384"
    );
    let uds_arg = uds.to_str().unwrap();
    let mut vm = RunningVeil::start(Guest::VirtioVsock, &vsock_args(uds_arg, &cmdline));
    // With the host not reading, the device's buffer and the socket's fill up and the guest
    // must stop sending: its credit is exhausted well before the whole stream is out.
    let line = vm.wait_line("connect waiting for credit after ");
    let sent: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((256 << 10..VSOCK_BYTES).contains(&sent), "{line}");
    stalled_tx.send(()).unwrap();
    let (status, out, err) = vm.finish();
    host.join().expect("host side of the guest's connection");
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("FAIL"), "{out}");
    let dev = line_with(&out, "vsock addr=");
    assert_eq!(field(dev, "addr"), "0xd0001000", "{out}");
    assert_eq!(field(dev, "cid"), "3", "{out}");
    for expected in [
        "connect 1234 established peer_buf_alloc=262144".to_string(),
        format!("connect sent {VSOCK_BYTES}"),
        format!("connect received {VSOCK_BYTES} ok"),
        "connect shutdown by host flags=3".to_string(),
        "refused 1235 rst".to_string(),
        "done".to_string(),
    ] {
        assert!(out.lines().any(|l| l == expected), "no {expected:?}: {out}");
    }
    assert!(!uds.exists(), "the vsock socket outlived the VM");
}

#[test]
fn vsock_host_connect_reaches_a_listening_guest_and_data_flows_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let cmdline =
        format!("console=ttyS0 vsock.listen=1024 vsock.bytes={VSOCK_BYTES} vsock.buf=16384");
    let mut vm = RunningVeil::start(
        Guest::VirtioVsock,
        &vsock_args(uds.to_str().unwrap(), &cmdline),
    );
    vm.wait_line("listening 1024");

    // A CONNECT to a port nobody listens on is refused by the guest: the socket just closes.
    let mut refused = UnixStream::connect(&uds).unwrap();
    set_timeouts(&refused);
    refused.write_all(b"CONNECT 999\n").unwrap();
    let mut rest = Vec::new();
    refused.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "refused CONNECT answered {rest:?}");
    vm.wait_line("vsock refused op=1 to port 999");

    let mut s = UnixStream::connect(&uds).unwrap();
    set_timeouts(&s);
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    let host_port = ok
        .strip_prefix("OK ")
        .and_then(|p| p.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("answer {ok:?}"));
    let accepted = vm.wait_line("accepted host_port=");
    assert_eq!(field(&accepted, "host_port"), host_port);

    s.write_all(&stream(3, VSOCK_BYTES)).unwrap();
    let mut got = vec![0u8; VSOCK_BYTES];
    reader.read_exact(&mut got).expect("guest data");
    check_stream(4, &got);
    // The guest then shuts the stream down: the host sees end of file.
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty(), "{} bytes after the stream", tail.len());

    let (status, out, err) = vm.finish();
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("FAIL"), "{out}");
    for expected in [
        format!("listen received {VSOCK_BYTES} ok"),
        format!("listen sent {VSOCK_BYTES}"),
        "listen closed rst".to_string(),
        "done".to_string(),
    ] {
        assert!(out.lines().any(|l| l == expected), "no {expected:?}: {out}");
    }
}

/// MiB the vsock bench test streams; `VEIL_VSOCK_BENCH_MIB` lets the benchmark harness use
/// this host side with a bigger figure.
fn vsock_bench_mib() -> usize {
    std::env::var("VEIL_VSOCK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[test]
fn vsock_bench_mode_echoes_through_the_host_intact() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mib = vsock_bench_mib();
    let echo = thread::spawn(move || {
        let mut s = accept(&listener);
        let mut w = s.try_clone().unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break total,
                Ok(n) => {
                    // The guest sends stream 1 (the bench counts the echo without checking).
                    for (i, &b) in buf[..n].iter().enumerate() {
                        let k = (total + i) as u32;
                        assert_eq!(b, stream_byte(1, k), "bench byte {k}");
                    }
                    w.write_all(&buf[..n]).expect("echo");
                    total += n;
                }
                Err(e) => panic!("echo read: {e}"),
            }
        }
    });
    let cmdline =
        format!("console=ttyS0 vsock.connect=5000 vsock.bench_mib={mib} vsock.buf=262144");
    let started = Instant::now();
    let (status, out, err) = RunningVeil::start(
        Guest::VirtioVsock,
        &vsock_args(uds.to_str().unwrap(), &cmdline),
    )
    .finish();
    let wall = started.elapsed();
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");
    // The whole stream and the 1000 pings arrived intact and were echoed.
    assert_eq!(echo.join().unwrap(), (mib << 20) + 1000);
    println!("{} (whole VM {wall:?})", line_with(&out, "bench vsock"));
}

// ---- boot timer ----

#[test]
fn boot_timer_write_is_recorded_once_and_reported_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.json");
    let out = run_to_done(
        Guest::BootTimer,
        &["--boot-timer", "--metrics-json", metrics.to_str().unwrap()],
    );
    let line = line_with(&out, "boot_timer before=");
    assert_eq!(field(line, "before"), "0", "{out}");
    let recorded: u64 = field(line, "recorded_us").parse().unwrap();
    assert!(recorded > 0, "{out}");
    assert_eq!(field(line, "after_second_write"), recorded.to_string());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    let reported = json["boot_timer_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("boot_timer_us missing: {json}"));
    assert_eq!(reported, recorded, "{json}");
    // The guest hit the timer after its vCPU started and before the VM was torn down.
    assert!(
        json["first_vcpu_run_us"].as_u64().unwrap() <= reported,
        "{json}"
    );
    assert!(reported <= json["exited_us"].as_u64().unwrap(), "{json}");
}

#[test]
fn boot_timer_is_absent_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.json");
    let out = run_to_done(
        Guest::BootTimer,
        &["--metrics-json", metrics.to_str().unwrap()],
    );
    // Nothing answers at the timer's address: reads are all ones, nothing is recorded.
    let line = line_with(&out, "boot_timer before=");
    assert_eq!(field(line, "recorded_us"), u64::MAX.to_string(), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert!(json["boot_timer_us"].is_null(), "{json}");
}
