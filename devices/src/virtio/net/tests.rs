//! virtio-net driven through the MMIO transport with driver-side rings in real guest memory;
//! the back end is a datagram socket pair standing in for the tap (one datagram = one frame).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::testing::{guest_memory, init_device_with_features};
use crate::virtio::testing::{r, read_reg, w, DriverRing};
use crate::virtio::{FdInterest, GuestMemory, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::EventFdTrigger;

const MEM_SIZE: usize = 4 << 20;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;
const BUFS: u64 = 0x10000;
const ALL_OFFLOADS: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

struct PairBackend {
    sock: UnixDatagram,
    offloads: u32,
    offload_calls: Arc<Mutex<Vec<u32>>>,
}

impl NetBackend for PairBackend {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.sock.send(frame).map(|_| ())
    }
    fn supported_offloads(&self) -> u32 {
        self.offloads
    }
    fn set_offloads(&mut self, flags: u32) -> std::io::Result<()> {
        self.offload_calls.lock().unwrap().push(flags);
        Ok(())
    }
}

struct Rig {
    mem: GuestMemory,
    rx: DriverRing,
    tx: DriverRing,
    dev: MmioTransport<Net>,
    /// The "wire" end: what the tap's other side would see.
    peer: UnixDatagram,
    /// A second handle on the device's end, to count frames the device has not read.
    device_end: UnixDatagram,
    offload_calls: Arc<Mutex<Vec<u32>>>,
    /// The fd the device reads frames from.
    backend_fd: RawFd,
    /// Next free buffer address.
    next_buf: u64,
}

fn rig_with(offloads: u32, mtu: u16, accept: u64) -> Rig {
    let (device_end, peer) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let offload_calls = Arc::new(Mutex::new(Vec::new()));
    let backend = PairBackend {
        sock: device_end.try_clone().unwrap(),
        offloads,
        offload_calls: offload_calls.clone(),
    };
    let backend_fd = backend.sock.as_raw_fd();
    let net =
        Net::with_backend(Box::new(backend), MacAddr([2, 0, 0, 0xaa, 0xbb, 0xcc]), mtu).unwrap();
    let mem = guest_memory(MEM_SIZE);
    let irq = EventFdTrigger::new().unwrap();
    let mut dev = MmioTransport::new(net, mem.clone(), irq).unwrap();
    let rx = DriverRing::new(&mem, RX_RING, 256);
    let tx = DriverRing::new(&mem, TX_RING, 256);
    init_device_with_features(&mut dev, &[&rx, &tx], accept);
    Rig {
        mem,
        rx,
        tx,
        dev,
        peer,
        device_end,
        offload_calls,
        backend_fd,
        next_buf: BUFS,
    }
}

fn rig() -> Rig {
    rig_with(ALL_OFFLOADS, DEFAULT_MTU, u64::MAX)
}

/// A frame with a zero virtio-net header and `len` bytes of patterned Ethernet frame.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)));
    f
}

impl Rig {
    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len as u64 + 0xfff) & !0xfff;
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "test ran out of guest memory"
        );
        at
    }

    /// Queues `bytes` on TX in one descriptor (or two when `split`).
    fn post_tx(&mut self, bytes: &[u8], split: bool) -> u16 {
        let at = self.alloc(bytes.len());
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        let len = bytes.len() as u32;
        if split {
            self.tx.add_chain(&[r(at, 5), r(at + 5, len - 5)])
        } else {
            self.tx.add_chain(&[r(at, len)])
        }
    }

    /// Posts one RX buffer of `len` bytes; returns its address.
    fn post_rx(&mut self, len: u32) -> u64 {
        let at = self.alloc(len as usize);
        self.rx.add_chain(&[w(at, len)]);
        at
    }

    fn backend_fd(&self) -> RawFd {
        self.backend_fd
    }

    fn tx_resume_fd(&self) -> RawFd {
        self.dev.device().initial_fds()[0].0
    }

    fn recv_peer(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN];
        let n = self.peer.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Frames sent by the peer that the device has not read yet (consumes them).
    fn unread_frames(&self) -> usize {
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN];
        std::iter::from_fn(|| self.device_end.recv(&mut buf).ok()).count()
    }

    fn stats(&self) -> NetStats {
        self.dev.device().stats()
    }

    fn fd_changes(&mut self) -> Vec<FdInterest> {
        self.dev.device_mut().take_fd_changes()
    }
}

#[test]
fn tx_frame_reaches_the_tap_byte_for_byte() {
    let mut rig = rig();
    let sent = frame(1000, 1);
    let head = rig.post_tx(&sent, true);
    rig.dev.process_queue(1);
    assert_eq!(rig.recv_peer().unwrap(), sent);
    assert_eq!(rig.tx.take_used(), vec![(u32::from(head), 0)]);
    let stats = rig.stats();
    assert_eq!((stats.tx_frames, stats.tx_bytes), (1, 1000));
}

