//! A non-blocking one-shot timer fd for connection deadlines.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// Fires (becomes readable) at the earliest armed deadline.
pub struct DeadlineTimer(TimerFd);

impl DeadlineTimer {
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new().map_err(io::Error::from)?;
        let fd = timer.as_raw_fd();
        // Non-blocking, so that draining a timer that was re-armed after epoll reported it
        // cannot stall the event loop.
        // SAFETY: `fd` is the open timer fd owned by `timer`; F_GETFL/F_SETFL take no pointers.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(timer))
    }

    /// Arms the timer for `at`, or disarms it.
    pub fn arm(&mut self, at: Option<Instant>, now: Instant) -> io::Result<()> {
        match at {
            // A zero duration would disarm the timer: fire "now" as 1 ms from now.
            Some(at) => {
                let wait = at
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                self.0.reset(wait, None).map_err(io::Error::from)
            }
            None => self.0.clear().map_err(io::Error::from),
        }
    }

    /// Consumes a pending expiry, if any.
    pub fn drain(&mut self) {
        let _ = self.0.wait();
    }
}

impl AsRawFd for DeadlineTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; count is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        n == 1
    }

    #[test]
    fn fires_for_a_past_deadline_and_drains_without_blocking() {
        let mut timer = DeadlineTimer::new().unwrap();
        let now = Instant::now();
        timer.arm(Some(now), now).unwrap();
        assert!(readable(timer.as_raw_fd(), 10_000), "a due deadline fires");
        timer.drain();
        // Draining again must return at once, not wait for an expiry that is not coming.
        timer.drain();
        assert!(!readable(timer.as_raw_fd(), 0));
        timer.arm(None, now).unwrap();
        assert!(!readable(timer.as_raw_fd(), 0), "disarmed");
    }
}
