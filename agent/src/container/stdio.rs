//! The agent's ends of a process's stdin/stdout/stderr (pipes, or a pty master).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

use super::sys;

/// One non-blocking descriptor driven by tokio's reactor.
pub struct Stream {
    fd: AsyncFd<File>,
}

impl Stream {
    /// Takes ownership of `fd` and makes it non-blocking.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        sys::set_nonblocking(&fd)?;
        // SAFETY: the File owns the descriptor, keeps it open and returns the same fd from
        // as_raw_fd for as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(File::from(fd)) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Reads at most `buf.len()` bytes; 0 means end of stream (EIO from a pty whose other
    /// side closed counts as end of stream too).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| inner.get_ref().read(buf)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| inner.get_ref().write(data)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// The agent side of a process's standard streams.
pub struct ProcessIo {
    pub stdin: Mutex<Option<Stream>>,
    pub stdout: Mutex<Option<Stream>>,
    pub stderr: Mutex<Option<Stream>>,
    /// The pty master when the process has a terminal (stdout and stdin go through it).
    pub tty: Option<OwnedFd>,
}

/// The child side, handed to the spawned process and closed in the agent afterwards.
pub struct ChildIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Creates pipes for the three streams.
pub fn pipes() -> io::Result<(ProcessIo, ChildIo)> {
    let (in_r, in_w) = sys::pipe()?;
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    Ok((
        ProcessIo {
            stdin: Mutex::new(Some(Stream::new(in_w)?)),
            stdout: Mutex::new(Some(Stream::new(out_r)?)),
            stderr: Mutex::new(Some(Stream::new(err_r)?)),
            tty: None,
        },
        ChildIo {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
    ))
}

/// Creates a pty of `rows` x `cols`; the slave becomes all three of the child's streams and
/// stderr reads as empty (a terminal merges it into stdout).
pub fn pty(rows: u16, cols: u16) -> io::Result<(ProcessIo, ChildIo)> {
    use std::os::fd::FromRawFd;
    let mut master = -1;
    let mut slave = -1;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; name and termios are null, size is valid.
    sys::check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    })?;
    // SAFETY: openpty succeeded; both descriptors are ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own.
        sys::check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    // stderr: a pipe whose write end is closed at once, so reads see end of stream.
    let (err_r, err_w) = sys::pipe()?;
    drop(err_w);
    Ok((
        ProcessIo {
            stdin: Mutex::new(Some(Stream::new(master.try_clone()?)?)),
            stdout: Mutex::new(Some(Stream::new(master.try_clone()?)?)),
            stderr: Mutex::new(Some(Stream::new(err_r)?)),
            tty: Some(master),
        },
        ChildIo {
            stdin: slave.try_clone()?,
            stdout: slave.try_clone()?,
            stderr: slave,
        },
    ))
}

/// Sets the window size of a pty master.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer on a pty master we own.
    sys::check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) })?;
    Ok(())
}