#[test]
fn rx_frame_reaches_the_guest_with_a_single_buffer_header() {
    let mut rig = rig();
    let at = rig.post_rx(2048);
    let sent = frame(600, 9);
    rig.peer.send(&sent).unwrap();
    rig.dev.process_queue(0);
    let used = rig.rx.take_used();
    assert_eq!(used, vec![(0, sent.len() as u32)]);
    let mut got = vec![0u8; sent.len()];
    rig.mem.read_slice(&mut got, GuestAddress(at)).unwrap();
    // num_buffers (bytes 10..12) is 1 without mergeable buffers; the rest passes through.
    let mut expected = sent.clone();
    expected[10] = 1;
    assert_eq!(got, expected);
    assert_eq!(
        rig.fd_changes(),
        vec![FdInterest::Add(
            rig.backend_fd(),
            event_manager::EventSet::IN
        )]
    );
    assert_eq!((rig.stats().rx_frames, rig.stats().rx_bytes), (1, 600));
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_queue_keeps_working() {
    let mut rig = rig();
    // Shorter than the header.
    rig.post_tx(&[0u8; 4], false);
    // Outside guest memory.
    rig.tx.add_chain(&[r(MEM_SIZE as u64 - 8, 64)]);
    // Only device-writable buffers: nothing to send.
    rig.tx.add_chain(&[w(BUFS, 64)]);
    // A descriptor loop: 100 -> 101 -> 100. The queue library cuts it after queue-size
    // descriptors, which makes an 8 KiB frame: over the MTU.
    rig.tx.write_desc(100, BUFS, 32, 1, 101);
    rig.tx.write_desc(101, BUFS, 32, 1, 100);
    rig.tx.push_avail(100);
    // Then a good frame.
    let good = frame(64, 3);
    rig.post_tx(&good, false);
    rig.dev.process_queue(1);
    assert_eq!(rig.recv_peer().unwrap(), good);
    assert!(
        rig.recv_peer().is_none(),
        "only the good frame reaches the tap"
    );
    assert_eq!(rig.tx.take_used().len(), 5, "every chain is returned");
    let stats = rig.stats();
    assert_eq!(stats.tx_frames, 1);
    assert_eq!((stats.tx_malformed, stats.mtu_dropped), (3, 1));
}

#[test]
fn oversized_tx_chain_is_dropped() {
    let mut rig = rig();
    // A segmentation-offload frame (gso_type TCPv4) one byte over the absolute limit.
    let mut big = frame(MAX_FRAME_LEN + 1, 0);
    big[1] = 1;
    rig.post_tx(&big, true);
    // A descriptor claiming 4 GiB.
    rig.tx.add_chain(&[r(BUFS, u32::MAX)]);
    rig.dev.process_queue(1);
    assert!(rig.recv_peer().is_none());
    assert_eq!(rig.tx.take_used().len(), 2);
    assert_eq!(rig.stats().tx_malformed, 2);
}

#[test]
fn frames_over_the_mtu_are_dropped_and_counted_both_ways() {
    let mtu = 1400;
    let mut rig = rig_with(ALL_OFFLOADS, mtu, u64::MAX);
    let limit = usize::from(mtu) + ETH_OVERHEAD;
    // Guest to tap: the largest frame passes, one byte more is dropped.
    rig.post_tx(&frame(limit + 1, 1), false);
    rig.post_tx(&frame(limit, 2), false);
    rig.dev.process_queue(1);
    assert_eq!(rig.recv_peer().unwrap(), frame(limit, 2));
    assert!(rig.recv_peer().is_none());
    assert_eq!(rig.stats().mtu_dropped, 1);
    // Tap to guest: the same.
    rig.post_rx(4096);
    rig.peer.send(&frame(limit + 1, 3)).unwrap();
    rig.peer.send(&frame(limit, 4)).unwrap();
    rig.dev.process_queue(0);
    assert_eq!(rig.rx.take_used(), vec![(0, (VNET_HDR_LEN + limit) as u32)]);
    let stats = rig.stats();
    assert_eq!((stats.mtu_dropped, stats.rx_frames), (2, 1));
    // A segmentation-offload frame is not an MTU violation.
    let mut gso = frame(limit + 1000, 5);
    gso[1] = 1;
    rig.post_tx(&gso, false);
    rig.dev.process_queue(1);
    assert_eq!(rig.recv_peer().unwrap(), gso);
    assert_eq!(rig.stats().mtu_dropped, 2);
}

#[test]
fn a_guest_that_never_refills_rx_holds_at_most_one_frame() {
    let mut rig = rig();
    for i in 0..100 {
        rig.peer.send(&frame(100, i)).unwrap();
    }
    // The driver kicks RX without buffers (or they ran out): one frame is read and held,
    // and the tap is no longer watched.
    rig.dev.process_queue(0);
    let fd = rig.backend_fd();
    assert_eq!(
        rig.fd_changes(),
        vec![
            FdInterest::Add(fd, event_manager::EventSet::IN),
            FdInterest::Remove(fd)
        ]
    );
    // Spurious readiness reads nothing more.
    for _ in 0..10 {
        rig.dev
            .device_mut()
            .process_fd(fd, event_manager::EventSet::IN);
    }
    assert!(rig.fd_changes().is_empty());
    assert_eq!(rig.stats().rx_frames, 0);
    // Two buffers later: the held frame and one more arrive, in order; the third is held.
    let first = rig.post_rx(256);
    rig.post_rx(256);
    rig.dev.process_queue(0);
    assert_eq!(rig.rx.take_used().len(), 2);
    let mut got = vec![0u8; VNET_HDR_LEN + 100];
    rig.mem.read_slice(&mut got, GuestAddress(first)).unwrap();
    assert_eq!(got[VNET_HDR_LEN..], frame(100, 0)[VNET_HDR_LEN..]);
    assert_eq!(rig.stats().rx_frames, 2);
    assert_eq!(
        rig.unread_frames(),
        97,
        "the device holds exactly one frame"
    );
}

#[test]
fn each_round_moves_a_bounded_number_of_frames() {
    let mut rig = rig();
    let count = FRAMES_PER_ROUND + 36;
    for _ in 0..count {
        rig.post_rx(256);
        rig.peer.send(&frame(60, 0)).unwrap();
    }
    rig.dev.process_queue(0);
    assert_eq!(rig.rx.take_used().len(), FRAMES_PER_ROUND);
    // The tap stays watched; the next readiness round takes the rest.
    let fd = rig.backend_fd();
    rig.dev
        .device_mut()
        .process_fd(fd, event_manager::EventSet::IN);
    assert_eq!(rig.rx.take_used().len(), 36);

    for _ in 0..count {
        rig.post_tx(&frame(60, 1), false);
    }
    rig.dev.process_queue(1);
    assert_eq!(rig.tx.take_used().len(), FRAMES_PER_ROUND);
    // The device kicked itself to finish in a later round.
    let resume = rig.tx_resume_fd();
    rig.dev
        .device_mut()
        .process_fd(resume, event_manager::EventSet::IN);
    assert_eq!(rig.tx.take_used().len(), 36);
    assert_eq!(rig.stats().tx_frames, count as u64);
}

#[test]
fn a_frame_larger_than_the_rx_buffer_is_dropped_and_the_buffer_reused() {
    let mut rig = rig();
    let at = rig.post_rx(200);
    rig.peer.send(&frame(1000, 1)).unwrap();
    rig.peer.send(&frame(50, 2)).unwrap();
    rig.dev.process_queue(0);
    assert_eq!(rig.rx.take_used(), vec![(0, (VNET_HDR_LEN + 50) as u32)]);
    let mut got = vec![0u8; 50];
    rig.mem
        .read_slice(&mut got, GuestAddress(at + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, frame(50, 2)[VNET_HDR_LEN..]);
    assert_eq!(rig.stats().rx_dropped, 1);
}

#[test]
fn offloads_are_offered_only_when_the_tap_supports_them() {
    use features::*;
    let offload_bits = CSUM | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | HOST_TSO4 | HOST_TSO6;
    let none = rig_with(0, DEFAULT_MTU, u64::MAX);
    assert_eq!(none.dev.device().features() & offload_bits, 0);
    let csum = rig_with(libc::TUN_F_CSUM, DEFAULT_MTU, u64::MAX);
    assert_eq!(
        csum.dev.device().features() & offload_bits,
        CSUM | GUEST_CSUM
    );
    let all = rig();
    assert_eq!(all.dev.device().features() & offload_bits, offload_bits);
    // A driver taking everything needs no change to the tap.
    assert!(all.offload_calls.lock().unwrap().is_empty());
    // One that refuses receive offloads gets a tap that sends none.
    let plain = rig_with(ALL_OFFLOADS, DEFAULT_MTU, !(GUEST_TSO4 | GUEST_TSO6));
    assert_eq!(*plain.offload_calls.lock().unwrap(), vec![libc::TUN_F_CSUM]);
    assert!(plain.dev.device().features() & VIRTIO_F_VERSION_1 != 0);
}

#[test]
fn config_space_has_mac_link_and_mtu() {
    let mut rig = rig_with(0, 9000, u64::MAX);
    assert_eq!(
        read_reg(&mut rig.dev, 0x008),
        crate::virtio::device_type::NET
    );
    let mut config = [0u8; 16];
    rig.dev.read(0x100, &mut config);
    assert_eq!(&config[..6], &[2, 0, 0, 0xaa, 0xbb, 0xcc]);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), 9000);
    assert_eq!(&config[12..], &[0; 4]);
    let mut far = [0xffu8; 4];
    rig.dev.read(0x100 + 0xffc, &mut far);
    assert_eq!(far, [0; 4]);
}

