//! virtio-vsock with the hybrid Unix-socket back end (the Firecracker / Cloud Hypervisor
//! convention, so Kata/CoCo tooling talks to it unchanged).
//!
//! - The host reaches guest port P by connecting to `uds_path` and writing `CONNECT P\n`;
//!   once the guest accepts, it reads `OK <host port>\n` and the socket carries the stream.
//! - The guest reaches host port P through `<uds_path>_P`, where a host program listens;
//!   with no listener there the guest's connect is refused (RST).
//! - Streams use virtio-vsock credit flow control both ways: the guest may have at most
//!   [`CONN_BUF_SIZE`] bytes unconsumed by the host socket; we never send the guest more than
//!   its advertised buffer allows.
//! - A connection ends with RST (either side), with SHUTDOWN from the guest (we RST once
//!   buffered data reached the host), or with the host program closing (we SHUTDOWN, the guest
//!   RSTs, or we RST after [`SHUTDOWN_TIMEOUT`]). A guest that does not answer a host
//!   CONNECT within [`REQUEST_TIMEOUT`] gets an RST and the host socket is closed.

mod backend;
mod connection;
mod device;
pub mod packet;
#[cfg(test)]
mod tests;
mod timer;
mod uds;

use std::path::PathBuf;

pub use backend::{
    CONNECT_LINE_TIMEOUT, MAX_CONNECTIONS, MAX_PKT_PAYLOAD, REQUEST_TIMEOUT, SHUTDOWN_TIMEOUT,
};
pub use connection::CONN_BUF_SIZE;
pub use device::Vsock;

/// Size of each of the three queues (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;

/// How to build the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 ..= 0xffff_fffe).
    pub guest_cid: u64,
    /// The Unix socket host programs connect to; `<uds_path>_<port>` for guest connects.
    pub uds_path: PathBuf,
}

/// Errors setting up the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved for the hypervisor/host, 0xffffffff is VMADDR_CID_ANY.
    #[error("guest CID {0} is reserved; use 3 to 4294967294")]
    InvalidCid(u64),
    /// The Unix socket path is taken by something that is not a socket.
    #[error("vsock socket path {0} exists and is not a socket")]
    PathInUse(PathBuf),
    /// Binding the Unix socket failed.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The deadline timer could not be created.
    #[error("cannot create the vsock deadline timer: {0}")]
    Timer(std::io::Error),
}
