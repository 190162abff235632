//! Prometheus metrics on their own HTTP port.
//!
//! Names follow Vector's instrumentation conventions: `nurture_` prefix,
//! counters end in `_total`, durations in `_seconds`, bounded labels.
//!
//! Every series, its type and its HELP text: [`DESCRIBED`]. Counters whose
//! label values are known in advance are created at zero as soon as their
//! model is ([`zero_model`]), so an `increase()` alert sees the first event.

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

/// Every series the server exports, with its type and HELP text.
pub const DESCRIBED: &[(&str, Kind, &str)] = &[
    (
        "nurture_auth_token_reloads_total",
        Kind::Counter,
        "Reloads of the bearer-token file, by result.",
    ),
    (
        "nurture_tls_reloads_total",
        Kind::Counter,
        "Reloads of the TLS certificate and key, by result.",
    ),
    (
        "nurture_build_info",
        Kind::Gauge,
        "Always 1; the labels name the build (version).",
    ),
    (
        "nurture_requests_total",
        Kind::Counter,
        "RPCs finished, by the version and arm that answered (version none: failed before any answered) and gRPC code.",
    ),
    (
        "nurture_request_items_total",
        Kind::Counter,
        "Items (leads, texts, rows) answered, by version and arm.",
    ),
    (
        "nurture_request_duration_seconds",
        Kind::Histogram,
        "RPC latency on the server, by version and arm.",
    ),
    (
        "nurture_queue_duration_seconds",
        Kind::Histogram,
        "Time a request waited in its version's batch queue.",
    ),
    (
        "nurture_inference_duration_seconds",
        Kind::Histogram,
        "ONNX Runtime time per batched call.",
    ),
    (
        "nurture_batch_rows",
        Kind::Histogram,
        "Rows per batched ONNX Runtime call.",
    ),
    (
        "nurture_queue_rows",
        Kind::Gauge,
        "Rows admitted to a version's queue and not yet answered.",
    ),
    (
        "nurture_shed_requests_total",
        Kind::Counter,
        "Requests refused at admission (RESOURCE_EXHAUSTED), by reason.",
    ),
    (
        "nurture_dropped_requests_total",
        Kind::Counter,
        "Requests dropped before an answer (deadline passed or caller gone), by reason.",
    ),
    (
        "nurture_batch_isolations_total",
        Kind::Counter,
        "Batched calls that failed and were re-run member by member.",
    ),
    (
        "nurture_model_loads_total",
        Kind::Counter,
        "Version loads, by result (ok or the refusal's error type).",
    ),
    (
        "nurture_model_load_duration_seconds",
        Kind::Histogram,
        "Time to fetch, check and warm up a version.",
    ),
    (
        "nurture_model_swaps_total",
        Kind::Counter,
        "Changes of what a model serves, by change (live, canary).",
    ),
    (
        "nurture_live_version",
        Kind::Gauge,
        "Version this replica serves as live (0: none).",
    ),
    (
        "nurture_registry_poll_errors_total",
        Kind::Counter,
        "Failed reads of a model's release log.",
    ),
    (
        "nurture_auth_failures_total",
        Kind::Counter,
        "Requests refused for a missing or wrong bearer token.",
    ),
    (
        "nurture_outcomes_total",
        Kind::Counter,
        "Outcome reports, by result (recorded, duplicate, late, unknown_id, forged, garbled...).",
    ),
    (
        "nurture_feedback_read_errors_total",
        Kind::Counter,
        "Failed reads of the fleet's outcome batches.",
    ),
    (
        "nurture_quality_outcomes",
        Kind::Gauge,
        "Outcomes folded into a version's live quality, by arm.",
    ),
    (
        "nurture_quality_auc",
        Kind::Gauge,
        "Live AUC of a version on its outcomes, by arm.",
    ),
    (
        "nurture_quality_log_loss",
        Kind::Gauge,
        "Live log-loss of a version on its outcomes, by arm.",
    ),
    (
        "nurture_quality_brier",
        Kind::Gauge,
        "Live Brier score of a version on its outcomes, by arm.",
    ),
    (
        "nurture_quality_ece",
        Kind::Gauge,
        "Live expected calibration error of a version, by arm.",
    ),
    (
        "nurture_quality_accuracy",
        Kind::Gauge,
        "Live accuracy of a multiclass version, by arm.",
    ),
    (
        "nurture_quality_macro_f1",
        Kind::Gauge,
        "Live macro-F1 of a multiclass version, by arm.",
    ),
    (
        "nurture_quality_value_per_prediction",
        Kind::Gauge,
        "Mean outcome value (e.g. revenue) per scored prediction, by arm.",
    ),
    (
        "nurture_drift_alarms_total",
        Kind::Counter,
        "Concept-drift (ADWIN) alarms on a version's error stream, by arm.",
    ),
    (
        "nurture_drift_window_error_rate",
        Kind::Gauge,
        "Error rate over a version's current ADWIN window, by arm.",
    ),
    (
        "nurture_input_drift_alarms_total",
        Kind::Counter,
        "Label-free drift alarms (PSI above the level), by version and variable.",
    ),
    (
        "nurture_input_psi",
        Kind::Gauge,
        "Last PSI of a served version's input or score against its training reference.",
    ),
    (
        "nurture_prediction_log_records_total",
        Kind::Counter,
        "Answers written to the prediction log, by result.",
    ),
    (
        "nurture_prediction_log_dropped_total",
        Kind::Counter,
        "Answers not logged: the log's buffer was full.",
    ),
    (
        "nurture_rollout_decisions_total",
        Kind::Counter,
        "Guarded-rollout decisions this replica wrote, by decision.",
    ),
    (
        "nurture_shadow_requests_total",
        Kind::Counter,
        "Live requests offered to a shadow, by result (mirrored, shed, incompatible, failed).",
    ),
    (
        "nurture_experiment_choices_total",
        Kind::Counter,
        "Message-optimization variants chosen, by experiment and variant.",
    ),
    (
        "nurture_experiment_outcomes_total",
        Kind::Counter,
        "Message-optimization outcomes, by experiment and variant.",
    ),
    (
        "nurture_experiment_leader",
        Kind::Gauge,
        "1 for an experiment's leading variant.",
    ),
];

