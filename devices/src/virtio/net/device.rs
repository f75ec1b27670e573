//! The virtio-net device model: moves frames between the queues and the back end.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::*;
use super::frame::{exceeds_mtu, read_tx, set_single_buffer};
use super::tap::{NetBackend, Tap};
use super::{MacAddr, NetConfig, NetError, FRAMES_PER_ROUND, MAX_FRAME_LEN, MIN_MTU};
use super::{QUEUE_SIZE, VNET_HDR_LEN};
use crate::virtio::drain::{drain, Step};
use crate::virtio::{device_type, ActivateContext, ActivateError, FdInterest, GuestMemory};
use crate::virtio::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const RX: usize = 0;
const TX: usize = 1;
/// Config space `status` bit: the link is up.
const LINK_UP: u16 = 1;

/// What the device has done since it was built.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest, and their bytes (headers excluded).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames the guest sent that reached the back end, and their bytes.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Ordinary frames longer than the MTU allows, dropped (either direction).
    pub mtu_dropped: u64,
    /// Guest TX chains dropped as malformed (short, too long, outside guest memory).
    pub tx_malformed: u64,
    /// Guest frames the back end refused.
    pub tx_backend_errors: u64,
    /// Back-end frames dropped: shorter than a header, or larger than the guest's buffer.
    pub rx_dropped: u64,
}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-net device on a tap (or any [`NetBackend`]).
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: MacAddr,
    mtu: u16,
    /// `TUN_F_*` flags currently set on the back end.
    applied_offloads: u32,
    active: Option<Active>,
    stats: NetStats,
    /// The one frame read from the back end and not yet delivered (header included).
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    tx_frame: Vec<u8>,
    /// Whether the event loop watches the back end (it does not while the guest has no RX
    /// buffers, so a full tap does not spin the loop).
    backend_watched: bool,
    /// Kicked when a TX round ends on the budget, so the rest waits for the next round.
    tx_resume: EventFd,
    fd_changes: Vec<FdInterest>,
}

impl Net {
    /// Attaches to the tap named in `config` (it must exist in the calling thread's network
    /// namespace) and builds the device.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&config.tap)?;
        let mac = config.mac.unwrap_or_else(MacAddr::random_local);
        Self::with_backend(Box::new(tap), mac, config.mtu)
    }

    /// Builds the device on an already prepared back end.
    pub fn with_backend(
        backend: Box<dyn NetBackend>,
        mac: MacAddr,
        mtu: u16,
    ) -> Result<Self, NetError> {
        if mtu < MIN_MTU {
            return Err(NetError::BadMtu(mtu));
        }
        let tx_resume = EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd)?;
        Ok(Self {
            applied_offloads: backend.supported_offloads(),
            backend,
            mac,
            mtu,
            active: None,
            stats: NetStats::default(),
            rx_frame: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            rx_pending: None,
            tx_frame: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            backend_watched: false,
            tx_resume,
            fd_changes: Vec::new(),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The MTU announced to the guest.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Counters since the device was built.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn watch_backend(&mut self, watch: bool) {
        if watch == self.backend_watched {
            return;
        }
        let fd = self.backend.fd();
        self.fd_changes.push(if watch {
            FdInterest::Add(fd, EventSet::IN)
        } else {
            FdInterest::Remove(fd)
        });
        self.backend_watched = watch;
    }

    /// Moves frames from the guest to the back end, at most [`FRAMES_PER_ROUND`] of them.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let (backend, stats, buf, mtu) = (
            &mut self.backend,
            &mut self.stats,
            &mut self.tx_frame,
            self.mtu,
        );
        let mut sent = 0;
        let mut used = false;
        let mut out_of_budget = false;
        drain(&mut active.tx, mem, |tx| {
            if sent == FRAMES_PER_ROUND {
                out_of_budget = true;
                return Step::Stop;
            }
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                return Step::Empty;
            };
            let head = chain.head_index();
            match read_tx(mem, chain, buf) {
                Ok(len) if exceeds_mtu(&buf[..len], mtu) => stats.mtu_dropped += 1,
                Ok(len) => match backend.write_frame(&buf[..len]) {
                    Ok(()) => {
                        stats.tx_frames += 1;
                        stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                    }
                    Err(e) => {
                        stats.tx_backend_errors += 1;
                        tracing::debug!(head, "virtio-net frame refused by the tap: {e}");
                    }
                },
                Err(e) => {
                    stats.tx_malformed += 1;
                    tracing::debug!(head, "virtio-net tx chain dropped: {e}");
                }
            }
            match tx.add_used(mem, head, 0) {
                Ok(()) => used = true,
                Err(e) => tracing::warn!(head, "cannot return virtio-net tx buffer: {e}"),
            }
            sent += 1;
            Step::Processed
        });
        if out_of_budget {
            // Cannot fail short of a counter overflow, which would still leave it readable.
            let _ = self.tx_resume.write(1);
        }
        if used {
            notify(&mut active.tx, mem, &active.interrupt);
        }
    }

    /// Moves frames from the back end to the guest, at most [`FRAMES_PER_ROUND`] of them.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            // Reset: nothing can be delivered until the driver sets the device up again.
            self.rx_pending = None;
            self.watch_backend(false);
            return;
        };
        let mem = &active.mem;
        // Frames taken from the back end this round, delivered or dropped.
        let mut handled = 0;
        let mut used = false;
        let mut rearmed = false;
        let mut keep_watching = true;
        while handled < FRAMES_PER_ROUND {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(len)
                        if len < VNET_HDR_LEN || exceeds_mtu(&self.rx_frame[..len], self.mtu) =>
                    {
                        if len < VNET_HDR_LEN {
                            self.stats.rx_dropped += 1;
                        } else {
                            self.stats.mtu_dropped += 1;
                        }
                        handled += 1;
                        continue;
                    }
                    Ok(len) => {
                        set_single_buffer(&mut self.rx_frame[..len]);
                        self.rx_pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Watching again on the next RX notification retries.
                        tracing::warn!("virtio-net cannot read its tap: {e}");
                        keep_watching = false;
                        break;
                    }
                },
            };
            let Some(chain) = active.rx.pop_descriptor_chain(mem) else {
                // Out of buffers: publish avail_event (EVENT_IDX) so the driver notifies when
                // it adds some, and look once more in case it just did. Until then the frame
                // waits here and the tap is not read.
                if !rearmed && matches!(active.rx.enable_notification(mem), Ok(true)) {
                    rearmed = true;
                    continue;
                }
                keep_watching = false;
                break;
            };
            rearmed = false;
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut writer) if writer.available_bytes() >= len => {
                    match writer.write_all(&self.rx_frame[..len]) {
                        Ok(()) => {
                            self.stats.rx_frames += 1;
                            self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                        }
                        Err(e) => tracing::warn!(head, "virtio-net rx write failed: {e}"),
                    }
                    self.rx_pending = None;
                    handled += 1;
                    writer.bytes_written()
                }
                Ok(_) => {
                    // The frame fits no buffer of this size: drop the frame, keep the buffer.
                    active.rx.go_to_previous_position();
                    self.stats.rx_dropped += 1;
                    self.rx_pending = None;
                    handled += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(head, "virtio-net rx buffer not in guest memory: {e}");
                    0
                }
            };
            match active.rx.add_used(mem, head, written as u32) {
                Ok(()) => used = true,
                Err(e) => tracing::warn!(head, "cannot return virtio-net rx buffer: {e}"),
            }
        }
        if used {
            notify(&mut active.rx, mem, &active.interrupt);
        }
        if !keep_watching {
            self.watch_backend(false);
        }
    }
}

