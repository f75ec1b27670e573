//! The control socket of a VMM run as its own process (`veil run --control-fd N`): its owner
//! (the shim) swaps disk images and stops the VM through it. A jailed VMM cannot open files,
//! so an image travels as an open file descriptor (SCM_RIGHTS).
//!
//! Protocol, one request at a time on a Unix stream socket, each answered before the next:
//! - `swap <index>\n` with one file descriptor: drive `index` (0 = vda) gets that file;
//! - `stop\n`: the VM stops as on SIGTERM;
//! - the owner closing its end stops the VM too (nobody is left to use it).
//!
//! Answers: `ok\n` or `error <reason>\n`.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::devices::DiskHandle;
use crate::seccomp::{self, ThreadFilter, ThreadKind};
use crate::vm::StopHandle;

/// Longest request or answer accepted.
const MAX_MESSAGE: usize = 256;

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: {0}")]
    Socket(vmm_sys_util::errno::Error),
    #[error("the VMM closed its control socket")]
    Closed,
    #[error("the VMM refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Serves `socket` from a `veil-control` thread until its owner closes it. With `filter`
/// (the main thread's), the thread installs it before this returns, so before the guest runs.
pub fn serve(
    socket: UnixStream,
    disks: Vec<DiskHandle>,
    stop: StopHandle,
    filter: Option<ThreadFilter>,
) -> Result<(), ControlError> {
    let (installed_tx, installed) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("veil-control".into())
        .spawn(move || {
            let result = match &filter {
                Some(program) => seccomp::apply(ThreadKind::Main, program),
                None => Ok(()),
            };
            let ok = result.is_ok();
            let _ = installed_tx.send(result);
            if ok {
                serve_requests(&socket, &disks);
            }
            // The owner is gone (or the socket broke): nobody can use the VM any more.
            stop.stop();
        })?;
    installed
        .recv()
        .map_err(|_| std::io::Error::other("the control thread died"))??;
    Ok(())
}

fn serve_requests(socket: &UnixStream, disks: &[DiskHandle]) {
    let mut buf = [0u8; MAX_MESSAGE];
    loop {
        let (len, file) = match socket.recv_with_fd(&mut buf) {
            Ok((0, _)) => return,
            Ok(got) => got,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                return;
            }
        };
        let answer = match handle(&buf[..len], file, disks) {
            Ok(Some(())) => "ok\n".to_string(),
            Ok(None) => {
                let _ = (&*socket).write_all(b"ok\n");
                return;
            }
            Err(reason) => format!("error {reason}\n"),
        };
        if (&*socket).write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Carries out one request: `Ok(None)` for `stop`.
fn handle(request: &[u8], file: Option<File>, disks: &[DiskHandle]) -> Result<Option<()>, String> {
    let text = std::str::from_utf8(request).map_err(|_| "request is not UTF-8".to_string())?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text == "stop" {
        return Ok(None);
    }
    let Some(index) = text.strip_prefix("swap ") else {
        return Err(format!("unknown request {:?}", truncate(text)));
    };
    let index: usize = index
        .parse()
        .map_err(|_| format!("bad drive index {:?}", truncate(index)))?;
    let disk = disks
        .get(index)
        .ok_or_else(|| format!("no drive {index} ({} drives)", disks.len()))?;
    let file = file.ok_or_else(|| "swap without a file descriptor".to_string())?;
    let name = PathBuf::from(format!("<image passed for drive {index}>"));
    disk.swap_open_file(file, &name)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn truncate(text: &str) -> &str {
    let end = (0..=text.len().min(32))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// The owner's end of a control socket.
#[derive(Debug)]
pub struct ControlClient(UnixStream);

impl ControlClient {
    pub fn new(socket: UnixStream) -> Self {
        Self(socket)
    }

    /// Makes `image` the backing file of drive `index` (0 = vda).
    pub fn swap(&mut self, index: usize, image: &File) -> Result<(), ControlError> {
        use std::os::fd::AsRawFd;
        let request = format!("swap {index}\n");
        self.0
            .send_with_fd(request.as_bytes(), image.as_raw_fd())
            .map_err(ControlError::Socket)?;
        self.answer()
    }

    /// Stops the VM.
    pub fn stop(&mut self) -> Result<(), ControlError> {
        self.0.write_all(b"stop\n")?;
        self.answer()
    }

    fn answer(&mut self) -> Result<(), ControlError> {
        use std::io::Read;
        let mut buf = [0u8; MAX_MESSAGE];
        let mut len = 0;
        while !buf[..len].contains(&b'\n') {
            if len == buf.len() {
                return Err(ControlError::Refused("answer too long".into()));
            }
            match self.0.read(&mut buf[len..])? {
                0 => return Err(ControlError::Closed),
                n => len += n,
            }
        }
        let text = String::from_utf8_lossy(&buf[..len]);
        let text = text.trim_end();
        match text.strip_prefix("error ") {
            None if text == "ok" => Ok(()),
            Some(reason) => Err(ControlError::Refused(reason.to_string())),
            None => Err(ControlError::Refused(format!("unexpected answer {text:?}"))),
        }
    }
}
