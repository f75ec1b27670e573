//! `kvm-floor GUEST.elf [--mem-mib N]`: boots a PVH ELF with nothing but KVM and shows its
//! serial output; the baseline every VMM's boot latency and memory are compared against.
//! Exits 0 when the guest resets; on a halt it waits for a signal, like a halted machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use veil_benches::floor::{self, FloorEnd, FloorError};

#[derive(Parser)]
#[command(name = "kvm-floor", version)]
struct Args {
    /// The guest: an ELF with a Xen PVH entry note.
    guest: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = std::fs::read(&args.guest)
        .map_err(|source| FloorError::ReadGuest {
            path: args.guest.clone(),
            source,
        })
        .and_then(|elf| floor::run(&elf, args.mem_mib, &mut std::io::stdout().lock()));
    match result {
        Ok(FloorEnd::Reset) => ExitCode::SUCCESS,
        Ok(FloorEnd::Halted) => loop {
            // SAFETY: pause() only blocks until a signal arrives.
            unsafe { libc::pause() };
        },
        Err(e) => {
            eprintln!("kvm-floor: {e}");
            ExitCode::from(2)
        }
    }
}
