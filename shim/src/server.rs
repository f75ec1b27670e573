//! The shim server: serves the task API on the socket `start` bound, until containerd shuts
//! it down with nothing left to run (or a signal ends it, which also ends the sandbox).

use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Flags;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;
use tokio::signal::unix::{signal, SignalKind};

use crate::bootstrap::{inherited_listener, BootstrapError};
use crate::config::Config;
use crate::events::Events;
use crate::options::CONFIG_PATH_ENV;
use crate::service::TaskService;

/// The task service names of containerd 1.6/1.7 (v2) and 2.x (v3): the same messages.
const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";
/// Time the last reply gets to leave before the server closes.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("TTRPC_ADDRESS (containerd's event socket) is not set")]
    NoTtrpcAddress,
    #[error("connecting to containerd's events at {address}: {source}")]
    Publisher {
        address: String,
        source: containerd_shim::Error,
    },
    #[error("ttrpc server: {0}")]
    Ttrpc(#[from] ttrpc::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

pub async fn serve(flags: &Flags) -> Result<(), ServeError> {
    // The `start` action's Command reset SIGPIPE to its default (kill) for this process; a
    // log write after containerd closed the log fifo must fail with EPIPE, not end the shim
    // before it has cleaned up.
    // SAFETY: installing SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    crate::logging::init(flags.debug);
    // For the `delete` action's liveness check (the working directory is the bundle).
    let _ = std::fs::write(crate::bootstrap::PID_FILE, std::process::id().to_string());
    let config_path = std::env::var_os(CONFIG_PATH_ENV).map(std::path::PathBuf::from);
    let config = Config::load(config_path.as_deref())?;
    tracing::info!(id = %flags.id, namespace = %flags.namespace, sandbox = ?config.sandbox, "shim server starting");
    let listener = inherited_listener(&flags.socket)?;
    let listener = Listener::try_from(listener).map_err(ServeError::Listener)?;
    let address = std::env::var("TTRPC_ADDRESS").map_err(|_| ServeError::NoTtrpcAddress)?;
    let publisher =
        RemotePublisher::new(&address)
            .await
            .map_err(|source| ServeError::Publisher {
                address: address.clone(),
                source,
            })?;
    let events = Events::new(publisher, flags.namespace.clone());
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let socket = std::path::PathBuf::from(flags.socket.trim_start_matches("unix://"));
    let service = TaskService::new(config, events, shutdown.clone(), socket.clone());
    let task: Arc<dyn containerd_shim_protos::shim_async::Task + Send + Sync> =
        Arc::new(service.clone());
    let mut services = create_task(task.clone());
    let v2 = create_task(task)
        .remove(TASK_V3)
        .expect("the generated service is named containerd.task.v3.Task");
    services.insert(TASK_V2.to_string(), v2);
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await?;

    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Listener)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Listener)?;
    tokio::select! {
        _ = shutdown.notified() => tracing::info!("shutdown requested by containerd"),
        _ = term.recv() => tracing::warn!("SIGTERM: ending the sandbox"),
        _ = int.recv() => tracing::warn!("SIGINT: ending the sandbox"),
    }
    // No new connection can reach a shim that is going away; containerd does not reconnect.
    let _ = std::fs::remove_file(&socket);
    service.teardown().await;
    // Give the Shutdown reply a moment to leave before the connections close; a connection
    // that does not close does not keep the shim.
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE * 50, server.shutdown()).await;
    tracing::info!("shim server stopped");
    Ok(())
}
