//! The jail's file system: an empty, read-only tmpfs as `/`, in a mount namespace of its own.

use std::ffi::CStr;

use super::{check, check_privileged, JailError};

/// Where the empty root is mounted before it becomes `/`. Any existing directory works: the
/// mount lives only in the jail's mount namespace and hides nothing on the host.
const STAGING: &CStr = c"/tmp";

/// Stops mount events propagating between the jail's namespace and the host's.
pub fn make_mounts_private() -> Result<(), JailError> {
    // SAFETY: mount with null source/type/data only changes propagation flags.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    check_privileged(rc, "make the jail's mounts private")
}

/// Makes an empty read-only tmpfs the root and working directory, with the host's root
/// detached (the `pivot_root(".", ".")` idiom: the old root is stacked on the new one, then
/// unmounted from under it).
pub fn enter_empty_root() -> Result<(), JailError> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: plain mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            c"veil-jail".as_ptr(),
            STAGING.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            c"size=4k,nr_inodes=1,mode=0555".as_ptr().cast(),
        )
    };
    check_privileged(rc, "mount the jail's empty root on /tmp")?;
    // SAFETY: chdir with a valid C string.
    check(
        unsafe { libc::chdir(STAGING.as_ptr()) }.into(),
        "enter the jail's root",
    )?;
    // SAFETY: pivot_root has no libc wrapper; both arguments are valid C strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if rc == 0 {
        // SAFETY: umount2 with a valid C string; "." is the host's root stacked on ours.
        check(
            unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) }.into(),
            "detach the host's root",
        )?;
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // The process already runs chrooted below a root that cannot be pivoted (an
        // initramfs: the nested test harness). A chroot into the empty tmpfs hides the same:
        // without CAP_SYS_CHROOT, which the jail drops, there is no way back out.
        // SAFETY: chroot with a valid C string.
        check(
            unsafe { libc::chroot(c".".as_ptr()) }.into(),
            "enter the jail's root (chroot)",
        )?;
    } else {
        check(rc, "pivot into the jail's root")?;
    }
    // SAFETY: chdir with a valid C string.
    check(
        unsafe { libc::chdir(c"/".as_ptr()) }.into(),
        "enter the jail's root",
    )?;
    // SAFETY: remount of our own tmpfs, flags only.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | flags,
            std::ptr::null(),
        )
    };
    check(rc.into(), "make the jail's root read-only")
}
