//! The pod's network inside the guest: Kata's UpdateInterface / UpdateRoutes / ListInterfaces /
//! ListRoutes over rtnetlink, and the DNS lines of CreateSandbox written to resolv.conf.
//!
//! Everything in a request comes from the host and is checked first ([`spec`]): names, MAC,
//! MTU, addresses, prefixes and counts are bounded before any netlink message is built.

mod dns;
mod links;
mod routes;
mod spec;

pub use dns::{write_resolv_conf, GUEST_RESOLV_CONF, MAX_DNS_LINES};
pub use links::{list_interfaces, update_interface};
pub use routes::{list_routes, update_routes};
pub use spec::{MAX_ADDRESSES, MAX_ROUTES};

use rtnetlink::Handle;
use ttrpc::Code;

/// Errors of the network requests.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request is malformed (the message names the field).
    #[error("invalid network request: {0}")]
    Invalid(String),
    /// No interface matches the request.
    #[error("no network interface {0}")]
    NoSuchLink(String),
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    /// The kernel refused a change or a dump.
    #[error("netlink: cannot {action}: {source}")]
    Netlink {
        action: String,
        source: rtnetlink::Error,
    },
    /// resolv.conf could not be written.
    #[error("cannot write {path}: {source}")]
    Dns {
        path: String,
        source: std::io::Error,
    },
}

impl NetworkError {
    /// The ttrpc status code a client gets.
    pub fn code(&self) -> Code {
        match self {
            NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
            NetworkError::NoSuchLink(_) => Code::NOT_FOUND,
            _ => Code::INTERNAL,
        }
    }
}

fn netlink(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::Netlink { action, source }
}

/// A netlink connection for one request; its driver task ends when the handle is dropped.
fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}
