//! What each kind of thread may call. One function per thread kind; every entry says who
//! needs it. A call missing here kills the VMM the first time it is made, so when code run
//! by a filtered thread starts making a new system call, add it to that thread's list.
//! `open`/`openat` are the exception: see [`ThreadFilter`](super::ThreadFilter).

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// One allowed system call: its number and the argument conditions, any of which allows it
/// (none: allowed whatever the arguments).
pub type Entry = (i64, Vec<SeccompRule>);

type Result<T> = std::result::Result<T, BackendError>;

const fn io(nr: u32) -> u64 {
    (0xAE << 8) | nr as u64
}

const fn ior(nr: u32, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | io(nr)
}

const fn iow(nr: u32, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | io(nr)
}

/// ioctl request numbers used by filtered threads.
pub mod ioctls {
    use super::{io, ior, iow};
    use std::mem::size_of;

    pub const KVM_RUN: u64 = io(0x80);
    pub const KVM_GET_REGS: u64 = ior(0x81, size_of::<kvm_bindings::kvm_regs>());
    pub const KVM_GET_SREGS: u64 = ior(0x83, size_of::<kvm_bindings::kvm_sregs>());
    pub const KVM_SET_MEMORY_ATTRIBUTES: u64 =
        iow(0xd2, size_of::<kvm_bindings::kvm_memory_attributes>());
    /// `set_nonblocking` on a socket (std uses FIONBIO).
    pub const FIONBIO: u64 = libc::FIONBIO;
    /// virtio-net activation: the tap's offloads follow what the driver accepted.
    pub const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;
}

fn any(nr: libc::c_long) -> Entry {
    (nr, Vec::new())
}

/// A call allowed only when argument `arg` equals one of `values`.
fn arg_in(nr: libc::c_long, arg: u8, len: SeccompCmpArgLen, values: &[u64]) -> Result<Entry> {
    let rules = values
        .iter()
        .map(|&v| {
            SeccompRule::new(vec![SeccompCondition::new(
                arg,
                len.clone(),
                SeccompCmpOp::Eq,
                v,
            )?])
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((nr, rules))
}

/// `ioctl` with one of these request numbers (the kernel compares the low 32 bits).
fn ioctl(requests: &[u64]) -> Result<Entry> {
    arg_in(libc::SYS_ioctl, 1, SeccompCmpArgLen::Dword, requests)
}

/// What every Rust thread of the VMM needs to live and die: the allocator, locks, signal
/// delivery, clocks, logging, thread exit.
fn runtime() -> Result<Vec<Entry>> {
    Ok(vec![
        // The allocator (glibc malloc: heap growth, arenas, trimming).
        any(libc::SYS_brk),
        any(libc::SYS_mmap),
        any(libc::SYS_munmap),
        any(libc::SYS_mremap),
        any(libc::SYS_mprotect),
        any(libc::SYS_madvise),
        // Mutexes, condition variables, OnceLock, thread join.
        any(libc::SYS_futex),
        any(libc::SYS_sched_yield),
        // Returning from a signal handler (the vCPU kick signal lands on every thread kind
        // that blocks nothing; tracing's writer may be interrupted).
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_rt_sigprocmask),
        // Thread exit (glibc frees the alternate signal stack) and panics.
        any(libc::SYS_sigaltstack),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
        // Instant::now when the vDSO falls back to the system call; sleeps.
        any(libc::SYS_clock_gettime),
        any(libc::SYS_clock_nanosleep),
        any(libc::SYS_nanosleep),
        // tracing and panic messages to stderr; eventfd writes (interrupts, wake-ups).
        any(libc::SYS_write),
        // Dropping fds (eventfds, cloned handles); debug builds of std check the fd with
        // F_GETFD before closing it.
        any(libc::SYS_close),
        arg_in(
            libc::SYS_fcntl,
            1,
            SeccompCmpArgLen::Dword,
            &[libc::F_GETFD as u64],
        )?,
        // HashMap's RandomState keys, first use on a thread.
        any(libc::SYS_getrandom),
        // Let through to the second program, which fails them with EACCES on vCPU and
        // event-loop threads (glibc's malloc opens /proc/sys/vm/overcommit_memory the first
        // time it shrinks a thread arena); the main thread opens for real (--metrics-json).
        any(libc::SYS_open),
        any(libc::SYS_openat),
        // The kernel restarting an interrupted call.
        any(libc::SYS_restart_syscall),
        // std's thread-id / pid queries (thread naming, tracing).
        any(libc::SYS_gettid),
        any(libc::SYS_getpid),
    ])
}

/// vCPU threads: KVM_RUN and the exits it returns.
pub fn vcpu() -> Result<Vec<Entry>> {
    use ioctls::*;
    let mut list = runtime()?;
    list.extend([
        ioctl(&[
            // The run loop.
            KVM_RUN,
            // Register dumps for a triple fault or vCPU failure report.
            KVM_GET_REGS,
            KVM_GET_SREGS,
            // SEV-SNP page-state changes (hypercall and memory-fault exits).
            KVM_SET_MEMORY_ATTRIBUTES,
            // virtio-net activation (a Status write) sets the tap's offloads.
            TUNSETOFFLOAD,
        ])?,
        // SEV-SNP page-state changes: dropping a converted range's stale guest_memfd pages.
        any(libc::SYS_fallocate),
        // Devices read by port/MMIO exits: eventfd reads (none today, cheap to allow) and the
        // serial console's writes (stdout, a file, or an embedder's writer, which also gets
        // `writev` from buffered writers).
        any(libc::SYS_read),
        any(libc::SYS_writev),
    ]);
    Ok(list)
}

/// The device event loop: epoll, eventfds, virtio-blk file I/O, vsock Unix sockets, stdin.
pub fn event_loop() -> Result<Vec<Entry>> {
    let mut list = runtime()?;
    list.extend([
        // event-manager: its epoll instance (created on this thread), its loop and
        // (de)registration of connections.
        any(libc::SYS_epoll_create1),
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_pwait),
        any(libc::SYS_epoll_ctl),
        // Eventfd and timerfd reads, stdin forwarding, socket reads.
        any(libc::SYS_read),
        any(libc::SYS_readv),
        any(libc::SYS_writev),
        // virtio-blk: reads, writes and flushes of the backing file, its size on a swap.
        any(libc::SYS_pread64),
        any(libc::SYS_pwrite64),
        any(libc::SYS_preadv),
        any(libc::SYS_pwritev),
        any(libc::SYS_preadv2),
        any(libc::SYS_pwritev2),
        any(libc::SYS_lseek),
        any(libc::SYS_fsync),
        any(libc::SYS_fdatasync),
        any(libc::SYS_fstat),
        any(libc::SYS_statx),
        // vsock: host-initiated connections on the listening socket.
        any(libc::SYS_accept4),
        any(libc::SYS_accept),
        // vsock: guest-initiated connections to `<uds>_<port>`, Unix sockets only.
        arg_in(
            libc::SYS_socket,
            0,
            SeccompCmpArgLen::Dword,
            &[libc::AF_UNIX as u64],
        )?,
        any(libc::SYS_connect),
        any(libc::SYS_getsockopt),
        // vsock: stream traffic and half-closes.
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendto),
        any(libc::SYS_recvmsg),
        any(libc::SYS_sendmsg),
        any(libc::SYS_shutdown),
        // vsock: non-blocking sockets and timers, cloned fds.
        any(libc::SYS_fcntl),
        ioctl(&[ioctls::FIONBIO])?,
        // vsock connection deadlines.
        any(libc::SYS_timerfd_create),
        any(libc::SYS_timerfd_settime),
        any(libc::SYS_timerfd_gettime),
        any(libc::SYS_poll),
        any(libc::SYS_ppoll),
        // New eventfds for the event loop's own wake-ups.
        any(libc::SYS_eventfd2),
    ]);
    Ok(list)
}

