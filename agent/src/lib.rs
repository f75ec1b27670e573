//! The Veil guest agent: a Kata-compatible ttrpc API served inside the pod VM.
//!
//! - [`protocols`]: generated messages and ttrpc stubs (Kata's `grpc.AgentService` subset and
//!   Veil's `veil.AttestationService`).
//! - [`client`]: what the shim uses to talk to the agent over a stream.
//! - [`policy`] and [`attestation`]: the Rego policy gate bound to HOST_DATA.
//! - [`container`]: containers from OCI specs.
//! - [`service`] and [`transport`]: the ttrpc server.
//! - [`testing`]: request builders shared by the integration tests and the benchmarks.
pub mod attestation;
pub mod client;
pub mod container;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod policy;
pub mod protocols;
pub mod service;
pub mod testing;
pub mod transport;
