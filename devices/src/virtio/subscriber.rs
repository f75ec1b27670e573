//! Drives a virtio device from the VMM's event loop (event-manager).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{FdInterest, MmioTransport, VirtioDevice};

/// The event-manager subscriber of one virtio-mmio device: watches the device's queue event
/// fds (the ioeventfds) and whatever back-end fds the device asks for, and calls into the
/// device on the event-loop thread.
pub struct VirtioSubscriber<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
}

impl<D: VirtioDevice> VirtioSubscriber<D> {
    /// A subscriber for the device the MMIO bus also holds.
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>) -> Self {
        Self { transport }
    }

    fn lock(&self) -> MutexGuard<'_, MmioTransport<D>> {
        // A poisoned lock means a vCPU thread panicked; keep serving what we can.
        self.transport
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn apply_fd_changes(ops: &mut EventOps, changes: Vec<FdInterest>) {
    for change in changes {
        let result = match change {
            FdInterest::Add(fd, set) => ops.add(Events::new_raw(fd, set)),
            FdInterest::Modify(fd, set) => ops.modify(Events::new_raw(fd, set)),
            FdInterest::Remove(fd) => ops.remove(Events::empty_raw(fd)),
        };
        if let Err(e) = result {
            tracing::error!(?change, "event loop registration failed: {e:?}");
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for VirtioSubscriber<D> {
    fn init(&mut self, ops: &mut EventOps) {
        let transport = self.lock();
        for event in transport.queue_events() {
            if let Err(e) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::error!("cannot watch virtio queue event: {e:?}");
            }
        }
        for (fd, set) in transport.device().initial_fds() {
            if let Err(e) = ops.add(Events::new_raw(fd, set)) {
                tracing::error!(fd, "cannot watch virtio device fd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let transport = self.transport.clone();
        let mut transport = transport
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fd = events.fd();
        let queue = transport
            .queue_events()
            .iter()
            .position(|event| event.as_raw_fd() == fd);
        match queue {
            Some(index) => {
                // Drain the counter first so a notification racing with processing is kept.
                let _ = transport.queue_events()[index].read();
                transport.process_queue(index);
            }
            None => transport.device_mut().process_fd(fd, events.event_set()),
        }
        let changes = transport.device_mut().take_fd_changes();
        apply_fd_changes(ops, changes);
        transport.device_mut().fd_changes_applied();
    }
}
