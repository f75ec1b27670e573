//! virtio-vsock end to end: a driver-side guest in real guest memory, the device behind the
//! MMIO transport, the VMM's event loop (event-manager) and real Unix sockets.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::*;
use crate::bus::BusDevice;
use crate::virtio::testing::{guest_memory, init_device, r, w, DriverRing};
use crate::virtio::{GuestMemory, MmioTransport, VirtioSubscriber, QUEUE_NOTIFY_OFFSET};
use crate::EventFdTrigger;

const CID: u64 = 42;
const RX_BUF: u64 = 0x10_0000;
const RX_BUF_LEN: u32 = 0x1000;
const TX_BUF: u64 = 0x20_0000;
const RX_RING: u16 = 64;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

struct Guest {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mem: GuestMemory,
    rx: DriverRing,
    tx: DriverRing,
    rx_addr: HashMap<u32, u64>,
    dev: Arc<Mutex<MmioTransport<Vsock>>>,
    events: EventManager<Subscriber>,
    /// Packets received but not yet looked at by the test.
    inbox: Vec<(Header, Vec<u8>)>,
    /// What the guest advertises as its own receive buffer.
    buf_alloc: u32,
    fwd_cnt: u32,
    /// Rx buffers the device returned unused (malformed ones).
    dropped_rx: Vec<(u32, u32)>,
}

impl Guest {
    fn new() -> Self {
        Self::with_rx_buffers(RX_RING)
    }

    fn with_rx_buffers(count: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let vsock = Vsock::new(VsockConfig {
            guest_cid: CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        let mem = guest_memory(4 << 20);
        let mut transport =
            MmioTransport::new(vsock, mem.clone(), EventFdTrigger::new().unwrap()).unwrap();
        let rx = DriverRing::new(&mem, 0, RX_RING);
        let tx = DriverRing::new(&mem, 0x4000, 64);
        let ev = DriverRing::new(&mem, 0x8000, 8);
        init_device(&mut transport, &[&rx, &tx, &ev]);
        let dev = Arc::new(Mutex::new(transport));
        let mut events = EventManager::<Subscriber>::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(VirtioSubscriber::new(dev.clone()))));
        let mut guest = Self {
            _dir: dir,
            uds,
            mem,
            rx,
            tx,
            rx_addr: HashMap::new(),
            dev,
            events,
            inbox: Vec::new(),
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
            dropped_rx: Vec::new(),
        };
        for i in 0..u64::from(count) {
            let addr = RX_BUF + i * u64::from(RX_BUF_LEN);
            let head = guest.rx.add_chain(&[w(addr, RX_BUF_LEN)]);
            guest.rx_addr.insert(u32::from(head), addr);
        }
        guest.kick(0);
        guest
    }

    /// A queue notification the way a driver does it without ioeventfd: an MMIO write.
    fn kick(&mut self, queue: u32) {
        self.dev
            .lock()
            .unwrap()
            .write(QUEUE_NOTIFY_OFFSET, &queue.to_le_bytes());
    }

    /// Runs the event loop until it has nothing left to do right now.
    fn settle(&mut self) {
        for _ in 0..1000 {
            if self.events.run_with_timeout(10).unwrap() == 0 {
                break;
            }
        }
        self.collect();
    }

