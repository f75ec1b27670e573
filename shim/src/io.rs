//! A process's stdio: containerd's fifos on one side, the agent's stream calls on the other.
//!
//! Output is copied until the agent reports end of stream, and a process counts as exited
//! only after that (containerd's clients stop reading when they see the exit, so output must
//! be flushed first). Stdin is read with a blocking open, which waits for containerd's client
//! to open its end, and ends the process's stdin when that client closes it.

use std::io::Read;
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

/// containerd's fifo paths for one process (empty = not connected).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The running copies of one process.
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
    stdin_path: String,
}

impl Copies {
    /// Starts copying for process `exec_id` of container `cid` (the init process has
    /// `exec_id == cid` in the agent).
    pub fn start(client: &AgentClient, cid: &str, exec_id: &str, paths: &StdioPaths) -> Self {
        let mut outputs = vec![tokio::spawn(copy_out(
            client.clone(),
            cid.to_string(),
            exec_id.to_string(),
            paths.stdout.clone(),
            false,
        ))];
        // With a terminal the agent merges stderr into the pty's one stream.
        if !paths.terminal {
            outputs.push(tokio::spawn(copy_out(
                client.clone(),
                cid.to_string(),
                exec_id.to_string(),
                paths.stderr.clone(),
                true,
            )));
        }
        if !paths.stdin.is_empty() {
            let client = client.clone();
            let (cid, exec_id, path) = (cid.to_string(), exec_id.to_string(), paths.stdin.clone());
            let handle = tokio::runtime::Handle::current();
            std::thread::spawn(move || copy_in(handle, client, cid, exec_id, path));
        }
        Self {
            outputs,
            stdin_path: paths.stdin.clone(),
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
        release_fifo_reader(&self.stdin_path);
    }
}

/// Copies one output stream of the process into `path` until the agent ends it.
async fn copy_out(client: AgentClient, cid: String, exec_id: String, path: String, stderr: bool) {
    let mut sink = if path.is_empty() {
        None
    } else {
        match tokio::fs::OpenOptions::new().write(true).open(&path).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(%path, error = %e, "cannot open output fifo; output discarded");
                None
            }
        }
    };
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = cid;
    req.exec_id = exec_id;
    req.len = READ_CHUNK;
    loop {
        let resp = if stderr {
            client.agent.read_stderr(ctx(), &req).await
        } else {
            client.agent.read_stdout(ctx(), &req).await
        };
        let data = match resp {
            Ok(r) if r.data.is_empty() => break,
            Ok(r) => r.data,
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
    if let Some(mut f) = sink {
        let _ = f.flush().await;
    }
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
    let mut buf = vec![0u8; STDIN_CHUNK];
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
                Ok(r) if r.len > 0 => sent += r.len as usize,
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(exec = %exec_id, error = %e, "stdin write refused");
                    return;
                }
            }
        }
    }
    let mut close = agent::CloseStdinRequest::new();
    close.container_id = cid;
    close.exec_id = exec_id;
    if let Err(e) = rt.block_on(client.agent.close_stdin(ctx(), &close)) {
        tracing::debug!(error = %e, "CloseStdin failed");
    }
}

/// Opens and closes the writing end of fifo `path` without blocking: a reader blocked in
/// open returns and then reads end of file. Does nothing when no reader waits.
pub fn release_fifo_reader(path: &str) {
    if path.is_empty() {
        return;
    }
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}
