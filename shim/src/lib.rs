//! `containerd-shim-veil-v2`: the containerd runtime v2 shim for `io.containerd.veil.v2`.
//!
//! One shim server per pod serves containerd's task API (v2 for containerd 1.6/1.7, v3 for
//! 2.x) over a pod sandbox: a veil VM, or (development only) the agent as a host process.
//! See `README.md` for configuration and `../shared/DESIGN.md` for the whole chain.

pub mod annotations;
pub mod bootstrap;
pub mod cleanup;
pub mod config;
pub mod events;
pub mod io;
pub mod logging;
pub mod network;
pub mod options;
pub mod policy;
pub mod rootfs;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod spec;
pub mod state;
pub mod stats;
pub mod volumes;
