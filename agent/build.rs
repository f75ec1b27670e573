//! Generates the protobuf messages and ttrpc stubs from `protos/` at build time.
//! Pure Rust (protobuf-parse), so no system `protoc` is needed.

use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &[
    "protos/oci.proto",
    "protos/types.proto",
    "protos/agent.proto",
    "protos/veil.proto",
];

fn main() {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let gen_dir = out_dir.join("protocols");
    fs::create_dir_all(&gen_dir).expect("create OUT_DIR/protocols");

    Codegen::new()
        .out_dir(&gen_dir)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating ttrpc code from protos/");

    for entry in fs::read_dir(&gen_dir).expect("read generated dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            strip_inner_attributes(&path);
        }
    }
}

/// The generated files start with inner attributes (`#![allow(...)]`) and inner doc comments,
/// which `include!` cannot take (doc comments lose their `//!`); the including module in `src/protocols.rs` sets the same allowances instead.
fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("read generated file");
    let kept: Vec<String> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("#!["))
        .map(|line| line.replacen("//!", "//", 1))
        .collect();
    fs::write(path, kept.join("\n")).expect("rewrite generated file");
}
