//! The one place that waits for children: reaps every exited child (as PID 1 it must also
//! reap orphans re-parented to it) and hands exit statuses to whoever waits on that pid.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Which PID namespace a new process goes into.
pub enum PidNamespace<'a> {
    /// A new one; the process is its PID 1.
    New,
    /// The namespace of this descriptor (`/proc/<pid>/ns/pid`).
    Join(&'a OwnedFd),
}

/// Exit status as Kata reports it: the exit code, or 128 + signal number.
pub type ExitStatus = i32;

/// Exit statuses kept for pids nobody waits on yet: container processes libcontainer forked
/// are re-parented to the agent and can exit before the agent learns their pid.
const MAX_UNCLAIMED: usize = 4096;

/// Registry of our children's pids.
#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, watch::Sender<Option<ExitStatus>>>,
    unclaimed: HashMap<i32, ExitStatus>,
}

impl Reaper {
    /// Creates the reaper and starts its SIGCHLD task. Must run before any child is spawned,
    /// inside a tokio runtime.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let task_reaper = reaper.clone();
        tokio::spawn(async move {
            loop {
                task_reaper.reap();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd` and registers its pid, under the registry lock so the reaper cannot collect
    /// the child (nor std's own exec-failure wait lose it) before it is registered.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(i32, watch::Receiver<Option<ExitStatus>>)> {
        let mut waiting = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Dropping `Child` neither kills nor waits; the reaper collects it.
        drop(child);
        // A status kept for an earlier process with this pid is stale now.
        waiting.unclaimed.remove(&pid);
        let (tx, rx) = watch::channel(None);
        waiting.waiting.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Watches `pid`, a process that is not our child yet (or has already exited as one):
    /// a container process that libcontainer's helper forked and that re-parents to the agent.
    pub fn adopt(&self, pid: i32) -> watch::Receiver<Option<ExitStatus>> {
        let mut registry = self.lock();
        if let Some(code) = registry.unclaimed.remove(&pid) {
            return watch::channel(Some(code)).1;
        }
        let (tx, rx) = watch::channel(None);
        registry.waiting.insert(pid, tx);
        rx
    }

    /// Spawns `cmd` from a short-lived thread whose children go into PID namespace `pid_ns`
    /// (a fresh one, or an existing one to join). The PID namespace for children is a
    /// per-thread setting, so the agent's other threads are not affected.
    pub fn spawn_in_pid_namespace(
        &self,
        cmd: &mut Command,
        pid_ns: PidNamespace<'_>,
    ) -> std::io::Result<(i32, watch::Receiver<Option<ExitStatus>>)> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rc = match pid_ns {
                        // SAFETY: unshare with a flag only; affects this thread's children.
                        PidNamespace::New => unsafe { libc::unshare(libc::CLONE_NEWPID) },
                        // SAFETY: setns on an open pid-namespace descriptor.
                        PidNamespace::Join(fd) => unsafe {
                            libc::setns(fd.as_raw_fd(), libc::CLONE_NEWPID)
                        },
                    };
                    if rc == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    self.spawn(cmd)
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("spawn thread panicked")))
        })
    }

    fn reap(&self) {
        let mut waiting = self.lock();
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                continue;
            };
            match waiting.waiting.remove(&pid) {
                Some(tx) => {
                    tracing::debug!(pid, code, "child exited");
                    let _ = tx.send(Some(code));
                }
                None => {
                    tracing::debug!(pid, code, "reaped orphan");
                    if waiting.unclaimed.len() >= MAX_UNCLAIMED {
                        waiting.unclaimed.clear();
                    }
                    waiting.unclaimed.insert(pid, code);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits until `rx` carries an exit status.
pub async fn wait_exit(mut rx: watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    loop {
        if let Some(code) = *rx.borrow_and_update() {
            return code;
        }
        if rx.changed().await.is_err() {
            // The reaper dropped the sender without a status: it cannot happen while the
            // reaper runs; report it as killed rather than hang.
            return 128 + libc::SIGKILL;
        }
    }
}