    /// Moves used rx buffers into the inbox and gives them back to the device.
    fn collect(&mut self) {
        for (id, len) in self.rx.take_used() {
            let Some(&addr) = self.rx_addr.get(&id) else {
                self.dropped_rx.push((id, len));
                continue;
            };
            assert!(
                len as usize >= HEADER_LEN,
                "rx packet shorter than a header"
            );
            let mut raw = [0u8; HEADER_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HEADER_LEN + hdr.len as usize);
            let mut payload = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HEADER_LEN as u64))
                .unwrap();
            assert_eq!(
                (hdr.src_cid, hdr.dst_cid, hdr.kind),
                (HOST_CID, CID, TYPE_STREAM)
            );
            self.inbox.push((hdr, payload));
            let head = self.rx.add_chain(&[w(addr, RX_BUF_LEN)]);
            self.rx_addr.insert(u32::from(head), addr);
        }
        self.kick(0);
        for _ in 0..10 {
            if self.events.run_with_timeout(0).unwrap() == 0 {
                break;
            }
        }
    }

    /// Waits (bounded) until `pred` holds for some inbox packet, and removes it.
    fn expect(&mut self, what: &str, pred: impl Fn(&Header, &[u8]) -> bool) -> (Header, Vec<u8>) {
        for _ in 0..500 {
            self.settle();
            if let Some(i) = self.inbox.iter().position(|(h, p)| pred(h, p)) {
                return self.inbox.remove(i);
            }
            self.events.run_with_timeout(20).unwrap();
        }
        panic!("guest never received {what}; inbox: {:?}", self.inbox);
    }

    fn header(&self, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..Header::default()
        }
    }

    /// Puts raw bytes on the tx queue as one packet split header / payload.
    fn send_raw(&mut self, header: &[u8], payload: &[u8]) {
        self.mem.write_slice(header, GuestAddress(TX_BUF)).unwrap();
        let data_at = TX_BUF + 0x1000;
        self.mem
            .write_slice(payload, GuestAddress(data_at))
            .unwrap();
        if payload.is_empty() {
            self.tx.add_chain(&[r(TX_BUF, header.len() as u32)]);
        } else {
            self.tx.add_chain(&[
                r(TX_BUF, header.len() as u32),
                r(data_at, payload.len() as u32),
            ]);
        }
        self.kick(1);
        self.settle();
        assert_eq!(self.tx.take_used().len(), 1, "tx buffer must be returned");
    }

    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        self.send_raw(&hdr.to_bytes(), payload);
    }

    /// Guest-initiated connection to host `port`; returns the accepted host end.
    fn connect(&mut self, listener: &UnixListener, src: u32, port: u32) -> UnixStream {
        self.send(self.header(src, port, OP_REQUEST), &[]);
        self.expect("RESPONSE", |h, _| {
            h.op == OP_RESPONSE && h.src_port == port && h.dst_port == src
        });
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Collects `len` payload bytes the host sent on (host_port -> guest_port).
    fn read_stream(&mut self, host_port: u32, guest_port: u32, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..500 {
            self.settle();
            let mut rest = Vec::new();
            for (h, p) in self.inbox.drain(..) {
                if h.op == OP_RW && h.src_port == host_port && h.dst_port == guest_port {
                    got.extend_from_slice(&p);
                } else {
                    rest.push((h, p));
                }
            }
            self.inbox = rest;
            if got.len() >= len {
                return got;
            }
            self.events.run_with_timeout(20).unwrap();
        }
        panic!("host data never arrived: {} of {len} bytes", got.len());
    }
}

fn host_listener(guest: &Guest, port: u32) -> UnixListener {
    let mut path = guest.uds.clone().into_os_string();
    path.push(format!("_{port}"));
    UnixListener::bind(path).unwrap()
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn host_connect_handshake_then_data_both_ways() {
    let mut guest = Guest::new();
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Data right behind the CONNECT line must reach the guest, not be eaten by the parser.
    host.write_all(b"CONNECT 1024\nearly").unwrap();

    let (req, _) = guest.expect("REQUEST", |h, _| h.op == OP_REQUEST);
    assert_eq!(req.dst_port, 1024);
    assert!(
        req.src_port >= 1 << 30,
        "host-side port from the ephemeral range"
    );
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    let local = req.src_port;

    guest.send(guest.header(1024, local, OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));
    assert_eq!(guest.read_stream(local, 1024, 5), b"early");

    host.write_all(b"ping").unwrap();
    assert_eq!(guest.read_stream(local, 1024, 4), b"ping");
    guest.send(guest.header(1024, local, OP_RW), b"pong");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // A second CONNECT gets a different host port.
    let mut host2 = UnixStream::connect(&guest.uds).unwrap();
    host2.write_all(b"CONNECT 1024\n").unwrap();
    let (req2, _) = guest.expect("second REQUEST", |h, _| h.op == OP_REQUEST);
    assert_ne!(req2.src_port, local);
}

#[test]
fn guest_refusing_a_host_connect_closes_the_host_socket() {
    let mut guest = Guest::new();
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    let (req, _) = guest.expect("REQUEST", |h, _| h.op == OP_REQUEST);
    guest.send(guest.header(7, req.src_port, OP_RST), &[]);
    guest.settle();
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0, "host sees EOF, no OK line");
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 0);
}

#[test]
fn malformed_connect_lines_are_dropped() {
    let mut guest = Guest::new();
    for line in [&b"HELLO 5\n"[..], b"CONNECT x\n", &[b'C'; 64][..]] {
        let mut host = UnixStream::connect(&guest.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        host.write_all(line).unwrap();
        guest.settle();
        guest.settle();
        let mut buf = [0u8; 8];
        // Closing with the rest of an over-long line unread shows as a reset.
        let closed = match host.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "connection closed for {line:?}");
    }
    assert!(guest.inbox.iter().all(|(h, _)| h.op != OP_REQUEST));
}

