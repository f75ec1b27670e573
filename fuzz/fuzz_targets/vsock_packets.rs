//! The vsock packet parser and connection state machine: the fuzzer plays both the guest
//! (packets with any header on the tx queue, rx buffers handed back or not) and the host
//! programs (connecting with any `CONNECT` line, writing, reading, closing, accepting guest
//! connections), interleaved with event-loop turns and expired deadlines.
//!
//! Checks: no panic; every rx packet the device writes is a well-formed host-to-guest
//! stream packet that fits its buffer; the connection table stays within its limit.
#![no_main]

#[path = "common/driver.rs"]
mod driver;
#[path = "common/input.rs"]
mod input;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use driver::Ring;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use input::Input;
use libfuzzer_sys::fuzz_target;
use veil_devices::bus::BusDevice;
use veil_devices::virtio::vsock::packet::{Header, HEADER_LEN, HOST_CID, TYPE_STREAM};
use veil_devices::virtio::vsock::{Vsock, VsockConfig, MAX_CONNECTIONS};
use veil_devices::virtio::{GuestMemory, MmioTransport, VirtioSubscriber, QUEUE_NOTIFY_OFFSET};
use veil_devices::EventFdTrigger;
use vm_memory::{Bytes, GuestAddress};

const CID: u64 = 3;
const MEM_SIZE: usize = 1 << 20;
const RX_BUFS: u64 = 32;
const RX_BUF_AT: u64 = 0x1_0000;
const RX_BUF_LEN: u32 = 0x1000;
const TX_BUF_AT: u64 = 0x8_0000;
/// Guest ports with a host listener behind them (`<uds>_<port>`).
const HOST_PORTS: [u32; 2] = [1024, 1025];
const MAX_OPS: usize = 96;
const MAX_HOST_STREAMS: usize = 8;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

struct Paths {
    uds: PathBuf,
    listeners: Vec<UnixListener>,
}

fn paths() -> &'static Paths {
    static PATHS: OnceLock<Paths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("veil-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let uds = dir.join("v.sock");
        let listeners = HOST_PORTS
            .iter()
            .map(|port| {
                let path = PathBuf::from(format!("{}_{port}", uds.display()));
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path).expect("host listener");
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking listener");
                listener
            })
            .collect();
        Paths { uds, listeners }
    })
}

fn port(input: &mut Input) -> u32 {
    match input.u8() % 5 {
        0 => HOST_PORTS[0],
        1 => HOST_PORTS[1],
        2 => 1_000_000,
        3 => 1_000_001,
        _ => input.u32(),
    }
}

fn guest_header(input: &mut Input, payload_len: usize) -> Header {
    let bits = input.u8();
    Header {
        src_cid: if bits & 1 == 0 { CID } else { input.u64() },
        dst_cid: if bits & 2 == 0 { HOST_CID } else { input.u64() },
        src_port: port(input),
        dst_port: port(input),
        len: if bits & 4 == 0 {
            payload_len as u32
        } else {
            input.u32()
        },
        kind: if bits & 8 == 0 {
            TYPE_STREAM
        } else {
            input.u16()
        },
        op: u16::from(input.u8() % 9),
        flags: u32::from(input.u8() % 4),
        buf_alloc: match input.u8() {
            0xff => input.u32(),
            b => u32::from(b) << 10,
        },
        fwd_cnt: input.u32(),
    }
}

struct Harness {
    mem: GuestMemory,
    dev: Arc<Mutex<MmioTransport<Vsock>>>,
    events: EventManager<Subscriber>,
    rx: Ring,
    tx: Ring,
    host: Vec<UnixStream>,
    now: Instant,
}

impl Harness {
    fn kick(&mut self, queue: u32) {
        self.dev
            .lock()
            .unwrap()
            .write(QUEUE_NOTIFY_OFFSET, &queue.to_le_bytes());
        self.turn();
    }

    fn turn(&mut self) {
        for _ in 0..8 {
            if self.events.run_with_timeout(0).expect("event loop") == 0 {
                break;
            }
        }
    }

    fn give_rx_buffers(&mut self, count: u64) {
        for i in 0..count {
            let at = RX_BUF_AT + (i % RX_BUFS) * u64::from(RX_BUF_LEN);
            self.rx.add_chain(&self.mem, &[(at, RX_BUF_LEN, true)]);
        }
        self.kick(0);
    }

