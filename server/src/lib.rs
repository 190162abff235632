//! `nurture-server`: serves the registry's live model versions over gRPC.
//!
//! Request path: edge validation (`edge`) → the kind's slot is loaded once
//! (`deployment`) → the chosen version's dynamic batcher (`batcher`) → a
//! worker thread with its own ONNX Runtime session → the answer, stamped
//! with the version. Swap path: `watcher` polls release logs, loads and
//! checks versions completely (`model`), then swaps the slot.

pub mod batcher;
pub mod cache;
pub mod config;
pub mod deployment;
pub mod edge;
pub mod error;
pub mod experiments;
pub mod feedback;
pub mod guard;
pub mod load;
pub mod metrics;
pub mod model;
pub mod operations;
pub mod planner;
pub mod security;
pub mod services;
pub mod shadow;
pub mod watcher;

use std::sync::Arc;

use anyhow::Context;
use nurture_models::{ModelKind, ModelName, Registry, runtime};
use nurture_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::batcher::BatchConfig;
use crate::cache::DiskCache;
use crate::config::Config;
use crate::deployment::Slot;
use crate::model::{Loader, VersionSource};
use crate::services::Limits;
use crate::watcher::{Watched, Watcher};

/// Health service name that is SERVING whenever the process answers: for
/// liveness probes, which must not restart a replica that is loading models.
pub const LIVENESS_SERVICE: &str = "liveness";

/// gRPC service name of each kind's typed service.
pub fn service_name(kind: ModelKind) -> Option<&'static str> {
    match kind {
        ModelKind::Emotion => Some("nurture.v1.EmotionService"),
        ModelKind::Churn => Some("nurture.v1.ChurnService"),
        ModelKind::Journey => Some("nurture.v1.JourneyService"),
        ModelKind::ChannelTiming => Some("nurture.v1.ChannelTimingService"),
        ModelKind::Optimization => Some("nurture.v1.OptimizationService"),
        // Generic models are reached through inference.GRPCInferenceService.
        ModelKind::Generic => None,
    }
}

/// Parses `--models`: `NAME` (a kind's name) or `NAME=KIND`.
pub fn parse_models(models: &[String]) -> anyhow::Result<Vec<(ModelName, ModelKind)>> {
    let mut parsed = Vec::new();
    for entry in models.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
        let (name, kind) = match entry.split_once('=') {
            Some((name, kind)) => (name, kind.parse::<ModelKind>()?),
            None => (
                entry,
                entry.parse::<ModelKind>().with_context(|| {
                    format!("--models entry {entry:?}: a bare name must be a kind; use NAME=KIND")
                })?,
            ),
        };
        let name = ModelName::new(name)?;
        if parsed
            .iter()
            .any(|(_, k): &(ModelName, ModelKind)| *k == kind)
        {
            anyhow::bail!("--models names two {kind} models; each kind has one slot");
        }
        parsed.push((name, kind));
    }
    Ok(parsed)
}

