//! Soak of the VMM as a library, the way the shim embeds it: many VMs started and stopped
//! one after another and twenty at a time inside this one long-lived process, each with a
//! disk and a vsock device (so every kind of fd and thread a VM owns is created and torn
//! down). The process's open fds, threads and RSS must be as flat at the end as after a
//! warm-up: any per-VM leak shows up 500 times over.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::Duration;

use veil_tests::usage::{settled_usage, usage};
use veil_tests::Guest;
use veil_vmm::{BlockConfig, Console, KernelSource, Vm, VmConfig, VmExit, VsockConfig};

const SEQUENTIAL: usize = 500;
const CONCURRENT: usize = 20;
const CONCURRENT_ROUNDS: usize = 5;
/// Sequential VMs, then one concurrent round, before the baseline is taken: the allocator
/// sets up its per-thread arenas for twenty threads once, and that is not a leak.
const WARM_UP: usize = 20;
/// Longest one VM may take to print its line or to stop: only turns a hang into a failure.
const HANG_GUARD: Duration = Duration::from_secs(120);
const SETTLE_GUARD: Duration = Duration::from_secs(10);

/// Tells the test when the guest's first console line is complete.
struct FirstLine(Option<Sender<()>>);

impl Write for FirstLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.contains(&b'\n') {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One start/stop cycle: build the VM, run it until the idle guest has printed its line,
/// stop it from another thread and check it ended because it was asked to.
fn cycle(dir: &Path, n: usize) {
    let (tx, printed) = mpsc::channel();
    let mut config = VmConfig::new(KernelSource::Path(Guest::Idle.path().into()));
    config.mem_mib = 16;
    config.console = Console::Writer(Box::new(FirstLine(Some(tx))));
    config.disks = vec![BlockConfig {
        path: Some(dir.join("disk.img")),
        read_only: true,
        id: format!("soak-{n}"),
    }];
    let uds = dir.join(format!("v{n}.sock"));
    config.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let vm = Vm::new(config).unwrap_or_else(|e| panic!("VM {n}: {e}"));
    let stop = vm.stop_handle();
    let running = thread::spawn(move || vm.run());
    printed
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("VM {n} printed nothing"));
    stop.stop();
    let outcome = running.join().expect("VM thread").expect("VM run");
    assert_eq!(outcome.exit, VmExit::StopRequested, "VM {n}");
    assert!(!uds.exists(), "VM {n} left its vsock socket behind");
}

/// `CONCURRENT` cycles at once.
fn concurrent_round(dir: &Path, round: usize) {
    thread::scope(|s| {
        for i in 0..CONCURRENT {
            s.spawn(move || cycle(dir, SEQUENTIAL + round * CONCURRENT + i));
        }
    });
}

#[test]
fn five_hundred_sequential_and_twenty_way_concurrent_vms_leave_fds_threads_and_rss_flat() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.img"), vec![0u8; 64 << 10]).unwrap();
    let dir = dir.path();
    let before = usage();

    for n in 0..WARM_UP {
        cycle(dir, n);
    }
    concurrent_round(dir, 0);
    let warm = settled_usage(before.threads, SETTLE_GUARD);
    // RSS may move by what the allocator keeps between cycles; it must not grow with them.
    let mut rss_seen = warm.rss_kib;
    for n in WARM_UP..SEQUENTIAL {
        cycle(dir, n);
        rss_seen = rss_seen.max(usage().rss_kib);
    }
    let after_sequential = settled_usage(before.threads, SETTLE_GUARD);
    for round in 1..=CONCURRENT_ROUNDS {
        concurrent_round(dir, round);
    }
    let end = settled_usage(before.threads, SETTLE_GUARD);
    eprintln!(
        "soak (library): after warm-up {warm:?}, after {SEQUENTIAL} sequential {after_sequential:?}, \
         after {CONCURRENT_ROUNDS}x{CONCURRENT} concurrent {end:?}, largest RSS between \
         sequential cycles {rss_seen} KiB"
    );

    assert_eq!(
        after_sequential.fds, warm.fds,
        "fds leaked by sequential VMs"
    );
    assert_eq!(end.fds, warm.fds, "fds leaked by concurrent VMs");
    assert_eq!(
        warm.threads, before.threads,
        "threads left by the warm-up VMs"
    );
    assert_eq!(
        after_sequential.threads, before.threads,
        "threads left by sequential VMs"
    );
    assert_eq!(
        end.threads, before.threads,
        "threads left by concurrent VMs"
    );
    // A leak of even 10 KiB per VM would add 6 MiB over the run; the allocator's own slack
    // after warm-up is far below that.
    let bound = warm.rss_kib + (warm.rss_kib / 4).max(4 << 10);
    assert!(
        after_sequential.rss_kib <= bound,
        "RSS grew from {} to {} KiB over {SEQUENTIAL} VMs",
        warm.rss_kib,
        after_sequential.rss_kib
    );
    assert!(
        end.rss_kib <= bound,
        "RSS grew from {} to {} KiB with {CONCURRENT} VMs at a time",
        warm.rss_kib,
        end.rss_kib
    );
}
