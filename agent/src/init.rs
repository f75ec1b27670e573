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
    #[error("leaving the initramfs ({step}): {source}")]
    SwitchRoot {
        step: &'static str,
        source: std::io::Error,
    },
}

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Moves `/` from the kernel's initial rootfs onto a fresh tmpfs (what switch_root does),
/// because pivot_root(2) refuses to move away from the initial rootfs and every container
/// needs it. Only `/init` (this binary) is carried over. A disk root (not ramfs/tmpfs) is left
/// alone.
pub fn leave_initramfs() -> Result<(), InitError> {
    let err = |step| move |source| InitError::SwitchRoot { step, source };
    let last = || std::io::Error::last_os_error();
    // SAFETY: libc::statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into the struct we own; the path is a valid C string.
    if unsafe { libc::statfs(c"/".as_ptr(), &mut st) } != 0 {
        return Err(err("statfs /")(last()));
    }
    let fs_type = st.f_type as i64;
    if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all("/newroot").map_err(err("mkdir /newroot"))?;
    // SAFETY: mount(2) with valid C strings.
    if unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c"/newroot".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0755".as_ptr().cast(),
        )
    } != 0
    {
        return Err(err("mount tmpfs on /newroot")(last()));
    }
    std::fs::copy("/init", "/newroot/init").map_err(err("copy /init"))?;
    for dir in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        std::fs::create_dir_all(Path::new("/newroot").join(dir)).map_err(err("mkdir"))?;
    }
    // SAFETY: chdir/mount/chroot with valid C strings; this is the single-threaded start of
    // PID 1, before the runtime exists.
    unsafe {
        if libc::chdir(c"/newroot".as_ptr()) != 0 {
            return Err(err("chdir /newroot")(last()));
        }
        if libc::mount(
            c".".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(err("move /newroot to /")(last()));
        }
        if libc::chroot(c".".as_ptr()) != 0 {
            return Err(err("chroot")(last()));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(err("chdir /")(last()));
        }
    }
    Ok(())
}

/// Whether this process is the system's init.
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// Mounts /proc, /sys, /dev, /dev/pts, /run and the cgroup v2 hierarchy (each skipped if it is already
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
        // Containers' terminals: openpty(3) opens /dev/ptmx, which fails with ENODEV while
        // no devpts instance is mounted.
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
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
    let _ = std::fs::create_dir_all(Path::new("/dev/shm"));
    Ok(())
}

/// Syncs and ends the VM. It asks for a restart, not a power-off: micro-VMs without ACPI
/// (Veil, Firecracker-style, QEMU microvm) have no power-off device, so the kernel would only
/// halt; a restart request reaches the VMM (i8042 reset, or QEMU's `-no-reboot`), which stops
/// the VM.
pub fn power_off() {
    tracing::info!("powering off (restart request to the VMM)");
    // SAFETY: sync and reboot take no pointers; as PID 1 with CAP_SYS_BOOT this ends the VM.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
}
