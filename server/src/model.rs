//! A loaded model version: its manifest, how to build its input rows, and
//! its batcher. Loading checks everything before the version can serve.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nurture_models::input::FeatureLayout;
use nurture_models::kind::InputContract;
use nurture_models::registry::FetchedVersion;
use nurture_models::runtime;
use nurture_models::{Manifest, ModelKind};
use ort::environment::Environment;

use crate::batcher::{BatchConfig, Batcher, Labels, OrtRunner, Rows, Scored};
use crate::error::ServeError;

/// Why a version could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    /// The version.
    pub version: u64,
    /// Bounded class (metric label).
    pub error_type: &'static str,
    /// Detail for people.
    pub message: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl LoadError {
    /// Whether the failure says nothing about the version itself (the store
    /// or the disk could not be read), so a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.error_type, "store_error" | "io_error")
    }
}

/// A version ready to serve.
#[derive(Debug)]
pub struct LoadedVersion {
    /// Model name.
    pub name: String,
    /// The same, shared (the prediction log keeps it per record).
    pub shared_name: std::sync::Arc<str>,
    /// Version number.
    pub version: u64,
    /// Its manifest.
    pub manifest: Manifest,
    /// Input columns (tabular kinds).
    pub layout: Option<FeatureLayout>,
    /// Its batcher.
    pub batcher: Batcher,
    /// How long loading took.
    pub load_time: Duration,
    /// The manifest's drift reference, shared with the prediction log's
    /// monitor.
    pub reference: Option<std::sync::Arc<nurture_models::feedback::reference::Reference>>,
    /// `nurture_prediction_log_dropped_total` of the model, resolved once
    /// (a full buffer must cost an answer as little as possible).
    pub log_dropped: metrics::Counter,
    /// `nurture_shadow_requests_total` of the model by result, resolved once
    /// (mirrors are counted on busy paths).
    pub shadow_counts: crate::shadow::Counts,
    /// Its scoring calls over the last minutes, for the rollout's
    /// operational guards.
    pub operations: crate::operations::Operations,
}

impl LoadedVersion {
    /// The kind.
    pub fn kind(&self) -> ModelKind {
        self.manifest.kind
    }

    /// Scores rows through the batcher, counting the call (and whether it
    /// failed on the server's side) for the operational guards.
    pub async fn score(&self, rows: Rows, deadline: Option<Instant>) -> Result<Scored, ServeError> {
        let timing = self.operations.start();
        let scored = self.batcher.score(rows, deadline).await;
        timing.finish(scored.as_ref().is_err_and(crate::operations::server_side));
        scored
    }
}

/// Settings for loading versions.
#[derive(Debug, Clone, Copy)]
pub struct Loader {
    /// The ONNX Runtime environment.
    pub environment: &'static Environment,
    /// Batching.
    pub batch: BatchConfig,
    /// Worker threads (sessions) per version.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
}

