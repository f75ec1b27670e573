//! A `veil run` of a test guest whose console lines arrive as they are printed and whose
//! standard input reaches the guest's serial console.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use veil_tests::Guest;

/// Longest any single step may take before a test calls it a hang: it only turns a hang into
/// a failure, never a timing assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

pub struct RunningVeil {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    transcript: Arc<Mutex<String>>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl RunningVeil {
    /// `veil run --kernel <guest> <args>`.
    pub fn start(guest: Guest, args: &[&str]) -> Self {
        let mut child = Command::new(super::VEIL)
            .args(["run", "--kernel", guest.path().to_str().unwrap()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn veil");
        let (tx, lines) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(String::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let copy = transcript.clone();
        thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                copy.lock().unwrap().push_str(&format!("{line}\n"));
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            transcript,
            stderr: Some(stderr),
        }
    }

    /// The console output so far.
    pub fn transcript(&self) -> String {
        self.transcript.lock().unwrap().clone()
    }

    /// Waits for the first console line starting with `prefix` and returns it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "no {prefix:?} line in {HANG_GUARD:?}: {}",
                        self.transcript()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("veil ended without {prefix:?}: {}", self.transcript())
                }
            }
        }
    }

    /// Lets a guest waiting on its serial console go on.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"g").unwrap();
        stdin.flush().unwrap();
    }

    /// A field of the VMM process's /proc status, in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes the guest's standard input, waits for veil to exit; returns its status, the
    /// whole console output and stderr.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + HANG_GUARD;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "veil still running after {HANG_GUARD:?}: {}",
                    self.transcript()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF; drain what it still has.
        while self.lines.recv_timeout(HANG_GUARD).is_ok() {}
        let err = self.stderr.take().unwrap().join().unwrap();
        (status, self.transcript(), err)
    }
}

impl Drop for RunningVeil {
    fn drop(&mut self) {
        self.kill();
    }
}
