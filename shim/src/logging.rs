//! The shim server's log: containerd reads the `log` fifo in the bundle directory and copies
//! it into its own log, so the shim (and the agent of a process sandbox, which inherits the
//! shim's stderr) writes there.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Log filter variable (`RUST_LOG` syntax is not needed: a level name is enough).
const LEVEL_ENV: &str = "VEIL_SHIM_LOG";

/// Points stderr at containerd's log fifo when containerd reads it, then installs the
/// tracing subscriber on stderr.
pub fn init(debug: bool) {
    // O_NONBLOCK makes the open fail at once when nobody reads the fifo, instead of
    // hanging the shim; the descriptor then goes back to blocking writes.
    if let Ok(fifo) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
    {
        // SAFETY: fcntl and dup2 on descriptors we own; stderr is replaced atomically.
        unsafe {
            let fd = fifo.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            libc::dup2(fd, libc::STDERR_FILENO);
        }
    }
    let level = std::env::var(LEVEL_ENV)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(if debug {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        });
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
