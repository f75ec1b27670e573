//! The libcontainer side of the runtime, in a short-lived child process of the agent
//! (`veil-agent __libcontainer OP ...`). libcontainer is written for a one-shot, single-threaded
//! CLI: it forks, waits for its own children, and changes process-wide settings
//! (oom_score_adj, dumpability). Running it in the agent's multi-threaded PID 1 would race the
//! agent's reaper and change the agent itself, so every call that forks runs here instead.
//!
//! Interface (internal; the agent is both ends): `OP ROOT ID [PATH] [stdio]`, where OP is
//! `create` (PATH = bundle), `exec` (PATH = process.json), `start` or `delete`; with `stdio`
//! the container process gets descriptors 3, 4 and 5 as its stdin, stdout and stderr. A
//! created or exec'd process's pid is printed on stdout; errors go to stderr, exit status 1.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;

/// The first argument that selects this mode.
pub const HELPER_ARG: &str = "__libcontainer";

/// Runs one operation; returns the process exit status.
pub fn main(args: &[String]) -> i32 {
    // libcontainer says what failed through tracing: its error lines become part of the
    // agent's error message (stderr).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
    match run(args) {
        Ok(Some(pid)) => {
            println!("{pid}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn run(args: &[String]) -> Result<Option<i32>, String> {
    let (op, root, id, rest) = match args {
        [op, root, id, rest @ ..] => (op.as_str(), PathBuf::from(root), id.clone(), rest),
        _ => return Err(format!("usage: {HELPER_ARG} OP ROOT ID [PATH] [stdio]")),
    };
    let stdio = rest.iter().any(|a| a == "stdio");
    let path = rest.iter().find(|a| *a != "stdio").map(PathBuf::from);
    let builder = || -> Result<ContainerBuilder, String> {
        let mut b = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(&root)
            .map_err(|e| e.to_string())?
            .with_executor(DefaultExecutor {});
        if stdio {
            // SAFETY: the agent started this process with descriptors 3, 4 and 5 open for the
            // container's stdio; nothing else in this process owns them.
            let (i, o, e) = unsafe {
                (
                    OwnedFd::from_raw_fd(3),
                    OwnedFd::from_raw_fd(4),
                    OwnedFd::from_raw_fd(5),
                )
            };
            b = b.with_stdin(i).with_stdout(o).with_stderr(e);
        }
        Ok(b)
    };
    let need_path = || path.clone().ok_or_else(|| format!("{op}: missing PATH"));
    match op {
        "create" => {
            let container = builder()?
                .as_init(need_path()?)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("creating container {id}: {e}"))?;
            Ok(container.pid().map(|p| p.as_raw()))
        }
        "exec" => {
            let pid = builder()?
                .as_tenant()
                .with_process(Some(need_path()?))
                .with_detach(true)
                .build()
                .map_err(|e| format!("exec in container {id}: {e}"))?;
            Ok(Some(pid.as_raw()))
        }
        "start" => {
            let mut container = Container::load(root.join(&id))
                .map_err(|e| format!("loading container {id}: {e}"))?;
            container
                .start()
                .map_err(|e| format!("starting container {id}: {e}"))?;
            Ok(None)
        }
        "delete" => {
            let mut container = Container::load(root.join(&id))
                .map_err(|e| format!("loading container {id}: {e}"))?;
            container
                .delete(true)
                .map_err(|e| format!("deleting container {id}: {e}"))?;
            Ok(None)
        }
        other => Err(format!("unknown operation {other:?}")),
    }
}
