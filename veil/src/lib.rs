//! The `veil` command line as a library: clap argument structs and the functions behind each
//! command, over the `veil_vmm` and `veil_snp` libraries. `main.rs` only sets up logging,
//! parses and calls [`cli::main`]; tests call the functions directly.
//!
//! Everything here is front end (clap, process signals, exit statuses, printing): embedders
//! use `veil_vmm` and `veil_snp`, which carry none of it.

pub mod cli;
pub mod demo;
mod signals;
pub mod snp;
