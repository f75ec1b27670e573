//! SIGINT, SIGTERM and SIGHUP for the `veil` process: blocked everywhere and taken by one
//! thread with `sigwait`, which stops the VM; the process's exit status then tells which one.

use std::sync::atomic::{AtomicI32, Ordering};

use veil_vmm::seccomp::{self, SeccompError, ThreadFilter, ThreadKind};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The termination signal that stopped the VM, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Blocks the termination signals in this thread (and so in the threads it spawns later)
/// and calls `on_signal` from a dedicated thread when one arrives. With `filter`, that
/// thread installs it (the main thread's) before this returns.
pub fn watch(
    on_signal: impl Fn() + Send + 'static,
    filter: Option<ThreadFilter>,
) -> Result<(), WatchError> {
    let set = termination_set();
    // SAFETY: `set` is a valid, initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc).into());
    }
    let (installed_tx, installed) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("veil-signals".into())
        .spawn(move || {
            let result = match &filter {
                Some(program) => seccomp::apply(ThreadKind::Main, program),
                None => Ok(()),
            };
            let ok = result.is_ok();
            let _ = installed_tx.send(result);
            if ok {
                wait_for_signals(set, on_signal);
            }
        })?;
    installed
        .recv()
        .map_err(|_| std::io::Error::other("the signal thread died"))??;
    Ok(())
}

fn wait_for_signals(set: libc::sigset_t, on_signal: impl Fn()) {
    loop {
        let mut signal = 0;
        // SAFETY: `set` is valid and `signal` is a writable int.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            RECEIVED.store(signal, Ordering::Release);
            on_signal();
        }
    }
}
