//! The OCI spec's `Mounts`, validated in the agent and performed by the child (inside its new
//! mount namespace, before pivot_root).

use std::ffi::CString;
use std::path::Path;

use super::paths::relative_inside;
use super::sys;
use super::ContainerError;
use crate::protocols::oci;

/// Kernel file systems a container may ask for. Bind mounts are refused: the guest has no
/// host-shared file system, and a bind source would be a path outside the container.
const ALLOWED_TYPES: &[&str] = &["proc", "tmpfs", "sysfs", "devpts", "mqueue"];
/// Mount types skipped with a log line (the agent manages cgroups itself).
const SKIPPED_TYPES: &[&str] = &["cgroup", "cgroup2"];
/// Device nodes bound from the guest's /dev into the container's.
const DEVICE_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Most mounts accepted in one spec.
const MAX_MOUNTS: usize = 64;

/// One mount, ready for the child: target directories to create, then the mount itself.
pub struct PreparedMount {
    dirs: Vec<CString>,
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Bind a device node: create an empty file as the target instead of a directory.
    file_target: bool,
}

impl PreparedMount {
    /// Performs the mount; called in the forked child.
    pub fn mount_in_child(&self) -> std::io::Result<()> {
        // SAFETY: system calls on NUL-terminated strings owned by `self`.
        unsafe {
            for d in &self.dirs {
                if libc::mkdir(d.as_ptr(), 0o755) == -1 && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if self.file_target {
                let fd = libc::open(
                    self.target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            let fstype = self
                .fstype
                .as_ref()
                .map_or(std::ptr::null(), |f| f.as_ptr());
            let data = self
                .data
                .as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast());
            sys::check(libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                fstype,
                self.flags,
                data,
            ))?;
        }
        Ok(())
    }
}

/// Validates the spec's mounts against `rootfs` (host view) and adds the device-node binds.
pub fn prepare(mounts: &[oci::Mount], rootfs: &Path) -> Result<Vec<PreparedMount>, ContainerError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(ContainerError::InvalidSpec(format!(
            "{} mounts; at most {MAX_MOUNTS} are accepted",
            mounts.len()
        )));
    }
    let mut out = Vec::new();
    for m in mounts {
        let rel = relative_inside("mount destination", &m.destination)?;
        if SKIPPED_TYPES.contains(&m.type_.as_str()) {
            tracing::info!(destination = %m.destination, kind = %m.type_, "mount skipped");
            continue;
        }
        if !ALLOWED_TYPES.contains(&m.type_.as_str()) {
            return Err(ContainerError::Unsupported(format!(
                "mount type {:?} at {} (supported: {ALLOWED_TYPES:?})",
                m.type_, m.destination
            )));
        }
        if rel.as_os_str().is_empty() {
            return Err(ContainerError::InvalidPath {
                what: "mount destination (the root itself)",
                path: m.destination.clone(),
            });
        }
        let (flags, data) = parse_options(&m.options)?;
        let target = rootfs.join(&rel);
        out.push(PreparedMount {
            dirs: ancestors(rootfs, &rel)?,
            source: cstring(&m.type_)?,
            target: super::spawn::c_path(&target)?,
            fstype: Some(cstring(&m.type_)?),
            flags,
            data,
            file_target: false,
        });
    }
    for node in DEVICE_NODES {
        let source = Path::new("/dev").join(node);
        if !source.exists() {
            continue;
        }
        let rel = Path::new("dev").join(node);
        out.push(PreparedMount {
            dirs: ancestors(rootfs, Path::new("dev"))?,
            source: super::spawn::c_path(&source)?,
            target: super::spawn::c_path(&rootfs.join(&rel))?,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
            file_target: true,
        });
    }
    Ok(out)
}

/// Every directory from `rootfs/<first component>` down to `rootfs/rel`, to mkdir in order.
fn ancestors(rootfs: &Path, rel: &Path) -> Result<Vec<CString>, ContainerError> {
    let mut dirs = Vec::new();
    let mut cur = rootfs.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        dirs.push(super::spawn::c_path(&cur)?);
    }
    Ok(dirs)
}

fn cstring(s: &str) -> Result<CString, ContainerError> {
    CString::new(s).map_err(|_| ContainerError::InvalidSpec(format!("NUL byte in {s:?}")))
}

/// Splits OCI mount options into mount flags and the file-system data string.
fn parse_options(options: &[String]) -> Result<(libc::c_ulong, Option<CString>), ContainerError> {
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            // Propagation: the container's namespace is private as a whole.
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            "bind" | "rbind" => {
                return Err(ContainerError::Unsupported("bind mounts".into()));
            }
            other if other.contains(',') || other.contains('\0') => {
                return Err(ContainerError::InvalidSpec(format!(
                    "mount option {other:?}"
                )));
            }
            other => data.push(other.to_string()),
        }
    }
    let data = if data.is_empty() {
        None
    } else {
        Some(cstring(&data.join(","))?)
    };
    Ok((flags, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dest: &str, kind: &str) -> oci::Mount {
        let mut m = oci::Mount::new();
        m.destination = dest.into();
        m.type_ = kind.into();
        m.source = kind.into();
        m
    }

    #[test]
    fn traversal_in_a_destination_is_refused() {
        let err = prepare(&[mount("/proc/../../etc", "proc")], Path::new("/r"))
            .err()
            .unwrap();
        assert!(matches!(err, ContainerError::InvalidPath { .. }), "{err}");
    }

    #[test]
    fn bind_mounts_and_unknown_types_are_refused() {
        let mut m = mount("/data", "none");
        m.options = vec!["rbind".into()];
        assert!(prepare(&[m], Path::new("/r")).is_err());
        assert!(prepare(&[mount("/data", "9p")], Path::new("/r")).is_err());
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "mode=755".into(),
            "size=65536k".into(),
        ])
        .unwrap();
        assert!(flags & libc::MS_RDONLY != 0);
        assert_eq!(data.unwrap().to_str().unwrap(), "mode=755,size=65536k");
    }
}
