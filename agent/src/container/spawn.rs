//! Turning an OCI process into a running child: everything the child needs is prepared in the
//! agent (allocation, validation); the forked child only makes system calls.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::limits::{cap_mask, rlimit_resource, CAP_LAST};
use super::mounts::PreparedMount;
use super::stdio::ChildIo;
use super::sys::{self, cstr};
use super::ContainerError;
use crate::protocols::oci;

/// Default PATH for resolving a bare program name (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Most arguments / environment entries accepted for one process.
const MAX_ARGS: usize = 4096;

/// Capability sets (bit masks) for the process.
#[derive(Clone, Copy, Debug, Default)]
struct CapSets {
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
}

/// How the child enters the container.
pub enum Entry {
    /// The container's first process: new namespaces, mounts, pivot_root into `rootfs`.
    Init {
        rootfs: CString,
        hostname: Option<CString>,
        mounts: Vec<PreparedMount>,
    },
    /// A later process: join the init process's namespaces (ipc, uts, mnt in that order, by
    /// the child) and its PID namespace (by the spawning thread, as setns requires).
    Join {
        namespaces: Vec<OwnedFd>,
        pid_namespace: OwnedFd,
    },
}

/// A validated process, ready to spawn.
pub struct PreparedProcess {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: CString,
    uid: u32,
    gid: u32,
    additional_gids: Vec<libc::gid_t>,
    no_new_privs: bool,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    caps: Option<CapSets>,
    pub terminal: bool,
    pub console_size: (u16, u16),
}

impl PreparedProcess {
    /// Validates `process`, resolving its program inside `rootfs` (the host view of the root).
    pub fn new(process: &oci::Process, rootfs: &Path) -> Result<Self, ContainerError> {
        if process.Args.is_empty() {
            return Err(ContainerError::InvalidSpec("process has no Args".into()));
        }
        if process.Args.len() > MAX_ARGS || process.Env.len() > MAX_ARGS {
            return Err(ContainerError::InvalidSpec(format!(
                "more than {MAX_ARGS} arguments or environment entries"
            )));
        }
        if process
            .Args
            .iter()
            .chain(&process.Env)
            .any(|s| s.contains('\0'))
        {
            return Err(ContainerError::InvalidSpec(
                "NUL byte in Args or Env".into(),
            ));
        }
        let mut env = Vec::with_capacity(process.Env.len());
        for entry in &process.Env {
            let (k, v) = entry.split_once('=').ok_or_else(|| {
                ContainerError::InvalidSpec(format!("environment entry {entry:?} has no '='"))
            })?;
            env.push((k.to_string(), v.to_string()));
        }
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        let program = resolve_program(&process.Args[0], path_var, rootfs)?;

        let cwd = if process.Cwd.is_empty() {
            "/"
        } else {
            process.Cwd.as_str()
        };
        super::paths::relative_inside("process cwd", cwd)?;
        let cwd = CString::new(cwd).expect("checked for NUL by relative_inside");

        let user = process.User.as_ref();
        let mut rlimits = Vec::new();
        for r in &process.Rlimits {
            rlimits.push((
                rlimit_resource(&r.Type)?,
                libc::rlimit {
                    rlim_cur: r.Soft,
                    rlim_max: r.Hard,
                },
            ));
        }
        let caps = match process.Capabilities.as_ref() {
            Some(c) => Some(CapSets {
                bounding: cap_mask(&c.Bounding)?,
                effective: cap_mask(&c.Effective)?,
                permitted: cap_mask(&c.Permitted)?,
                inheritable: cap_mask(&c.Inheritable)?,
                ambient: cap_mask(&c.Ambient)?,
            }),
            None => None,
        };
        let size = process.ConsoleSize.as_ref();
        Ok(Self {
            program,
            args: process.Args.clone(),
            env,
            cwd,
            uid: user.map_or(0, |u| u.UID),
            gid: user.map_or(0, |u| u.GID),
            additional_gids: user.map_or_else(Vec::new, |u| u.AdditionalGids.clone()),
            no_new_privs: process.NoNewPrivileges,
            rlimits,
            caps,
            terminal: process.Terminal,
            console_size: (
                size.map_or(24, |s| s.Height.min(u16::MAX as u32) as u16),
                size.map_or(80, |s| s.Width.min(u16::MAX as u32) as u16),
            ),
        })
    }

    /// Builds the command; `cgroup_procs` is the container's open `cgroup.procs`.
    pub fn command(self, entry: Entry, io: ChildIo, cgroup_procs: OwnedFd) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.args[0])
            .args(&self.args[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(io.stdin))
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr));
        let terminal = io.terminal;
        let child = ChildSetup {
            entry,
            cwd: self.cwd,
            uid: self.uid,
            gid: self.gid,
            additional_gids: self.additional_gids,
            no_new_privs: self.no_new_privs,
            rlimits: self.rlimits,
            caps: self.caps,
            terminal,
            cgroup_procs,
        };
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // on data prepared beforehand (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || child.run());
        }
        cmd
    }
}

/// Resolves a bare program name through `path_var` inside `rootfs`; absolute names are checked
/// to exist. Returns the path as the container sees it. Symlinks are not followed (they point
/// into the container's tree, not the agent's).
fn resolve_program(arg0: &str, path_var: &str, rootfs: &Path) -> Result<PathBuf, ContainerError> {
    let exists = |p: &Path| -> bool {
        super::paths::relative_inside("program", &p.to_string_lossy())
            .map(|rel| std::fs::symlink_metadata(rootfs.join(rel)).is_ok())
            .unwrap_or(false)
    };
    if arg0.starts_with('/') {
        let p = PathBuf::from(arg0);
        super::paths::relative_inside("program", arg0)?;
        return if exists(&p) {
            Ok(p)
        } else {
            Err(ContainerError::InvalidSpec(format!(
                "program {arg0:?} not found in the container"
            )))
        };
    }
    if arg0.contains('/') {
        return Err(ContainerError::InvalidSpec(format!(
            "program {arg0:?} must be absolute or a bare name"
        )));
    }
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(arg0))
        .find(|p| exists(p))
        .ok_or_else(|| ContainerError::InvalidSpec(format!("program {arg0:?} not found in PATH")))
}