#[test]
fn a_reset_device_stops_watching_the_tap() {
    let mut rig = rig();
    rig.post_rx(256);
    rig.dev.process_queue(0);
    rig.fd_changes();
    rig.dev.device_mut().reset();
    rig.peer.send(&frame(60, 0)).unwrap();
    let fd = rig.backend_fd();
    rig.dev
        .device_mut()
        .process_fd(fd, event_manager::EventSet::IN);
    assert_eq!(rig.fd_changes(), vec![FdInterest::Remove(fd)]);
}

#[test]
fn mac_addresses_parse_and_print() {
    let mac: MacAddr = "02:1a:2B:3c:4d:5e".parse().unwrap();
    assert_eq!(mac.0, [2, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]);
    assert_eq!(mac.to_string(), "02:1a:2b:3c:4d:5e");
    for bad in [
        "",
        "02:1a:2b:3c:4d",
        "02:1a:2b:3c:4d:5e:6f",
        "02:1a:2b:3c:4d:zz",
        "021a:2b:3c:4d:5e",
        "01:00:5e:00:00:01",
    ] {
        let err = bad.parse::<MacAddr>().unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let random = MacAddr::random_local();
    assert_eq!(random.0[0] & 3, 2, "locally administered unicast");
}

#[test]
fn bad_config_is_refused_with_the_input_named() {
    let err = Net::new(NetConfig::new("veilnosuchtap")).err().unwrap();
    assert!(matches!(err, NetError::TapMissing(_)), "{err}");
    assert!(err.to_string().contains("veilnosuchtap"));
    let err = Net::new(NetConfig::new("a/b")).err().unwrap();
    assert!(matches!(err, NetError::BadTapName(_)), "{err}");
    let err = Net::new(NetConfig::new("x".repeat(16))).err().unwrap();
    assert!(matches!(err, NetError::BadTapName(_)), "{err}");
    let (a, _b) = UnixDatagram::pair().unwrap();
    let backend = PairBackend {
        sock: a,
        offloads: 0,
        offload_calls: Arc::default(),
    };
    let err = Net::with_backend(Box::new(backend), MacAddr::random_local(), 60)
        .err()
        .unwrap();
    assert!(matches!(err, NetError::BadMtu(60)), "{err}");
}

/// A real tap, in a network namespace private to one thread (gone with the thread): the
/// device attaches to it with virtio-net headers and negotiates the tap's offloads.
#[test]
fn attaches_to_a_real_tap() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        veil_tests::skip_or_fail("creating a tap needs root and /dev/net/tun");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare only changes this thread's namespace membership.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let name = "veiltest0";
        make_persistent_tap(name);
        let net = Net::new(NetConfig {
            tap: name.into(),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            mtu: DEFAULT_MTU,
        })
        .unwrap();
        assert!(
            net.features() & features::CSUM != 0,
            "a tap supports checksum offload"
        );
        // A second single-queue attach to the same tap is refused, with the name in the error.
        let err = Net::new(NetConfig::new(name)).err().unwrap();
        assert!(matches!(err, NetError::Attach { .. }), "{err}");
        assert!(err.to_string().contains(name));
    })
    .join()
    .unwrap();
}

fn make_persistent_tap(name: &str) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads a 40-byte ifreq, which `req` is.
    assert!(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) } >= 0);
    // SAFETY: TUNSETPERSIST takes an integer by value.
    assert!(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } >= 0);
}

#[test]
fn net_specs_parse_with_clear_errors() {
    let config: NetConfig = "tap=tap0,mac=02:00:00:00:00:07,mtu=9000".parse().unwrap();
    assert_eq!(config.tap, "tap0");
    assert_eq!(config.mac, Some(MacAddr([2, 0, 0, 0, 0, 7])));
    assert_eq!(config.mtu, 9000);
    let plain: NetConfig = "tap=t1".parse().unwrap();
    assert_eq!((plain.mac, plain.mtu), (None, DEFAULT_MTU));
    for (spec, needle) in [
        ("mac=02:00:00:00:00:07", "tap=NAME is required"),
        ("tap=t1,mac=zz", "\"zz\""),
        ("tap=t1,speed=10", "options are"),
        ("tap=t1,mtu=big", "mtu must be a number"),
        ("tap=t1,mtu=10", "MTU 10"),
    ] {
        let err = spec.parse::<NetConfig>().unwrap_err().to_string();
        assert!(err.contains(needle), "{spec}: {err}");
    }
}
