//! The VMM's event loop subscribers: the VM's end conditions and console input.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use veil_devices::serial::SerialConsole;
use vmm_sys_util::eventfd::EventFd;

/// Why the event loop should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A vCPU recorded an exit reason in the latch.
    VcpuExit,
    /// The guest reset the machine through the i8042.
    Reset,
    /// The embedding program asked to stop.
    Stop,
}

/// Watches the event fds that end the VM.
pub struct Control {
    sources: Vec<(EventFd, Wake)>,
    pub woken: Option<Wake>,
}

impl Control {
    pub fn new(sources: Vec<(EventFd, Wake)>) -> Self {
        Self {
            sources,
            woken: None,
        }
    }
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, (fd, _)) in self.sources.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(fd, i as u32, EventSet::IN)) {
                tracing::error!("cannot watch VM control event: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some((fd, wake)) = self.sources.get(events.data() as usize) {
            // Draining keeps the level-triggered fd from firing again.
            let _ = fd.read();
            self.woken.get_or_insert(*wake);
        }
    }
}

/// Feeds the VMM's standard input to the serial console, pausing while the guest's receive
/// FIFO is full so that no byte is dropped.
pub struct StdinForwarder {
    serial: Arc<Mutex<SerialConsole>>,
    resume: EventFd,
    paused: bool,
    closed: bool,
}

const STDIN: i32 = libc::STDIN_FILENO;
const RESUME: u32 = 1;

impl StdinForwarder {
    pub fn new(serial: Arc<Mutex<SerialConsole>>) -> std::io::Result<Self> {
        Ok(Self {
            serial,
            resume: EventFd::new(libc::EFD_NONBLOCK)?,
            paused: false,
            closed: false,
        })
    }

    /// Whether the loop should poll for FIFO room (and how often).
    pub fn waiting_for_room(&self) -> bool {
        self.paused && !self.closed
    }

    /// Called by the loop while paused: resumes reading once the guest drained the FIFO.
    pub fn poll_room(&self) {
        let room = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .input_capacity();
        if room > 0 {
            let _ = self.resume.write(1);
        }
    }

    fn forward(&mut self, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let room = serial.input_capacity().min(256);
        if room == 0 {
            drop(serial);
            self.paused = true;
            let _ = ops.remove(Events::new_raw(STDIN, EventSet::IN));
            return;
        }
        let mut buf = [0u8; 256];
        match std::io::stdin().lock().read(&mut buf[..room]) {
            Ok(0) | Err(_) => {
                drop(serial);
                self.closed = true;
                let _ = ops.remove(Events::new_raw(STDIN, EventSet::IN));
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
        }
    }
}

impl MutEventSubscriber for StdinForwarder {
    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null: then there is simply no console input.
        if ops.add(Events::new_raw(STDIN, EventSet::IN)).is_err() {
            tracing::debug!("standard input cannot be polled; console input disabled");
            self.closed = true;
            return;
        }
        if let Err(e) = ops.add(Events::with_data(&self.resume, RESUME, EventSet::IN)) {
            tracing::warn!("console input flow control unavailable: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.resume.as_raw_fd() {
            let _ = self.resume.read();
            if self.paused && !self.closed {
                self.paused = false;
                let _ = ops.add(Events::new_raw(STDIN, EventSet::IN));
            }
        } else if events
            .event_set()
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
        {
            self.forward(ops);
        }
    }
}
