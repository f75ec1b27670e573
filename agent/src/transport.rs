//! Where the agent listens: vsock port 1024 in the guest, or a Unix socket on a host.

use std::str::FromStr;

/// The vsock port Kata's agent (and ours) listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// A listen address given as `vsock:PORT`, `vsock` (port 1024) or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Vsock { port: u32 },
    Unix { path: std::path::PathBuf },
}

/// Errors from parsing or binding a listen address.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("listen address {0:?} is neither `vsock[:PORT]` nor `unix:PATH`")]
    BadAddress(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake with {path}: {reason}")]
    Handshake { path: String, reason: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
}

impl FromStr for ListenAddr {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "vsock" {
            return Ok(Self::Vsock {
                port: AGENT_VSOCK_PORT,
            });
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            let port = port
                .parse()
                .map_err(|_| TransportError::BadAddress(s.to_string()))?;
            return Ok(Self::Vsock { port });
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(TransportError::BadAddress(s.to_string()));
            }
            return Ok(Self::Unix { path: path.into() });
        }
        Err(TransportError::BadAddress(s.to_string()))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vsock { port } => write!(f, "vsock:{port}"),
            Self::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// Binds the address and returns a ttrpc listener. A stale Unix socket file is replaced.
    pub fn bind(&self) -> Result<ttrpc::r#async::transport::Listener, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: self.to_string(),
            source,
        };
        match self {
            Self::Vsock { port } => {
                let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
                let listener = tokio_vsock::VsockListener::bind(addr).map_err(bind_err)?;
                Ok(listener.into())
            }
            Self::Unix { path } => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(bind_err(e)),
                }
                let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
                Ok(listener.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            "vsock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Vsock { port: 1024 }
        );
        assert_eq!(
            "vsock:5000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Vsock { port: 5000 }
        );
        assert_eq!(
            "unix:/run/a.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix {
                path: "/run/a.sock".into()
            }
        );
    }

    #[test]
    fn rejects_other_forms_naming_the_input() {
        for bad in ["tcp:1", "unix:", "vsock:x", "/tmp/a"] {
            let err = bad.parse::<ListenAddr>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
