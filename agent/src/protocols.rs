//! Generated protobuf messages and ttrpc stubs (see `build.rs` and `protos/`).
//!
//! `agent` and `oci` follow Kata Containers' `grpc` package; `veil` is our own attestation service.

macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            unused_imports,
            unused_results,
            unused_mut,
            dead_code,
            missing_docs,
            trivial_casts,
            unknown_lints
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/protocols/", $file));
        }
    };
}

generated!(oci, "oci.rs");
generated!(types, "types.rs");
generated!(agent, "agent.rs");
generated!(agent_ttrpc, "agent_ttrpc.rs");
generated!(veil, "veil.rs");
generated!(veil_ttrpc, "veil_ttrpc.rs");
