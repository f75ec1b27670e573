//! A process's stdio: containerd's fifos on one side, the agent's stream calls on the other.
//!
//! Output is copied until the agent reports end of stream, and a process counts as exited
//! only after that (containerd's clients stop reading when they see the exit, so output must
//! be flushed first). The output fifos are opened when containerd hands them over (create,
//! exec), not at start: a client opens its reading ends in the background before Create and
//! abandons one whose open has not completed on its side when it sees the exit, so under
//! load a process that exits at once lost its output when the shim opened them only at
//! start. Stdin is read with a blocking open, which waits for containerd's client to open
//! its end, and ends the process's stdin when that client closes it.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;

use crate::sandbox::ctx;

/// Bytes asked for per ReadStdout/ReadStderr call.
const READ_CHUNK: u32 = 64 * 1024;
/// Bytes read from the stdin fifo per WriteStdin call (the agent takes up to 1 MiB).
const STDIN_CHUNK: usize = 64 * 1024;
/// How long a process's exit waits for containerd's client to read its last output.
const CLIENT_READ_BOUND: std::time::Duration = std::time::Duration::from_secs(2);
/// How often that wait looks.
const CLIENT_READ_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// containerd's fifo paths for one process (empty = not connected).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// An output fifo's writing end, being opened (the open waits for containerd's client to
/// open its reading end).
struct OutputFifo {
    path: String,
    stderr: bool,
    open: JoinHandle<Option<tokio::fs::File>>,
}

/// The writing ends of a process's output fifos, opening from the moment containerd named
/// them. Dropped before the process starts, they release an open still waiting for a reader.
pub struct OutputFifos(Vec<OutputFifo>);

impl OutputFifos {
    /// Starts opening stdout and (without a terminal, where the agent merges it into the
    /// pty's one stream) stderr.
    pub fn open(paths: &StdioPaths) -> Self {
        let mut fifos = vec![OutputFifo::open(&paths.stdout, false)];
        if !paths.terminal {
            fifos.push(OutputFifo::open(&paths.stderr, true));
        }
        Self(fifos)
    }
}

impl Drop for OutputFifos {
    fn drop(&mut self) {
        for fifo in &self.0 {
            if !fifo.open.is_finished() {
                release_fifo(&fifo.path, Blocked::Writer);
            }
        }
    }
}

impl OutputFifo {
    fn open(path: &str, stderr: bool) -> Self {
        let path = path.to_string();
        let open = tokio::spawn({
            let path = path.clone();
            async move {
                if path.is_empty() {
                    return None;
                }
                match tokio::fs::OpenOptions::new().write(true).open(&path).await {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "cannot open output fifo; output discarded");
                        None
                    }
                }
            }
        });
        Self { path, stderr, open }
    }
}

/// The running copies of one process.
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
    stdin_path: String,
}

impl Copies {
    /// Starts copying for process `exec_id` of container `cid` (the init process has
    /// `exec_id == cid` in the agent): its output into `outputs` (opening since create), and
    /// the fifo `stdin` (empty: none) into its stdin.
    pub fn start(
        client: &AgentClient,
        cid: &str,
        exec_id: &str,
        stdin: &str,
        mut outputs: OutputFifos,
    ) -> Self {
        let outputs = std::mem::take(&mut outputs.0)
            .into_iter()
            .map(|fifo| {
                tokio::spawn(copy_out(
                    client.clone(),
                    cid.to_string(),
                    exec_id.to_string(),
                    fifo,
                ))
            })
            .collect();
        if !stdin.is_empty() {
            let client = client.clone();
            let (cid, exec_id, path) = (cid.to_string(), exec_id.to_string(), stdin.to_string());
            let handle = tokio::runtime::Handle::current();
            std::thread::spawn(move || copy_in(handle, client, cid, exec_id, path));
        }
        Self {
            outputs,
            stdin_path: stdin.to_string(),
        }
    }