/// The typed services of the models this replica serves, behind `auth`.
fn add_typed_services(
    mut router: tonic::transport::server::Router,
    slots: &[Arc<Slot>],
    limits: Limits,
    served: &Arc<feedback::Served>,
    experiments: Arc<experiments::Experiments>,
    feedback_rpc: &feedback::FeedbackRpc,
    auth: &security::Auth,
) -> tonic::transport::server::Router {
    let slot = |kind: ModelKind| slots.iter().find(|s| s.kind == kind).cloned();
    if let Some(slot) = slot(ModelKind::Emotion) {
        router = router.add_service(
            v1::emotion_service_server::EmotionServiceServer::with_interceptor(
                services::emotion::Emotion {
                    slot,
                    limits,
                    served: served.clone(),
                },
                auth.clone(),
            ),
        );
    }
    if let Some(slot) = slot(ModelKind::Churn) {
        router = router.add_service(
            v1::churn_service_server::ChurnServiceServer::with_interceptor(
                services::churn::Churn {
                    slot,
                    limits,
                    served: served.clone(),
                },
                auth.clone(),
            ),
        );
    }
    if let Some(slot) = slot(ModelKind::Journey) {
        router = router.add_service(
            v1::journey_service_server::JourneyServiceServer::with_interceptor(
                services::journey::Journey {
                    slot,
                    limits,
                    served: served.clone(),
                },
                auth.clone(),
            ),
        );
    }
    if let Some(slot) = slot(ModelKind::Optimization) {
        router = router.add_service(
            v1::optimization_service_server::OptimizationServiceServer::with_interceptor(
                services::optimization::Optimization {
                    slot,
                    experiments,
                    limits,
                    served: served.clone(),
                    feedback: Some(feedback_rpc.clone()),
                },
                auth.clone(),
            ),
        );
    }
    if let Some(slot) = slot(ModelKind::ChannelTiming) {
        router = router.add_service(
            v1::channel_timing_service_server::ChannelTimingServiceServer::with_interceptor(
                services::channel_timing::ChannelTiming {
                    slot,
                    limits,
                    served: served.clone(),
                },
                auth.clone(),
            ),
        );
    }
    router
}

/// Opens the registry; says so when its folder did not exist, and (off
/// the start path: a store that is down must not delay serving what the
/// cache holds) when it holds no models.
fn open_registry(url: &str) -> anyhow::Result<Registry> {
    let missing_folder =
        nurture_models::registry::local_folder(url).filter(|folder| !folder.is_dir());
    let registry = Registry::open(url)?;
    if let Some(folder) = missing_folder {
        tracing::warn!(
            registry = registry.url(),
            "the registry folder {} did not exist and was created empty; check --registry",
            folder.display()
        );
    }
    let reader = registry.clone();
    tokio::spawn(async move {
        if let Ok(models) = reader.list_models().await
            && models.is_empty()
        {
            tracing::warn!(
                registry = reader.url(),
                "the registry holds no models: nothing is served until a version is published"
            );
        }
    });
    Ok(registry)
}

/// Where versions come from (store, disk cache) and how they are loaded.
fn version_source(
    config: &Config,
    environment: &'static ort::environment::Environment,
    registry: &Registry,
) -> Arc<VersionSource> {
    Arc::new(VersionSource {
        registry: registry.clone(),
        cache: DiskCache::new(config.cache_dir.clone()),
        loader: Loader {
            environment,
            batch: BatchConfig {
                background: false,
                max_batch: config.max_batch,
                max_delay: config.max_delay,
                linger: batcher::LINGER,
                queue_capacity: config.queue_capacity,
                max_queue_delay: (!config.max_queue_delay.is_zero())
                    .then_some(config.max_queue_delay),
            },
            workers: config.workers,
            intra_threads: config.intra_threads,
        },
    })
}

/// One slot per served model, its failure counters created at zero.
fn model_slots(
    config: &Config,
    models: &[(ModelName, ModelKind)],
    source: &Arc<VersionSource>,
) -> Vec<Arc<Slot>> {
    models
        .iter()
        .map(|(name, kind)| {
            metrics::zero_model(name.as_str(), *kind);
            Arc::new(Slot::with_pins(
                name.as_str(),
                *kind,
                source.clone(),
                config.max_pinned_versions,
            ))
        })
        .collect()
}

/// `--replica-id`, or one made from the process id and the clock.
fn replica_id(config: &Config, nanos: u64) -> anyhow::Result<String> {
    Ok(match &config.replica_id {
        Some(id) => {
            nurture_models::experiments::spec::check_id(id, "--replica-id")?;
            id.clone()
        }
        None => format!("r{}-{:x}", std::process::id(), nanos & 0xffff_ffff),
    })
}

/// Bearer tokens (re-read when their file changes) and TLS files (checked
/// now; each listener loads them again).
fn security_settings(
    config: &Config,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<(security::Auth, Option<security::TlsFiles>)> {
    let auth = security::Auth {
        tokens: match &config.auth_tokens_file {
            Some(path) => Some(security::Tokens::watch(path.clone(), shutdown.clone())?),
            None => None,
        },
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let files = security::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            };
            files.load()?;
            Some(files)
        }
        _ => None,
    };
    Ok((auth, tls))
}