/// What the child does between fork and exec.
struct ChildSetup {
    entry: Entry,
    cwd: CString,
    uid: u32,
    gid: u32,
    additional_gids: Vec<libc::gid_t>,
    no_new_privs: bool,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    caps: Option<CapSets>,
    terminal: bool,
    cgroup_procs: OwnedFd,
}

impl ChildSetup {
    fn run(&self) -> std::io::Result<()> {
        // SAFETY (all blocks below): plain system calls on descriptors and NUL-terminated
        // strings owned by `self`, which outlives the calls; we are the single-threaded child.
        unsafe {
            sys::check(libc::setsid())?;
            if self.terminal {
                sys::check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            let zero = b"0";
            if libc::write(self.cgroup_procs.as_raw_fd(), zero.as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        match &self.entry {
            Entry::Init {
                rootfs,
                hostname,
                mounts,
            } => enter_new_root(rootfs, hostname.as_ref(), mounts)?,
            Entry::Join { namespaces, .. } => {
                for ns in namespaces {
                    // SAFETY: setns on an open namespace descriptor.
                    sys::check(unsafe { libc::setns(ns.as_raw_fd(), 0) })?;
                }
            }
        }
        // SAFETY: see above.
        unsafe {
            sys::check(libc::chdir(self.cwd.as_ptr()))?;
            for (resource, limit) in &self.rlimits {
                sys::check(libc::setrlimit(*resource as _, limit))?;
            }
            if let Some(caps) = &self.caps {
                for cap in 0..=CAP_LAST {
                    if caps.bounding & (1 << cap) == 0 {
                        // EINVAL: the running kernel does not know this capability.
                        let rc = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                        if rc == -1 && *libc::__errno_location() != libc::EINVAL {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                sys::check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            }
            sys::check(libc::setgroups(
                self.additional_gids.len(),
                self.additional_gids.as_ptr(),
            ))?;
            sys::check(libc::setresgid(self.gid, self.gid, self.gid))?;
            sys::check(libc::setresuid(self.uid, self.uid, self.uid))?;
            if let Some(caps) = &self.caps {
                set_capabilities(caps)?;
            }
            if self.no_new_privs {
                sys::check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
        }
        Ok(())
    }
}

/// New mount/uts/ipc namespaces, the container's mounts, then pivot_root into `rootfs`.
fn enter_new_root(
    rootfs: &CString,
    hostname: Option<&CString>,
    mounts: &[PreparedMount],
) -> std::io::Result<()> {
    let dot = c".";
    // SAFETY: system calls on valid NUL-terminated strings owned by the caller.
    unsafe {
        sys::check(libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
        ))?;
        // Nothing the container mounts may propagate back to the agent's namespace.
        sys::check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        if let Some(name) = hostname {
            sys::check(libc::sethostname(name.as_ptr(), name.as_bytes().len()))?;
        }
    }
    for m in mounts {
        m.mount_in_child()?;
    }
    // SAFETY: as above.
    unsafe {
        sys::check(libc::chdir(rootfs.as_ptr()))?;
        sys::check(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int)?;
        // The old root is stacked under the new one at "."; detach it.
        sys::check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH))?;
        sys::check(libc::chdir(c"/".as_ptr()))?;
    }
    Ok(())
}

/// capset(2) with version 3 (two 32-bit words per set), then raise the ambient set.
fn set_capabilities(caps: &CapSets) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |mask: u64, i: usize| (mask >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(caps.effective, i),
        permitted: word(caps.permitted, i),
        inheritable: word(caps.inheritable, i),
    });
    // SAFETY: capset reads a header and two data words from valid pointers.
    sys::check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as libc::c_int)?;
    for cap in 0..=CAP_LAST {
        if caps.ambient & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments.
            sys::check(unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            })?;
        }
    }
    Ok(())
}

/// Opens `path` for the child (close-on-exec; the child uses it before exec).
pub fn open_for_child(path: &Path, write: bool) -> Result<OwnedFd, ContainerError> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(path)
        .map_err(|e| ContainerError::io("opening", path, e))?;
    Ok(OwnedFd::from(file))
}

/// `cstr` with the error mapped.
pub fn c_path(path: &Path) -> Result<CString, ContainerError> {
    cstr(path).map_err(|e| ContainerError::io("naming", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_through_path_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/tool"), b"").unwrap();
        let p = resolve_program("tool", "/usr/bin:/bin", root.path()).unwrap();
        assert_eq!(p, PathBuf::from("/bin/tool"));
        assert!(resolve_program("missing", "/bin", root.path()).is_err());
        assert!(resolve_program("../bin/tool", "/bin", root.path()).is_err());
        assert!(resolve_program("/bin/../bin/tool", "/bin", root.path()).is_err());
    }

    #[test]
    fn process_without_args_or_with_bad_env_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let p = oci::Process::new();
        assert!(PreparedProcess::new(&p, root.path()).is_err());
        let mut p = oci::Process::new();
        p.Args = vec!["/x".into()];
        p.Env = vec!["NOEQUALS".into()];
        let err = PreparedProcess::new(&p, root.path()).err().unwrap();
        assert!(err.to_string().contains("NOEQUALS"), "{err}");
    }
}