    /// Waits until all output has been copied (the agent ended both streams).
    pub async fn outputs_done(&mut self) {
        for h in self.outputs.drain(..) {
            let _ = h.await;
        }
    }

    /// Releases a stdin copy still waiting for containerd's client to open the fifo.
    pub fn release_stdin(&self) {
        release_fifo(&self.stdin_path, Blocked::Reader);
    }
}

/// Copies one output stream of the process into `fifo` until the agent ends it.
async fn copy_out(client: AgentClient, cid: String, exec_id: String, fifo: OutputFifo) {
    let OutputFifo { path, stderr, open } = fifo;
    let mut sink = open.await.ok().flatten();
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = cid;
    req.exec_id = exec_id;
    req.len = READ_CHUNK;
    let mut total = 0usize;
    loop {
        let resp = if stderr {
            client.agent.read_stderr(ctx(), &req).await
        } else {
            client.agent.read_stdout(ctx(), &req).await
        };
        let data = match resp {
            Ok(r) if r.data.is_empty() => break,
            Ok(r) => {
                total += r.data.len();
                r.data
            }
            Err(e) => {
                tracing::debug!(exec = %req.exec_id, stderr, error = %e, "output stream ended");
                break;
            }
        };
        if let Some(f) = sink.as_mut() {
            // A reader that went away only loses the output; keep draining the agent so the
            // process never blocks on a full pipe.
            if let Err(e) = f.write_all(&data).await {
                tracing::debug!(%path, error = %e, "output fifo closed");
                sink = None;
            }
        }
    }
    tracing::debug!(exec = %req.exec_id, stderr, bytes = total, "output copied");
    if let Some(mut f) = sink {
        let _ = f.flush().await;
        until_client_read(&f).await;
    }
}

/// Waits, at most [`CLIENT_READ_BOUND`], until containerd's client has read all that was
/// written to output fifo `fifo` or has closed its end. Clients stop reading when they see
/// the exit, and ctr (containerd 1.6) drops a fifo whose open its own goroutine has not yet
/// finished handling when the exit arrives, with the output still in it; that happened
/// under load even with the fifo opened at create.
async fn until_client_read(fifo: &tokio::fs::File) {
    let deadline = tokio::time::Instant::now() + CLIENT_READ_BOUND;
    while unread_by_client(fifo.as_raw_fd()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(CLIENT_READ_POLL).await;
    }
}

/// Whether bytes written to the pipe `fd` (a writing end) wait for a reader that is there.
fn unread_by_client(fd: std::os::fd::RawFd) -> bool {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD on a pipe stores the byte count in the int we pass.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } != 0 || unread == 0 {
        return false;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll with a zero timeout on one valid pollfd. A pipe's writing end polls
    // POLLERR once no reader is left.
    let polled = unsafe { libc::poll(&mut pfd, 1, 0) };
    polled >= 0 && pfd.revents & libc::POLLERR == 0
}

/// Copies the stdin fifo to the agent (on its own thread: the open blocks), then closes the
/// process's stdin.
fn copy_in(
    rt: tokio::runtime::Handle,
    client: AgentClient,
    cid: String,
    exec_id: String,
    path: String,
) {
    let mut fifo = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(%path, error = %e, "cannot open stdin fifo");
            return;
        }
    };
    tracing::debug!(exec = %exec_id, "stdin fifo opened");
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut total = 0usize;
    loop {
        let n = match fifo.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(%path, error = %e, "stdin fifo read failed");
                break;
            }
        };
        let mut sent = 0;
        while sent < n {
            let mut req = agent::WriteStreamRequest::new();
            req.container_id = cid.clone();
            req.exec_id = exec_id.clone();
            req.data = buf[sent..n].to_vec();
            match rt.block_on(client.agent.write_stdin(ctx(), &req)) {
                Ok(r) if r.len > 0 => {
                    sent += r.len as usize;
                    total += r.len as usize;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(exec = %exec_id, error = %e, "stdin write refused");
                    return;
                }
            }
        }
    }
    tracing::debug!(exec = %exec_id, bytes = total, "stdin fifo ended; closing the process's stdin");
    let mut close = agent::CloseStdinRequest::new();
    close.container_id = cid;
    close.exec_id = exec_id;
    if let Err(e) = rt.block_on(client.agent.close_stdin(ctx(), &close)) {
        tracing::debug!(error = %e, "CloseStdin failed");
    }
}

