//! The hybrid vsock back end: guest streams mapped onto host Unix sockets.
//!
//! - Host-initiated: a host program connects to `uds_path`, writes `CONNECT <port>\n`; we
//!   allocate a host-side port, send the guest a REQUEST for `<port>`, and on its RESPONSE
//!   answer the program `OK <host port>\n`; the socket then carries the stream.
//! - Guest-initiated: a REQUEST to host port P connects to `<uds_path>_P`; nobody listening
//!   there means RST.
//!
//! Everything from the guest (packets) and from host peers (the CONNECT line) is untrusted:
//! lines, connection counts, buffered bytes and queued replies are all bounded.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::connection::{Connection, State};
use super::packet::*;
use super::timer::DeadlineTimer;
use super::uds::connect_nonblocking;
use super::VsockError;
use crate::virtio::FdInterest;

/// Most simultaneous connections (established or being set up).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host connections still sending their CONNECT line.
const MAX_PENDING_HOST: usize = 128;
/// Longest accepted CONNECT line, newline included.
const MAX_CONNECT_LINE: usize = 32;
/// Most control packets queued for the guest; past this the tx queue is not read.
const MAX_CONTROL_BACKLOG: usize = 2 * MAX_CONNECTIONS;
/// Most payload bytes in one packet to the guest.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// First host-side port handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// How long a host program may take to send its CONNECT line.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest may take to answer a REQUEST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closing connection waits for the guest's RST or for buffered data to drain.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The connection multiplexer.
pub struct HybridBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timer: DeadlineTimer,
    pending_host: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    next_local_port: u32,
    /// Header-only packets for the guest, in order.
    control: VecDeque<Header>,
    /// Connections whose host socket may have data for the guest.
    ready: VecDeque<ConnKey>,
    fd_changes: Vec<FdInterest>,
    /// Closed sockets still registered with the event loop: kept open until their `Remove`
    /// reached it, so that their fd numbers cannot be reused under it.
    closing: Vec<UnixStream>,
}

