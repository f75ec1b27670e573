//! virtio-net on a tap device (one RX/TX queue pair, no control queue).
//!
//! - Frames move between the guest's queues and a tap opened with
//!   `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, whose 12-byte virtio-net header matches the guest's
//!   (virtio 1.x), so headers pass through unchanged.
//! - Checksum and segmentation offloads are offered only when the tap accepts them
//!   (`TUNSETOFFLOAD`), and the tap is told exactly what the driver accepted.
//! - The MTU is announced to the driver (`VIRTIO_NET_F_MTU`); a non-segmented frame larger than
//!   MTU + Ethernet header + one VLAN tag is dropped and counted, in either direction.
//! - Memory is bounded whatever the guest does: one host frame buffer per direction. A guest
//!   that stops posting RX buffers stops the tap being read (the kernel's tap queue drops the
//!   excess), and each event-loop round moves at most [`FRAMES_PER_ROUND`] frames per
//!   direction so a busy device cannot starve the others.
//! - The tap is opened by name when the device is built (in the VMM's network namespace, before
//!   any sandboxing), and only its fd is used afterwards.

mod device;
mod frame;
mod tap;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use device::{Net, NetStats};
pub use tap::{NetBackend, Tap};

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio 1.x net header (`virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame without its header: a 64 KiB segmentation-offload packet plus the Ethernet
/// header and a VLAN tag. Longer chains and tap reads are never accepted.
pub const MAX_FRAME_LEN: usize = 65535 + ETH_OVERHEAD;
/// Ethernet header plus one VLAN tag: what a frame may carry on top of the MTU.
pub const ETH_OVERHEAD: usize = 14 + 4;
/// Frames moved per direction per event-loop round.
pub const FRAMES_PER_ROUND: usize = 64;
/// MTU when none is configured.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    /// The guest may send partially checksummed frames.
    pub const CSUM: u64 = 1 << 0;
    /// The guest accepts partially checksummed frames.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The device reports its MTU in config space.
    pub const MTU: u64 = 1 << 3;
    /// The device reports its MAC in config space.
    pub const MAC: u64 = 1 << 5;
    /// The guest accepts TCPv4 segmentation-offload frames.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The guest accepts TCPv6 segmentation-offload frames.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The guest may send TCPv4 segmentation-offload frames.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The guest may send TCPv6 segmentation-offload frames.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// The device reports link status in config space.
    pub const STATUS: u64 = 1 << 16;
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (for devices configured without one).
    pub fn random_local() -> Self {
        let mut bytes = [0u8; 6];
        // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got != bytes.len() as isize {
            // Entropy is only for telling guests apart; a fixed fallback still works.
            bytes = [0, 0x16, 0x3e, 0x56, 0x45, 0x49];
        }
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Self(bytes)
    }
}

impl FromStr for MacAddr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadMac(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() || bytes[0] & 1 != 0 {
            // Trailing groups, or a multicast address, which no NIC may own.
            return Err(bad());
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// How to build a network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of an existing tap interface in the VMM's network namespace.
    pub tap: String,
    /// The guest's MAC; `None` picks a random locally administered one.
    pub mac: Option<MacAddr>,
    /// MTU announced to the guest and enforced on frames.
    pub mtu: u16,
}

impl FromStr for NetConfig {
    type Err = NetError;

    /// Parses `tap=NAME[,mac=MAC][,mtu=N]` (the `veil run --net` syntax).
    fn from_str(spec: &str) -> Result<Self, NetError> {
        let bad = |reason| NetError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut tap = None;
        let mut config = NetConfig::new("");
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) => tap = Some(name.to_string()),
                Some(("mac", mac)) => config.mac = Some(mac.parse()?),
                Some(("mtu", mtu)) => {
                    let mtu = mtu.parse().map_err(|_| bad("mtu must be a number"))?;
                    if mtu < MIN_MTU {
                        return Err(NetError::BadMtu(mtu));
                    }
                    config.mtu = mtu;
                }
                _ => return Err(bad("options are tap=NAME, mac=MAC and mtu=N")),
            }
        }
        config.tap = tap.ok_or_else(|| bad("tap=NAME is required"))?;
        Ok(config)
    }
}

impl NetConfig {
    /// A device on `tap` with a random MAC and the default MTU.
    pub fn new(tap: impl Into<String>) -> Self {
        Self {
            tap: tap.into(),
            mac: None,
            mtu: DEFAULT_MTU,
        }
    }
}

/// Errors setting up a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Interface names are 1 to 15 bytes without '/', NUL or whitespace.
    #[error("tap name {0:?} is not a valid interface name (1-15 bytes, no '/', NUL or spaces)")]
    BadTapName(String),
    /// No interface of that name in this network namespace.
    #[error("tap {0:?} does not exist in the VMM's network namespace; create it first (ip tuntap add {0} mode tap)")]
    TapMissing(String),
    /// Opening `/dev/net/tun` failed.
    #[error("cannot open /dev/net/tun for tap {name:?}: {source}")]
    OpenTun {
        name: String,
        source: std::io::Error,
    },
    /// The kernel refused to attach to the tap (e.g. it is a tun, or multi-queue, or busy).
    #[error(
        "cannot attach to tap {name:?} as a single-queue tap with virtio-net headers: {source}"
    )]
    Attach {
        name: String,
        source: std::io::Error,
    },
    /// The tap refused the 12-byte virtio-net header.
    #[error("tap {name:?} refused the {VNET_HDR_LEN}-byte virtio-net header: {source}")]
    VnetHeader {
        name: String,
        source: std::io::Error,
    },
    /// A `--net` specification that does not parse.
    #[error("invalid network device {spec:?}: {reason}")]
    BadSpec { spec: String, reason: &'static str },
    /// Not a MAC address of the form aa:bb:cc:dd:ee:ff, or a multicast one.
    #[error("MAC address {0:?} is not a unicast address of the form aa:bb:cc:dd:ee:ff")]
    BadMac(String),
    /// The MTU is below [`MIN_MTU`] or leaves no room in [`MAX_FRAME_LEN`].
    #[error("MTU {0} is outside {MIN_MTU}..={max}", max = MAX_FRAME_LEN - ETH_OVERHEAD)]
    BadMtu(u16),
    /// An eventfd for the device's own wake-ups could not be created.
    #[error("cannot create the network device's event fd: {0}")]
    EventFd(std::io::Error),
}