/// Binds the Open Inference Protocol's HTTP port and serves it (over TLS
/// when `tls` is set) until `shutdown` turns true.
async fn serve_http(
    address: std::net::SocketAddr,
    rest: services::inference_http::Rest,
    tls: Option<security::TlsFiles>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let local = metrics::local(&listener);
    let app = services::inference_http::router(Arc::new(rest));
    let mut stop = shutdown.clone();
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let task = match tls {
        Some(files) => {
            let incoming = security::tls_incoming(listener, files, security::HTTP_ALPN, shutdown)?;
            let listener = security::TlsListener { incoming, local };
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(%error, "the HTTP inference server failed");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(%error, "the HTTP inference server failed");
            }
        }),
    };
    Ok((local, task))
}

/// Runs the server until `shutdown` turns true, then drains in-flight
/// requests. Prints `grpc=ADDR metrics=ADDR` on stdout once listening.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let environment = runtime::environment(config.ort_dylib.as_deref())?;
    let registry = open_registry(&config.registry)?;
    let models = parse_models(&config.models)?;
    let handle = metrics::install()?;
    let source = version_source(&config, environment, &registry);
    let slots = model_slots(&config, &models, &source);
    let limits = Limits {
        max_items: config.max_items,
        max_timing_leads: config.max_timing_leads,
        max_text_bytes: config.max_text_bytes,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for slot in &slots {
        if let Some(service) = service_name(slot.kind) {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let replica = replica_id(&config, nanos)?;
    let registry_for_experiments = registry.clone();
    let generic: services::inference::GenericSlots = Default::default();
    let wake = Arc::new(tokio::sync::Notify::new());
    let replica_view = watcher::ReplicaView::default();
    let watcher = Watcher {
        registry,
        watched: slots
            .iter()
            .map(|slot| Watched {
                slot: slot.clone(),
                service: service_name(slot.kind),
            })
            .collect(),
        source: source.clone(),
        cache: DiskCache::new(config.cache_dir.clone()),
        max_pinned: config.max_pinned_versions,
        poll_interval: config.poll_interval,
        health: health.clone(),
        generic: generic.clone(),
        ignored: std::sync::Mutex::new(std::collections::HashSet::new()),
        followers: Default::default(),
        wake: wake.clone(),
        replica: replica.clone(),
        reported: Default::default(),
        replica_view: replica_view.clone(),
    };
    let watcher_task = tokio::spawn(watcher.run(shutdown.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(nurture_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(nurture_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let experiments = Arc::new(experiments::Experiments::new(
        nurture_models::experiments::ExperimentStore::new(
            registry_for_experiments.store().clone(),
            registry_for_experiments.prefix().clone(),
            &replica,
        ),
        config.bandit_seed.unwrap_or(nanos),
        config.experiment_refresh,
    ));

    let Feedback {
        ids,
        fleet,
        served,
        input_drift_view,
        fleet_task,
        log_task,
        collector,
    } = start_feedback(
        &config,
        &registry_for_experiments,
        &replica,
        nanos,
        &slots,
        &shutdown,
    )
    .await?;

    let guard_task = (!config.guard_every.is_zero()).then(|| {
        tokio::spawn(
            guard::Guard {
                registry: registry_for_experiments.clone(),
                fleet: fleet.clone(),
                models: slots.iter().map(|s| s.name.clone()).collect(),
                actor: format!("guard@{replica}"),
                every: config.guard_every,
                wake: wake.clone(),
                replicas: replica_view.clone(),
                followers: Default::default(),
            }
            .run(shutdown.clone()),
        )
    });

    let grpc_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_listen))?;
    let grpc_addr = metrics::local(&grpc_listener);
    let shutdown_for_tls = shutdown.clone();
    let metrics_addr = metrics::local(&metrics_listener);
    let metrics_task = tokio::spawn(metrics::serve(metrics_listener, handle, shutdown.clone()));

    let (auth, tls) = security_settings(&config, &shutdown)?;
    // Health and reflection stay open; everything else passes `auth`.
    let mut router = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .initial_connection_window_size(config.connection_window())
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            v1::status_service_server::StatusServiceServer::with_interceptor(
                services::status::StatusRpc {
                    slots: slots.clone(),
                    generic: generic.clone(),
                    fleet: Some(fleet.clone()),
                    input_drift: input_drift_view.clone(),
                    replicas: replica_view.clone(),
                },
                auth.clone(),
            ),
        );
    let feedback_rpc = feedback::FeedbackRpc {
        slots: slots.clone(),
        ids: ids.clone(),
        fleet,
        limits,
        horizon: config.outcome_horizon,
        adopt_after: config.outcome_adopt_after,
    };
    router = router.add_service(
        v1::feedback_service_server::FeedbackServiceServer::with_interceptor(
            feedback_rpc.clone(),
            auth.clone(),
        ),
    );
    let inference = services::inference::Inference {
        typed: slots.clone(),
        generic: generic.clone(),
        limits,
        served: served.clone(),
    };
    router = router.add_service(
        nurture_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer::with_interceptor(
            inference.clone(),
            auth.clone(),
        ),
    );
    let http_task = match config.http_listen {
        Some(address) => Some(
            serve_http(
                address,
                services::inference_http::Rest {
                    inference,
                    auth: auth.clone(),
                },
                tls.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let router = add_typed_services(
        router,
        &slots,
        limits,
        &served,
        experiments,
        &feedback_rpc,
        &auth,
    );

    match &http_task {
        Some((http_addr, _)) => println!(
            "nurture-server listening: grpc={grpc_addr} metrics={metrics_addr} http={http_addr}"
        ),
        None => println!("nurture-server listening: grpc={grpc_addr} metrics={metrics_addr}"),
    }
    tracing::info!(%grpc_addr, %metrics_addr, registry = %config.registry, "listening");
    if config.tls_cert.is_none()
        && config.auth_tokens_file.is_none()
        && !grpc_addr.ip().is_loopback()
    {
        tracing::warn!(
            event = "serving without TLS or tokens on a non-loopback address",
            %grpc_addr,
            "serving without TLS or tokens on a non-loopback address: anyone who reaches this port \
             can call every RPC (set --tls-cert and --auth-tokens-file, or listen on 127.0.0.1)"
        );
    }

    let health_task = match config.health_listen {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            tracing::info!(health_addr = %metrics::local(&listener), "plaintext health listening");
            let mut stop = shutdown.clone();
            let service = health_service.clone();
            Some(tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    })
                    .await;
            }))
        }
        None => None,
    };
    let drain_health = health.clone();
    let mut drain_signal = shutdown.clone();
    let drained = async move {
        let _ = drain_signal.wait_for(|stop| *stop).await;
        tracing::info!("shutting down: refusing new requests, draining in-flight ones");
        drain_health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    };
    let (tls_incoming, grpc_listener) = match tls {
        Some(files) => {
            tracing::info!(mtls = files.client_ca.is_some(), "gRPC over TLS");
            let incoming = security::tls_incoming(
                grpc_listener,
                files,
                security::GRPC_ALPN,
                shutdown_for_tls,
            )?;
            (Some(incoming), None)
        }
        None => (None, Some(grpc_listener)),
    };
    let serving = async move {
        match tls_incoming {
            Some(incoming) => router.serve_with_incoming_shutdown(incoming, drained).await,
            // NOTE: without TCP_NODELAY, responses that span several
            // segments wait ~40 ms for delayed ACKs (Nagle).
            None => {
                let listener = grpc_listener.expect("plaintext keeps its listener");
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, drained).await
            }
        }
    };
    let grace = config.shutdown_grace;
    tokio::select! {
        result = serving => result?,
        _ = async {
            let _ = shutdown.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "in-flight requests did not finish within the shutdown grace"),
    }
    if let Some(task) = health_task {
        let _ = task.await;
    }
    if let Some((_, task)) = http_task {
        let _ = task.await;
    }
    let _ = watcher_task.await;
    let _ = fleet_task.await;
    if let Some(task) = guard_task {
        let _ = task.await;
    }
    if let Some(task) = log_task {
        let _ = task.await;
    }
    // Off the runtime's threads: the collector blocks on the runtime for
    // its last store write.
    let _ = tokio::task::spawn_blocking(move || collector.join()).await;
    let _ = metrics_task.await;
    Ok(())
}