impl HybridBackend {
    /// Binds `uds_path` (replacing a stale socket left there, refusing any other file).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(VsockError::PathInUse(uds_path.to_owned()));
            }
            std::fs::remove_file(uds_path).map_err(|source| VsockError::Bind {
                path: uds_path.to_owned(),
                source,
            })?;
        }
        let bind_err = |source| VsockError::Bind {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            timer: DeadlineTimer::new().map_err(VsockError::Timer)?,
            pending_host: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            fd_changes: Vec::new(),
            closing: Vec::new(),
        })
    }

    /// The listener and the timer, watched from the start.
    pub fn initial_fds(&self) -> Vec<(RawFd, EventSet)> {
        vec![
            (self.listener.as_raw_fd(), EventSet::IN),
            (self.timer.as_raw_fd(), EventSet::IN),
        ]
    }

    /// Number of live connections (established or being set up with the guest).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether enough replies are queued that the guest's tx queue should wait.
    pub fn control_backlog_full(&self) -> bool {
        self.control.len() >= MAX_CONTROL_BACKLOG
    }

    /// Whether there may be something for the rx queue.
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Fd registration changes for the event loop.
    pub fn take_fd_changes(&mut self) -> Vec<FdInterest> {
        std::mem::take(&mut self.fd_changes)
    }

    /// The event loop applied the changes: sockets removed from it can be closed.
    pub fn fd_changes_applied(&mut self) {
        self.closing.clear();
    }

    /// Drops every connection (device reset): host sockets are closed.
    pub fn reset_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.control.clear();
        self.ready.clear();
    }

    // ---- events from the host side ----

    /// Handles readiness of one of our fds.
    pub fn handle_fd(&mut self, fd: RawFd, events: EventSet, now: Instant) {
        if fd == self.listener.as_raw_fd() {
            self.accept_all(now);
        } else if fd == self.timer.as_raw_fd() {
            self.timer.drain();
        } else if self.pending_host.contains_key(&fd) {
            self.read_connect_line(fd, now);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.conn_event(key, events);
        } else {
            tracing::debug!(fd, "event for an fd vsock no longer tracks");
        }
        self.expire(now);
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock accept on {} failed: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.pending_host.len() >= MAX_PENDING_HOST
                || self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                tracing::warn!("vsock host connection refused: too many connections");
                continue;
            }
            let fd = stream.as_raw_fd();
            self.fd_changes.push(FdInterest::Add(fd, EventSet::IN));
            self.pending_host.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::new(),
                    deadline: now + CONNECT_LINE_TIMEOUT,
                },
            );
        }
    }

    /// Reads the CONNECT line one byte at a time, so that stream data the program sends
    /// right behind it stays in the socket for the guest.
    fn read_connect_line(&mut self, fd: RawFd, now: Instant) {
        let Some(pending) = self.pending_host.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match pending.stream.read(&mut byte) {
                Ok(0) => break Err("closed before its CONNECT line".to_string()),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&pending.line),
                Ok(_) if pending.line.len() + 1 >= MAX_CONNECT_LINE => {
                    break Err(format!("CONNECT line longer than {MAX_CONNECT_LINE} bytes"))
                }
                Ok(_) => pending.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e.to_string()),
            }
        };
        let Some(pending) = self.pending_host.remove(&fd) else {
            return;
        };
        self.fd_changes.push(FdInterest::Remove(fd));
        match outcome {
            Ok(port) if self.conns.len() < MAX_CONNECTIONS => {
                let local_port = self.allocate_local_port();
                let mut conn = Connection::new(pending.stream, State::LocalInit, local_port, port);
                conn.deadline = Some(now + REQUEST_TIMEOUT);
                let key = ConnKey {
                    local_port,
                    peer_port: port,
                };
                self.control
                    .push_back(conn.header(self.guest_cid, OP_REQUEST));
                self.by_fd.insert(fd, key);
                self.conns.insert(key, conn);
                tracing::debug!(port, local_port, "host-initiated vsock connection");
            }
            Ok(port) => {
                tracing::warn!(port, "vsock CONNECT refused: too many connections");
                self.closing.push(pending.stream);
            }
            Err(why) => {
                tracing::warn!("vsock host connection dropped: {why}");
                self.closing.push(pending.stream);
            }
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            // At most MAX_CONNECTIONS ports are taken, so this ends quickly.
            if !self.conns.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }

    fn conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            conn.readable = true;
            self.mark_ready(key);
        }
        if events.contains(EventSet::OUT) {
            self.flush(key);
        }
        self.sync_interest(key);
    }

    /// Writes buffered guest data to the host, then finishes a pending shutdown.
    fn flush(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = conn.flush_to_host() {
            tracing::debug!(port = key.local_port, "vsock host write failed: {e}");
            return self.reset_conn(key);
        }
        if conn.has_buffered_tx() {
            return;
        }
        if conn.state == State::PeerClosed {
            return self.reset_conn(key);
        }
        if conn.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        if conn.wants_credit_update() {
            let hdr = conn.header(self.guest_cid, OP_CREDIT_UPDATE);
            self.control.push_back(hdr);
        }
    }

    /// Fires the deadlines that passed and re-arms the timer for the next one.
    pub fn expire(&mut self, now: Instant) {
        let stale: Vec<RawFd> = self
            .pending_host
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in stale {
            if let Some(p) = self.pending_host.remove(&fd) {
                tracing::warn!("vsock host connection sent no CONNECT line in time");
                self.fd_changes.push(FdInterest::Remove(fd));
                self.closing.push(p.stream);
            }
        }
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            tracing::debug!(port = key.local_port, "vsock connection timed out");
            self.reset_conn(key);
        }
        let next = self
            .pending_host
            .values()
            .map(|p| p.deadline)
            .chain(self.conns.values().filter_map(|c| c.deadline))
            .min();
        if let Err(e) = self.timer.arm(next, now) {
            tracing::error!("vsock deadline timer failed: {e}");
        }
    }

    // ---- packets from the guest ----

    /// Handles one packet the guest sent (from the tx queue).
    pub fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8], now: Instant) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!(?hdr, "vsock packet with foreign addresses dropped");
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.kind != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.reply_rst(hdr);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.reply_rst(hdr),
            }
            return;
        };
        conn.update_peer_credit(hdr);
        match (conn.state, hdr.op) {
            (_, OP_RST) => {
                self.remove(key);
                return;
            }
            (State::LocalInit, OP_RESPONSE) => {
                conn.state = State::Established;
                conn.deadline = None;
                let ok = format!("OK {}\n", conn.local_port);
                // A fresh socket has room for a 20-byte line; if not, the program is broken.
                if !matches!(conn.stream.write(ok.as_bytes()), Ok(n) if n == ok.len()) {
                    return self.reset_conn(key);
                }
            }
            (State::Established, OP_RW) if conn.peer_shutdown & SHUTDOWN_SEND == 0 => {
                if let Err(e) = conn.send_to_host(payload) {
                    tracing::debug!(port = key.local_port, "vsock stream reset: {e}");
                    return self.reset_conn(key);
                }
                if conn.wants_credit_update() {
                    let hdr = conn.header(self.guest_cid, OP_CREDIT_UPDATE);
                    self.control.push_back(hdr);
                }
            }
            // The guest may still have had data in flight when we shut down: drop it.
            (State::LocalClosed, OP_RW | OP_CREDIT_UPDATE | OP_CREDIT_REQUEST | OP_SHUTDOWN) => {}
            (State::Established | State::PeerClosed, OP_SHUTDOWN) => {
                conn.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if conn.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    conn.state = State::PeerClosed;
                    conn.deadline = Some(now + SHUTDOWN_TIMEOUT);
                }
                // Completes the shutdown at once if nothing is buffered.
                self.flush(key);
            }
            (State::Established, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => {
                conn.credit_requested = true;
                let hdr = conn.header(self.guest_cid, OP_CREDIT_UPDATE);
                self.control.push_back(hdr);
            }
            (state, op) => {
                tracing::debug!(?state, op, "unexpected vsock packet, resetting the stream");
                return self.reset_conn(key);
            }
        }
        if self.conns.get(&key).is_some_and(|c| c.can_send_to_guest()) {
            self.mark_ready(key);
        }
        self.sync_interest(key);
        self.expire(now);
    }

    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(
                port = hdr.dst_port,
                "vsock guest connect refused: too many connections"
            );
            return self.reply_rst(hdr);
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(path = ?path, "vsock guest connect refused: {e}");
                return self.reply_rst(hdr);
            }
        };
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let fd = stream.as_raw_fd();
        let mut conn = Connection::new(stream, State::Established, key.local_port, key.peer_port);
        conn.update_peer_credit(hdr);
        self.control
            .push_back(conn.header(self.guest_cid, OP_RESPONSE));
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.sync_interest(key);
    }

    fn reply_rst(&mut self, to: &Header) {
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        });
    }

    /// Sends the guest an RST for the connection and closes it.
    fn reset_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            let hdr = conn.header(self.guest_cid, OP_RST);
            self.control.push_back(hdr);
        }
        self.remove(key);
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            if conn.registered.is_some() {
                self.fd_changes.push(FdInterest::Remove(fd));
                self.closing.push(conn.stream);
            }
        }
        self.ready.retain(|k| *k != key);
    }

    fn mark_ready(&mut self, key: ConnKey) {
        if !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
    }

    /// Brings the event-loop registration of a connection's socket in line with its state.
    fn sync_interest(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        let wanted = conn.wanted_events();
        let change = match (conn.registered, wanted) {
            (None, Some(set)) => FdInterest::Add(fd, set),
            (Some(old), Some(set)) if old != set => FdInterest::Modify(fd, set),
            (Some(_), None) => FdInterest::Remove(fd),
            _ => return,
        };
        conn.registered = wanted;
        self.fd_changes.push(change);
    }

    // ---- packets to the guest ----

    /// The next packet for the guest, its payload (at most `room` bytes) in `payload`.
    pub fn next_rx_packet(
        &mut self,
        room: usize,
        payload: &mut Vec<u8>,
        now: Instant,
    ) -> Option<Header> {
        payload.clear();
        if let Some(hdr) = self.control.pop_front() {
            return Some(hdr);
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if !conn.can_send_to_guest() {
                // Re-queued when the guest's next packet brings credit.
                continue;
            }
            let n = room.min(MAX_PKT_PAYLOAD).min(conn.peer_credit() as usize);
            if n == 0 {
                self.ready.push_front(key);
                return None;
            }
            payload.resize(n, 0);
            match conn.read_from_host(payload) {
                Ok(0) => {
                    // The host program closed: tell the guest, wait for its RST.
                    payload.clear();
                    conn.host_eof = true;
                    conn.readable = false;
                    conn.state = State::LocalClosed;
                    conn.deadline = Some(now + SHUTDOWN_TIMEOUT);
                    let mut hdr = conn.header(self.guest_cid, OP_SHUTDOWN);
                    hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    self.sync_interest(key);
                    self.expire(now);
                    return Some(hdr);
                }
                Ok(got) => {
                    payload.truncate(got);
                    conn.sent_to_guest(got as u32);
                    let mut hdr = conn.header(self.guest_cid, OP_RW);
                    hdr.len = got as u32;
                    // Round robin: the socket may have more, after the others had a turn.
                    self.ready.push_back(key);
                    return Some(hdr);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    payload.clear();
                    conn.readable = false;
                    self.sync_interest(key);
                }
                Err(e) => {
                    payload.clear();
                    tracing::debug!(port = key.local_port, "vsock host read failed: {e}");
                    self.reset_conn(key);
                    return self.control.pop_front();
                }
            }
        }
        None
    }
}

impl Drop for HybridBackend {
    /// Removes the listening socket's path, so a restarted VMM or a host program polling for
    /// it does not find a dead socket.
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            tracing::debug!("cannot remove {}: {e}", self.uds_path.display());
        }
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| "CONNECT line is not UTF-8".to_string())?;
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or_else(|| format!("expected `CONNECT <port>`, got {text:?}"))?;
    port.trim_end_matches('\r')
        .parse::<u32>()
        .map_err(|_| format!("bad port in CONNECT line {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
        assert!(parse_connect(b"CONNECT").is_err());
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"CONNECT 4294967296").is_err());
        assert!(parse_connect(b"connect 1").is_err());
        assert!(parse_connect(b"CONNECT 1 2").is_err());
        assert!(parse_connect(&[0xff, 0xfe]).is_err());
    }
}