    /// Checks every packet the device put on the rx queue.
    fn check_rx(&mut self) {
        for (id, len) in self.rx.take_used(&self.mem) {
            assert!(
                len <= RX_BUF_LEN,
                "rx packet of {len} bytes in a {RX_BUF_LEN}-byte buffer"
            );
            if len == 0 {
                continue;
            }
            assert!(
                len as usize >= HEADER_LEN,
                "rx packet of {len} bytes has no header"
            );
            // Buffers are one descriptor each; the head's descriptor holds the address.
            let desc = self.rx.desc + 16 * u64::from(id % u32::from(self.rx.size));
            let addr: u64 = self.mem.read_obj(GuestAddress(desc)).expect("descriptor");
            let mut raw = [0u8; HEADER_LEN];
            self.mem
                .read_slice(&mut raw, GuestAddress(addr))
                .expect("rx header");
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HEADER_LEN + hdr.len as usize, "{hdr:?}");
            assert_eq!(
                (hdr.src_cid, hdr.dst_cid, hdr.kind),
                (HOST_CID, CID, TYPE_STREAM)
            );
        }
    }

    fn send_packet(&mut self, input: &mut Input) {
        let payload = input.bytes(2048).to_vec();
        let hdr = guest_header(input, payload.len());
        let raw = hdr.to_bytes();
        let header_len = match input.u8() % 16 {
            0 => usize::from(input.u8()) % HEADER_LEN,
            _ => HEADER_LEN,
        };
        let payload_at = TX_BUF_AT + 0x1000;
        self.mem
            .write_slice(&raw, GuestAddress(TX_BUF_AT))
            .expect("tx header");
        self.mem
            .write_slice(&payload, GuestAddress(payload_at))
            .expect("tx payload");
        let chain: Vec<(u64, u32, bool)> = match input.u8() % 4 {
            // Header and payload in one buffer.
            0 => {
                self.mem
                    .write_slice(&raw, GuestAddress(payload_at - HEADER_LEN as u64))
                    .expect("tx");
                vec![(
                    payload_at - HEADER_LEN as u64,
                    (HEADER_LEN + payload.len()) as u32,
                    false,
                )]
            }
            // A device-writable buffer where only readable ones belong.
            1 => vec![
                (TX_BUF_AT, header_len as u32, false),
                (payload_at, payload.len() as u32, true),
            ],
            _ if payload.is_empty() => vec![(TX_BUF_AT, header_len as u32, false)],
            _ => vec![
                (TX_BUF_AT, header_len as u32, false),
                (payload_at, payload.len() as u32, false),
            ],
        };
        self.tx.add_chain(&self.mem, &chain);
        self.kick(1);
        self.tx.take_used(&self.mem);
    }

    fn host_op(&mut self, op: u8, input: &mut Input) {
        let which = usize::from(input.u8());
        match op {
            0 if self.host.len() < MAX_HOST_STREAMS => {
                if let Ok(mut s) = UnixStream::connect(&paths().uds) {
                    s.set_nonblocking(true).expect("non-blocking");
                    let line = match input.u8() % 4 {
                        0 => input.bytes(64).to_vec(),
                        _ => format!("CONNECT {}\n", port(input)).into_bytes(),
                    };
                    let _ = s.write(&line);
                    self.host.push(s);
                }
            }
            1 if !self.host.is_empty() => {
                let i = which % self.host.len();
                let data = input.bytes(4096).to_vec();
                let _ = self.host[i].write(&data);
            }
            2 if !self.host.is_empty() => {
                let i = which % self.host.len();
                let mut buf = [0u8; 8192];
                let _ = self.host[i].read(&mut buf);
            }
            3 if !self.host.is_empty() => {
                let i = which % self.host.len();
                self.host.swap_remove(i);
            }
            4 => {
                for listener in &paths().listeners {
                    while let Ok((s, _)) = listener.accept() {
                        s.set_nonblocking(true).expect("non-blocking");
                        if self.host.len() < MAX_HOST_STREAMS {
                            self.host.push(s);
                        }
                    }
                }
            }
            _ => {}
        }
        self.turn();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let event_idx = input.bool();
    let vsock = Vsock::new(VsockConfig {
        guest_cid: CID,
        uds_path: paths().uds.clone(),
    })
    .expect("vsock device");
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let mut transport =
        MmioTransport::new(vsock, mem.clone(), EventFdTrigger::new().expect("eventfd"))
            .expect("transport");
    let rx = Ring::new(&mem, 0, 64);
    let tx = Ring::new(&mem, 0x2000, 64);
    let ev = Ring::new(&mem, 0x4000, 8);
    if !driver::bring_up(&mut transport, &[&rx, &tx, &ev], event_idx) {
        return;
    }
    let dev = Arc::new(Mutex::new(transport));
    let mut events = EventManager::<Subscriber>::new().expect("event manager");
    events.add_subscriber(Arc::new(Mutex::new(VirtioSubscriber::new(dev.clone()))));
    let mut h = Harness {
        mem,
        dev,
        events,
        rx,
        tx,
        host: Vec::new(),
        now: Instant::now(),
    };
    let initial_rx = u64::from(input.u8()) % (RX_BUFS + 1);
    h.give_rx_buffers(initial_rx);

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 10 {
            0..=3 => h.send_packet(&mut input),
            4..=6 => {
                let op = input.u8() % 5;
                h.host_op(op, &mut input);
            }
            7 => {
                h.check_rx();
                let count = u64::from(input.u8() % 8);
                h.give_rx_buffers(count);
            }
            8 => {
                h.now += Duration::from_secs(u64::from(input.u8()));
                let now = h.now;
                h.dev.lock().unwrap().device_mut().expire_deadlines(now);
                h.turn();
            }
            _ => h.turn(),
        }
        let count = h.dev.lock().unwrap().device().connection_count();
        assert!(count <= MAX_CONNECTIONS, "{count} connections");
    }
    h.check_rx();
});
