//! virtio-blk and virtio-vsock throughput, driven by the project's virtio test guests
//! (`tests/guests/virtio_blk.c`, `virtio_vsock.c`, built by veil-tests) through the `veil`
//! binary, the same way `veil/tests/virtio_guests.rs` drives them:
//! - `blk.bench_mib=N`: N MiB written sequentially in 512 KiB requests (one in flight), a
//!   flush, then read back; the guest reports TSC cycles for write+flush and for the read;
//!   then 1024 4 KiB writes and 1024 4 KiB reads at pseudo-random offsets, one in flight.
//! - `vsock.bench_mib=N` with `vsock.connect=5000`: the guest streams N MiB to host port 5000
//!   (a Unix socket `<uds>_5000` served by [`EchoServer`]) and waits for all of it to come
//!   back, then does 1000 one-byte round trips.
//!
//! The cycle counts become seconds with the host's TSC rate; each run is also checked against
//! the VM's wall time as seen from here, so a guest TSC that runs at another rate fails the
//! section instead of producing a wrong figure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use veil_tests::Guest;

use crate::bench::Bench;
use crate::guest_report::{self, GuestReportError, VSOCK_ROUND_TRIPS};
use crate::launch::{ms_between, LaunchError, Launched};
use crate::report::Section;
use crate::tsc;
use crate::vsock_echo::{self, EchoError, EchoServer};

const TITLE: &str = "Devices: virtio-blk and vsock throughput (test guests)";
/// Longest a benchmark VM may take: far beyond a healthy run, only turns a hang into a failure.
const VM_TIMEOUT: Duration = Duration::from_secs(120);
const VSOCK_PORT: u32 = 5000;
const GUEST_CID: &str = "3";

#[derive(Debug, thiserror::Error)]
enum DeviceRunError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("veil exited with status {status}; its output ends: {tail}")]
    Status { status: i32, tail: String },
    #[error(transparent)]
    Report(#[from] GuestReportError),
    #[error(transparent)]
    Echo(#[from] EchoError),
    #[error("cannot create the disk image {path}: {source}")]
    Image {
        path: String,
        source: std::io::Error,
    },
    #[error("the echo server saw {got} bytes, the guest should have sent {want}")]
    EchoCount { got: u64, want: u64 },
    #[error(
        "the guest's timed part ({guest_ms:.1} ms by its TSC at the host's rate) is longer than the whole VM ({wall_ms:.1} ms): the guest TSC does not run at the host's rate"
    )]
    TscMismatch { guest_ms: f64, wall_ms: f64 },
}

/// Runs one benchmark VM to its end; returns its console lines and wall time (ms).
fn run_vm(command: Command) -> Result<(Vec<String>, f64), DeviceRunError> {
    let mut vm = Launched::spawn(command)?;
    let ended = vm.wait(VM_TIMEOUT)?;
    let lines = vm.remaining_lines(Duration::from_secs(5));
    if ended.status != 0 {
        let tail = lines
            .iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<String>();
        return Err(DeviceRunError::Status {
            status: ended.status,
            tail: tail.trim_end().to_string(),
        });
    }
    Ok((lines, ms_between(vm.spawned_at, ended.at)))
}

fn veil_guest(veil: &Path, guest: Guest, cmdline: &str) -> Command {
    let mut c = Command::new(veil);
    c.arg("run").arg("--kernel").arg(guest.path()).args([
        "--console",
        "stdout",
        "--cmdline",
        cmdline,
    ]);
    c
}

fn check_tsc(guest_s: f64, wall_ms: f64) -> Result<(), DeviceRunError> {
    let guest_ms = guest_s * 1e3;
    if guest_ms > wall_ms {
        return Err(DeviceRunError::TscMismatch { guest_ms, wall_ms });
    }
    Ok(())
}

struct BlkRun {
    write_mib_s: f64,
    read_mib_s: f64,
    random_write_iops: f64,
    random_read_iops: f64,
}

fn blk_run(b: &Bench, dir: &Path, mib: u64, hz: f64) -> Result<BlkRun, DeviceRunError> {
    let image = dir.join("bench-blk.img");
    // A fresh sparse image per run: the guest writes all of it before reading.
    let _ = std::fs::remove_file(&image);
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(mib << 20))
        .map_err(|source| DeviceRunError::Image {
            path: image.display().to_string(),
            source,
        })?;
    let mut c = veil_guest(
        &b.tools.veil,
        Guest::VirtioBlk,
        &format!("console=ttyS0 blk.bench_mib={mib}"),
    );
    c.arg("--disk").arg(&image);
    let (lines, wall_ms) = run_vm(c)?;
    let r = guest_report::parse_blk(&lines)?;
    let random = guest_report::parse_blk_random(&lines)?;
    let (w, rd) = (
        tsc::seconds(r.write_cycles, hz),
        tsc::seconds(r.read_cycles, hz),
    );
    let (rw, rr) = (
        tsc::seconds(random.write_cycles, hz),
        tsc::seconds(random.read_cycles, hz),
    );
    check_tsc(w + rd + rw + rr, wall_ms)?;
    Ok(BlkRun {
        write_mib_s: r.mib as f64 / w,
        read_mib_s: r.mib as f64 / rd,
        random_write_iops: random.ops as f64 / rw,
        random_read_iops: random.ops as f64 / rr,
    })
}

