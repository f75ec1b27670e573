//! The Veil guest agent: a Kata-compatible ttrpc API served inside the pod VM.
pub mod protocols;
