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
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    wait_bounded(&mut child, limit)
}

/// Waits at most `limit` for a child spawned with piped stdout and stderr, killing it then.
/// A pipe already taken from `child` reads as empty.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Finished {
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

/// Writes a container root tree under `dir`: a static busybox (`/bin/busybox`) with the
/// applet links containers in the tests run, and empty `proc`, `dev`, `tmp`, `etc`. Returns
/// the tree's path (`dir/root`).
pub fn busybox_root(dir: &Path) -> std::io::Result<PathBuf> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin"))?;
    for d in ["proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("/bin/busybox (apt-get install busybox-static): {e}"),
        )
    })?;
    for applet in [
        "sh", "echo", "cat", "sleep", "hostname", "id", "ls", "true", "stty",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(root)
}

/// Size of the image [`busybox_ext4`] writes.
pub const BUSYBOX_EXT4_BYTES: u64 = 16 << 20;

/// Writes [`busybox_root`]'s tree under `dir` and packs it into a 16 MiB ext4 image with 4 KiB
/// blocks, `dir/rootfs.ext4` (no loop device, no root needed). Returns the image's path.
pub fn busybox_ext4(dir: &Path) -> std::io::Result<PathBuf> {
    let root = busybox_root(dir)?;
    let image = dir.join("rootfs.ext4");
    let out = Command::new("/usr/sbin/mkfs.ext4")
        // 4 KiB blocks: a dm-verity device has 4 KiB logical blocks, and ext4 cannot use
        // blocks smaller than its device's (mkfs picks 1 KiB for small images).
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&root)
        .arg(&image)
        .arg(format!("{}K", BUSYBOX_EXT4_BYTES >> 10))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("/usr/sbin/mkfs.ext4 (apt-get install e2fsprogs): {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "mkfs.ext4 {} failed ({}): {}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(image)
}