/// The end of a fifo whose open, blocked until the other end opens, a release unblocks.
#[derive(Debug, Clone, Copy)]
pub enum Blocked {
    /// A reader: it returns and then reads end of file.
    Reader,
    /// A writer: it returns, and its writes then fail.
    Writer,
}

/// Opens and closes the other end of fifo `path` without blocking, so a `blocked` open of
/// it returns. Does nothing when no such open waits.
pub fn release_fifo(path: &str, blocked: Blocked) {
    if path.is_empty() {
        return;
    }
    let _ = std::fs::OpenOptions::new()
        .read(matches!(blocked, Blocked::Writer))
        .write(matches!(blocked, Blocked::Reader))
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    /// Bound on a fifo open that should complete at once.
    const OPEN_BOUND: Duration = Duration::from_secs(10);

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
            0,
            "mkfifo {path:?}"
        );
    }

    fn paths(dir: &Path) -> StdioPaths {
        let mut paths = StdioPaths::default();
        for (name, field) in [("stdout", &mut paths.stdout), ("stderr", &mut paths.stderr)] {
            let path = dir.join(name);
            mkfifo(&path);
            *field = path.display().to_string();
        }
        paths
    }

    /// A client's blocking open of a fifo's reading end, on a blocking thread.
    fn client_reader(path: &str) -> JoinHandle<std::io::Result<std::fs::File>> {
        let path = path.to_string();
        tokio::task::spawn_blocking(move || std::fs::File::open(path))
    }

    #[tokio::test]
    async fn output_fifos_open_for_the_client_before_the_process_starts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let readers = [client_reader(&paths.stdout), client_reader(&paths.stderr)];
        let fifos = OutputFifos::open(&paths);
        for reader in readers {
            let opened = tokio::time::timeout(OPEN_BOUND, reader).await;
            assert!(
                matches!(opened, Ok(Ok(Ok(_)))),
                "the client's open completed without a start: {opened:?}"
            );
        }
        drop(fifos);
    }

    #[tokio::test]
    async fn a_terminal_has_no_stderr_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = paths(dir.path());
        paths.terminal = true;
        let fifos = OutputFifos::open(&paths);
        assert_eq!(fifos.0.len(), 1);
        assert!(!fifos.0[0].stderr);
    }

    #[test]
    fn output_counts_as_unread_until_the_client_reads_it_or_leaves() {
        use std::io::Write;
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        let fd = writer.as_raw_fd();
        assert!(!unread_by_client(fd), "empty pipe");
        writer.write_all(b"ping\n").unwrap();
        assert!(unread_by_client(fd), "written, not read");
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).unwrap();
        assert!(!unread_by_client(fd), "read");
        writer.write_all(b"pong\n").unwrap();
        drop(reader);
        assert!(!unread_by_client(fd), "the reader left");
    }

    #[tokio::test]
    async fn a_blocked_reader_or_writer_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        for (path, blocked) in [
            (paths.stdout.clone(), Blocked::Writer),
            (paths.stderr.clone(), Blocked::Reader),
        ] {
            let opening = path.clone();
            let open = tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .read(matches!(blocked, Blocked::Reader))
                    .write(matches!(blocked, Blocked::Writer))
                    .open(opening)
            });
            // Until the open is under way, a release finds nothing to release; repeat.
            let released = tokio::time::timeout(OPEN_BOUND, async {
                while !open.is_finished() {
                    release_fifo(&path, blocked);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(released.is_ok(), "the blocked {blocked:?} open returned");
        }
    }
}