struct VsockRun {
    stream_mib_s: f64,
    rtt_us: f64,
}

fn vsock_run(b: &Bench, dir: &Path, mib: u64, hz: f64) -> Result<VsockRun, DeviceRunError> {
    let uds = dir.join("bench-vsock.sock");
    let port_path = vsock_echo::port_socket(&uds, VSOCK_PORT);
    for p in [&uds, &port_path] {
        let _ = std::fs::remove_file(p);
    }
    let echo = EchoServer::start(port_path, VM_TIMEOUT)?;
    let mut c = veil_guest(
        &b.tools.veil,
        Guest::VirtioVsock,
        &format!("console=ttyS0 vsock.connect={VSOCK_PORT} vsock.bench_mib={mib} vsock.buf=262144"),
    );
    c.args(["--vsock-cid", GUEST_CID, "--vsock-uds"]).arg(&uds);
    let vm = run_vm(c);
    let echoed = echo.join();
    let (lines, wall_ms) = vm?;
    let r = guest_report::parse_vsock(&lines)?;
    let want = (r.mib << 20) + VSOCK_ROUND_TRIPS;
    let got = echoed?;
    if got != want {
        return Err(DeviceRunError::EchoCount { got, want });
    }
    let (stream, rtt) = (
        tsc::seconds(r.stream_echo_cycles, hz),
        tsc::seconds(r.rtt_1000_cycles, hz),
    );
    check_tsc(stream + rtt, wall_ms)?;
    Ok(VsockRun {
        stream_mib_s: r.mib as f64 / stream,
        rtt_us: rtt / VSOCK_ROUND_TRIPS as f64 * 1e6,
    })
}

pub fn run(b: &Bench) -> Section {
    let mut section = Section::new(TITLE);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            section.fail(format!("cannot create a scratch directory: {e}"));
            return section;
        }
    };
    let hz = tsc::host_tsc_hz(Duration::from_millis(200));
    let (mut write, mut read, mut stream, mut rtt) = (vec![], vec![], vec![], vec![]);
    let (mut random_write, mut random_read) = (vec![], vec![]);
    let mut first_error = None;
    // Interleaved so that a noisy neighbour's burst hits both devices alike.
    for _ in 0..b.plan.device_runs {
        match blk_run(b, dir.path(), b.plan.blk_mib, hz) {
            Ok(r) => {
                write.push(r.write_mib_s);
                read.push(r.read_mib_s);
                random_write.push(r.random_write_iops * 4.0 / 1024.0);
                random_read.push(r.random_read_iops * 4.0 / 1024.0);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| format!("virtio-blk run: {e}"));
            }
        }
        match vsock_run(b, dir.path(), b.plan.vsock_mib, hz) {
            Ok(r) => {
                stream.push(r.stream_mib_s);
                rtt.push(r.rtt_us);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| format!("vsock run: {e}"));
            }
        }
    }
    section.figure(
        format!(
            "virtio-blk sequential write + flush, {} MiB in 512 KiB requests",
            b.plan.blk_mib
        ),
        "MiB/s",
        &write,
    );
    section.figure(
        format!(
            "virtio-blk sequential read, {} MiB in 512 KiB requests",
            b.plan.blk_mib
        ),
        "MiB/s",
        &read,
    );
    section.figure(
        "virtio-blk random 4 KiB writes (1024 requests, one in flight)",
        "MiB/s",
        &random_write,
    );
    section.figure(
        "virtio-blk random 4 KiB reads (1024 requests, one in flight)",
        "MiB/s",
        &random_read,
    );
    section.figure(
        format!(
            "vsock stream, guest -> host echo -> guest, {} MiB",
            b.plan.vsock_mib
        ),
        "MiB/s",
        &stream,
    );
    section.figure(
        "vsock round trip, 1 byte, guest -> host echo -> guest",
        "us",
        &rtt,
    );
    section.note(format!(
        "figures from the guests' own TSC counts at the host's measured TSC rate ({:.0} MHz), each run checked against the VM's wall time; the disk image is a sparse file in {} (the host page cache holds it: this is the VMM's device path, not the disk)",
        hz / 1e6,
        std::env::temp_dir().display()
    ));
    section.note("one request in flight and polled by the guest (no interrupts); guest code runs ~10 us per loop iteration on this software KVM, so these are lower bounds set by the guest as much as by the device");
    section.note(format!(
        "{} runs of each, interleaved; stream MiB/s counts each byte once though it crosses the device twice",
        b.plan.device_runs
    ));
    if let Some(e) = first_error {
        section.fail(e);
    }
    section
}
