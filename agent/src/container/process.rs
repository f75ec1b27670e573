//! One process of a container: its stdio, its pid once started, its exit status.

use std::sync::OnceLock;

use tokio::sync::watch;

use super::reaper::{wait_exit, ExitStatus};
use super::stdio::{self, ChildIo, ProcessIo};
use super::ContainerError;

/// A process, created before it is started (the init process exists from CreateContainer on,
/// so its streams can be attached before StartContainer).
pub struct Process {
    exec_id: String,
    io: ProcessIo,
    started: OnceLock<(i32, watch::Receiver<Option<ExitStatus>>)>,
}

impl Process {
    /// Allocates stdio (a pty when the process asks for a terminal); the child's ends go to
    /// libcontainer.
    pub fn new(
        exec_id: &str,
        terminal: bool,
        (rows, cols): (u16, u16),
    ) -> Result<(Self, ChildIo), ContainerError> {
        let stream_err = |source| ContainerError::Stream {
            exec_id: exec_id.to_string(),
            source,
        };
        let (io, child) = if terminal {
            stdio::pty(rows, cols).map_err(stream_err)?
        } else {
            stdio::pipes().map_err(stream_err)?
        };
        Ok((
            Self {
                exec_id: exec_id.to_string(),
                io,
                started: OnceLock::new(),
            },
            child,
        ))
    }

    /// Records the pid libcontainer gave the process and where its exit status arrives.
    pub fn set_started(&self, pid: i32, exited: watch::Receiver<Option<ExitStatus>>) {
        let _ = self.started.set((pid, exited));
    }

    /// The pid, once started.
    pub fn pid(&self) -> Option<i32> {
        self.started.get().map(|(pid, _)| *pid)
    }

    /// Whether it has been started and has exited.
    pub fn has_exited(&self) -> bool {
        self.started
            .get()
            .is_some_and(|(_, rx)| rx.borrow().is_some())
    }

    /// Sends `signal` if it is still running.
    pub fn signal(&self, signal: i32, container_id: &str) -> Result<(), ContainerError> {
        let pid = self.pid().ok_or_else(|| ContainerError::WrongState {
            id: container_id.to_string(),
            state: "created",
            op: "SignalProcess",
            wanted: "started",
        })?;
        if !self.has_exited() {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet (no exit status),
            // so the pid cannot have been reused.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Waits for the exit status.
    pub async fn wait(&self, container_id: &str) -> Result<ExitStatus, ContainerError> {
        let (_, rx) = self
            .started
            .get()
            .ok_or_else(|| ContainerError::WrongState {
                id: container_id.to_string(),
                state: "created",
                op: "WaitProcess",
                wanted: "started",
            })?;
        Ok(wait_exit(rx.clone()).await)
    }

    /// SIGKILL and wait, for teardown; a never-started process just drops its streams.
    pub async fn kill_and_wait(&self) {
        if let Some((pid, rx)) = self.started.get() {
            if rx.borrow().is_none() {
                // SAFETY: as in `signal`.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            wait_exit(rx.clone()).await;
        }
    }

    fn stream_err(&self, source: std::io::Error) -> ContainerError {
        ContainerError::Stream {
            exec_id: self.exec_id.clone(),
            source,
        }
    }

    /// Writes all of `data` to stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<u32, ContainerError> {
        let guard = self.io.stdin.lock().await;
        let stream = guard.as_ref().ok_or_else(|| {
            self.stream_err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin is closed",
            ))
        })?;
        stream
            .write_all(data)
            .await
            .map_err(|e| self.stream_err(e))?;
        Ok(data.len() as u32)
    }

    /// Reads up to `len` bytes of stdout or stderr; empty at end of stream.
    pub async fn read_output(&self, len: usize, stderr: bool) -> Result<Vec<u8>, ContainerError> {
        let lock = if stderr {
            &self.io.stderr
        } else {
            &self.io.stdout
        };
        let guard = lock.lock().await;
        let Some(stream) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; len];
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| self.stream_err(e))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Closes stdin (the process sees end of input). With a pty, sends EOT instead, since the
    /// master also carries stdout.
    pub async fn close_stdin(&self) {
        let mut guard = self.io.stdin.lock().await;
        if self.io.tty.is_some() {
            if let Some(s) = guard.as_ref() {
                let _ = s.write_all(&[4]).await;
            }
        } else {
            guard.take();
        }
    }

    /// Resizes the terminal; an error when the process has none.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ContainerError> {
        let master = self.io.tty.as_ref().ok_or_else(|| {
            ContainerError::InvalidSpec(format!("process {:?} has no terminal", self.exec_id))
        })?;
        stdio::resize(master, rows, cols).map_err(|e| self.stream_err(e))
    }
}
