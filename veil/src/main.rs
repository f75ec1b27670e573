//! The `veil` binary: logging (only when `VEIL_LOG` asks for it), argument parsing, then
//! [`veil_cli::cli::main`]. Everything else is in the `veil_cli` library and below it.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

fn main() -> ExitCode {
    let start = Instant::now();
    // Logging costs start-up time; set it up only when asked for. `Targets` takes the usual
    // `level` / `target=level,...` syntax without EnvFilter's regex engine, which would add
    // hundreds of KiB of code to every VMM process.
    if let Ok(filter) = std::env::var("VEIL_LOG") {
        match filter.parse::<tracing_subscriber::filter::Targets>() {
            Ok(targets) => {
                use std::io::IsTerminal;
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                let layer = tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal());
                tracing_subscriber::registry()
                    .with(layer)
                    .with(targets)
                    .init();
            }
            Err(e) => eprintln!("veil: ignoring VEIL_LOG={filter:?}: {e}"),
        }
    }
    let cli = match veil_cli::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version succeed; a bad command line is refused input, status 1
            // like every other refusal (2 means the guest failed).
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    veil_cli::cli::main(cli, start)
}
