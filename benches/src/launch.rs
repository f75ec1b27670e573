//! Starting a VMM process, timing its console lines, and reaping it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Errors while running a VMM process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} printed no line containing {needle:?} within {timeout:?}{console}{stderr}")]
    NoLine {
        program: String,
        needle: String,
        timeout: Duration,
        /// The last lines it did print, prefixed for the message (empty when none).
        console: String,
        stderr: String,
    },
    #[error("{program} did not exit within {0:?}", .timeout)]
    NoExit { program: String, timeout: Duration },
    #[error("wait4 on pid {pid} failed: {source}")]
    Wait { pid: i32, source: std::io::Error },
}

/// A started VMM process whose standard output is read line by line.
pub struct Launched {
    program: String,
    child: Child,
    /// Just before fork/exec.
    pub spawned_at: Instant,
    lines: Receiver<(Instant, String)>,
    /// The last stdout lines `wait_for_line` read past, for its error: where a boot stopped.
    seen: VecDeque<String>,
    stderr: Receiver<String>,
    reaped: bool,
}

/// How many console lines a `NoLine` error quotes.
const SEEN_LINES: usize = 12;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Exit status, or 128 + signal number when killed by a signal (as shells report it).
    pub status: i32,
    pub at: Instant,
}

impl Launched {
    /// Starts `command` with stdin closed and stdout and stderr piped.
    pub fn spawn(mut command: Command) -> Result<Self, LaunchError> {
        let program = command.get_program().to_string_lossy().into_owned();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_at = Instant::now();
        let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let (line_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            // Read to the end even after the receiver is gone, so the VMM never blocks on a
            // full pipe.
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let at = Instant::now();
                let _ = line_tx.send((at, String::from_utf8_lossy(&line).into_owned()));
                line.clear();
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let mut err_pipe = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = err_pipe.read_to_end(&mut text);
            let _ = err_tx.send(String::from_utf8_lossy(&text).into_owned());
        });
        Ok(Self {
            program,
            child,
            spawned_at,
            lines,
            seen: VecDeque::with_capacity(SEEN_LINES),
            stderr,
            reaped: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a stdout line containing `needle`; returns when it was read.
    pub fn wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Instant, LaunchError> {
        let deadline = self.spawned_at + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.contains(needle) => return Ok(at),
                Ok((_, line)) => {
                    if self.seen.len() == SEEN_LINES {
                        self.seen.pop_front();
                    }
                    self.seen.push_back(line);
                }
                Err(e) => {
                    // Stdout closed: the process is ending and its stderr will close soon.
                    // Still running: its stderr stays open; don't wait for it.
                    let wait = match e {
                        RecvTimeoutError::Disconnected => Duration::from_secs(5),
                        RecvTimeoutError::Timeout => Duration::from_millis(100),
                    };
                    return Err(LaunchError::NoLine {
                        program: self.program.clone(),
                        needle: needle.to_string(),
                        timeout,
                        console: self.console_tail(),
                        stderr: self.stderr_tail(wait),
                    });
                }
            }
        }
    }