/// The feedback loop's parts, started: id minting with the fleet's key,
/// live quality followed from the store, and the prediction log's writer.
struct Feedback {
    ids: Arc<feedback::PredictionIds>,
    fleet: Arc<feedback::Fleet>,
    served: Arc<feedback::Served>,
    input_drift_view: feedback::InputDriftView,
    fleet_task: tokio::task::JoinHandle<()>,
    log_task: Option<tokio::task::JoinHandle<()>>,
    /// The shadow collector's thread: it writes its last log rows when
    /// shutdown begins, and is joined before the runtime goes.
    collector: std::thread::JoinHandle<()>,
}

/// Starts the feedback loop on the registry's store (see docs/feedback.md).
async fn start_feedback(
    config: &Config,
    registry: &Registry,
    replica: &str,
    nanos: u64,
    slots: &[Arc<Slot>],
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Feedback> {
    anyhow::ensure!(
        config.drift_delta > 0.0 && config.drift_delta < 1.0,
        "--drift-delta must be in (0, 1), got {}",
        config.drift_delta
    );
    let feedback_store = nurture_models::feedback::FeedbackStore::beside(registry, replica);
    let ids = Arc::new(feedback::PredictionIds::new(
        None,
        nurture_models::fnv1a64(replica.as_bytes()) ^ nanos,
    ));
    feedback::KeySource {
        file: config.prediction_key_file.clone(),
        store: feedback_store.clone(),
        cache: DiskCache::new(config.cache_dir.clone()),
    }
    .install(ids.clone(), config.poll_interval, shutdown.clone())
    .await?;
    let fleet = Arc::new(
        feedback::Fleet::new(
            feedback_store,
            &slots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            config.quality_min_outcomes,
            nurture_models::feedback::drift::AdwinConfig {
                delta: config.drift_delta,
                ..nurture_models::feedback::drift::SERVER
            },
        )
        .with_mirror_memory(config.shadow_memory),
    );
    let fleet_task = tokio::spawn(
        fleet
            .clone()
            .follow(config.feedback_refresh, shutdown.clone()),
    );
    let input_drift_view = feedback::InputDriftView::default();
    let (log, log_task) = if config.prediction_log_sample > 0.0 {
        let (log, writer) = feedback::PredictionLog::new(
            config.prediction_log_buffer,
            config.prediction_log_sample,
            feedback::LogWriter {
                store: fleet.store().clone(),
                replica: replica.to_owned(),
                flush_every: config.prediction_log_flush,
                max_records: config.prediction_log_file_records,
                input_drift: feedback::InputDrift {
                    every: config.input_drift_check,
                    min_values: config.input_drift_min_values,
                    psi: config.input_drift_psi,
                },
                input_drift_view: input_drift_view.clone(),
            },
        );
        let task = tokio::spawn(writer.run(shutdown.clone(), std::time::Duration::from_secs(2)));
        (log, Some(task))
    } else {
        (feedback::PredictionLog::off(), None)
    };
    let (shadows, mirrors) = shadow::Shadows::new();
    let served = Arc::new(feedback::Served {
        ids: ids.clone(),
        log,
        shadows,
    });
    let collector = shadow::Collector::new(mirrors, served.clone(), fleet.clone(), replica)
        .start(shutdown.clone());

    Ok(Feedback {
        ids,
        fleet,
        served,
        input_drift_view,
        fleet_task,
        log_task,
        collector,
    })
}
