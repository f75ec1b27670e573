//! Linux under `veil` on a real (nested, hardware-style) KVM: each test re-runs itself inside
//! the nested harness's L1 guest (`veil_tests::nested`), where `kvm_amd` runs guests the way
//! an AMD host does. There a stock distribution kernel and the project's own kernel boot to
//! user space, and their real drivers exercise veil's devices.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::VEIL;
use veil_tests::l2::{busybox_initramfs, pattern_bytes, run_bounded, stock_kernel, Finished};
use veil_tests::nested::run_test_in_l1;

/// One veil boot inside L1 may take minutes: everything there is emulated.
const BOOT_LIMIT: Duration = Duration::from_secs(420);
/// Debian's kernel has far more to initialise than the project's, and with 4 vCPUs on L1's one.
const STOCK_BOOT_LIMIT: Duration = Duration::from_secs(900);

/// `veil run` with a kernel and an initramfs; callers add the rest.
fn veil_run(kernel: &Path, initrd: &Path) -> Command {
    let mut cmd = Command::new(VEIL);
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd);
    cmd
}

fn describe(run: &Finished) -> String {
    format!(
        "veil status {:?} after {:.0?}\n--- stdout\n{}\n--- stderr\n{}",
        run.status, run.wall, run.stdout, run.stderr
    )
}

/// Kernel messages that mean the guest kernel went wrong.
fn assert_no_kernel_failure(run: &Finished) {
    for bad in ["Oops", "BUG:", "Kernel panic", "ExtINT not setup"] {
        assert!(
            !run.stdout.contains(bad),
            "guest printed {bad:?}\n{}",
            describe(run)
        );
    }
}

