//! Closing the loop in the server: prediction ids minted as answers leave,
//! outcomes recorded by id (`FeedbackService`), and the fleet's live quality
//! per version and arm, folded from every replica's outcome batches.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use chrono::Utc;
use nurture_models::ModelKind;
use nurture_models::features::LEAD_FEATURES;
use nurture_models::feedback::drift::{Adwin, AdwinConfig};
use nurture_models::feedback::log::{LogBatch, Row};
use nurture_models::feedback::reference::{Monitor, Reference};
use nurture_models::feedback::{
    Arm, Fate, FeedbackStore, IdError, IdKey, Label, ModelQuality, OutcomeBatch, Prediction,
    PredictionId, Report, ScoredOutcome, forget_unlistable, outcome_key,
};
use nurture_models::kind::InputContract;
use nurture_proto::v1;
use tokio::sync::watch;

use crate::cache::DiskCache;
use crate::deployment::Slot;
use crate::error::ServeError;
use crate::services::{Limits, instrumented};

/// Longest outcome id, in bytes.
pub const MAX_OUTCOME_ID_BYTES: usize = 128;
/// How far an outcome may claim to precede its prediction (clock skew
/// between the caller and the replica that served) before it is refused.
const SKEW: Duration = Duration::from_secs(300);

/// Signs and checks prediction ids with the fleet's shared key.
#[derive(Debug)]
pub struct PredictionIds {
    key: ArcSwapOption<IdKey>,
    nonce: AtomicU64,
}

impl PredictionIds {
    /// Ids signed with `key` (none yet: answers carry an empty id until
    /// [`PredictionIds::set_key`]). `seed` starts the nonces, so two
    /// replicas' ids differ even in the same millisecond.
    pub fn new(key: Option<IdKey>, seed: u64) -> Self {
        PredictionIds {
            key: ArcSwapOption::new(key.map(Arc::new)),
            nonce: AtomicU64::new(seed),
        }
    }

    /// Installs the fleet's key.
    pub fn set_key(&self, key: IdKey) {
        self.key.store(Some(Arc::new(key)));
    }

    /// Whether ids can be signed and checked.
    pub fn ready(&self) -> bool {
        self.key.load().is_some()
    }

    /// The id of one answer item served at `served_at_ms`; empty while no
    /// key is known.
    pub fn mint(
        &self,
        model: &str,
        version: u64,
        arm: Arm,
        served_at_ms: i64,
        prediction: Prediction,
    ) -> String {
        let key = self.key.load();
        let Some(key) = key.as_ref() else {
            return String::new();
        };
        key.sign(&PredictionId {
            model: model.to_owned(),
            version,
            arm,
            served_at_ms,
            nonce: self.nonce.fetch_add(1, Ordering::Relaxed),
            prediction,
        })
    }

    /// Checks an id; without a key every id is refused as unverifiable.
    pub fn verify(&self, text: &str) -> Result<PredictionId, IdError> {
        match self.key.load().as_ref() {
            Some(key) => key.verify(text),
            None => Err(IdError::Forged),
        }
    }
}

/// Where the fleet's key comes from: an operator's file, else the store
/// (created there by the first replica), else this replica's cache of it.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// `--prediction-key-file`: hex key managed by the operator.
    pub file: Option<std::path::PathBuf>,
    /// The store.
    pub store: FeedbackStore,
    /// The cache.
    pub cache: DiskCache,
}

