//! Network namespaces for tests that move real traffic (inside L1, which has no network device
//! to the outside): named namespaces removed on drop, a veth between two of them with a tap
//! tied to one end the way Kata's `tcfilter` model does, work run on a thread inside a
//! namespace, and a byte-for-byte TCP echo check. Addresses come from 198.18.0.0/15, the range
//! reserved for network tests.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Errors setting up test namespaces; each names the command or namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("work in network namespace {0} panicked")]
    Panicked(String),
}

/// Runs `program args` and fails with its stderr unless it exits 0.
fn run(program: &str, args: &[&str]) -> Result<(), NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with `lo` up.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        run("ip", &["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, for `setns` or `ip netns exec`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `tc args` inside the namespace.
    pub fn tc(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), "tc"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `work` on a new thread that has joined this namespace (a thread's namespace is
    /// its own: the caller's threads stay where they are).
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let name = self.name.clone();
        let file = File::open(self.path()).map_err(|source| NetnsError::Enter {
            name: name.clone(),
            source,
        })?;
        std::thread::spawn(move || {
            // SAFETY: setns on an fd we own; it changes only this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter {
                    name,
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(work())
        })
        .join()
        .map_err(|_| NetnsError::Panicked(self.name.clone()))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its interfaces (a veth takes its peer along).
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("removing test namespace: {e}");
        }
    }
}

/// Two namespaces joined by a veth: `vm` holds one end (no address, like a pod's CNI
/// interface once a runtime took it over) and a tap the VM attaches to, each frame of one
/// redirected to the other with tc (Kata's `tcfilter` model); `peer` holds the other end with
/// [`TapNetwork::PEER_IP`]. The guest is to take [`TapNetwork::GUEST_IP`]. All removed on drop.
#[derive(Debug)]
pub struct TapNetwork {
    pub vm: Netns,
    pub peer: Netns,
    pub tap: String,
}

impl TapNetwork {
    pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const PREFIX: u8 = 24;
    pub const MTU: u16 = 1500;
    /// The VM-side veth end's name (in `vm`).
    const VETH: &'static str = "eth0";
    const PEER_VETH: &'static str = "peer0";

    /// Creates namespaces `{prefix}-vm` and `{prefix}-peer` and the links in them.
    pub fn create(prefix: &str, tap: &str) -> Result<Self, NetnsError> {
        let vm = Netns::create(&format!("{prefix}-vm"))?;
        let peer = Netns::create(&format!("{prefix}-peer"))?;
        let net = Self {
            vm,
            peer,
            tap: tap.into(),
        };
        let mtu = Self::MTU.to_string();
        let peer_cidr = format!("{}/{}", Self::PEER_IP, Self::PREFIX);
        let (vm, peer) = (&net.vm, &net.peer);
        #[rustfmt::skip]
        vm.ip(&["link", "add", Self::VETH, "mtu", &mtu, "type", "veth",
                "peer", "name", Self::PEER_VETH, "netns", peer.name()])?;
        peer.ip(&["addr", "add", &peer_cidr, "dev", Self::PEER_VETH])?;
        peer.ip(&["link", "set", Self::PEER_VETH, "up"])?;
        vm.ip(&["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"])?;
        vm.ip(&["link", "set", tap, "mtu", &mtu, "up"])?;
        vm.ip(&["link", "set", Self::VETH, "up"])?;
        for (from, to) in [(Self::VETH, tap), (tap, Self::VETH)] {
            vm.tc(&["qdisc", "add", "dev", from, "ingress"])?;
            #[rustfmt::skip]
            vm.tc(&["filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
                    "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect",
                    "dev", to])?;
        }
        Ok(net)
    }
}

