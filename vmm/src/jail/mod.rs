//! The jail: the VMM confined to what a running VM needs, so that a guest escaping into a
//! vCPU thread finds an unprivileged process that sees no host files, no network, no other
//! processes and can make only the system calls its seccomp filters allow.
//!
//! Everything the VM needs (KVM, `/dev/sev`, the kernel, initrd and disk images, the console
//! file, the vsock listening socket, a tap) is opened by [`Vm::new`](crate::Vm::new) before
//! the jail closes, and used through those file descriptors afterwards; so the jail's root
//! can be an empty, read-only tmpfs. The steps, in the order a process must take them:
//!
//! 1. [`fork_into_pid_namespace`] before any thread exists: the process forks into a new PID
//!    namespace. The parent stays outside, relays SIGINT/SIGTERM/SIGHUP to the child and
//!    reports its exit status (see [`relay`]); the child (PID 1 of its namespace) goes on.
//! 2. [`detach_mounts`] in the child: new mount, IPC and UTS namespaces whose mounts no
//!    longer propagate to the host. Host paths stay visible for step 3.
//! 3. The child builds the VM ([`Vm::new`](crate::Vm::new)): every file is opened here. At
//!    the same time, on another thread, [`isolate_network`] moves the thread that will run
//!    the VM into a new network namespace: the jail's costliest step (~0.5 ms) then overlaps
//!    the build, and the build still opens its tap in the host's namespace.
//! 4. [`confine`], once the building thread is gone: the empty root, resource limits, then
//!    the unprivileged uid/gid with no capabilities in any set and `no_new_privs`.
//! 5. [`Vm::run`](crate::Vm::run) with seccomp filters as without the jail.
//!
//! Nothing is created on the host: the empty root is a tmpfs in the child's own mount
//! namespace, gone with it. The one host file a jailed VMM cannot remove itself, the vsock
//! socket, is removed by the parent once the child ended.

mod identity;
mod privileges;
pub mod relay;
mod root;

use std::io;

pub use identity::{parse_user, JailUser};
pub use relay::{fork_into_pid_namespace, Forked};

/// Open files allowed in the jail unless configured otherwise: the VM's own descriptors
/// (KVM, vCPUs, eventfds, disks) plus vsock connections.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 1024;

/// How the VMM is confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// Who the VMM runs as once the VM is built. Never root.
    pub user: JailUser,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// RLIMIT_AS in bytes (guest memory included), or unlimited.
    pub max_address_space: Option<u64>,
}

impl JailConfig {
    /// The default user (`nobody`, in its primary group) and limits.
    pub fn new() -> Result<Self, JailError> {
        Ok(Self {
            user: parse_user(identity::DEFAULT_USER)?,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            max_address_space: None,
        })
    }
}

/// Errors while building the jail. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("unknown user {0:?} for the jail (not in the user database, not a number)")]
    UnknownUser(String),
    #[error("unknown group {0:?} for the jail (not in the group database, not a number)")]
    UnknownGroup(String),
    #[error("the jail's user must not be root (uid 0 / gid 0)")]
    RootUser,
    #[error("the jail must be entered before the process starts threads ({0} running)")]
    Threads(usize),
    #[error(
        "cannot {step}: {source} (the jail needs root: CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID)"
    )]
    Privileged {
        step: &'static str,
        source: io::Error,
    },
    #[error("cannot {step}: {source}")]
    Step {
        step: &'static str,
        source: io::Error,
    },
}

/// `Err(Privileged)` when a system call returned -1.
fn check_privileged(rc: libc::c_int, step: &'static str) -> Result<(), JailError> {
    if rc == -1 {
        return Err(JailError::Privileged {
            step,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `Err(Step)` when a system call returned -1.
fn check(rc: libc::c_long, step: &'static str) -> Result<(), JailError> {
    if rc == -1 {
        return Err(JailError::Step {
            step,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Step 2: new mount, IPC and UTS namespaces, mounts made private so that nothing the jail
/// mounts reaches the host. Call in the child of [`fork_into_pid_namespace`], before the VM
/// is built (the mount namespace cannot be left once KVM started its worker thread, which
/// shares the process's filesystem context).
pub fn detach_mounts() -> Result<(), JailError> {
    // SAFETY: unshare only changes this process's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) };
    check_privileged(rc, "create mount, IPC and UTS namespaces")?;
    root::make_mounts_private()
}

/// Proof that the calling thread is in a network namespace of its own, for [`confine`].
#[derive(Debug)]
#[must_use = "confine() takes it"]
pub struct NetworkIsolated(());

/// Step 3, beside the VM's build: moves the calling thread (only it: the namespace is a
/// per-thread property) into a new, empty network namespace. Threads it starts afterwards
/// (vCPUs, the event loop) inherit it.
pub fn isolate_network() -> Result<NetworkIsolated, JailError> {
    // SAFETY: unshare only changes the calling thread's network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    check_privileged(rc, "create a network namespace")?;
    Ok(NetworkIsolated(()))
}

/// Step 4: the empty root, the limits and the unprivileged identity, on the thread that
/// isolated its network, once the thread that built the VM has ended (capabilities are
/// dropped per thread: a thread of ours still running would keep them). After this the
/// process can use only the descriptors it holds.
pub fn confine(config: &JailConfig, _network: NetworkIsolated) -> Result<(), JailError> {
    root::enter_empty_root()?;
    privileges::limit_resources(config)?;
    privileges::drop_to(&config.user)
}

/// How many threads this process runs (from `/proc/self/task`).
fn thread_count() -> Result<usize, JailError> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.count())
        .map_err(|source| JailError::Step {
            step: "count the process's threads in /proc/self/task",
            source,
        })
}
