//! Running code inside the pod's network namespace: on a thread of its own that joins the
//! namespace (a thread's namespace is its own; the shim's other threads stay where they are).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::NetworkError;

/// Runs `work` on a new thread that has joined the network namespace at `path`.
pub(crate) fn run_in<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    let netns = File::open(path).map_err(|source| NetworkError::Netns {
        path: path.to_path_buf(),
        source,
    })?;
    let owned: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // SAFETY: setns on an fd we own; it changes only this thread's namespace.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetworkError::Netns {
                    path: owned,
                    source: std::io::Error::last_os_error(),
                });
            }
            work()
        })
        .map_err(|source| NetworkError::Netns {
            path: path.to_path_buf(),
            source,
        })?
        .join()
        .unwrap_or_else(|_| Err(NetworkError::Panicked))
}

/// Runs the future made by `work` on a single-threaded runtime in the namespace at `path`
/// (netlink sockets belong to the namespace of the thread that opens them).
pub(crate) fn block_on_in<T, F>(
    path: &Path,
    work: impl FnOnce() -> F + Send + 'static,
) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, NetworkError>>,
{
    run_in(path, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NetworkError::Runtime)?
            .block_on(work())
    })
}
