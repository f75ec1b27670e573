//! Test support shared by Veil's integration tests: the freestanding test guests (built by
//! this crate's build script) and the project's guest kernel.
//!
//! The tests themselves live next to what they test: `veil/tests/` drives the `veil` binary
//! (Cargo only hands a package's own integration tests the path of its binaries), and this
//! crate's `tests/` drives the library API.

use std::path::{Path, PathBuf};

/// A freestanding test guest.
#[derive(Debug, Clone, Copy)]
pub enum Guest {
    /// Prints its CPU mode, command line, e820 map, CPUID topology and MP table CPU count.
    BootInfo,
    /// Starts every application processor with INIT-SIPI-SIPI and reports which ones ran.
    Smp,
    /// Executes `ud2` with no IDT: the vCPU cannot continue.
    Crash,
    /// Prints one line, then halts with interrupts off forever.
    Idle,
    /// A virtio-blk driver: pattern writes (differently split chains), flush, read-back,
    /// GET_ID and bounds on the first disk; `VIRTIO_BLK_F_RO` and a failing write on the
    /// second. `blk.bench_mib=N` on the command line makes it a sequential write/read
    /// benchmark instead. Output format: see `tests/guests/virtio_blk.c`.
    VirtioBlk,
    /// A virtio-vsock driver: guest-initiated stream (`vsock.connect=P`), refused connect
    /// (`vsock.refused=R`) and host-initiated stream (`vsock.listen=L`), `vsock.bytes=N` each
    /// way, credit respected and checked; `vsock.bench_mib=N` with `vsock.connect=P` streams
    /// N MiB through a host echo and times round trips. See `tests/guests/virtio_vsock.c`.
    VirtioVsock,
    /// Writes the boot timer's magic value twice and prints the recorded boot time.
    BootTimer,
    /// Sets the BIOS warm-reset flag and resets, as Linux does after a panic under
    /// `reboot=panic_warm`.
    PanicReset,
    /// Resets through the i8042, then prints `ran past the reset` and triple-faults (Linux's
    /// fallback when a reset does not take at once).
    ResetFallback,
    /// Sets up the first virtio-blk disk, prints `fault ready`, waits for a byte on the
    /// serial console (the host breaks the backing file meanwhile), then reads, writes
    /// (`blk.write_kib=K`), flushes and reads again, reporting each status. See
    /// `tests/guests/blk_fault.c`.
    BlkFault,
    /// Reads and writes of every width to unmapped MMIO and across every virtio device's
    /// register window, then resets the first disk and reads sector 0 through it. See
    /// `tests/guests/mmio_storm.c`.
    MmioStorm,
}

impl Guest {
    /// The guest's ELF file.
    pub fn path(self) -> &'static Path {
        Path::new(match self {
            Guest::BootInfo => env!("VEIL_GUEST_BOOT_INFO"),
            Guest::Smp => env!("VEIL_GUEST_SMP"),
            Guest::Crash => env!("VEIL_GUEST_CRASH"),
            Guest::Idle => env!("VEIL_GUEST_IDLE"),
            Guest::VirtioBlk => env!("VEIL_GUEST_VIRTIO_BLK"),
            Guest::VirtioVsock => env!("VEIL_GUEST_VIRTIO_VSOCK"),
            Guest::BootTimer => env!("VEIL_GUEST_BOOT_TIMER"),
            Guest::PanicReset => env!("VEIL_GUEST_PANIC_RESET"),
            Guest::ResetFallback => env!("VEIL_GUEST_RESET_FALLBACK"),
            Guest::BlkFault => env!("VEIL_GUEST_BLK_FAULT"),
            Guest::MmioStorm => env!("VEIL_GUEST_MMIO_STORM"),
        })
    }
}

/// The project's guest kernel directory (`target/guest-kernel`, built by
/// `guest/build-kernel.sh`), or `VEIL_GUEST_KERNEL_DIR` when set.
pub fn guest_kernel_dir() -> PathBuf {
    match std::env::var_os("VEIL_GUEST_KERNEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-kernel"),
    }
}

/// A file of the guest kernel build (`vmlinux` or `bzImage`). Panics with the command that
/// builds it when it is missing: these tests run everywhere, the kernel just has to be built.
pub fn guest_kernel(file: &str) -> PathBuf {
    let path = guest_kernel_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the guest kernel with guest/build-kernel.sh (see README)",
        path.display()
    );
    path
}

pub mod l2;
pub mod nested;
pub mod netns;
pub mod usage;

/// Skips the calling test with `why`, or fails it under `CI=true`: CI installs every
/// prerequisite, so a missing one there is a broken run, not a skip.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("prerequisite missing under CI=true: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A console writer for embedded VMs (`Console::Writer`) whose text tests can read while the
/// guest runs.
#[derive(Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
