//! The fork into a new PID namespace and the parent that stays outside: it relays the
//! termination signals to the jailed child and reports how the child ended.

use std::io;

use super::{check_privileged, thread_count, JailError};

/// Which side of the fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// PID 1 of the new PID namespace: build the VM, [`confine`](super::confine), run.
    /// SIGINT, SIGTERM and SIGHUP are blocked (queued for whoever waits for them).
    Child,
    /// The original process, once the child ended.
    Parent(ChildEnd),
}

/// How the jailed child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    Exited(i32),
    Killed(i32),
}

impl ChildEnd {
    /// The status a shell would report: the child's own, or 128 + the signal that killed it.
    pub fn status(self) -> u8 {
        match self {
            Self::Exited(code) => code as u8,
            Self::Killed(signal) => 128u8.wrapping_add(signal as u8),
        }
    }
}

/// The signals relayed to the child.
const RELAYED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn relayed_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in RELAYED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Forks into a new PID namespace. Must run before the process has a second thread (a fork
/// copies only the calling thread, and KVM refuses a VM to any process but its creator, so
/// the VM is built after this, in the child). In the parent, returns when the child ended.
pub fn fork_into_pid_namespace() -> Result<Forked, JailError> {
    let threads = thread_count()?;
    if threads > 1 {
        return Err(JailError::Threads(threads));
    }
    // Blocked before the fork, so a signal arriving while the child starts waits for it.
    let set = relayed_set();
    let mut previous = relayed_set();
    // SAFETY: valid signal sets.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous) };
    let restore = |previous: &libc::sigset_t| {
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, previous, std::ptr::null_mut()) };
    };
    // SAFETY: unshare only changes the namespace this process's future children get.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    if let Err(e) = check_privileged(rc, "create a PID namespace") {
        restore(&previous);
        return Err(e);
    }
    // SAFETY: the process has one thread (checked above), so the child is a complete copy.
    match unsafe { libc::fork() } {
        -1 => {
            restore(&previous);
            Err(JailError::Step {
                step: "fork into the PID namespace",
                source: io::Error::last_os_error(),
            })
        }
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent(relay(child, set))),
    }
}

/// Relays the termination signals to `child` and waits for it. No thread can help: a process
/// whose children go to another PID namespace cannot create threads. So one loop polls a
/// signalfd for the (blocked) signals and a pidfd for the child's end; signals go through
/// the pidfd, which never reaches another process once the child is reaped.
fn relay(child: libc::pid_t, set: libc::sigset_t) -> ChildEnd {
    // SAFETY: pidfd_open of our own child; signalfd with a valid set. Both new fds are ours.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) } as libc::c_int;
    // SAFETY: as above.
    let signals = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if pidfd < 0 || signals < 0 {
        tracing::warn!("cannot relay termination signals to the jailed VMM");
        return wait(child);
    }
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 || fds[0].revents != 0 {
            break;
        }
        if fds[1].revents != 0 {
            // SAFETY: signalfd_siginfo is plain data, read whole or not at all.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most `size` bytes into `info`.
            let got = unsafe {
                libc::read(
                    signals,
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if got == size as isize {
                // SAFETY: pidfd_send_signal through the pidfd this process holds.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd,
                        info.ssi_signo as libc::c_int,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
        }
    }
    let end = wait(child);
    // SAFETY: closing the two fds opened above.
    unsafe {
        libc::close(pidfd);
        libc::close(signals);
    }
    end
}

/// Reaps `child`.
fn wait(child: libc::pid_t) -> ChildEnd {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a writable status.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            return if libc::WIFSIGNALED(status) {
                ChildEnd::Killed(libc::WTERMSIG(status))
            } else {
                ChildEnd::Exited(libc::WEXITSTATUS(status))
            };
        }
        if rc == -1 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Cannot happen for our own child; report it as killed rather than loop.
            return ChildEnd::Killed(libc::SIGKILL);
        }
    }
}
