//! `containerd-shim-veil-v2`: the containerd runtime v2 shim for `io.containerd.veil.v2`.
//!
//! Not built yet: it comes after the VMM library (`veil_vmm::Vm`, `StopHandle`,
//! `DiskHandle`) and the agent client (`veil_agent::client::AgentClient`) it will drive;
//! see ../shared/DESIGN.md and ../shared/CONTAINERD.md. The crate holds its place in the
//! workspace layout and has no code on purpose.