/// Connects to `addr:port`, retrying while the server comes up, for at most `limit`.
pub fn connect_retrying(addr: Ipv4Addr, port: u16, limit: Duration) -> std::io::Result<TcpStream> {
    let started = Instant::now();
    loop {
        match TcpStream::connect((addr, port)) {
            Ok(s) => return Ok(s),
            Err(e) if started.elapsed() > limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `len` bytes of a pattern that does not repeat within a TCP window.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Sends `sent` through an echo server on `stream` while reading the echo (both ways at once,
/// so neither side's buffers fill up), and returns what came back.
pub fn echo_through(stream: TcpStream, sent: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut reader = stream.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = stream;
        stream.write_all(&sent)?;
        stream.shutdown(std::net::Shutdown::Write)
    });
    let mut got = Vec::new();
    let read = reader.read_to_end(&mut got);
    writer
        .join()
        .map_err(|_| std::io::Error::other("the echo writer panicked"))??;
    read?;
    Ok(got)
}

/// What [`measure_echo`] measured through an echo server.
#[derive(Debug, Clone)]
pub struct EchoFigures {
    /// Each 1-byte request/response round trip, in microseconds, in the order taken.
    pub round_trip_us: Vec<f64>,
    /// The stream's rate each way (sent and echoed at once), in MiB/s.
    pub stream_mib_per_s: f64,
}

/// Times `round_trips` 1-byte request/responses, then streams `stream_bytes` through the echo
/// server on `stream` (written and read back at once), checking every byte that comes back.
pub fn measure_echo(
    stream: TcpStream,
    round_trips: usize,
    stream_bytes: usize,
) -> std::io::Result<EchoFigures> {
    let mismatch = |what: &str| std::io::Error::other(format!("the echo differs: {what}"));
    stream.set_nodelay(true)?;
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let mut round_trip_us = Vec::with_capacity(round_trips);
    let mut byte = [0u8; 1];
    for i in 0..round_trips {
        let started = Instant::now();
        writer.write_all(&[i as u8])?;
        reader.read_exact(&mut byte)?;
        round_trip_us.push(started.elapsed().as_secs_f64() * 1e6);
        if byte[0] != i as u8 {
            return Err(mismatch("a request/response byte"));
        }
    }
    let sent = pattern(stream_bytes);
    let expected = sent.clone();
    let started = Instant::now();
    let sender = std::thread::spawn(move || writer.write_all(&sent));
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < stream_bytes {
        let want = buf.len().min(stream_bytes - got);
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(mismatch("the stream ended early"));
        }
        if buf[..n] != expected[got..got + n] {
            return Err(mismatch("stream bytes"));
        }
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| std::io::Error::other("the stream writer panicked"))??;
    Ok(EchoFigures {
        round_trip_us,
        stream_mib_per_s: stream_bytes as f64 / (1 << 20) as f64 / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// An echo server on loopback for `connections` connections; returns its port.
    fn echo_server(connections: usize) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let mut stream = stream.unwrap();
                let mut back = stream.try_clone().unwrap();
                std::thread::spawn(move || std::io::copy(&mut stream, &mut back));
            }
        });
        port
    }

    #[test]
    fn echo_through_returns_what_was_sent() {
        let port = echo_server(1);
        let stream = connect_retrying(Ipv4Addr::LOCALHOST, port, Duration::from_secs(5)).unwrap();
        let sent = pattern(300 << 10);
        assert_eq!(echo_through(stream, sent.clone()).unwrap(), sent);
    }

    #[test]
    fn measure_echo_times_every_round_trip_and_the_stream() {
        let port = echo_server(1);
        let stream = connect_retrying(Ipv4Addr::LOCALHOST, port, Duration::from_secs(5)).unwrap();
        let figures = measure_echo(stream, 20, 1 << 20).unwrap();
        assert_eq!(figures.round_trip_us.len(), 20);
        assert!(figures.stream_mib_per_s > 0.0);
    }

    #[test]
    fn a_server_that_does_not_echo_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Answers every byte with a different one.
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut byte = [0u8; 1];
            while s.read_exact(&mut byte).is_ok() {
                if s.write_all(&[byte[0] ^ 0xff]).is_err() {
                    break;
                }
            }
        });
        let stream = connect_retrying(Ipv4Addr::LOCALHOST, port, Duration::from_secs(5)).unwrap();
        let err = measure_echo(stream, 3, 1024).unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
    }
}
