//! Client side of the agent protocol, for the shim and tests.
//!
//! The agent is reached over a stream: directly on its Unix socket (host mode), or through the
//! VMM's hybrid vsock (connect to the VMM's Unix socket, `CONNECT <port>\n`, `OK <n>\n`).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::protocols::{agent_ttrpc::AgentServiceClient, veil_ttrpc::AttestationServiceClient};
use crate::transport::TransportError;

/// Longest handshake reply accepted (`OK 4294967295\n` fits easily).
const MAX_HANDSHAKE_LINE: usize = 64;

/// Both agent services over one connection.
#[derive(Clone)]
pub struct AgentClient {
    /// Kata's `grpc.AgentService`.
    pub agent: AgentServiceClient,
    /// Veil's `veil.AttestationService`.
    pub attestation: AttestationServiceClient,
}

impl AgentClient {
    /// Wraps a connected stream that speaks ttrpc to the agent.
    pub fn from_stream(stream: UnixStream) -> Self {
        let client = ttrpc::r#async::Client::new(stream.into());
        Self {
            agent: AgentServiceClient::new(client.clone()),
            attestation: AttestationServiceClient::new(client),
        }
    }

    /// Connects to an agent listening on a Unix socket (`veil-agent --listen unix:PATH`).
    pub async fn connect_unix(path: &Path) -> Result<Self, TransportError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| TransportError::Connect {
                addr: path.display().to_string(),
                source,
            })?;
        Ok(Self::from_stream(stream))
    }

    /// Connects through a hybrid-vsock Unix socket (the VMM's, or vhost-device-vsock's) to the
    /// guest's vsock `port`.
    pub async fn connect_hybrid_vsock(path: &Path, port: u32) -> Result<Self, TransportError> {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| TransportError::Connect {
                    addr: path.display().to_string(),
                    source,
                })?;
        hybrid_vsock_handshake(&mut stream, port)
            .await
            .map_err(|reason| TransportError::Handshake {
                path: path.display().to_string(),
                reason,
            })?;
        Ok(Self::from_stream(stream))
    }
}

/// Writes `CONNECT <port>\n` and reads the `OK <n>\n` reply one byte at a time, so no byte of
/// the ttrpc stream that follows is consumed.
async fn hybrid_vsock_handshake(stream: &mut UnixStream, port: u32) -> Result<(), String> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    let mut line = Vec::new();
    loop {
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("reading reply: {e}"))?;
        if byte == b'\n' {
            break;
        }
        if line.len() >= MAX_HANDSHAKE_LINE {
            return Err(format!("reply longer than {MAX_HANDSHAKE_LINE} bytes"));
        }
        line.push(byte);
    }
    let text = String::from_utf8_lossy(&line);
    if text.starts_with("OK ") {
        Ok(())
    } else {
        Err(format!("expected `OK <port>`, got {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_accepts_ok_and_leaves_following_bytes() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 13];
            b.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            b.write_all(b"OK 1024\nREST").await.unwrap();
        });
        hybrid_vsock_handshake(&mut a, 1024).await.unwrap();
        server.await.unwrap();
        let mut rest = [0u8; 4];
        a.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"REST");
    }

    #[tokio::test]
    async fn handshake_rejects_other_replies() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 13];
            b.read_exact(&mut buf).await.unwrap();
            b.write_all(b"ERR no listener\n").await.unwrap();
        });
        let err = hybrid_vsock_handshake(&mut a, 1024).await.unwrap_err();
        assert!(err.contains("ERR no listener"), "{err}");
    }
}
