//! `nurture-server`: see `--help`.

use clap::Parser;
use nurture_server::config::{Config, LogFormat};
use tokio::sync::watch;

/// Every request allocates its messages, strings and answers; glibc's
/// malloc and free were a fifth of the server's CPU on 1-row requests
/// (docs/floor.md); mimalloc spends less on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NURTURE_LOG")
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads())
        // Only workers park: this counts them for the shadow's busy check.
        .on_thread_park(nurture_server::load::register_io_thread)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = stop.send(true);
        });
        nurture_server::run(config, stopped).await
    })
}

async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM can be handled");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
