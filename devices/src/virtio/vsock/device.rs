//! The virtio-vsock device model: moves packets between the queues and the back end.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::backend::{HybridBackend, MAX_PKT_PAYLOAD};
use super::packet::{Header, HEADER_LEN};
use super::{VsockConfig, VsockError, QUEUE_SIZE};
use crate::virtio::drain::{drain, Step};
use crate::virtio::{device_type, ActivateContext, ActivateError, FdInterest, GuestMemory};
use crate::virtio::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    // Only used for TRANSPORT_RESET after snapshot restore, which Veil does not do.
    _event: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-vsock device with the hybrid Unix-socket back end.
pub struct Vsock {
    guest_cid: u64,
    backend: HybridBackend,
    active: Option<Active>,
}

/// Why a tx chain was dropped.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("packet buffers are not in guest memory: {0}")]
    Memory(virtio_queue::Error),
    #[error("packet shorter than the {HEADER_LEN}-byte header")]
    ShortHeader,
    #[error("payload length {0} exceeds the {MAX_PKT_PAYLOAD}-byte limit")]
    TooLong(u32),
    #[error("payload length {claimed} exceeds the {available} bytes of buffers")]
    Truncated { claimed: u32, available: usize },
}

fn read_tx_packet(
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
) -> Result<(Header, Vec<u8>), TxError> {
    let mut reader = Reader::new(mem, chain).map_err(TxError::Memory)?;
    let mut raw = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|_| TxError::ShortHeader)?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len as usize > MAX_PKT_PAYLOAD {
        return Err(TxError::TooLong(hdr.len));
    }
    let available = reader.available_bytes();
    if hdr.len as usize > available {
        return Err(TxError::Truncated {
            claimed: hdr.len,
            available,
        });
    }
    let mut payload = vec![0u8; hdr.len as usize];
    reader
        .read_exact(&mut payload)
        .map_err(|_| TxError::ShortHeader)?;
    Ok((hdr, payload))
}

impl Vsock {
    /// Binds `uds_path` and builds the device for `guest_cid`.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&config.guest_cid) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        Ok(Self {
            guest_cid: config.guest_cid,
            backend: HybridBackend::new(config.guest_cid, &config.uds_path)?,
            active: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.backend.connection_count()
    }

    /// Fires connection deadlines as if the time were `now` (the timer fd does this in
    /// production; tests use it to avoid sleeping).
    pub fn expire_deadlines(&mut self, now: Instant) {
        self.backend.expire(now);
        self.pump(now);
    }

    /// Reads guest packets; returns whether it stopped because replies are backed up.
    fn process_tx(&mut self, now: Instant) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let backend = &mut self.backend;
        let mut used = false;
        let mut throttled = false;
        drain(&mut active.tx, mem, |tx| {
            if backend.control_backlog_full() {
                throttled = true;
                return Step::Stop;
            }
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                return Step::Empty;
            };
            let head = chain.head_index();
            match read_tx_packet(mem, chain) {
                Ok((hdr, payload)) => backend.handle_guest_packet(&hdr, &payload, now),
                Err(e) => tracing::warn!(head, "vsock tx packet dropped: {e}"),
            }
            match tx.add_used(mem, head, 0) {
                Ok(()) => used = true,
                Err(e) => tracing::warn!(head, "cannot return vsock tx buffer: {e}"),
            }
            Step::Processed
        });
        if used {
            notify(&mut active.tx, mem, &active.interrupt);
        }
        throttled
    }

    /// Fills guest rx buffers with what the back end has for the guest.
    fn process_rx(&mut self, now: Instant) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut used = false;
        let mut payload = Vec::new();
        let mut rearmed = false;
        while self.backend.has_rx_work() {
            let Some(chain) = active.rx.pop_descriptor_chain(mem) else {
                // Out of buffers: publish avail_event (EVENT_IDX) so the driver notifies when
                // it adds some, and look once more in case it just did.
                if rearmed || !matches!(active.rx.enable_notification(mem), Ok(true)) {
                    break;
                }
                rearmed = true;
                continue;
            };
            rearmed = false;
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut writer) => match writer.available_bytes().checked_sub(HEADER_LEN) {
                    Some(room) => match self.backend.next_rx_packet(room, &mut payload, now) {
                        Some(mut hdr) => {
                            hdr.len = payload.len() as u32;
                            // Cannot fail: the header and payload fit the checked room.
                            let ok = writer.write_all(&hdr.to_bytes()).is_ok()
                                && writer.write_all(&payload).is_ok();
                            if !ok {
                                tracing::warn!(head, "vsock rx write failed");
                            }
                            writer.bytes_written()
                        }
                        None => {
                            active.rx.go_to_previous_position();
                            break;
                        }
                    },
                    None => {
                        tracing::warn!(head, "vsock rx buffer smaller than a header dropped");
                        0
                    }
                },
                Err(e) => {
                    tracing::warn!(head, "vsock rx buffer not in guest memory dropped: {e}");
                    0
                }
            };
            match active.rx.add_used(mem, head, written as u32) {
                Ok(()) => used = true,
                Err(e) => tracing::warn!(head, "cannot return vsock rx buffer: {e}"),
            }
        }
        if used {
            notify(&mut active.rx, mem, &active.interrupt);
        }
    }

    /// Moves packets both ways until neither side can make progress.
    fn pump(&mut self, now: Instant) {
        loop {
            let throttled = self.process_tx(now);
            self.process_rx(now);
            if !throttled || self.backend.control_backlog_full() {
                break;
            }
        }
    }
}

fn notify(queue: &mut Queue, mem: &GuestMemory, interrupt: &VirtioInterrupt) {
    match queue.needs_notification(mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => interrupt.signal_used_queue(),
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // `guest_cid` (le64 at offset 0) is the whole configuration space.
        let config = self.guest_cid.to_le_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = start
                .checked_add(i)
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let Ok([rx, tx, event]) = <[Queue; 3]>::try_from(ctx.queues) else {
            return Err(ActivateError::QueueCount { expected: 3, got });
        };
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            _event: event,
            interrupt: ctx.interrupt,
        });
        // Host connections that arrived before the driver was up stay queued until the driver
        // kicks its rx queue (it does once it has posted buffers); pumping here would do
        // socket I/O on the vCPU thread.
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.backend.reset_all();
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX | TX => self.pump(Instant::now()),
            EVENT => {}
            _ => tracing::warn!(index, "vsock has no such queue"),
        }
    }

    fn initial_fds(&self) -> Vec<(RawFd, EventSet)> {
        self.backend.initial_fds()
    }

    fn process_fd(&mut self, fd: RawFd, events: EventSet) {
        let now = Instant::now();
        self.backend.handle_fd(fd, events, now);
        self.pump(now);
    }

    fn take_fd_changes(&mut self) -> Vec<FdInterest> {
        self.backend.take_fd_changes()
    }

    fn fd_changes_applied(&mut self) {
        self.backend.fd_changes_applied();
    }
}