impl Loader {
    /// Checks a fetched version against its kind's contract (signature,
    /// probe run, golden examples), starts its workers, and warms them up by
    /// replaying the golden examples through the serving path. Blocking: run
    /// it off the async runtime.
    pub fn load(
        &self,
        name: &str,
        expected_kind: ModelKind,
        fetched: FetchedVersion,
    ) -> Result<LoadedVersion, LoadError> {
        let started = Instant::now();
        let manifest = fetched.manifest;
        let version = manifest.version;
        let fail = |error_type: &'static str, message: String| LoadError {
            version,
            error_type,
            message,
            at: Utc::now(),
        };
        if manifest.kind != expected_kind {
            return Err(fail(
                "wrong_kind",
                format!(
                    "version {version} is a {} model, this slot serves {expected_kind}",
                    manifest.kind
                ),
            ));
        }
        let checked = manifest
            .draft()
            .check(manifest.kind)
            .map_err(|error| fail("invalid_manifest", error.to_string()))?;
        runtime::check_contract(self.environment, &fetched.onnx, &checked)
            .map_err(|error| fail(error.error_type(), error.to_string()))?;
        let layout = match manifest.kind.input() {
            InputContract::Features => Some(
                FeatureLayout::new(manifest.kind, &manifest.features)
                    .map_err(|error| fail("invalid_manifest", error.to_string()))?,
            ),
            InputContract::Text | InputContract::Any => None,
        };
        let text_rank = manifest.inputs.first().map_or(1, |input| input.shape.len());
        let classes = manifest.labels.len();
        let runners = (0..self.workers.max(1))
            .map(|_| {
                runtime::session(self.environment, &fetched.onnx, self.intra_threads).map(
                    |session| OrtRunner {
                        session,
                        classes,
                        text_rank,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| fail("session_error", error.to_string()))?;
        let batcher = Batcher::start(
            runners,
            self.batch,
            Labels {
                model: name.to_owned(),
                version: version.to_string(),
            },
        );

        // Warm-up: every golden example through the batcher, as requests will go.
        for (index, golden) in manifest.golden.iter().enumerate() {
            let rows = match (&golden.features, &golden.text) {
                (Some(features), _) => Rows::Features {
                    width: features.len(),
                    values: features.clone(),
                },
                (None, Some(text)) => Rows::Texts(vec![text.clone()]),
                (None, None) => continue,
            };
            let answer = batcher
                .submit(rows, None)
                .map_err(|error| fail("warmup_failed", error.to_string()))?;
            let scored = answer
                .blocking_recv()
                .map_err(|_| fail("warmup_failed", "worker stopped".to_owned()))?
                .map_err(|error| fail("warmup_failed", error.to_string()))?;
            if !runtime::reproduces(&scored.probabilities, &golden.probabilities) {
                return Err(fail(
                    "golden_mismatch",
                    format!(
                        "golden example {index}: served {:?}, manifest {:?}",
                        scored.probabilities, golden.probabilities
                    ),
                ));
            }
        }
        Ok(LoadedVersion {
            name: name.to_owned(),
            shared_name: std::sync::Arc::from(name),
            version,
            reference: manifest.reference.clone().map(std::sync::Arc::new),
            manifest,
            layout,
            batcher,
            load_time: started.elapsed(),
            shadow_counts: crate::shadow::Counts::new(name),
            operations: crate::operations::Operations::default(),
            log_dropped: metrics::counter!(
                "nurture_prediction_log_dropped_total",
                "model" => name.to_owned()
            ),
        })
    }
}

/// Where a replica gets a loaded version from: its disk cache first, else the
/// registry (which verifies the sha256), then [`Loader::load`]. Shared by the
/// watcher (versions the release log names) and pinned requests (versions
/// loaded on demand).
#[derive(Debug, Clone)]
pub struct VersionSource {
    /// The registry.
    pub registry: nurture_models::Registry,
    /// This replica's disk cache.
    pub cache: crate::cache::DiskCache,
    /// How versions are loaded.
    pub loader: Loader,
}

impl VersionSource {
    /// Fetches and loads `version` of `model` (a `kind`), timing it in
    /// `nurture_model_load_duration_seconds`, counting it in
    /// `nurture_model_loads_total` and logging the outcome.
    pub async fn load(
        &self,
        model: &str,
        kind: ModelKind,
        version: u64,
    ) -> Result<LoadedVersion, LoadError> {
        self.load_with(model, kind, version, self.loader).await
    }

    /// As [`VersionSource::load`], as its own instance whose workers run at
    /// the lowest priority (a shadow).
    pub async fn load_background(
        &self,
        model: &str,
        kind: ModelKind,
        version: u64,
    ) -> Result<LoadedVersion, LoadError> {
        let mut loader = self.loader;
        loader.batch.background = true;
        self.load_with(model, kind, version, loader).await
    }

    async fn load_with(
        &self,
        model: &str,
        kind: ModelKind,
        version: u64,
        loader: Loader,
    ) -> Result<LoadedVersion, LoadError> {
        let started = Instant::now();
        let result = self.fetch_and_load(model, kind, version, loader).await;
        metrics::histogram!("nurture_model_load_duration_seconds", "model" => model.to_owned())
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(loaded) => {
                metrics::counter!("nurture_model_loads_total", "model" => model.to_owned(), "result" => "ok").increment(1);
                tracing::info!(
                    model,
                    version,
                    background = loader.batch.background,
                    seconds = loaded.load_time.as_secs_f64(),
                    "version loaded"
                );
            }
            Err(error) => {
                metrics::counter!("nurture_model_loads_total", "model" => model.to_owned(), "result" => error.error_type)
                    .increment(1);
                tracing::error!(model, version, error_type = error.error_type, error = %error.message, "version refused");
            }
        }
        result
    }

    /// Loads `version` from the disk cache only (never the store): what a
    /// replica serves while the store is unreachable. `None` when it is not
    /// cached or fails its checks.
    pub async fn load_cached(
        &self,
        model: &str,
        kind: ModelKind,
        version: u64,
    ) -> Option<LoadedVersion> {
        let fetched = self.cache.load_version(model, version).await?;
        let loader = self.loader;
        let name = model.to_owned();
        let loaded = tokio::task::spawn_blocking(move || loader.load(&name, kind, fetched))
            .await
            .ok()?
            .ok()?;
        tracing::info!(model, version, "version loaded from the cache");
        Some(loaded)
    }

    async fn fetch_and_load(
        &self,
        model: &str,
        kind: ModelKind,
        version: u64,
        loader: Loader,
    ) -> Result<LoadedVersion, LoadError> {
        let fail = |error_type: &'static str, message: String| LoadError {
            version,
            error_type,
            message,
            at: Utc::now(),
        };
        let fetched = match self.cache.load_version(model, version).await {
            Some(cached) => cached,
            None => {
                let name = nurture_models::ModelName::new(model)
                    .map_err(|error| fail(error.error_type(), error.to_string()))?;
                let fetched = self
                    .registry
                    .fetch(&name, version)
                    .await
                    .map_err(|error| fail(error.error_type(), error.to_string()))?;
                self.cache.save_version(model, &fetched).await;
                fetched
            }
        };
        let name = model.to_owned();
        tokio::task::spawn_blocking(move || loader.load(&name, kind, fetched))
            .await
            .map_err(|error| fail("load_panicked", error.to_string()))?
    }
}