#[test]
fn host_connect_times_out_when_the_guest_never_answers() {
    let mut guest = Guest::new();
    let mut host = UnixStream::connect(&guest.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let (req, _) = guest.expect("REQUEST", |h, _| h.op == OP_REQUEST);
    let later = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(1);
    guest
        .dev
        .lock()
        .unwrap()
        .device_mut()
        .expire_deadlines(later);
    guest.expect("RST after timeout", |h, _| {
        h.op == OP_RST && h.src_port == req.src_port && h.dst_port == 9
    });
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
}

#[test]
fn guest_connect_reaches_the_listener_and_is_refused_without_one() {
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 5000);
    let mut host = guest.connect(&listener, 3333, 5000);

    guest.send(guest.header(3333, 5000, OP_RW), b"from guest");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from guest");
    host.write_all(b"from host").unwrap();
    assert_eq!(guest.read_stream(5000, 3333, 9), b"from host");

    // Port 5001 has no listener: RST back to the guest's port.
    guest.send(guest.header(3334, 5001, OP_REQUEST), &[]);
    guest.expect("RST for 5001", |h, _| {
        h.op == OP_RST && h.src_port == 5001 && h.dst_port == 3334
    });
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 1);
}

#[test]
fn data_to_the_guest_respects_its_credit() {
    let mut guest = Guest::new();
    guest.buf_alloc = 1000;
    let listener = host_listener(&guest, 6000);
    let mut host = guest.connect(&listener, 10, 6000);
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    host.write_all(&data).unwrap();

    let first = guest.read_stream(6000, 10, 1000);
    assert_eq!(first, &data[..1000]);
    for _ in 0..5 {
        guest.settle();
    }
    assert!(
        guest.inbox.iter().all(|(h, _)| h.op != OP_RW),
        "no data beyond the 1000 bytes of credit"
    );

    // The guest consumed its buffer: a credit update releases the next 1000 bytes.
    guest.fwd_cnt = 1000;
    guest.send(guest.header(10, 6000, OP_CREDIT_UPDATE), &[]);
    let second = guest.read_stream(6000, 10, 1000);
    assert_eq!(second, &data[1000..2000]);
}

#[test]
fn data_from_the_guest_is_credited_back() {
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 6100);
    let mut host = guest.connect(&listener, 11, 6100);
    let chunk = vec![0x5au8; MAX_PKT_PAYLOAD];
    for _ in 0..3 {
        guest.send(guest.header(11, 6100, OP_RW), &chunk);
    }
    let mut got = vec![0u8; 3 * MAX_PKT_PAYLOAD];
    host.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x5a));

    guest.inbox.clear();
    guest.send(guest.header(11, 6100, OP_CREDIT_REQUEST), &[]);
    let (update, _) = guest.expect("CREDIT_UPDATE", |h, _| h.op == OP_CREDIT_UPDATE);
    assert_eq!(update.fwd_cnt as usize, 3 * MAX_PKT_PAYLOAD);
    assert_eq!(update.buf_alloc, CONN_BUF_SIZE);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 6200);
    let mut host = guest.connect(&listener, 12, 6200);
    // The host never reads: its socket buffer fills, then our 256 KiB, then the guest is
    // over its credit.
    let chunk = vec![1u8; MAX_PKT_PAYLOAD];
    let mut reset = false;
    for _ in 0..64 {
        guest.send(guest.header(12, 6200, OP_RW), &chunk);
        if guest
            .inbox
            .iter()
            .any(|(h, _)| h.op == OP_RST && h.dst_port == 12)
        {
            reset = true;
            break;
        }
    }
    assert!(reset, "4 MiB against a 256 KiB credit must end in RST");
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 0);
    // The host end is closed after what was delivered.
    host.set_nonblocking(false).unwrap();
    let mut sink = Vec::new();
    host.read_to_end(&mut sink).unwrap();
    assert!(sink.len() <= 64 * MAX_PKT_PAYLOAD);
}

