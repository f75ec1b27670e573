//! OCI capability and rlimit names mapped to kernel numbers.

use super::ContainerError;

/// Capability names in kernel order (`include/uapi/linux/capability.h`), index = number.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Highest capability number the table knows.
pub const CAP_LAST: u32 = CAPABILITIES.len() as u32 - 1;

/// A set of capabilities as the 64-bit mask capset(2) takes in two 32-bit halves.
pub fn cap_mask(names: &[String]) -> Result<u64, ContainerError> {
    let mut mask = 0u64;
    for name in names {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let n = CAPABILITIES
            .iter()
            .position(|c| *c == full)
            .ok_or_else(|| ContainerError::InvalidSpec(format!("unknown capability {name:?}")))?;
        mask |= 1 << n;
    }
    Ok(mask)
}

/// Maps `RLIMIT_NOFILE` etc. to the resource number.
pub fn rlimit_resource(name: &str) -> Result<libc::c_int, ContainerError> {
    let r = match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        other => {
            return Err(ContainerError::InvalidSpec(format!(
                "unknown rlimit {other:?}"
            )))
        }
    };
    Ok(r as libc::c_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_numbers_match_the_kernel() {
        assert_eq!(cap_mask(&["CAP_CHOWN".into()]).unwrap(), 1);
        assert_eq!(cap_mask(&["CAP_KILL".into()]).unwrap(), 1 << 5);
        assert_eq!(cap_mask(&["CAP_SYS_ADMIN".into()]).unwrap(), 1 << 21);
        assert_eq!(cap_mask(&["net_raw".into()]).unwrap(), 1 << 13);
        assert_eq!(CAP_LAST, 40);
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let err = cap_mask(&["CAP_BOGUS".into()]).unwrap_err();
        assert!(err.to_string().contains("CAP_BOGUS"), "{err}");
        let err = rlimit_resource("RLIMIT_BOGUS").unwrap_err();
        assert!(err.to_string().contains("RLIMIT_BOGUS"), "{err}");
    }
}
