//! Resource limits and the switch to an unprivileged identity with no capabilities.

use super::{check, check_privileged, JailConfig, JailError, JailUser};

/// Sets RLIMIT_NOFILE and (when configured) RLIMIT_AS, both soft and hard, so the VMM cannot
/// raise them again; no core dumps (guest memory would land on the host's disk).
pub fn limit_resources(config: &JailConfig) -> Result<(), JailError> {
    let limits = [
        (
            libc::RLIMIT_NOFILE,
            Some(config.max_open_files),
            "limit open files",
        ),
        (
            libc::RLIMIT_AS,
            config.max_address_space,
            "limit the address space",
        ),
        (libc::RLIMIT_CORE, Some(0), "turn off core dumps"),
    ];
    for (resource, limit, step) in limits {
        let Some(limit) = limit else { continue };
        let value = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: `value` is a valid rlimit.
        check(unsafe { libc::setrlimit(resource, &value) }.into(), step)?;
    }
    Ok(())
}

/// Becomes `user` with empty capability sets (bounding, ambient, inheritable, permitted,
/// effective), no supplementary groups, `no_new_privs`, not dumpable (so processes of the
/// same uid on the host cannot ptrace it) and SIGKILL when the parent outside dies.
pub fn drop_to(user: &JailUser) -> Result<(), JailError> {
    drop_bounding_set()?;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(rc.into(), "clear the ambient capabilities")?;
    // SAFETY: setgroups with an empty list.
    let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
    check_privileged(rc, "drop the supplementary groups")?;
    // SAFETY: integer arguments only. The gid first: after the uid changes it cannot.
    let rc = unsafe { libc::setresgid(user.gid, user.gid, user.gid) };
    check_privileged(rc, "switch to the jail's group")?;
    // SAFETY: integer arguments only. Leaving uid 0 clears the permitted, effective and
    // ambient capabilities (no SECBIT_KEEP_CAPS).
    let rc = unsafe { libc::setresuid(user.uid, user.uid, user.uid) };
    check_privileged(rc, "switch to the jail's user")?;
    clear_inheritable()?;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc.into(), "set no_new_privs")?;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(rc.into(), "make the process non-dumpable")?;
    // The kernel clears the parent-death signal on a uid change: set it afterwards.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(rc.into(), "set the parent-death signal")
}

/// Drops every capability from the bounding set, up to the highest this kernel knows.
fn drop_bounding_set() -> Result<(), JailError> {
    // One call per capability (no PR_CAPBSET_READ first: each call is on the boot path).
    for cap in 0.. {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            return Ok(()); // past the last capability this kernel knows
        }
        check_privileged(rc, "drop the bounding capability set")?;
    }
    Ok(())
}

/// capset(2)'s header version 3 (64-bit capability sets).
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties every set left (the inheritable one survives a uid change).
fn clear_inheritable() -> Result<(), JailError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as version 3 requires; no libc wrapper exists.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(rc, "clear the inheritable capabilities")
}