/// The `veil` main thread once the VM runs (waits, stops and joins the vCPUs, tears the VM
/// down, writes the metrics file and the report) and the signal-watching thread.
pub fn main_thread() -> Result<Vec<Entry>> {
    let mut list = runtime()?;
    list.extend([
        // The signal thread: sigwait for SIGINT/SIGTERM/SIGHUP.
        any(libc::SYS_rt_sigtimedwait),
        // Kicking vCPU threads out of KVM_RUN with the kick signal, and nothing else.
        arg_in(
            libc::SYS_tgkill,
            2,
            SeccompCmpArgLen::Dword,
            &[crate::vcpu::kick_signal() as u64],
        )?,
        // Teardown: the vsock listener's socket file is removed.
        any(libc::SYS_unlink),
        any(libc::SYS_unlinkat),
        // The control socket (`--control-fd`): requests, some carrying an image's fd, and
        // the answers (std's socket writes are sendto with MSG_NOSIGNAL).
        any(libc::SYS_recvmsg),
        any(libc::SYS_sendto),
        // --metrics-json: std::fs::write (allowed for real on this thread).
        any(libc::SYS_writev),
        any(libc::SYS_fstat),
        any(libc::SYS_statx),
        any(libc::SYS_fsync),
    ]);
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::ioctls::*;

    /// The numbers from <linux/kvm.h> as the kernel computes them.
    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_SET_MEMORY_ATTRIBUTES, 0x4020_aed2);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
    }

    #[test]
    fn every_list_compiles() {
        for kind in [
            super::super::ThreadKind::Vcpu,
            super::super::ThreadKind::EventLoop,
            super::super::ThreadKind::Main,
        ] {
            super::super::filter(kind).unwrap();
        }
    }
}
