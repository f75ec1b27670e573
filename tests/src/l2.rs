//! Guests for the nested tests ("L2", booted by `veil` inside L1): busybox initramfs images
//! with an init script of the test's choosing, the Linux programs built by this crate, and a
//! bounded wait for a process.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `tests/l2/vsock_stream.c`, built static by this crate's build script.
pub fn vsock_stream_program() -> &'static Path {
    Path::new(env!("VEIL_L2_VSOCK_STREAM"))
}

/// `tests/l2/pattern.c`: prints N bytes of the pattern [`pattern_bytes`] computes.
pub fn pattern_program() -> &'static Path {
    Path::new(env!("VEIL_L2_PATTERN"))
}

/// The byte pattern of `tests/l2/pattern.c` and `vsock_stream.c`: byte k is
/// (k mod 251) xor (k div 251), truncated, periodic with a prime period.
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|k| ((k % 251) ^ (k / 251)) as u8).collect()
}

/// Debian's packaged kernel (bzImage, as shipped) that L1 itself boots. Inside L1 the harness
/// passes its path in `VEIL_L1_KERNEL`.
pub fn stock_kernel() -> PathBuf {
    PathBuf::from(
        std::env::var_os("VEIL_L1_KERNEL")
            .expect("VEIL_L1_KERNEL is set by the nested harness inside L1"),
    )
}

/// Writes a gzip'd newc initramfs to `out`: a static busybox with its applets, `init` as
/// `/init`, and `files` (source path, path in the image) made executable.
pub fn busybox_initramfs(out: &Path, init: &str, files: &[(&Path, &str)]) {
    let stage = tempfile::tempdir().expect("temp dir");
    let root = stage.path();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "mnt", "run"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    std::fs::write(
        root.join("init"),
        format!("#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n{init}"),
    )
    .unwrap();
    for (src, dest) in files {
        let dest = root.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(
            "chmod -R a+rx . && find . -mindepth 1 | LC_ALL=C sort | \
             cpio --quiet -o -H newc -R 0:0 | gzip -1 > \"$0\"",
        )
        .arg(out)
        .current_dir(root)
        .status()
        .expect("sh");
    assert!(
        status.success(),
        "packing the initramfs {} failed",
        out.display()
    );
}

/// A child process's output and status, collected with a time limit.
#[derive(Debug)]
pub struct Finished {
    /// `None` when the limit passed and the process was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Spawns `cmd` (stdin closed, output captured) and waits at most `limit`, killing it then.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Finished {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    wait_bounded(child, limit)
}

/// Waits at most `limit` for a child spawned with piped stdout and stderr, killing it then.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Finished {
    let started = Instant::now();
    let pipe_reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = pipe_reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe_reader(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        wall: started.elapsed(),
    }
}
