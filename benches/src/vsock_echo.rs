//! The host side of the vsock guest's benchmark: veil forwards the guest's connection to host
//! port P to the Unix socket `<uds>_P`; this server accepts it and echoes every byte back.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors of the echo server.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the guest did not connect to {path} within {timeout:?}")]
    NoConnection { path: PathBuf, timeout: Duration },
    #[error("echo on {path} failed: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running echo server; [`join`](Self::join) returns the bytes it echoed.
pub struct EchoServer {
    thread: JoinHandle<Result<u64, EchoError>>,
    /// Set once the VM has ended: a connection that has not come by then never will.
    vm_ended: Arc<AtomicBool>,
}

/// The socket veil connects to for guest connections to host port `port`.
pub fn port_socket(uds: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", uds.display()))
}

impl EchoServer {
    /// Listens on `path` and serves one connection, waiting at most `timeout` for it and for
    /// each read or write.
    pub fn start(path: PathBuf, timeout: Duration) -> Result<Self, EchoError> {
        let listener = UnixListener::bind(&path).map_err(|source| EchoError::Bind {
            path: path.clone(),
            source,
        })?;
        let vm_ended = Arc::new(AtomicBool::new(false));
        let ended = vm_ended.clone();
        let thread = std::thread::spawn(move || serve(&listener, &path, timeout, &ended));
        Ok(Self { thread, vm_ended })
    }

    /// Bytes echoed until the guest closed the stream. Call it once the VM has ended: if the
    /// guest never connected, the server gives up at once instead of waiting out its timeout.
    pub fn join(self) -> Result<u64, EchoError> {
        self.vm_ended.store(true, Ordering::Release);
        self.thread.join().unwrap_or_else(|_| {
            Err(EchoError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("echo thread panicked"),
            })
        })
    }
}

fn serve(
    listener: &UnixListener,
    path: &Path,
    timeout: Duration,
    vm_ended: &AtomicBool,
) -> Result<u64, EchoError> {
    let io = |source| EchoError::Io {
        path: path.to_owned(),
        source,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        // Read before accepting, so a connection queued before the VM ended is still served.
        let gave_up = vm_ended.load(Ordering::Acquire) || Instant::now() >= deadline;
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && !gave_up => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(EchoError::NoConnection {
                    path: path.to_owned(),
                    timeout,
                })
            }
            Err(e) => return Err(io(e)),
        }
    };
    stream.set_nonblocking(false).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                stream.write_all(&buf[..n]).map_err(io)?;
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn echoes_everything_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = port_socket(&dir.path().join("v.sock"), 5000);
        assert!(path.to_str().unwrap().ends_with("v.sock_5000"));
        let server = EchoServer::start(path.clone(), Duration::from_secs(30)).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = s.try_clone().unwrap();
        let got = std::thread::spawn(move || {
            let mut got = vec![0u8; 200_000];
            reader.read_exact(&mut got).unwrap();
            got
        });
        s.write_all(&data).unwrap();
        assert_eq!(got.join().unwrap(), data);
        drop(s);
        assert_eq!(server.join().unwrap(), 200_000);
    }

    #[test]
    fn a_vm_that_ended_without_connecting_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never_5000");
        // A timeout no test would sit out: join must not wait for it.
        let server = EchoServer::start(path, Duration::from_secs(3600)).unwrap();
        let err = server.join().unwrap_err();
        assert!(matches!(err, EchoError::NoConnection { .. }), "{err}");
    }

    #[test]
    fn a_connection_queued_before_the_vm_ended_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queued_5000");
        let server = EchoServer::start(path.clone(), Duration::from_secs(3600)).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        drop(s);
        assert_eq!(server.join().unwrap(), 4);
    }

    #[test]
    fn no_connection_is_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idle_5000");
        let server = EchoServer::start(path, Duration::from_millis(50)).unwrap();
        let err = server.join().unwrap_err();
        assert!(matches!(err, EchoError::NoConnection { .. }), "{err}");
        assert!(err.to_string().contains("idle_5000"), "{err}");
    }
}
