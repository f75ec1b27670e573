//! The agent's side of libcontainer: runs [`super::helper`] in a child process through the
//! reaper and turns its answer into a pid or an error that names what libcontainer refused.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::helper::HELPER_ARG;
use super::reaper::{wait_exit, Reaper};
use super::stdio::ChildIo;
use super::{sys, ContainerError};

/// Most helper output kept for an error message.
const MAX_HELPER_OUTPUT: usize = 16 << 10;

/// One libcontainer operation.
pub enum Op<'a> {
    /// Create the container from the bundle at this path (init process waits for `Start`).
    Create(&'a Path),
    /// Run the process described by this process.json inside the container.
    Exec(&'a Path),
    Start,
    /// Kill whatever is left, run poststop hooks, remove the cgroup and the state.
    Delete,
}

/// Where libcontainer keeps its per-container state.
#[derive(Clone, Debug)]
pub struct Runtime {
    root: PathBuf,
}

impl Runtime {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Runs `op` for container `id`; `io` becomes the container process's stdio. Returns the
    /// pid of a created or exec'd process.
    pub async fn run(
        &self,
        reaper: &Reaper,
        id: &str,
        op: Op<'_>,
        io: Option<ChildIo>,
    ) -> Result<Option<i32>, ContainerError> {
        let (name, path) = match op {
            Op::Create(p) => ("create", Some(p)),
            Op::Exec(p) => ("exec", Some(p)),
            Op::Start => ("start", None),
            Op::Delete => ("delete", None),
        };
        let spawn_err =
            |e| ContainerError::Runtime(format!("starting the libcontainer helper: {e}"));
        let (out_r, out_w) = sys::pipe().map_err(spawn_err)?;
        let (err_r, err_w) = sys::pipe().map_err(spawn_err)?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(HELPER_ARG)
            .arg(name)
            .arg(&self.root)
            .arg(id)
            .args(path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            // The helper's own log lines (libcontainer's tracing) stay quiet unless asked.
            .env(
                "RUST_LOG",
                std::env::var("VEIL_HELPER_LOG").unwrap_or_else(|_| "error".into()),
            );
        if let Some(io) = &io {
            cmd.arg("stdio");
            let fds = [
                io.stdin.as_raw_fd(),
                io.stdout.as_raw_fd(),
                io.stderr.as_raw_fd(),
            ];
            // SAFETY: only dup2/fcntl between fork and exec, on descriptors `io` keeps open
            // until the helper has exited (it outlives `cmd.spawn`).
            unsafe {
                cmd.pre_exec(move || {
                    // Move the sources out of 3..=5 first, so one dup2 cannot clobber the next.
                    let mut moved = [0; 3];
                    for (slot, fd) in moved.iter_mut().zip(fds) {
                        *slot = sys::check(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10))?;
                    }
                    for (target, fd) in (3..).zip(moved) {
                        sys::check(libc::dup2(fd, target))?;
                    }
                    Ok(())
                });
            }
        }
        let (_, exited) = reaper.spawn(&mut cmd).map_err(spawn_err)?;
        drop(cmd);
        let status = wait_exit(exited).await;
        drop(io);
        let stdout = drain(out_r);
        let stderr = drain(err_r);
        if status != 0 {
            let message = stderr.trim();
            return Err(ContainerError::Runtime(if message.is_empty() {
                format!("libcontainer {name} for {id} exited with status {status}")
            } else {
                message.to_string()
            }));
        }
        match path {
            Some(_) => stdout.trim().parse().map(Some).map_err(|_| {
                ContainerError::Runtime(format!(
                    "libcontainer {name} for {id} printed no pid: {stdout:?}"
                ))
            }),
            None => Ok(None),
        }
    }

    /// libcontainer's state directory of container `id` (removed by `Delete`).
    pub fn state_of(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

/// What the helper left in a pipe. Read without blocking: a container process may have
/// inherited the write end, so end of file may never come; the helper has exited and
/// everything it wrote is already buffered.
fn drain(fd: OwnedFd) -> String {
    if sys::set_nonblocking(&fd).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = std::fs::File::from(fd)
        .take(MAX_HELPER_OUTPUT as u64)
        .read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