#[test]
fn guest_shutdown_closes_the_host_end_and_host_close_shuts_the_guest_down() {
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 7000);
    let mut host = guest.connect(&listener, 20, 7000);
    guest.send(guest.header(20, 7000, OP_RW), b"bye");
    let mut shutdown = guest.header(20, 7000, OP_SHUTDOWN);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    guest.send(shutdown, &[]);
    guest.expect("RST after full shutdown", |h, _| {
        h.op == OP_RST && h.dst_port == 20
    });
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye", "buffered data delivered before the close");

    // The other way: the host program closes, the guest is told and answers RST.
    let host2 = guest.connect(&listener, 21, 7000);
    drop(host2);
    let (sd, _) = guest.expect("SHUTDOWN", |h, _| h.op == OP_SHUTDOWN && h.dst_port == 21);
    assert_eq!(sd.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 1);
    guest.send(guest.header(21, 7000, OP_RST), &[]);
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 0);

    // Without the guest's RST, the connection goes after the shutdown timeout.
    let host3 = guest.connect(&listener, 22, 7000);
    drop(host3);
    guest.expect("SHUTDOWN", |h, _| h.op == OP_SHUTDOWN && h.dst_port == 22);
    let later = Instant::now() + SHUTDOWN_TIMEOUT + Duration::from_secs(1);
    guest
        .dev
        .lock()
        .unwrap()
        .device_mut()
        .expire_deadlines(later);
    guest.expect("RST after timeout", |h, _| {
        h.op == OP_RST && h.dst_port == 22
    });
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 0);
}

#[test]
fn many_concurrent_connections_keep_their_data_apart() {
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 8000);
    let mut hosts = Vec::new();
    for src in 100..140u32 {
        hosts.push((src, guest.connect(&listener, src, 8000)));
    }
    for (src, host) in &mut hosts {
        host.write_all(format!("to {src}").as_bytes()).unwrap();
    }
    for (src, _) in &hosts {
        guest.send(
            guest.header(*src, 8000, OP_RW),
            format!("from {src}").as_bytes(),
        );
    }
    for (src, host) in &mut hosts {
        let expected = format!("to {src}");
        assert_eq!(
            guest.read_stream(8000, *src, expected.len()),
            expected.as_bytes()
        );
        let expected = format!("from {src}");
        let mut buf = vec![0u8; expected.len()];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(buf, expected.as_bytes());
    }
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 40);
}

// ---- malformed guest packets: dropped or answered with RST, device keeps working ----

#[test]
fn malformed_tx_packets_are_dropped_and_the_device_keeps_serving() {
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 9000);

    // Shorter than a header.
    guest.send_raw(&[0u8; 20], &[]);
    // Claims more payload than its buffers hold.
    let mut hdr = guest.header(1, 9000, OP_RW);
    hdr.len = 4000;
    guest.send_raw(&hdr.to_bytes(), b"tiny");
    // Claims more than the packet size limit.
    hdr.len = u32::MAX;
    guest.send_raw(&hdr.to_bytes(), &[]);
    // Header buffer outside guest memory.
    guest
        .tx
        .add_chain(&[r(0xdead_0000_0000, HEADER_LEN as u32)]);
    guest.kick(1);
    guest.settle();
    assert_eq!(guest.tx.take_used().len(), 1);
    // A request from someone else's CID, and one to a CID that is not the host.
    let mut foreign = guest.header(2, 9000, OP_REQUEST);
    foreign.src_cid = 77;
    guest.send(foreign, &[]);
    let mut elsewhere = guest.header(2, 9000, OP_REQUEST);
    elsewhere.dst_cid = 5;
    guest.send(elsewhere, &[]);
    guest.settle();
    assert!(
        guest.inbox.is_empty(),
        "nothing answered: {:?}",
        guest.inbox
    );
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 0);

    // Data for a connection that does not exist: RST.
    guest.send(guest.header(3, 9000, OP_RW), b"x");
    guest.expect("RST for unknown stream", |h, _| {
        h.op == OP_RST && h.dst_port == 3
    });
    // A non-stream socket type: RST.
    let mut seqpacket = guest.header(4, 9000, OP_REQUEST);
    seqpacket.kind = 2;
    guest.send(seqpacket, &[]);
    guest.expect("RST for seqpacket", |h, _| {
        h.op == OP_RST && h.dst_port == 4
    });

    // An unknown op on a live stream resets it.
    let _host = guest.connect(&listener, 5, 9000);
    guest.send(guest.header(5, 9000, 99), &[]);
    guest.expect("RST for bad op", |h, _| h.op == OP_RST && h.dst_port == 5);
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 0);

    // And a well-formed connection still works.
    let mut host = guest.connect(&listener, 6, 9000);
    guest.send(guest.header(6, 9000, OP_RW), b"ok");
    let mut buf = [0u8; 2];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn rx_buffers_that_are_too_small_or_outside_memory_are_skipped() {
    let mut guest = Guest::with_rx_buffers(0);
    let mut data = [0u8; 8];
    guest.dev.lock().unwrap().read(0x100, &mut data);
    assert_eq!(
        u64::from_le_bytes(data),
        CID,
        "config space holds the guest CID"
    );

    let listener = host_listener(&guest, 9100);
    guest.send(guest.header(7, 9100, OP_REQUEST), &[]);
    let (mut host, _) = listener.accept().unwrap();
    // Two unusable buffers first, then a good one.
    let outside = guest.rx.add_chain(&[w(0xdead_0000_0000, 4096)]);
    let tiny = guest.rx.add_chain(&[w(RX_BUF, 10)]);
    let good = guest.rx.add_chain(&[w(RX_BUF + 0x1000, RX_BUF_LEN)]);
    guest.rx_addr.insert(u32::from(good), RX_BUF + 0x1000);
    guest.kick(0);
    guest.expect("RESPONSE", |h, _| h.op == OP_RESPONSE && h.dst_port == 7);
    assert_eq!(
        guest.dropped_rx,
        vec![(u32::from(outside), 0), (u32::from(tiny), 0)]
    );
    host.write_all(b"still fine").unwrap();
    assert_eq!(guest.read_stream(9100, 7, 10), b"still fine");
}

