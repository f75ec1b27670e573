//! One vsock stream between a guest port and a host Unix socket, with its credit accounting.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::{Header, HOST_CID, SHUTDOWN_RCV, TYPE_STREAM};

/// Bytes of guest data we accept before the host socket drains them (our `buf_alloc`).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE or RST.
    LocalInit,
    /// Data flows both ways (subject to shutdown flags).
    Established,
    /// The host side closed; SHUTDOWN sent, waiting for the guest's RST.
    LocalClosed,
    /// The guest shut down both directions; flushing buffered data before our RST.
    PeerClosed,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than the credit we gave it.
    #[error("guest overran its credit: {buffered} bytes buffered plus {incoming} new exceed {CONN_BUF_SIZE}")]
    CreditExceeded { buffered: usize, incoming: usize },
    /// The host socket failed.
    #[error("host socket failed: {0}")]
    Io(#[from] io::Error),
}

/// A vsock stream.
pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    /// The guest's receive buffer and how much of it the guest has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes of guest data written to the host socket, and the value last told to the guest.
    fwd_cnt: u32,
    last_fwd_sent: u32,
    /// Guest data the host socket has not taken yet (at most `CONN_BUF_SIZE`).
    tx_buf: VecDeque<u8>,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The host socket may have data (or EOF) for the guest.
    pub readable: bool,
    /// The host socket returned EOF.
    pub host_eof: bool,
    /// The guest asked for a credit update.
    pub credit_requested: bool,
    /// Events currently registered with the event loop.
    pub registered: Option<EventSet>,
    /// When the current waiting state gives up.
    pub deadline: Option<Instant>,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            tx_buf: VecDeque::new(),
            peer_shutdown: 0,
            readable: false,
            host_eof: false,
            credit_requested: false,
            registered: None,
            deadline: None,
        }
    }

    /// Takes the credit fields of any packet from the guest.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// How many more bytes the guest can take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether data from the host may go to the guest now.
    pub fn can_send_to_guest(&self) -> bool {
        self.readable
            && self.state == State::Established
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Writes guest data to the host socket, buffering what it does not take now.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = write_some(&mut self.stream, data)?;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
        }
        let rest = &data[written..];
        if self.tx_buf.len() + rest.len() > CONN_BUF_SIZE as usize {
            return Err(ConnError::CreditExceeded {
                buffered: self.tx_buf.len(),
                incoming: rest.len(),
            });
        }
        self.tx_buf.extend(rest);
        Ok(())
    }

    /// Moves buffered guest data to the host socket until it would block.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        }
        Ok(())
    }

    /// Whether guest data is still waiting for the host socket.
    pub fn has_buffered_tx(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Reads host data for the guest into `buf` (already bounded by credit and rx space).
    pub fn read_from_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }

    /// Records `n` bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
    }

    /// Whether the guest should hear about freed buffer space without waiting for traffic:
    /// when asked, or once half of what it believes is in flight has been consumed.
    pub fn wants_credit_update(&self) -> bool {
        self.credit_requested || self.fwd_cnt.wrapping_sub(self.last_fwd_sent) >= CONN_BUF_SIZE / 2
    }

    /// A header for a packet to the guest, carrying our current credit.
    pub fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        self.last_fwd_sent = self.fwd_cnt;
        self.credit_requested = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The events the event loop should watch on the host socket, if any. Reading stops while
    /// the guest cannot take data, so a readable socket does not spin the loop.
    pub fn wanted_events(&self) -> Option<EventSet> {
        let mut set = EventSet::empty();
        let reading = matches!(self.state, State::Established) && !self.host_eof;
        if reading && !self.readable {
            set |= EventSet::IN;
        }
        if self.has_buffered_tx() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }
}

/// Writes what the socket takes now; 0 when it would block.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    match stream.write(data) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}