#[test]
fn stock_debian_kernel_boots_to_user_space_with_1_2_and_4_vcpus() {
    if !run_test_in_l1(
        "stock_debian_kernel_boots_to_user_space_with_1_2_and_4_vcpus",
        Duration::from_secs(2700),
        &[],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.gz");
    // Prints what the kernel counted, then restarts: without ACPI a micro-VM has no
    // power-off device, and a restart request (reboot=k: i8042) ends the VM.
    busybox_initramfs(
        &initrd,
        "mount -t proc proc /proc\n\
         echo \"l2-online-cpus: $(grep -c ^processor /proc/cpuinfo)\"\n\
         reboot -f\n",
        &[],
    );
    let kernel = stock_kernel();
    for vcpus in [1, 2, 4] {
        let run = run_bounded(
            veil_run(&kernel, &initrd)
                .args(["--vcpus", &vcpus.to_string(), "--mem-mib", "512"])
                // quiet: every console byte is a trapped port write, and each costs a
                // great deal when everything is emulated; oopses and panics still print.
                .args([
                    "--cmdline",
                    "console=ttyS0 quiet reboot=k,panic_warm panic=-1",
                ]),
            STOCK_BOOT_LIMIT,
        );
        println!("{vcpus} vCPU(s): veil ran {:.1?}", run.wall);
        assert_eq!(run.code(), Some(0), "{}", describe(&run));
        assert_no_kernel_failure(&run);
        // The guest's tty turns "\n" into "\r\n".
        let expected = format!("l2-online-cpus: {vcpus}");
        assert!(
            run.stdout.lines().any(|l| l.trim_end() == expected),
            "{}",
            describe(&run)
        );
    }
}

fn sh(script: &str) {
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

#[test]
fn project_kernel_drives_veil_disks_and_vsock_with_real_linux_drivers() {
    if !run_test_in_l1(
        "project_kernel_drives_veil_disks_and_vsock_with_real_linux_drivers",
        Duration::from_secs(1200),
        &[],
    ) {
        return;
    }
    let kernel = veil_tests::guest_kernel("vmlinux");
    // Sockets cannot live on 9p: /run is a tmpfs inside L1.
    let dir = tempfile::tempdir_in("/run").unwrap();
    let d = dir.path();
    // vda: an empty ext4 file system the guest writes to; vdb: a read-only disk.
    let rw = d.join("rw.ext4");
    let ro = d.join("ro.img");
    sh(&format!(
        "mkfs.ext4 -q -F -b 4096 {} 32M && dd if=/dev/zero of={} bs=1M count=4 status=none",
        rw.display(),
        ro.display()
    ));
    let ro_before = std::fs::read(&ro).unwrap();
    const FILE_LEN: usize = 3 << 20;
    const VSOCK_BYTES: usize = 4 << 20;
    // The guest regenerates the same pattern bytes with vsock_stream's generator; the
    // file it writes must equal pattern_bytes(FILE_LEN) on the host.
    let init = format!(
        "mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t ext4 /dev/vda /mnt && echo l2-mounted-rw\n\
         /pattern {FILE_LEN} > /mnt/data && sync && umount /mnt && echo l2-wrote-and-synced\n\
         echo \"l2-vdb-ro: $(cat /sys/block/vdb/ro)\"\n\
         if echo x | dd of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; then \
           echo l2-ro-write-accepted; else echo l2-ro-write-refused; fi\n\
         /vsock_stream 5000 {VSOCK_BYTES}\n\
         reboot -f\n"
    );
    let initrd = d.join("initrd.gz");
    busybox_initramfs(
        &initrd,
        &init,
        &[
            (veil_tests::l2::vsock_stream_program(), "vsock_stream"),
            (veil_tests::l2::pattern_program(), "pattern"),
        ],
    );

    // The host end of the guest's vsock connection to port 5000: echo every byte back and
    // keep a copy to compare.
    let uds = d.join("vsock.sock");
    let listener = std::os::unix::net::UnixListener::bind(format!("{}_5000", uds.display()))
        .expect("bind the vsock port listener");
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        while seen.len() < VSOCK_BYTES {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });

    let run = run_bounded(
        veil_run(&kernel, &initrd)
            .args(["--vcpus", "2", "--mem-mib", "256"])
            .arg("--disk")
            .arg(&rw)
            .arg("--disk")
            .arg(format!("{},ro", ro.display()))
            .args(["--vsock-cid", "3", "--vsock-uds"])
            .arg(&uds)
            .args(["--cmdline", "console=ttyS0 reboot=k,panic_warm panic=-1"]),
        BOOT_LIMIT,
    );
    println!("veil ran {:.1?}", run.wall);
    assert_eq!(run.code(), Some(0), "{}", describe(&run));
    assert_no_kernel_failure(&run);
    for line in [
        "l2-mounted-rw",
        "l2-wrote-and-synced",
        "l2-vdb-ro: 1",
        "l2-ro-write-refused",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?}\n{}",
            describe(&run)
        );
    }
    assert!(
        run.stdout
            .contains(&format!("vsock-stream ok bytes={VSOCK_BYTES}")),
        "{}",
        describe(&run)
    );
    let seen = echo.join().unwrap();
    assert!(
        seen == pattern_bytes(VSOCK_BYTES),
        "the host received other bytes than sent"
    );

    // What the guest wrote through ext4 and virtio-blk, read back from the image file.
    let out = Command::new("debugfs")
        .args(["-R", "cat /data"])
        .arg(&rw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), FILE_LEN, "file size on the host");
    assert!(
        out.stdout == pattern_bytes(FILE_LEN),
        "file content differs from what the guest wrote"
    );
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_before,
        "the read-only disk changed"
    );
    assert!(
        !Path::new(&uds).exists(),
        "veil left its vsock socket behind"
    );
}

/// A `veil` child whose stdout is collected as it arrives.
struct Watched {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watched {
    fn spawn(cmd: &mut Command) -> Self {
        use std::io::Read;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn veil");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stdout.take().unwrap();
        let sink = stdout.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            stdout,
            reader: Some(reader),
        }
    }