/// Creates `model`'s counters at zero for every label value known in
/// advance (failure reasons and results), so they exist before any traffic.
pub fn zero_model(model: &str, kind: nurture_models::ModelKind) {
    // Requests: the server-side failure codes an alert's increase() must
    // see from the first one, and the latency histogram, on the model's
    // typed RPC and on ModelInfer, with no version yet.
    for rpc in typed_rpc(kind).into_iter().chain(["ModelInfer"]) {
        let labels = [
            ("model", model.to_owned()),
            ("version", "none".to_owned()),
            ("arm", "none".to_owned()),
            ("rpc", rpc.to_owned()),
        ];
        for code in SERVER_FAILURES {
            let mut coded = labels.to_vec();
            coded.push(("code", (*code).to_owned()));
            metrics::counter!("nurture_requests_total", &coded).increment(0);
        }
        // Registered, not observed: rendered with empty buckets.
        let _ = metrics::histogram!("nurture_request_duration_seconds", &labels);
    }
    let zero = |name: &'static str, label: &'static str, values: &[&'static str]| {
        for value in values {
            metrics::counter!(name, "model" => model.to_owned(), label => *value).increment(0);
        }
    };
    zero(
        "nurture_shed_requests_total",
        "reason",
        &["queue_full", "queue_delay", "deadline"],
    );
    zero(
        "nurture_dropped_requests_total",
        "reason",
        &["expired", "cancelled"],
    );
    zero("nurture_model_loads_total", "result", &["ok"]);
    zero("nurture_model_swaps_total", "change", &["live", "canary"]);
    zero(
        "nurture_outcomes_total",
        "result",
        &crate::feedback::OUTCOME_RESULTS.map(crate::feedback::outcome_label),
    );
    zero(
        "nurture_prediction_log_records_total",
        "result",
        &["ok", "error"],
    );
    // The guard's decisions (a person's stop is not counted).
    zero(
        "nurture_rollout_decisions_total",
        "decision",
        &[
            "stepped_up",
            "promoted",
            "rolled_back",
            "paused",
            "resumed",
            "expired",
        ],
    );
    metrics::counter!("nurture_registry_poll_errors_total", "model" => model.to_owned())
        .increment(0);
    metrics::counter!("nurture_feedback_read_errors_total", "model" => model.to_owned())
        .increment(0);
    metrics::counter!("nurture_batch_isolations_total", "model" => model.to_owned()).increment(0);
}

/// The request codes that are the server's failures (the error-rate alert
/// counts these; a client's bad request or its own deadline is not one).
pub const SERVER_FAILURES: &[&str] = &["inference_error", "unavailable", "overloaded"];

/// The typed RPC that serves a kind (the name `nurture_requests_total`
/// carries in `rpc`); generic models have none.
pub fn typed_rpc(kind: nurture_models::ModelKind) -> Option<&'static str> {
    use nurture_models::ModelKind;
    match kind {
        ModelKind::Churn => Some("PredictChurn"),
        ModelKind::Emotion => Some("AnalyzeEmotion"),
        ModelKind::Journey => Some("ClassifyStage"),
        ModelKind::ChannelTiming => Some("RecommendTiming"),
        ModelKind::Optimization => Some("ChooseVariant"),
        ModelKind::Generic => None,
    }
}

/// A series' type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// Installs the process-wide Prometheus recorder, with HELP text for every
/// series and `nurture_build_info`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("nurture_batch_rows".to_owned()), ROW_BUCKETS)?
        .install_recorder()?;
    for (name, kind, help) in DESCRIBED {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    metrics::gauge!("nurture_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process_collector().describe();
    for reason in ["missing_token", "wrong_token"] {
        metrics::counter!("nurture_auth_failures_total", "reason" => reason).increment(0);
    }
    Ok(handle)
}

/// The Prometheus process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, ...), read from
/// `/proc` at each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
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
            async move {
                process_collector().collect();
                handle.render()
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series named anywhere in the server's source has HELP text
    /// (fails when a metric is added without one).
    #[test]
    fn every_metric_in_the_source_is_described() {
        let mut missing = Vec::new();
        let mut files = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("\"nurture_") {
                let name: String = text[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let known = DESCRIBED.iter().any(|(n, _, _)| *n == name);
                // Prefixes built at run time and names of other things.
                let other = [
                    "nurture_server",
                    "nurture_models",
                    "nurture_proto",
                    "nurture_",
                ]
                .contains(&name.as_str());
                if !known && !other && !missing.contains(&name) {
                    missing.push(name);
                }
            }
        }
        assert!(missing.is_empty(), "series without HELP text: {missing:?}");
    }

    /// The RPC names created at zero are those the services record.
    #[test]
    fn typed_rpc_names_are_the_instrumented_ones() {
        let services = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/services");
        let source: String = std::fs::read_dir(services)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        for kind in &nurture_models::ModelKind::ALL {
            let rpc = typed_rpc(*kind).expect("typed kinds have an RPC");
            assert!(
                source.contains(&format!("instrumented(\"{rpc}\"")),
                "{kind}: {rpc} is not an instrumented RPC"
            );
        }
        assert!(source.contains("instrumented(\"ModelInfer\""));
    }
}
