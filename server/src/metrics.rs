//! Prometheus metrics on their own HTTP port.
//!
//! Names follow Vector's instrumentation conventions: `nurture_` prefix,
//! counters end in `_total`, durations in `_seconds`, bounded labels.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `nurture_requests_total` | counter | model, version, arm, rpc, code |
//! | `nurture_request_items_total` | counter | model, version, arm, rpc |
//! | `nurture_request_duration_seconds` | histogram | model, version, arm, rpc |
//! | `nurture_outcomes_total` | counter | model, result |
//! | `nurture_quality_{outcomes,auc,log_loss,brier,ece,accuracy,macro_f1,value_per_prediction}` | gauge | model, version, arm |
//! | `nurture_queue_duration_seconds` | histogram | model |
//! | `nurture_inference_duration_seconds` | histogram | model |
//! | `nurture_batch_rows` | histogram | model |
//! | `nurture_shed_requests_total` | counter | model, reason |
//! | `nurture_queue_rows` | gauge | model, version |
//! | `nurture_batch_isolations_total` | counter | model |
//! | `nurture_dropped_requests_total` | counter | model, reason |
//! | `nurture_model_loads_total` | counter | model, result |
//! | `nurture_model_load_duration_seconds` | histogram | model |
//! | `nurture_model_swaps_total` | counter | model, change |
//! | `nurture_live_version` | gauge | model |
//! | `nurture_registry_poll_errors_total` | counter | model |

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Buckets for durations, in seconds: 100 µs to 30 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Buckets for batch sizes, in rows.
const ROW_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Installs the process-wide Prometheus recorder.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("nurture_batch_rows".to_owned()), ROW_BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let upkeep = handle.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
    let upkeep_task = tokio::spawn(async move {
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    upkeep_task.abort();
    if let Err(error) = result {
        tracing::error!(%error, "metrics server failed");
    }
}

/// The address a listener is bound to, for logs.
pub fn local(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
