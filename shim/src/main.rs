//! `containerd-shim-veil-v2`: containerd's runtime v2 shim for `io.containerd.veil.v2`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-veil-v2: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!("containerd-shim-veil-v2 {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let result = match flags.action.as_str() {
        "start" => containerd_shim_veil_v2::bootstrap::start(&flags).map_err(|e| e.to_string()),
        "delete" => containerd_shim_veil_v2::bootstrap::delete(&flags).map_err(|e| e.to_string()),
        "" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(containerd_shim_veil_v2::server::serve(&flags))
                    .map_err(|e| e.to_string())
            }),
        other => Err(format!(
            "unknown action {other:?} (start, delete, or none to serve)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "shim failed");
            eprintln!("containerd-shim-veil-v2: {e}");
            ExitCode::FAILURE
        }
    }
}
