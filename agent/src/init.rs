//! PID 1 duties: mount the kernel file systems, and power the VM off at the end.

use std::ffi::CString;
use std::path::Path;

/// Errors from early init.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Mkdir {
        path: &'static str,
        source: std::io::Error,
    },
}

/// Whether this process is the system's init.
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// Mounts /proc, /sys, /dev, /run and the cgroup v2 hierarchy (each skipped if it is already
/// a mount, e.g. when the kernel auto-mounted devtmpfs).
pub fn mount_kernel_filesystems() -> Result<(), InitError> {
    const MOUNTS: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
        (
            "proc",
            "/proc",
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        ),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        ),
    ];
    for &(source, target, fstype, flags, data) in MOUNTS {
        if let Err(source) = std::fs::create_dir_all(target) {
            return Err(InitError::Mkdir {
                path: target,
                source,
            });
        }
        let src = CString::new(source).expect("static");
        let tgt = CString::new(target).expect("static");
        let fs = CString::new(fstype).expect("static");
        let dat = CString::new(data).expect("static");
        // SAFETY: mount(2) with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fs.as_ptr(),
                flags,
                dat.as_ptr().cast(),
            )
        };
        if rc == -1 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EBUSY) {
                continue; // already mounted
            }
            return Err(InitError::Mount {
                fstype,
                target,
                source: err,
            });
        }
    }
    for dir in ["/dev/pts", "/dev/shm"] {
        let _ = std::fs::create_dir_all(Path::new(dir));
    }
    Ok(())
}

/// Syncs and powers off (never returns when it works).
pub fn power_off() {
    tracing::info!("powering off");
    // SAFETY: sync and reboot take no pointers; as PID 1 with CAP_SYS_BOOT this ends the VM.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}
