//! `veil-l1`: runs a shell command inside the nested-KVM harness's L1 guest (QEMU TCG with the
//! real kvm_amd; this host's file system mounted read-only) and exits with its status.
//!
//!     cargo run -p veil-tests --bin veil-l1 -- 'target/debug/veil run --kernel ... '

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use veil_tests::nested::L1Command;

/// Runs COMMAND with `sh -c` inside L1, a QEMU TCG guest whose /dev/kvm is the real kvm_amd
/// (see ../shared/HOST-KVM.md). The host's root is mounted read-only; /run, /tmp, /var/tmp
/// and /dev/shm are fresh tmpfs; the current directory is a scratch directory that is
/// writable and has the same path on the host.
#[derive(Debug, Parser)]
#[command(name = "veil-l1", version)]
struct Args {
    /// Kill L1 after this many seconds (boot included).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout: u64,
    /// L1's memory.
    #[arg(long, default_value_t = 3072, value_name = "MIB")]
    memory_mib: u32,
    /// L1's CPUs (more than one risks L1 itself under QEMU's multi-threaded TCG: see
    /// `veil_tests::nested::DEFAULT_CPUS`).
    #[arg(long, default_value_t = veil_tests::nested::DEFAULT_CPUS)]
    cpus: u32,
    /// Print L1's console (its kernel log) after the command's output.
    #[arg(long)]
    console: bool,
    /// The shell command (the words are joined with spaces).
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run = L1Command::new(args.command.join(" ")).and_then(|c| {
        c.timeout(Duration::from_secs(args.timeout))
            .memory_mib(args.memory_mib)
            .cpus(args.cpus)
            .run()
    });
    match run {
        Ok(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            if args.console {
                eprintln!("--- L1 console\n{}", out.console);
            }
            eprintln!(
                "veil-l1: command exited {} after {:.1?}",
                out.status, out.wall
            );
            ExitCode::from(u8::try_from(out.status).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("veil-l1: error: {e}");
            ExitCode::from(1)
        }
    }
}
