//! Devices of the Veil VMM.
//!
//! Every device the guest can reach is attached to a [`bus::Bus`] (port I/O or MMIO) as a
//! [`bus::BusDevice`]. The VMM's vCPU threads dispatch exits to the bus; devices that need to
//! interrupt the guest get an [`EventFdTrigger`] whose event fd the VMM registers as a KVM irqfd.
//!
//! Virtio devices ([`virtio`]) sit behind a virtio-mmio transport and run on the VMM's
//! event loop; `devices/INTEGRATION.md` is the wiring contract for the VMM.
//!
//! Guest-controlled input (register offsets, access sizes, values) is untrusted: devices bound
//! every access and never panic on it.

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod serial;
mod trigger;
pub mod virtio;

pub use trigger::EventFdTrigger;