#[test]
fn reserved_cids_and_non_socket_paths_are_rejected_stale_sockets_replaced() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        let err = Vsock::new(VsockConfig {
            guest_cid: cid,
            uds_path: dir.path().join("v.sock"),
        });
        assert!(matches!(err, Err(VsockError::InvalidCid(c)) if c == cid));
    }
    // A stale socket from an earlier run is replaced, and removed when the device goes.
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    let vsock = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    })
    .unwrap();
    assert!(UnixStream::connect(&path).is_ok());
    drop(vsock);
    assert!(!path.exists());

    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        Vsock::new(VsockConfig {
            guest_cid: 3,
            uds_path: file
        }),
        Err(VsockError::PathInUse(_))
    ));
}

#[test]
fn a_host_listener_that_does_not_accept_cannot_stall_the_event_loop() {
    use std::os::fd::AsRawFd;
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 9200);
    // Shrink the backlog so it is full after a connection or two.
    // SAFETY: listen() on a socket we own; no pointers involved.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    for src in 0..4u32 {
        guest.send(guest.header(500 + src, 9200, OP_REQUEST), &[]);
    }
    // Had a connect blocked, we would never get here.
    guest.expect("RST once the backlog is full", |h, _| {
        h.op == OP_RST && h.src_port == 9200
    });
    let responses = guest
        .inbox
        .iter()
        .filter(|(h, _)| h.op == OP_RESPONSE)
        .count();
    assert!(responses < 4, "not every connect can have been queued");
}

#[test]
fn device_reset_closes_every_host_socket() {
    let mut guest = Guest::new();
    let listener = host_listener(&guest, 9300);
    let mut host_a = guest.connect(&listener, 30, 9300);
    let mut host_b = UnixStream::connect(&guest.uds).unwrap();
    host_b
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    host_b.write_all(b"CONNECT 31\n").unwrap();
    let (req, _) = guest.expect("REQUEST", |h, _| h.op == OP_REQUEST);
    guest.send(guest.header(31, req.src_port, OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host_b), format!("OK {}", req.src_port));
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 2);

    // The driver writes 0 to Status.
    guest.dev.lock().unwrap().write(0x70, &0u32.to_le_bytes());
    // The event loop applies the fd removals, after which the sockets are closed.
    guest.kick(0);
    guest.settle();
    assert_eq!(guest.dev.lock().unwrap().device().connection_count(), 0);
    let mut buf = [0u8; 4];
    assert_eq!(host_a.read(&mut buf).unwrap(), 0);
    assert_eq!(host_b.read(&mut buf).unwrap(), 0);
}

#[test]
fn a_starved_rx_queue_asks_the_driver_for_a_notification() {
    let mut guest = Guest::with_rx_buffers(1);
    let listener = host_listener(&guest, 9400);
    // The RESPONSE takes the only buffer; the RW behind it finds none.
    guest.send(guest.header(40, 9400, OP_REQUEST), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(b"waiting").unwrap();
    for _ in 0..3 {
        guest.events.run_with_timeout(50).unwrap();
    }
    assert_eq!(guest.rx.take_used().len(), 1);
    assert_eq!(
        guest.rx.avail_event(),
        guest.rx.avail_idx(),
        "avail_event must ask for a notification on the next buffer"
    );
}
