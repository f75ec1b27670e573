use std::time::Instant;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let start = Instant::now();
    // Logging costs start-up time; set it up only when asked for.
    if let Ok(filter) = std::env::var("VEIL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = veil_vmm::cli::Cli::parse();
    veil_vmm::cli::main(cli, start)
}