fn notify(queue: &mut Queue, mem: &GuestMemory, interrupt: &VirtioInterrupt) {
    match queue.needs_notification(mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => interrupt.signal_used_queue(),
    }
}

/// The `TUN_F_*` flags matching the receive offloads the driver accepted.
fn tun_flags(acked: u64) -> u32 {
    let mut flags = 0;
    if acked & GUEST_CSUM != 0 {
        flags |= libc::TUN_F_CSUM;
        if acked & GUEST_TSO4 != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if acked & GUEST_TSO6 != 0 {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | MAC | MTU | STATUS;
        let offloads = self.backend.supported_offloads();
        if offloads & libc::TUN_F_CSUM != 0 {
            features |= CSUM | GUEST_CSUM;
            if offloads & libc::TUN_F_TSO4 != 0 {
                features |= HOST_TSO4 | GUEST_TSO4;
            }
            if offloads & libc::TUN_F_TSO6 != 0 {
                features |= HOST_TSO6 | GUEST_TSO6;
            }
        }
        features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status le16, max_virtqueue_pairs le16, mtu le16; the rest reads as zero.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
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
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(ctx.queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let wanted = tun_flags(ctx.acked_features) & self.backend.supported_offloads();
        if wanted != self.applied_offloads {
            self.backend
                .set_offloads(wanted)
                .map_err(|e| ActivateError::Backend(format!("tap offloads {wanted:#x}: {e}")))?;
            self.applied_offloads = wanted;
        }
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        // The tap is watched from the driver's first RX notification (it posts buffers first).
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX => {
                self.watch_backend(true);
                self.process_rx();
            }
            TX => self.process_tx(),
            _ => tracing::warn!(index, "virtio-net has no such queue"),
        }
    }

    fn initial_fds(&self) -> Vec<(RawFd, EventSet)> {
        vec![(self.tx_resume.as_raw_fd(), EventSet::IN)]
    }

    fn process_fd(&mut self, fd: RawFd, _events: EventSet) {
        if fd == self.tx_resume.as_raw_fd() {
            let _ = self.tx_resume.read();
            self.process_tx();
        } else if fd == self.backend.fd() {
            self.process_rx();
        }
    }

    fn take_fd_changes(&mut self) -> Vec<FdInterest> {
        std::mem::take(&mut self.fd_changes)
    }
}