    /// The stdout lines not consumed yet, up to the end of output or `timeout`.
    pub fn remaining_lines(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while let Ok((_, line)) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            lines.push(line);
        }
        lines
    }

    /// The last console lines read past, prefixed for an error message (empty when none).
    fn console_tail(&self) -> String {
        if self.seen.is_empty() {
            return String::new();
        }
        let lines: String = self
            .seen
            .iter()
            .map(|l| format!("  {}\n", l.trim_end()))
            .collect();
        format!("; its last {} line(s):\n{lines}", self.seen.len())
    }

    /// The end of what the process wrote on stderr, once its stderr closed within `wait`
    /// (empty otherwise), prefixed for an error message.
    fn stderr_tail(&self, wait: Duration) -> String {
        match self.stderr.recv_timeout(wait) {
            Ok(text) if !text.trim().is_empty() => {
                let text = text.trim();
                // The last 400 characters (not bytes: the text may be any UTF-8).
                let from = text.char_indices().rev().nth(399).map_or(0, |(i, _)| i);
                let tail = &text[from..];
                format!("; its stderr ends: {tail}")
            }
            _ => String::new(),
        }
    }

    /// Sends `signal` to the process if it has not been reaped yet.
    pub fn signal(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: kill() on our own unreaped child's pid: the pid cannot have been reused.
            unsafe { libc::kill(self.pid(), signal) };
        }
    }

    /// Reaps the process, waiting at most `timeout` (then SIGKILLs it and reports NoExit).
    pub fn wait(&mut self, timeout: Duration) -> Result<Ended, LaunchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ended) = self.try_reap()? {
                return Ok(ended);
            }
            if Instant::now() >= deadline {
                self.signal(libc::SIGKILL);
                let _ = self.reap_blocking();
                return Err(LaunchError::NoExit {
                    program: self.program.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Reaps the process if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<Ended>, LaunchError> {
        self.try_reap()
    }

    fn try_reap(&mut self) -> Result<Option<Ended>, LaunchError> {
        self.wait4(libc::WNOHANG)
    }

    fn reap_blocking(&mut self) -> Result<Option<Ended>, LaunchError> {
        self.wait4(0)
    }

    fn wait4(&mut self, flags: i32) -> Result<Option<Ended>, LaunchError> {
        if self.reaped {
            return Ok(None);
        }
        let pid = self.pid();
        let mut status = 0;
        // No rusage: its ru_maxrss is no use here. exec() folds the old address space's peak
        // into it, and Rust spawns with vfork semantics, so it reports at least the harness's
        // own RSS. Peaks come from VmHWM (which starts afresh at exec) instead.
        // SAFETY: a valid pointer to `status`; a null rusage pointer is allowed.
        let rc = unsafe { libc::wait4(pid, &mut status, flags, std::ptr::null_mut()) };
        match rc {
            0 => Ok(None),
            r if r == pid => {
                self.reaped = true;
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                Ok(Some(Ended {
                    status: code,
                    at: Instant::now(),
                }))
            }
            _ => Err(LaunchError::Wait {
                pid,
                source: std::io::Error::last_os_error(),
            }),
        }
    }
}

impl Drop for Launched {
    /// Never leaves a VMM running or a zombie behind.
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            let _ = self.reap_blocking();
        }
    }
}

/// Milliseconds between two instants.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Launched {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        Launched::spawn(c).unwrap()
    }

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn finds_the_line_then_reaps_the_exit_status() {
        let mut p = sh("echo boot; echo 'Hello there'; echo after; exit 3");
        let at = p.wait_for_line("Hello", LONG).unwrap();
        assert!(at >= p.spawned_at);
        assert_eq!(p.remaining_lines(LONG), ["after\n"]);
        let ended = p.wait(LONG).unwrap();
        assert_eq!(ended.status, 3);
        assert!(ended.at >= at);
    }

    #[test]
    fn a_signalled_process_reports_128_plus_the_signal() {
        let mut p = sh("echo up; exec sleep 60");
        p.wait_for_line("up", LONG).unwrap();
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait(LONG).unwrap().status, 128 + libc::SIGTERM);
    }

    #[test]
    fn a_missing_line_is_an_error_that_quotes_stderr() {
        let mut p = sh("echo other; echo 'no kvm here' >&2");
        let err = p.wait_for_line("Hello", LONG).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LaunchError::NoLine { .. }), "{text}");
        assert!(text.contains("no kvm here"), "{text}");
    }

    #[test]
    fn a_missing_line_is_an_error_that_quotes_the_last_console_lines() {
        let script = "for i in $(seq 1 20); do echo boot step $i; done";
        let mut p = sh(script);
        let text = p.wait_for_line("Run /init", LONG).unwrap_err().to_string();
        // Where the boot stopped: the last lines, not the first ones.
        assert!(text.contains("boot step 20\n"), "{text}");
        assert!(text.contains("boot step 9\n"), "{text}");
        assert!(!text.contains("boot step 8\n"), "{text}");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = Launched::spawn(Command::new("/nonexistent/vmm"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/vmm"), "{err}");
    }
}