impl KeySource {
    /// Loads the key into `ids`: the file at once; else the cache at once
    /// (a restart during a store outage keeps signing), then the store,
    /// retried every `retry` until it answers or `shutdown`.
    pub async fn install(
        self,
        ids: Arc<PredictionIds>,
        retry: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if let Some(path) = &self.file {
            let text = tokio::fs::read_to_string(path).await.map_err(|error| {
                anyhow::anyhow!(
                    "cannot read --prediction-key-file {}: {error}",
                    path.display()
                )
            })?;
            let key = IdKey::from_hex(&text).map_err(|reason| {
                anyhow::anyhow!("--prediction-key-file {}: {reason}", path.display())
            })?;
            ids.set_key(key);
            return Ok(());
        }
        if let Some(cached) = self.cache.load_key().await
            && let Ok(key) = IdKey::from_hex(&cached)
        {
            ids.set_key(key);
        }
        tokio::spawn(async move {
            loop {
                match self.store.shared_key().await {
                    Ok(key) => {
                        self.cache.save_key(&key.to_hex()).await;
                        ids.set_key(key);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the prediction-id key from the store; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        });
        Ok(())
    }
}

/// Concept drift of one version × arm: ADWIN over its error stream (1 when
/// the most probable answer was wrong, else 0), in the order this replica
/// folds outcomes.
#[derive(Debug, Clone)]
pub struct Drift {
    adwin: Adwin,
    /// Drifts reported.
    pub alarms: u64,
    /// When the last one was reported.
    pub last_alarm: Option<chrono::DateTime<Utc>>,
}

impl Drift {
    /// Error rate over ADWIN's current window.
    pub fn error_rate(&self) -> f64 {
        self.adwin.mean()
    }

    /// Outcomes in ADWIN's current window.
    pub fn window(&self) -> u64 {
        self.adwin.width()
    }
}

/// One model's quality as this replica has folded it.
#[derive(Debug, Default)]
struct Followed {
    quality: ModelQuality,
    drift: BTreeMap<(u64, Arm), Drift>,
    newest: Option<i64>,
    applied: HashSet<String>,
}

impl Followed {
    /// Folds a batch into the quality states and the drift detectors.
    fn fold(&mut self, model: &str, batch: &OutcomeBatch, config: AdwinConfig) {
        self.quality.fold(batch);
        for outcome in &batch.outcomes {
            let Some(error) = outcome.error() else {
                continue;
            };
            let key = (outcome.version, outcome.arm);
            let drift = self.drift.entry(key).or_insert_with(|| {
                // Created at zero, so an increase() alert sees the first alarm.
                drift_counter(model, key).increment(0);
                Drift {
                    adwin: Adwin::new(config),
                    alarms: 0,
                    last_alarm: None,
                }
            });
            if drift.adwin.update(error) {
                drift.alarms += 1;
                drift.last_alarm = Some(Utc::now());
                drift_counter(model, key).increment(1);
                tracing::warn!(
                    event = "concept drift",
                    model,
                    version = key.0,
                    arm = key.1.as_str(),
                    detector = "adwin",
                    error_rate = drift.adwin.mean(),
                    window = drift.adwin.width(),
                    "concept drift"
                );
            }
        }
    }
}

fn drift_counter(model: &str, (version, arm): (u64, Arm)) -> metrics::Counter {
    metrics::counter!(
        "nurture_drift_alarms_total",
        "model" => model.to_owned(),
        "version" => version.to_string(),
        "arm" => arm.as_str(),
        "detector" => "adwin"
    )
}

/// The fleet's quality per model × version × arm, folded from every
/// replica's outcome batches in the store.
#[derive(Debug)]
pub struct Fleet {
    store: FeedbackStore,
    models: RwLock<BTreeMap<String, Followed>>,
    /// This replica's recent shadow answers, by the live answer they mirror.
    mirrors: std::sync::Mutex<crate::shadow::MirrorMemory>,
    /// Shadow outcomes found while folding, waiting to be recorded.
    shadow_outcomes: std::sync::Mutex<Vec<(String, ScoredOutcome)>>,
    /// How long another writer's unfinished outcome is waited for (see
    /// `FeedbackStore::record`); for the shadow outcomes this replica records.
    pub adopt_after: Duration,
    /// Figures need at least this many outcomes.
    pub min_outcomes: u64,
    /// Concept-drift detection on each version's error stream.
    pub drift: AdwinConfig,
}

impl Fleet {
    /// Quality of `models`, read from `store`.
    pub fn new(
        store: FeedbackStore,
        models: &[String],
        min_outcomes: u64,
        drift: AdwinConfig,
    ) -> Self {
        Fleet {
            drift,
            store,
            mirrors: std::sync::Mutex::new(crate::shadow::MirrorMemory::new(0)),
            shadow_outcomes: std::sync::Mutex::default(),
            adopt_after: Duration::from_secs(600),
            models: RwLock::new(
                models
                    .iter()
                    .map(|m| (m.clone(), Followed::default()))
                    .collect(),
            ),
            min_outcomes,
        }
    }

    /// The store outcomes are written to.
    pub fn store(&self) -> &FeedbackStore {
        &self.store
    }

    /// Remembers up to `capacity` mirrored answers for scoring the shadow.
    pub fn with_mirror_memory(self, capacity: usize) -> Self {
        *self.mirrors.lock().expect("mirrors lock") = crate::shadow::MirrorMemory::new(capacity);
        self
    }

    /// Remembers the shadow's answer `shadow_id` (of `version`) to the item
    /// answered as `live_id`, so that item's outcomes score the shadow too.
    pub fn remember_mirror(
        &self,
        live_id: &str,
        shadow_id: &str,
        version: u64,
        prediction: Prediction,
    ) {
        self.mirrors.lock().expect("mirrors lock").remember(
            live_id,
            crate::shadow::Remembered {
                id: shadow_id.to_owned(),
                version,
                prediction,
            },
        );
    }

    /// Notes the shadow outcomes of a batch just folded (outcomes of live
    /// answers this replica mirrored).
    fn note_shadow_outcomes(&self, model: &str, batch: &OutcomeBatch) {
        let mirrors = self.mirrors.lock().expect("mirrors lock");
        if mirrors.is_empty() {
            return;
        }
        let found: Vec<(String, ScoredOutcome)> = batch
            .outcomes
            .iter()
            .filter_map(|outcome| mirrors.shadow_outcome(model, outcome))
            .map(|outcome| (model.to_owned(), outcome))
            .collect();
        drop(mirrors);
        if !found.is_empty() {
            self.shadow_outcomes
                .lock()
                .expect("shadow outcomes lock")
                .extend(found);
        }
    }

    /// Records the shadow outcomes noted so far (durably and idempotently,
    /// as any outcome) and folds them.
    pub async fn record_shadow_outcomes(&self) {
        let noted =
            std::mem::take(&mut *self.shadow_outcomes.lock().expect("shadow outcomes lock"));
        let mut by_model: BTreeMap<String, Vec<ScoredOutcome>> = BTreeMap::new();
        for (model, outcome) in noted {
            by_model.entry(model).or_default().push(outcome);
        }
        for (model, outcomes) in by_model {
            let count = outcomes.len();
            match self
                .store
                .record(&model, outcomes, self.adopt_after.as_millis() as i64)
                .await
            {
                Ok(recorded) => {
                    for (key, batch) in &recorded.batches {
                        self.apply_own(&model, key.clone(), batch);
                    }
                }
                Err(error) => {
                    tracing::warn!(model, %error, outcomes = count, "cannot record the shadow's outcomes");
                }
            }
        }
    }

    /// Reads the batches written since the last refresh (by any replica)
    /// and folds the new ones. No lock is held while the store is read.
    pub async fn refresh(&self, model: &str) -> Result<(), nurture_models::Error> {
        let since = self.read(model, |f| f.newest);
        let (listed, newest) = self.store.list_batches(model, since).await?;
        let unread: Vec<_> = self.read(model, |followed| {
            listed
                .into_iter()
                .filter(|(key, _)| !followed.applied.contains(key))
                .collect()
        });
        let batches = self.store.fetch_batches(unread).await?;
        {
            let mut models = self.models.write().expect("quality lock");
            let followed = models.entry(model.to_owned()).or_default();
            for (key, batch) in &batches {
                if followed.applied.insert(key.clone()) {
                    followed.fold(model, batch, self.drift);
                    self.note_shadow_outcomes(model, batch);
                }
            }
            followed.newest = newest.max(followed.newest);
            if let Some(newest) = followed.newest {
                forget_unlistable(&mut followed.applied, newest);
            }
        }
        self.export(model);
        Ok(())
    }

    fn read<T>(&self, model: &str, f: impl FnOnce(&Followed) -> T) -> T {
        let models = self.models.read().expect("quality lock");
        match models.get(model) {
            Some(followed) => f(followed),
            None => f(&Followed::default()),
        }
    }

    /// Folds a batch this replica has just written, so its own figures move
    /// at once; the next refresh skips it by key. NOTE: the Prometheus
    /// gauges are left to that refresh: computing every figure (a bootstrap
    /// for macro-F1 among them) does not belong on the RecordOutcomes path.
    pub fn apply_own(&self, model: &str, key: String, batch: &OutcomeBatch) {
        let mut models = self.models.write().expect("quality lock");
        let followed = models.entry(model.to_owned()).or_default();
        if followed.applied.insert(key) {
            followed.fold(model, batch, self.drift);
            self.note_shadow_outcomes(model, batch);
        }
    }

    /// `metric`'s losses of `version` on `arm` over outcomes of predictions
    /// served since `since_ms` (see `ModelQuality::losses_since`).
    pub fn losses_since(
        &self,
        model: &str,
        version: u64,
        arm: Arm,
        metric: nurture_models::rollout::sequential::Metric,
        since_ms: i64,
    ) -> nurture_models::rollout::sequential::ArmLoss {
        self.read(model, |followed| {
            followed
                .quality
                .losses_since(version, arm, metric, since_ms)
        })
    }

    /// Drift of every version × arm of `model` seen so far.
    pub fn drift(&self, model: &str) -> BTreeMap<(u64, Arm), Drift> {
        self.read(model, |followed| followed.drift.clone())
    }

    /// The figures of every version × arm of `model`, newest version first.
    pub fn reports(&self, model: &str) -> Vec<(u64, Arm, Report)> {
        let states: Vec<_> = self.read(model, |followed| {
            followed
                .quality
                .states
                .iter()
                .map(|(key, state)| (*key, state.clone()))
                .collect()
        });
        let mut reports: Vec<(u64, Arm, Report)> = states
            .into_iter()
            .map(|((version, arm), state)| (version, arm, state.report(self.min_outcomes)))
            .collect();
        reports.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        reports
    }

    fn export(&self, model: &str) {
        for (version, arm, report) in self.reports(model) {
            let labels = [
                ("model", model.to_owned()),
                ("version", version.to_string()),
                ("arm", arm.as_str().to_owned()),
            ];
            metrics::gauge!("nurture_quality_outcomes", &labels).set(report.outcomes as f64);
            let figures = [
                ("nurture_quality_auc", report.auc),
                ("nurture_quality_log_loss", report.log_loss),
                ("nurture_quality_brier", report.brier),
                ("nurture_quality_ece", report.ece),
                ("nurture_quality_accuracy", report.accuracy),
                ("nurture_quality_macro_f1", report.macro_f1),
                (
                    "nurture_quality_value_per_prediction",
                    report.value_per_prediction,
                ),
            ];
            for (name, figure) in figures {
                if let Some(figure) = figure {
                    metrics::gauge!(name, &labels).set(figure.value);
                }
            }
        }
        for ((version, arm), drift) in self.drift(model) {
            let labels = [
                ("model", model.to_owned()),
                ("version", version.to_string()),
                ("arm", arm.as_str().to_owned()),
            ];
            metrics::gauge!("nurture_drift_window_error_rate", &labels).set(drift.error_rate());
        }
    }

    /// Refreshes every model every `every` until `shutdown`.
    pub async fn follow(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let models: Vec<String> = self
            .models
            .read()
            .expect("quality lock")
            .keys()
            .cloned()
            .collect();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            for model in &models {
                // A read stuck on an unreachable store does not hold up shutdown.
                let read = tokio::select! {
                    read = self.refresh(model) => read,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                if let Err(error) = read {
                    metrics::counter!("nurture_feedback_read_errors_total", "model" => model.clone())
                        .increment(1);
                    tracing::warn!(model, %error, "cannot read outcome batches");
                }
            }
            tokio::select! {
                _ = self.record_shadow_outcomes() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// `FeedbackService`.
#[derive(Debug, Clone)]
pub struct FeedbackRpc {
    /// The typed models this replica serves.
    pub slots: Vec<Arc<Slot>>,
    /// Id checks.
    pub ids: Arc<PredictionIds>,
    /// Quality and the store.
    pub fleet: Arc<Fleet>,
    /// Request limits.
    pub limits: Limits,
    /// Outcomes observed longer than this after their prediction are late.
    pub horizon: Duration,
    /// Age after which an outcome whose writer died before its batch is
    /// adopted by a replay.
    pub adopt_after: Duration,
}

/// What one reported outcome turned out to be, before anything is written.
enum Disposition {
    Score {
        model: String,
        outcome: ScoredOutcome,
    },
    Late {
        model: String,
    },
    Refused {
        model: String,
        result: v1::OutcomeResult,
    },
}

fn invalid(field: String, reason: impl std::fmt::Display) -> ServeError {
    ServeError::InvalidArgument(format!("invalid {field}: {reason}"))
}

/// The kind a label belongs to, and the label in domain terms (classes are
/// 0-based; the proto enums count from 1 with 0 unspecified).
fn label_of(
    label: Option<&v1::outcome_report::Label>,
    field: &str,
) -> Result<(ModelKind, Label), ServeError> {
    use v1::outcome_report::Label as L;
    let class = |value: i32, what: &str| {
        u32::try_from(value)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .map(Label::Class)
            .ok_or_else(|| {
                invalid(
                    format!("{field}.{what}"),
                    format!("{value} is not a {what}"),
                )
            })
    };
    match label {
        None => Err(invalid(
            field.to_owned(),
            "needs a label: churned, stage, responded, converted or emotion",
        )),
        Some(L::Churned(y)) => Ok((ModelKind::Churn, Label::Binary(*y))),
        Some(L::Responded(y)) => Ok((ModelKind::ChannelTiming, Label::Binary(*y))),
        Some(L::Converted(y)) => Ok((ModelKind::Optimization, Label::Binary(*y))),
        Some(L::Stage(stage)) => Ok((ModelKind::Journey, class(*stage, "stage")?)),
        Some(L::Emotion(state)) => Ok((ModelKind::Emotion, class(*state, "emotion")?)),
    }
}

impl FeedbackRpc {
    /// Checks one report and decides what it is; an error refuses the whole
    /// request before anything is written.
    fn dispose(&self, index: usize, report: &v1::OutcomeReport) -> Result<Disposition, ServeError> {
        let v1::OutcomeReport {
            prediction_id,
            outcome_id,
            label,
            value,
            observed_at,
        } = report;
        let field = |name: &str| format!("outcomes[{index}].{name}");
        if prediction_id.is_empty() {
            return Err(invalid(field("prediction_id"), "is required"));
        }
        if outcome_id.is_empty() || outcome_id.len() > MAX_OUTCOME_ID_BYTES {
            return Err(invalid(
                field("outcome_id"),
                format!("must be 1 to {MAX_OUTCOME_ID_BYTES} bytes"),
            ));
        }
        let (label_kind, label) = label_of(label.as_ref(), &format!("outcomes[{index}]"))?;
        if let Some(value) = value
            && !(value.is_finite() && *value >= 0.0)
        {
            return Err(invalid(
                field("value"),
                format!("must be a finite number >= 0, got {value}"),
            ));
        }
        let observed_at_ms = match observed_at {
            None => Utc::now().timestamp_millis(),
            Some(timestamp) => chrono::DateTime::from_timestamp(
                timestamp.seconds,
                timestamp.nanos.try_into().unwrap_or(u32::MAX),
            )
            .ok_or_else(|| invalid(field("observed_at"), "is not a valid time"))?
            .timestamp_millis(),
        };
        let id = match self.ids.verify(prediction_id) {
            Ok(id) => id,
            Err(error) => {
                let result = match error {
                    IdError::Garbled => v1::OutcomeResult::GarbledId,
                    IdError::Forged => v1::OutcomeResult::ForgedId,
                };
                return Ok(Disposition::Refused {
                    model: "unknown".to_owned(),
                    result,
                });
            }
        };
        let Some(slot) = self.slots.iter().find(|slot| slot.name == id.model) else {
            return Ok(Disposition::Refused {
                model: "unknown".to_owned(),
                result: v1::OutcomeResult::UnknownId,
            });
        };
        // The id is the fleet's, so its version was served; before this
        // replica has read the release log, refusing it as unknown would
        // lose it, so the request is retried instead.
        let known = slot
            .status
            .lock()
            .expect("status lock")
            .names(&slot.name, id.version)?;
        if !known {
            return Ok(Disposition::Refused {
                model: slot.name.clone(),
                result: v1::OutcomeResult::UnknownId,
            });
        }
        if label_kind != slot.kind {
            return Err(invalid(
                format!("outcomes[{index}]"),
                format!(
                    "a {label_kind} label for a prediction of {} (a {} model)",
                    slot.name, slot.kind
                ),
            ));
        }
        // The label must fit the prediction it scores.
        nurture_models::feedback::quality::fits(&id.prediction, label)
            .map_err(|mismatch| invalid(format!("outcomes[{index}]"), mismatch.0))?;
        let skew = SKEW.as_millis() as i64;
        if observed_at_ms < id.served_at_ms - skew {
            return Err(invalid(
                field("observed_at"),
                "is before the prediction was served",
            ));
        }
        if observed_at_ms - id.served_at_ms > self.horizon.as_millis() as i64 {
            return Ok(Disposition::Late {
                model: slot.name.clone(),
            });
        }
        Ok(Disposition::Score {
            model: slot.name.clone(),
            outcome: ScoredOutcome {
                key: outcome_key(&slot.name, prediction_id, outcome_id),
                prediction_id: prediction_id.clone(),
                version: id.version,
                arm: id.arm,
                served_at_ms: id.served_at_ms,
                observed_at_ms,
                label,
                value: *value,
                prediction: id.prediction,
            },
        })
    }

    /// Records outcomes; answers once every new one is durable.
    pub async fn record(
        &self,
        reports: &[v1::OutcomeReport],
    ) -> Result<v1::RecordOutcomesResponse, ServeError> {
        crate::edge::check_batch(reports.len(), self.limits.max_items, "outcomes")?;
        if !self.ids.ready() {
            return Err(ServeError::Unavailable(
                "this replica does not have the prediction-id key yet (the store is unreachable)"
                    .to_owned(),
            ));
        }
        let dispositions: Vec<Disposition> = reports
            .iter()
            .enumerate()
            .map(|(index, report)| self.dispose(index, report))
            .collect::<Result<_, _>>()?;
        let mut results = vec![v1::OutcomeResult::Unspecified; reports.len()];
        let mut to_score: BTreeMap<String, Vec<(usize, ScoredOutcome)>> = BTreeMap::new();
        for (index, disposition) in dispositions.into_iter().enumerate() {
            match disposition {
                Disposition::Score { model, outcome } => {
                    to_score.entry(model).or_default().push((index, outcome));
                }
                Disposition::Late { model } => {
                    count(&model, v1::OutcomeResult::Late);
                    results[index] = v1::OutcomeResult::Late;
                }
                Disposition::Refused { model, result } => {
                    count(&model, result);
                    results[index] = result;
                }
            }
        }
        let mut pending = 0usize;
        for (model, items) in to_score {
            let (indexes, outcomes): (Vec<usize>, Vec<ScoredOutcome>) = items.into_iter().unzip();
            let recorded = self
                .fleet
                .store()
                .record(&model, outcomes, self.adopt_after.as_millis() as i64)
                .await?;
            for (key, batch) in &recorded.batches {
                self.fleet.apply_own(&model, key.clone(), batch);
            }
            for (index, fate) in indexes.into_iter().zip(recorded.fates) {
                let result = match fate {
                    Fate::Recorded => v1::OutcomeResult::Recorded,
                    Fate::Duplicate => v1::OutcomeResult::Duplicate,
                    Fate::Pending => {
                        pending += 1;
                        continue;
                    }
                };
                count(&model, result);
                results[index] = result;
            }
        }
        if pending > 0 {
            // NOTE: not acknowledged: another call recorded these and has not
            // written their batch yet (or died doing so; they are adopted
            // once surely dead). The rest of this call is stored, so a retry
            // finds it as duplicates.
            return Err(ServeError::Unavailable(format!(
                "{pending} outcome(s) are still being recorded by an earlier call; retry later"
            )));
        }
        Ok(v1::RecordOutcomesResponse {
            results: results.into_iter().map(|r| r as i32).collect(),
        })
    }

    /// The quality response for one model.
    pub fn quality(&self, model: &str) -> Result<v1::GetQualityResponse, ServeError> {
        if !self.slots.iter().any(|slot| slot.name == model) {
            return Err(ServeError::NotFound(format!(
                "model {model:?} is not served here"
            )));
        }
        Ok(v1::GetQualityResponse {
            model: model.to_owned(),
            min_outcomes: self.fleet.min_outcomes,
            versions: quality_of(&self.fleet, model),
        })
    }
}

/// Every version × arm of `model`: quality figures and concept drift.
pub fn quality_of(fleet: &Fleet, model: &str) -> Vec<v1::VersionQuality> {
    let drift = fleet.drift(model);
    fleet
        .reports(model)
        .into_iter()
        .map(|(version, arm, report)| {
            let mut quality = version_quality(version, arm, &report);
            if let Some(drift) = drift.get(&(version, arm)) {
                quality.drift = Some(v1::DriftState {
                    alarms: drift.alarms,
                    last_alarm_at: drift
                        .last_alarm
                        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                        .unwrap_or_default(),
                    window_error_rate: drift.error_rate(),
                    window: drift.window(),
                });
            }
            quality
        })
        .collect()
}

/// Every result an outcome report can get, as `nurture_outcomes_total`
/// labels it.
pub(crate) const OUTCOME_RESULTS: [v1::OutcomeResult; 6] = [
    v1::OutcomeResult::Recorded,
    v1::OutcomeResult::Duplicate,
    v1::OutcomeResult::Late,
    v1::OutcomeResult::UnknownId,
    v1::OutcomeResult::ForgedId,
    v1::OutcomeResult::GarbledId,
];

/// The metric label of an outcome's result.
pub(crate) fn outcome_label(result: v1::OutcomeResult) -> &'static str {
    match result {
        v1::OutcomeResult::Recorded => "recorded",
        v1::OutcomeResult::Duplicate => "duplicate",
        v1::OutcomeResult::Late => "late",
        v1::OutcomeResult::UnknownId => "unknown_id",
        v1::OutcomeResult::ForgedId => "forged_id",
        v1::OutcomeResult::GarbledId => "garbled_id",
        v1::OutcomeResult::Unspecified => "unspecified",
    }
}

fn count(model: &str, result: v1::OutcomeResult) {
    metrics::counter!("nurture_outcomes_total", "model" => model.to_owned(), "result" => outcome_label(result))
        .increment(1);
}

/// A report as the protocol carries it.
pub fn version_quality(version: u64, arm: Arm, report: &Report) -> v1::VersionQuality {
    let interval = |e: Option<nurture_models::feedback::Estimate>| {
        e.map(|e| v1::Interval {
            value: e.value,
            low: e.low,
            high: e.high,
        })
    };
    let bins = report.reliability.len().max(1) as f64;
    v1::VersionQuality {
        version,
        arm: arm.as_str().to_owned(),
        outcomes: report.outcomes,
        positives: report.positives,
        auc: interval(report.auc),
        log_loss: interval(report.log_loss),
        brier: interval(report.brier),
        ece: interval(report.ece),
        accuracy: interval(report.accuracy),
        macro_f1: interval(report.macro_f1),
        value_per_prediction: interval(report.value_per_prediction),
        drift: None,
        reliability: report
            .reliability
            .iter()
            .enumerate()
            .map(|(i, bin)| v1::ReliabilityBin {
                low: i as f64 / bins,
                high: (i + 1) as f64 / bins,
                count: bin.count,
                mean_predicted: if bin.count > 0 {
                    bin.predicted / bin.count as f64
                } else {
                    0.0
                },
                observed_rate: if bin.count > 0 {
                    bin.positives as f64 / bin.count as f64
                } else {
                    0.0
                },
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl v1::feedback_service_server::FeedbackService for FeedbackRpc {
    async fn record_outcomes(
        &self,
        request: tonic::Request<v1::RecordOutcomesRequest>,
    ) -> Result<tonic::Response<v1::RecordOutcomesResponse>, tonic::Status> {
        let deadline = crate::edge::deadline(&request);
        let v1::RecordOutcomesRequest { outcomes } = request.into_inner();
        instrumented("RecordOutcomes", "feedback", deadline, async move {
            Ok((self.record(&outcomes).await?, Vec::new()))
        })
        .await
    }

    async fn get_quality(
        &self,
        request: tonic::Request<v1::GetQualityRequest>,
    ) -> Result<tonic::Response<v1::GetQualityResponse>, tonic::Status> {
        let deadline = crate::edge::deadline(&request);
        let v1::GetQualityRequest { model } = request.into_inner();
        instrumented("GetQuality", "feedback", deadline, async move {
            Ok((self.quality(&model)?, Vec::new()))
        })
        .await
    }
}

/// What each answer item carries and leaves behind: its prediction id and,
/// when sampled, a record in the prediction log.
#[derive(Debug)]
pub struct Served {
    /// Id minting.
    pub ids: Arc<PredictionIds>,
    /// The prediction log.
    pub log: PredictionLog,
    /// Shadow traffic: which live answers are mirrored.
    pub shadows: crate::shadow::Shadows,
}

/// An item's inputs, as the prediction log keeps them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// The lead (tabular kinds).
    pub lead: Option<&'a nurture_models::input::LeadValues>,
    /// The kind's own features (slot, variant), in `extra_features()` order.
    pub extra: &'a [f64],
    /// The text (emotion).
    pub text: Option<&'a str>,
    /// The lead id when there is no `lead` (emotion).
    pub lead_id: Option<&'a str>,
    /// A row of model columns (Open Inference Protocol requests), spread
    /// back over lead features and extras by the version's layout.
    pub columns: Option<(&'a nurture_models::input::FeatureLayout, &'a [f32])>,
    /// A shadow's answer: the live answer it mirrors.
    pub mirror_of: Option<&'a str>,
}

impl Served {
    /// Mints the id of one answer item of `loaded` and logs it (if sampled).
    pub fn answer(
        &self,
        loaded: &crate::model::LoadedVersion,
        arm: Arm,
        inputs: Inputs<'_>,
        prediction: Prediction,
        probabilities: &[f32],
    ) -> String {
        self.answer_into(loaded, arm, inputs, prediction, probabilities, |row| {
            if !self
                .log
                .push(&loaded.shared_name, loaded.kind(), &loaded.reference, row)
            {
                loaded.log_dropped.increment(1);
            }
        })
    }

    /// Mints the id of one answer item of `loaded` and, if the log samples
    /// it, hands its log row to `log`.
    pub fn answer_into(
        &self,
        loaded: &crate::model::LoadedVersion,
        arm: Arm,
        inputs: Inputs<'_>,
        prediction: Prediction,
        probabilities: &[f32],
        log: impl FnOnce(&Row<'_>),
    ) -> String {
        let (model, version) = (loaded.name.as_str(), loaded.version);
        // One clock read serves the id and the log.
        let served_at_ms = Utc::now().timestamp_millis();
        let id = self.ids.mint(model, version, arm, served_at_ms, prediction);
        if !id.is_empty() && self.log.sampled(&id) {
            let lead_id = inputs
                .lead
                .map(|lead| lead.id.as_str())
                .or(inputs.lead_id)
                .unwrap_or_default();
            // Lead features, then the kind's own, NaN where absent.
            let mut features = [f64::NAN; LEAD_FEATURES.len() + MAX_EXTRA_FEATURES];
            let width = if loaded.kind().input() == InputContract::Features {
                (LEAD_FEATURES.len() + loaded.kind().extra_features().len()).min(features.len())
            } else {
                0
            };
            let (lead, extra) = features.split_at_mut(LEAD_FEATURES.len());
            if let Some(values) = inputs.lead {
                for (slot, value) in lead.iter_mut().zip(values.values) {
                    *slot = value.unwrap_or(f64::NAN);
                }
            }
            for (slot, value) in extra.iter_mut().zip(inputs.extra) {
                *slot = *value;
            }
            if let Some((layout, row)) = inputs.columns {
                let extra_width = width.saturating_sub(LEAD_FEATURES.len());
                layout.scatter(row, lead, &mut extra[..extra_width]);
            }
            log(&Row {
                prediction_id: &id,
                version,
                arm,
                mirror_of: inputs.mirror_of,
                served_at_ms,
                lead_id,
                features: &features[..width],
                text: inputs.text,
                probabilities,
            });
        }
        id
    }
}

/// Most slot or variant features a kind has (the log keeps this many).
const MAX_EXTRA_FEATURES: usize = 16;

/// What a batch holds predictions of: one model version on one UTC day
/// (with the version's drift reference).
#[derive(Debug, Clone)]
struct Origin {
    model: Arc<str>,
    version: u64,
    day: i64,
    reference: Option<Arc<Reference>>,
}

/// Predictions of one origin, waiting in a shard of the log's buffer.
#[derive(Debug)]
struct Pending {
    origin: Origin,
    batch: LogBatch,
}

/// One shard of the buffer: the predictions its threads appended since
/// the writer last took them.
#[derive(Debug, Default)]
struct Shard {
    pending: Vec<Pending>,
    held: usize,
}

/// The buffer: its shards.
#[derive(Debug, Default)]
struct Buffer {
    shards: Vec<std::sync::Mutex<Shard>>,
}

/// Shards of the buffer: about one per thread that answers, so appends
/// rarely meet on a lock.
const SHARDS: usize = 8;

thread_local! {
    /// The shard this thread appends to.
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % SHARDS
    };
}

/// The prediction log's bounded buffer: answers append their predictions
/// without waiting, column by column, to a shard (one per answering
/// thread, under a lock only the writer also takes, every 50 ms); when a
/// shard is full, predictions are dropped and counted
/// (`nurture_prediction_log_dropped_total`), never queued without limit.
///
/// NOTE: each shard has the whole capacity, so a thread never loses room to
/// shards no thread uses; the buffer holds at most `SHARDS` times it. A
/// count shared by the shards was measurable on every answer (two threads
/// taking turns on one cache line).
#[derive(Debug)]
pub struct PredictionLog {
    /// No shards when the log is off.
    buffer: Arc<Buffer>,
    /// Most predictions a shard holds.
    capacity: usize,
    /// Share of answers logged, in [0, 1].
    sample: f64,
}

impl PredictionLog {
    /// A log that keeps nothing.
    pub fn off() -> Self {
        PredictionLog {
            buffer: Arc::default(),
            capacity: 0,
            sample: 0.0,
        }
    }

    /// A log buffering up to `capacity` predictions per answering thread,
    /// keeping `sample` of the answers; the returned writer drains it into
    /// the store.
    pub fn new(capacity: usize, sample: f64, writer: LogWriter) -> (Self, LogWriterTask) {
        let buffer = Arc::new(Buffer {
            shards: (0..SHARDS).map(|_| std::sync::Mutex::default()).collect(),
        });
        (
            PredictionLog {
                buffer: buffer.clone(),
                capacity: capacity.max(1),
                sample: sample.clamp(0.0, 1.0),
            },
            LogWriterTask {
                buffer,
                writer: Arc::new(writer),
            },
        )
    }

    /// Whether any answer is logged.
    pub fn is_on(&self) -> bool {
        !self.buffer.shards.is_empty() && self.sample > 0.0
    }

    /// Whether the answer with this id is logged: a stable share of ids
    /// (the same id always decides the same way).
    pub fn sampled(&self, id: &str) -> bool {
        if self.buffer.shards.is_empty() {
            return false;
        }
        if self.sample >= 1.0 {
            return true;
        }
        let draw = nurture_models::fnv1a64(id.as_bytes()) as f64 / u64::MAX as f64;
        draw < self.sample
    }

    /// Appends a prediction of `model`; `false` when this thread's shard is
    /// full (the caller counts the drop).
    fn push(
        &self,
        model: &Arc<str>,
        kind: ModelKind,
        reference: &Option<Arc<Reference>>,
        row: &Row<'_>,
    ) -> bool {
        let shards = &self.buffer.shards;
        if shards.is_empty() {
            return false;
        }
        let shard = SHARD.with(|shard| *shard) % shards.len();
        let mut shard = shards[shard].lock().expect("log shard lock");
        if shard.held >= self.capacity {
            return false;
        }
        shard.held += 1;
        let day = row.served_at_ms.div_euclid(DAY_MS);
        let found = shard.pending.iter().position(|p| {
            let origin = &p.origin;
            origin.version == row.version && origin.day == day && Arc::ptr_eq(&origin.model, model)
        });
        let index = found.unwrap_or_else(|| {
            shard.pending.push(Pending {
                origin: Origin {
                    model: model.clone(),
                    version: row.version,
                    day,
                    reference: reference.clone(),
                },
                batch: LogBatch::new(kind),
            });
            shard.pending.len() - 1
        });
        shard.pending[index].batch.push(row);
        true
    }
}

/// Where and how often the log is written.
#[derive(Debug, Clone)]
pub struct LogWriter {
    /// The store.
    pub store: FeedbackStore,
    /// This replica's name (a column of the log).
    pub replica: String,
    /// Longest a record waits before its file is written.
    pub flush_every: Duration,
    /// Most records per file.
    pub max_records: usize,
    /// Label-free drift checks of the logged predictions.
    pub input_drift: InputDrift,
    /// Where their results are kept for the status RPC.
    pub input_drift_view: InputDriftView,
}

/// Label-free drift: every `every`, each version whose window holds at
/// least `min_values` logged predictions has the PSI of each input feature
/// and of its score computed against its manifest's reference; above `psi`
/// is an alarm.
#[derive(Debug, Clone, Copy)]
pub struct InputDrift {
    /// How often windows are checked.
    pub every: Duration,
    /// Fewest values a window needs to be judged (it grows until then).
    pub min_values: u64,
    /// PSI alarm level.
    pub psi: f64,
}

/// The task draining the buffer (see [`PredictionLog::new`]).
#[derive(Debug)]
pub struct LogWriterTask {
    buffer: Arc<Buffer>,
    writer: Arc<LogWriter>,
}

/// Files being encoded and written at once; past this the writer waits
/// (and the buffer, no longer drained, drops) rather than hold more.
const FLUSHES_IN_FLIGHT: usize = 2;

/// How often the writer drains the buffer.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Milliseconds in a day: files are cut per UTC day.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The `date=` partition of UTC day `day` (days since the Unix epoch).
pub(crate) fn log_date(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// Counts the `count` answers of one log file as written or not (and says
/// why not).
pub(crate) fn count_log_file(model: &str, count: u64, written: nurture_models::Result<()>) {
    let result = match written {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!(model, %error, records = count, "cannot write the prediction log");
            "error"
        }
    };
    metrics::counter!("nurture_prediction_log_records_total", "model" => model.to_owned(), "result" => result)
        .increment(count);
}

/// Predictions waiting for their file: the batches of each model and day.
#[derive(Debug, Default)]
struct Files {
    batches: BTreeMap<(Arc<str>, i64), Vec<LogBatch>>,
    records: usize,
}

impl Files {
    fn add(&mut self, model: Arc<str>, day: i64, batch: LogBatch) {
        self.records += batch.len();
        self.batches.entry((model, day)).or_default().push(batch);
    }
}

impl LogWriterTask {
    /// Writes a file per model and day every `flush_every` (or when
    /// `max_records` wait), until `shutdown`; then writes what is left,
    /// giving the store at most `last_flush` for it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, last_flush: Duration) {
        let mut files = Files::default();
        let mut monitors = Monitors {
            view: self.writer.input_drift_view.clone(),
            ..Monitors::default()
        };
        // Files are encoded and written off the drain loop, so the buffer
        // keeps being drained every 50 ms while the store is slow.
        let mut flushes = tokio::task::JoinSet::new();
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut flushed, mut checked) = (Instant::now(), Instant::now());
        loop {
            let stop = tokio::select! {
                _ = drain.tick() => false,
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => true,
            };
            // How far the drift check's window has gone, for its sampling.
            let elapsed = checked.elapsed().as_secs_f64()
                / self.writer.input_drift.every.as_secs_f64().max(1e-3);
            for (origin, batch) in self.take() {
                monitors.observe(&origin, &batch, elapsed);
                files.add(origin.model, origin.day, batch);
            }
            if stop {
                break;
            }
            if files.records >= self.writer.max_records
                || flushed.elapsed() >= self.writer.flush_every
            {
                while flushes.len() >= FLUSHES_IN_FLIGHT {
                    flushes.join_next().await;
                }
                flushes.spawn(flush(self.writer.clone(), std::mem::take(&mut files)));
                flushed = Instant::now();
            }
            if checked.elapsed() >= self.writer.input_drift.every {
                monitors.check(self.writer.input_drift);
                checked = Instant::now();
            }
        }
        flushes.spawn(flush(self.writer.clone(), files));
        let last = async { while flushes.join_next().await.is_some() {} };
        if tokio::time::timeout(last_flush, last).await.is_err() {
            tracing::warn!("the prediction log's last records were not written before shutdown");
        }
    }

    /// Every batch the shards hold, with what it holds predictions of.
    /// Each is replaced by an empty one of the same capacity, so appends
    /// rarely grow a column; a version that answered nothing since the
    /// last take leaves its shard.
    fn take(&self) -> Vec<(Origin, LogBatch)> {
        let mut taken = Vec::new();
        for shard in &self.buffer.shards {
            let mut shard = shard.lock().expect("log shard lock");
            shard.held = 0;
            shard.pending.retain_mut(|pending| {
                if pending.batch.is_empty() {
                    return false;
                }
                let fresh = LogBatch::with_capacity(pending.batch.kind(), pending.batch.len());
                let batch = std::mem::replace(&mut pending.batch, fresh);
                taken.push((pending.origin.clone(), batch));
                true
            });
        }
        taken
    }
}

type BackgroundJob = Box<dyn FnOnce() + Send>;

/// Runs `job` on the prediction log's encoder thread, which sits in the
/// lowest scheduling class (Linux `SCHED_IDLE`); `None` if it panicked.
///
/// Encoding a file is a burst of CPU (tens of milliseconds for 100,000
/// rows). At normal priority the kernel lets such a burst keep its core for
/// a whole time slice, milliseconds, while the threads that refuse or answer
/// requests wait for it: under overload that was most of the refusals' p99.
/// At `SCHED_IDLE` any request thread that wakes takes the core at once. The
/// price: on cores that are busy all the time the log waits, its bounded
/// buffer fills, and records are dropped and counted
/// (`nurture_prediction_log_dropped_total`), never answers slowed.
async fn in_background<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static ENCODER: OnceLock<Option<crossbeam_channel::Sender<BackgroundJob>>> = OnceLock::new();
    let encoder = ENCODER.get_or_init(|| {
        let (sender, receiver) = crossbeam_channel::unbounded::<BackgroundJob>();
        std::thread::Builder::new()
            .name("log-encoder".to_owned())
            .spawn(move || {
                crate::batcher::lower_priority("prediction log encoder");
                for job in receiver {
                    job();
                }
            })
            .ok()
            .map(|_| sender)
    });
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: BackgroundJob = Box::new(move || {
        let _ = reply.send(job());
    });
    // No encoder thread (none could start, or a job panicked it away): the
    // runtime's blocking pool encodes at normal priority rather than lose
    // the file.
    let unsent = match encoder {
        Some(sender) => sender.send(job).err().map(|error| error.0),
        None => Some(job),
    };
    if let Some(job) = unsent {
        tokio::task::spawn_blocking(job);
    }
    answer.await.ok()
}

/// Encodes and writes one file per model and day.
async fn flush(writer: Arc<LogWriter>, files: Files) {
    for ((model, day), batches) in files.batches {
        let count = batches.iter().map(LogBatch::len).sum::<usize>() as u64;
        let (name, replica) = (model.clone(), writer.replica.clone());
        let encoded =
            in_background(move || nurture_models::feedback::log::encode(&name, &replica, &batches))
                .await;
        let written = match encoded {
            Some(Ok(bytes)) => writer
                .store
                .write_predictions(&model, &log_date(day), bytes)
                .await
                .map(|_| ()),
            Some(Err(error)) => Err(error),
            None => Err(nurture_models::Error::Store(
                "the prediction log's encoder stopped".to_owned(),
            )),
        };
        count_log_file(&model, count, written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> LogWriter {
        let registry = nurture_models::Registry::open("memory://").unwrap();
        LogWriter {
            store: FeedbackStore::beside(&registry, "r"),
            replica: "r".into(),
            flush_every: Duration::from_secs(3600),
            max_records: 10,
            input_drift: InputDrift {
                every: Duration::from_secs(60),
                min_values: 500,
                psi: 0.25,
            },
            input_drift_view: InputDriftView::default(),
        }
    }

    fn row(id: &str, version: u64) -> Row<'_> {
        Row {
            prediction_id: id,
            version,
            arm: Arm::Live,
            mirror_of: None,
            served_at_ms: 0,
            lead_id: "",
            features: &[],
            text: None,
            probabilities: &[0.5, 0.5],
        }
    }

    #[test]
    fn a_full_buffer_drops_instead_of_waiting() {
        // Room for 1 per answering thread.
        let (log, task) = PredictionLog::new(1, 1.0, writer());
        let churn: Arc<str> = Arc::from("churn");
        assert!(log.push(&churn, ModelKind::Churn, &None, &row("a", 1)));
        assert!(!log.push(&churn, ModelKind::Churn, &None, &row("c", 1)));
        std::thread::scope(|scope| {
            scope.spawn(|| assert!(log.push(&churn, ModelKind::Churn, &None, &row("b", 2))));
        });
        assert!(!PredictionLog::off().push(&churn, ModelKind::Churn, &None, &row("d", 1)));
        // The writer takes one batch per version, and the buffer has room again.
        let mut taken = task.take();
        taken.sort_by_key(|(origin, _)| origin.version);
        let ids: Vec<(u64, Option<&str>)> = taken
            .iter()
            .map(|(origin, batch)| (origin.version, batch.prediction_id(0)))
            .collect();
        assert_eq!(ids, [(1, Some("a")), (2, Some("b"))]);
        assert!(log.push(&churn, ModelKind::Churn, &None, &row("e", 1)));
        let taken = task.take();
        assert_eq!(taken.len(), 1, "version 2 answered nothing since");
        assert_eq!(taken[0].1.prediction_id(0), Some("e"));
    }

    #[test]
    fn sampling_keeps_a_stable_share_of_ids() {
        let (log, _task) = PredictionLog::new(2, 0.25, writer());
        let ids: Vec<String> = (0..20_000).map(|i| format!("id-{i}")).collect();
        let kept = ids.iter().filter(|id| log.sampled(id)).count();
        assert!((4_500..5_500).contains(&kept), "{kept}");
        assert!(ids.iter().all(|id| log.sampled(id) == log.sampled(id)));
        let (all, _task) = PredictionLog::new(2, 1.0, writer());
        assert!(ids.iter().all(|id| all.sampled(id)));
        assert!(!PredictionLog::off().sampled("x"));
    }
}

/// The last label-free drift check of one variable.
#[derive(Debug, Clone, PartialEq)]
pub struct VariableDrift {
    /// PSI at the last check.
    pub psi: f64,
    /// Checks above the alarm level.
    pub alarms: u64,
    /// When it was last checked.
    pub checked_at: chrono::DateTime<Utc>,
    /// When it last alarmed.
    pub last_alarm_at: Option<chrono::DateTime<Utc>>,
}

/// The label-free drift state, by (model, version), then variable: written
/// by the prediction log's writer at each check, read by the status RPC.
pub type InputDriftView = Arc<RwLock<BTreeMap<(String, u64), BTreeMap<String, VariableDrift>>>>;

/// One [`Monitor`] per model version that has a reference.
#[derive(Debug, Default)]
struct Monitors {
    by_version: BTreeMap<(Arc<str>, u64), Monitor>,
    view: InputDriftView,
}

impl Monitors {
    fn observe(&mut self, origin: &Origin, batch: &LogBatch, elapsed: f64) {
        let Some(reference) = &origin.reference else {
            return;
        };
        let (model, version) = (&origin.model, origin.version);
        let monitor = self
            .by_version
            .entry((model.clone(), version))
            .or_insert_with(|| {
                let inputs: Vec<&str> = LEAD_FEATURES
                    .iter()
                    .chain(batch.kind().extra_features())
                    .map(|feature| feature.name)
                    .collect();
                let monitor = Monitor::new(reference, &inputs);
                // Created at zero, so an increase() alert sees the first alarm.
                for variable in monitor.variables() {
                    input_drift_counter(model, version, variable).increment(0);
                }
                monitor
            });
        if !monitor.sample(batch.len() as u64, elapsed) {
            return;
        }
        let width = LEAD_FEATURES.len() + batch.kind().extra_features().len();
        for position in 0..width {
            monitor.observe_column(position, batch.feature(position));
        }
        monitor.observe_scores((0..batch.len()).map(|row| batch.score(row)));
    }

    fn check(&mut self, settings: InputDrift) {
        for ((model, version), monitor) in &mut self.by_version {
            let Some(results) = monitor.check(settings.min_values) else {
                continue;
            };
            let now = Utc::now();
            let mut view = self.view.write().expect("input drift lock");
            let states = view.entry((model.to_string(), *version)).or_default();
            for (variable, psi) in results {
                let alarm = psi > settings.psi;
                let state = states.entry(variable.clone()).or_insert(VariableDrift {
                    psi,
                    alarms: 0,
                    checked_at: now,
                    last_alarm_at: None,
                });
                state.psi = psi;
                state.checked_at = now;
                if alarm {
                    state.alarms += 1;
                    state.last_alarm_at = Some(now);
                }
                metrics::gauge!(
                    "nurture_input_psi",
                    "model" => model.clone(),
                    "version" => version.to_string(),
                    "variable" => variable.clone()
                )
                .set(psi);
                if alarm {
                    input_drift_counter(model, *version, &variable).increment(1);
                    tracing::warn!(
                        event = "input drift",
                        model = &**model,
                        version,
                        variable,
                        psi,
                        threshold = settings.psi,
                        "input drift"
                    );
                }
            }
        }
    }
}

fn input_drift_counter(model: &str, version: u64, variable: &str) -> metrics::Counter {
    metrics::counter!(
        "nurture_input_drift_alarms_total",
        "model" => model.to_owned(),
        "version" => version.to_string(),
        "variable" => variable.to_owned()
    )
}

#[cfg(test)]
mod outcome_reports {
    use super::*;
    use proptest::prelude::*;

    fn rpc() -> FeedbackRpc {
        let registry = nurture_models::Registry::open("memory://").unwrap();
        let store = FeedbackStore::beside(&registry, "r");
        FeedbackRpc {
            slots: Vec::new(),
            ids: Arc::new(PredictionIds::new(
                Some(IdKey::new(vec![7; 32]).unwrap()),
                1,
            )),
            fleet: Arc::new(Fleet::new(store, &[], 30, AdwinConfig::default())),
            limits: Limits {
                max_items: 100,
                max_timing_leads: 10,
                max_text_bytes: 1000,
            },
            horizon: Duration::from_secs(180 * 86_400),
            adopt_after: Duration::from_secs(600),
        }
    }

    #[test]
    fn an_outcome_before_the_first_read_of_the_release_log_is_retried_not_refused() {
        let slot = Arc::new(Slot::new("churn", ModelKind::Churn));
        let rpc = FeedbackRpc {
            slots: vec![slot.clone()],
            ..rpc()
        };
        let report = |version| v1::OutcomeReport {
            prediction_id: rpc.ids.mint(
                "churn",
                version,
                Arm::Live,
                Utc::now().timestamp_millis(),
                Prediction::Binary(0.5),
            ),
            outcome_id: "o".into(),
            label: Some(v1::outcome_report::Label::Churned(true)),
            value: None,
            observed_at: None,
        };
        // Just started: no version of churn is known yet.
        assert!(matches!(
            rpc.dispose(0, &report(1)),
            Err(ServeError::Unavailable(message)) if message.contains("release log of churn")
        ));
        // Once the release log is read, its versions score and others are unknown.
        slot.status.lock().unwrap().known = [1].into();
        assert!(matches!(
            rpc.dispose(0, &report(1)),
            Ok(Disposition::Score { .. })
        ));
        assert!(matches!(
            rpc.dispose(0, &report(2)),
            Ok(Disposition::Refused {
                result: v1::OutcomeResult::UnknownId,
                ..
            })
        ));
    }

    fn label() -> impl Strategy<Value = Option<v1::outcome_report::Label>> {
        use v1::outcome_report::Label as L;
        proptest::option::of(prop_oneof![
            any::<bool>().prop_map(L::Churned),
            any::<bool>().prop_map(L::Responded),
            any::<bool>().prop_map(L::Converted),
            any::<i32>().prop_map(L::Stage),
            any::<i32>().prop_map(L::Emotion),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any report, however malformed, is judged without a panic: either
        /// INVALID_ARGUMENT naming a field of `outcomes[3]`, or refused
        /// as an id this replica cannot score (never scored).
        #[test]
        fn any_report_is_judged_without_panic(
            prediction_id in ".{0,300}",
            outcome_id in ".{0,200}",
            label in label(),
            value in proptest::option::of(any::<f64>()),
            observed in proptest::option::of((any::<i64>(), any::<i32>())),
            minted in any::<bool>(),
        ) {
            let rpc = rpc();
            let prediction_id = if minted {
                rpc.ids.mint("churn", 1, Arm::Live, 0, Prediction::Binary(0.5))
            } else {
                prediction_id
            };
            let report = v1::OutcomeReport {
                prediction_id,
                outcome_id,
                label,
                value,
                observed_at: observed.map(|(seconds, nanos)| nurture_proto::prost_types::Timestamp { seconds, nanos }),
            };
            match rpc.dispose(3, &report) {
                Err(ServeError::InvalidArgument(message)) => {
                    prop_assert!(message.contains("outcomes[3]"), "{}", message);
                }
                Err(other) => prop_assert!(false, "unexpected error {:?}", other),
                Ok(Disposition::Refused { result, .. }) => prop_assert!(matches!(
                    result,
                    v1::OutcomeResult::GarbledId | v1::OutcomeResult::ForgedId | v1::OutcomeResult::UnknownId
                )),
                Ok(_) => prop_assert!(false, "a report for a model not served here was scored"),
            }
        }
    }
}
