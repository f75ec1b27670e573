//! Builds the freestanding test guests (C + assembly, system gcc) into OUT_DIR.
//!
//! Each guest is an x86_64 ELF loaded at 1 MiB and entered like a 64-bit kernel; the list is
//! `GUESTS` and each path reaches the library as `VEIL_GUEST_<NAME>`.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[&str] = &[
    "boot_info",
    "smp",
    "crash",
    "idle",
    "virtio_blk",
    "virtio_vsock",
    "boot_timer",
    "panic_reset",
    "reset_fallback",
    "blk_fault",
    "mmio_storm",
];
const FLAGS: &[&str] = &[
    "-O2",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-nostdlib",
    "-static",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=0x1000",
    "-Wl,-z,noexecstack",
    "-Wl,--no-warn-rwx-segments",
];

fn main() {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("guests");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CC");
    for guest in GUESTS {
        let elf = out.join(format!("{guest}.elf"));
        let status = Command::new(&cc)
            .args(FLAGS)
            .arg("-Wl,-T")
            .arg(src.join("guest.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(src.join("start.S"))
            .arg(src.join(format!("{guest}.c")))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {cc} to build test guest {guest}: {e} (install gcc)")
            });
        assert!(status.success(), "{cc} failed to build test guest {guest}");
        println!(
            "cargo:rustc-env=VEIL_GUEST_{}={}",
            guest.to_uppercase(),
            elf.display()
        );
    }
    build_linux_programs(&cc);
}

/// Static Linux user-space programs that nested tests put into their guests' initramfs.
const LINUX_PROGRAMS: &[&str] = &["vsock_stream", "pattern"];

fn build_linux_programs(cc: &str) {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("l2");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", src.display());
    for program in LINUX_PROGRAMS {
        let exe = out.join(program);
        let status = Command::new(cc)
            .args(["-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe)
            .arg(src.join(format!("{program}.c")))
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc} to build {program}: {e} (install gcc)"));
        assert!(status.success(), "{cc} failed to build {program}");
        println!(
            "cargo:rustc-env=VEIL_L2_{}={}",
            program.to_uppercase(),
            exe.display()
        );
    }
}