    fn wait_for(&self, needle: &str, limit: Duration) {
        let started = std::time::Instant::now();
        while !self.stdout.lock().unwrap().contains(needle) {
            assert!(
                started.elapsed() < limit,
                "no {needle:?} within {limit:?}; stdout:\n{}",
                self.stdout.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) for the exit; returns it with stdout and stderr.
    fn finish(mut self, limit: Duration) -> Finished {
        use std::io::Read;
        let mut err_pipe = self.child.stderr.take().unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.reader.take().unwrap().join().unwrap();
        let mut stderr = String::new();
        let _ = err_pipe.read_to_string(&mut stderr);
        let stdout = self.stdout.lock().unwrap().clone();
        Finished {
            status,
            stdout,
            stderr,
            wall: started.elapsed(),
        }
    }
}

#[test]
fn guest_faults_end_veil_with_their_documented_status() {
    if !run_test_in_l1(
        "guest_faults_end_veil_with_their_documented_status",
        Duration::from_secs(1200),
        &[],
    ) {
        return;
    }
    let kernel = veil_tests::guest_kernel("vmlinux");
    let dir = tempfile::tempdir_in("/run").unwrap();
    let d = dir.path();

    // PID 1 exits: the kernel panics ("Attempted to kill init!"), restarts under panic=-1
    // with the warm-reset flag (veil's default command line has reboot=k,panic_warm), and
    // veil reports a guest failure: exit status 2 and a message naming the panic.
    let initrd = d.join("dies.gz");
    busybox_initramfs(&initrd, "echo l2-init-exiting\nexit 3\n", &[]);
    let run = run_bounded(&mut veil_run(&kernel, &initrd), BOOT_LIMIT);
    assert_eq!(run.code(), Some(2), "{}", describe(&run));
    assert!(
        run.stdout.contains("Kernel panic - not syncing"),
        "{}",
        describe(&run)
    );
    assert!(
        run.stderr
            .contains("veil: guest failed: the guest kernel panicked"),
        "{}",
        describe(&run)
    );

    // SIGTERM stops a running guest cleanly: exit status 128+15, the vsock socket removed.
    let initrd = d.join("waits.gz");
    busybox_initramfs(
        &initrd,
        "echo l2-waiting\nwhile true; do sleep 60; done\n",
        &[],
    );
    let uds = d.join("vsock.sock");
    let vm = Watched::spawn(
        veil_run(&kernel, &initrd)
            .args(["--vsock-cid", "3", "--vsock-uds"])
            .arg(&uds),
    );
    vm.wait_for("l2-waiting", BOOT_LIMIT);
    assert!(uds.exists(), "veil has no vsock socket while running");
    // SAFETY: kill(2) on our own child, which has not been reaped.
    assert_eq!(
        unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) },
        0
    );
    let run = vm.finish(Duration::from_secs(60));
    assert_eq!(run.code(), Some(128 + libc::SIGTERM), "{}", describe(&run));
    assert!(!run.stderr.contains("panicked"), "{}", describe(&run));
    assert!(!uds.exists(), "the vsock socket outlived veil");
}

/// A two-vCPU guest that changes its page tables as fast as it can (three shells starting
/// programs for 90 s) leaves both itself and L1 up. Under this load, with two L1 CPUs, L1
/// fell over or the guest triple-faulted within three minutes
/// (`veil_tests::nested::DEFAULT_CPUS`): the test guards the harness's settings as much as veil.
#[test]
fn a_two_vcpu_guest_churning_page_tables_keeps_itself_and_l1_up() {
    if !run_test_in_l1(
        "a_two_vcpu_guest_churning_page_tables_keeps_itself_and_l1_up",
        Duration::from_secs(1200),
        &[],
    ) {
        return;
    }
    const SECONDS: u32 = 90;
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("churn.gz");
    // Each worker counts its rounds of two short-lived programs until the guest's uptime
    // passes the end; /proc/uptime, not `sleep`, so that a slow guest still stops.
    busybox_initramfs(
        &initrd,
        &format!(
            "mount -t proc proc /proc\n\
             mount -t devtmpfs dev /dev\n\
             end=$(( $(cut -d. -f1 /proc/uptime) + {SECONDS} ))\n\
             churn() {{\n\
                 n=0\n\
                 while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do\n\
                     ls / >/dev/null; echo x | cat >/dev/null; n=$((n + 1))\n\
                 done\n\
                 echo \"l2-worker $1 rounds $n\"\n\
             }}\n\
             churn a & churn b & churn c &\n\
             wait\n\
             echo l2-churn-done\n\
             reboot -f\n"
        ),
        &[],
    );
    let kernel = veil_tests::guest_kernel("vmlinux");
    let run = run_bounded(
        veil_run(&kernel, &initrd)
            .args(["--vcpus", "2", "--mem-mib", "256"])
            .args(["--cmdline", "console=ttyS0 reboot=k,panic_warm panic=-1"]),
        BOOT_LIMIT + Duration::from_secs(SECONDS.into()),
    );
    println!("veil ran {:.1?}", run.wall);
    assert_eq!(run.code(), Some(0), "{}", describe(&run));
    assert_no_kernel_failure(&run);
    assert!(run.stdout.contains("l2-churn-done"), "{}", describe(&run));
    for worker in ["a", "b", "c"] {
        let rounds = run
            .stdout
            .lines()
            .find_map(|l| {
                l.trim_end()
                    .strip_prefix(&format!("l2-worker {worker} rounds "))
            })
            .and_then(|n| n.parse::<u32>().ok());
        assert!(
            rounds.is_some_and(|n| n > 0),
            "worker {worker} made no round\n{}",
            describe(&run)
        );
    }
}
