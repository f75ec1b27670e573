//! Boot setup from random `VmConfig`s: memory size, vCPU count, CPU template, command line,
//! disks (present, missing, empty placeholder), vsock, boot timer and the kernel itself (a
//! fuzzer-written file, read as an ELF `vmlinux` or a `bzImage`, or flat 64-bit code) go
//! through `Vm::new`, which validates them, creates the KVM VM, loads the kernel and writes
//! boot_params, the MP table and the vCPU registers. Some VMs are then run with a stop
//! already requested, so thread start-up and teardown run too.
//!
//! Checks: no panic, every failure is an error value; needs /dev/kvm (the target does
//! nothing without it, so CI runs it on a KVM host).
#![no_main]

#[path = "common/input.rs"]
mod input;

use std::path::PathBuf;
use std::sync::OnceLock;

use input::Input;
use libfuzzer_sys::fuzz_target;
use veil_vmm::config::Console;
use veil_vmm::{BlockConfig, CpuTemplate, KernelSource, SeccompLevel, Vm, VmConfig, VsockConfig};

fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("veil-fuzz-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        std::fs::write(dir.join("disk.img"), vec![0u8; 4096]).expect("disk image");
        dir
    })
}

fn kernel(input: &mut Input) -> KernelSource {
    let code = input.bytes(64 << 10).to_vec();
    if input.bool() {
        KernelSource::Flat64(code)
    } else {
        let path = scratch_dir().join("kernel");
        std::fs::write(&path, code).expect("kernel file");
        KernelSource::Path(path)
    }
}

fn disk(input: &mut Input) -> BlockConfig {
    let path = match input.u8() % 3 {
        0 => Some(scratch_dir().join("disk.img")),
        1 => Some(scratch_dir().join("missing.img")),
        _ => None,
    };
    BlockConfig {
        path,
        read_only: input.bool(),
        id: String::from_utf8_lossy(input.bytes(32)).into_owned(),
    }
}

fuzz_target!(|data: &[u8]| {
    if !std::path::Path::new("/dev/kvm").exists() {
        return;
    }
    let mut input = Input::new(data);
    let mut config = VmConfig::new(kernel(&mut input));
    config.console = Console::Off;
    config.seccomp = SeccompLevel::Off;
    config.mem_mib = match input.u8() {
        0xff => input.u64(),
        b => u64::from(b % 64),
    };
    config.vcpus = match input.u8() {
        0xff => input.u32(),
        b => u32::from(b % 5),
    };
    config.cpu_template = CpuTemplate::ALL[usize::from(input.u8()) % CpuTemplate::ALL.len()];
    if input.bool() {
        config.cmdline = String::from_utf8_lossy(input.bytes(4096)).into_owned();
    }
    for _ in 0..input.u8() % 4 {
        config.disks.push(disk(&mut input));
    }
    if input.bool() {
        config.vsock = Some(VsockConfig {
            guest_cid: u64::from(input.u32()),
            uds_path: scratch_dir().join("v.sock"),
        });
    }
    config.boot_timer = input.bool();
    let run = input.bool();
    let Ok(vm) = Vm::new(config) else {
        return;
    };
    if run {
        vm.stop_handle().stop();
        let _ = vm.run();
    }
});
