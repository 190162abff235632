//! `nurture-trainer watch MODEL`: closes the loop by itself. It follows the
//! model's outcomes in the store, runs the same drift detector as the
//! replicas (ADWIN on the live version's error stream), and retrains when
//! the live version drifts or after a number of new outcomes, whichever
//! comes first; a challenger is released only through `retrain`'s gate and
//! a guarded rollout, and nothing is retrained while a rollout is under way.
//!
//! Its progress (what it read, what it decided) survives restarts and
//! one-shot runs (`--once`, as a Kubernetes CronJob) in the store, beside
//! the outcomes: `feedback/{model}/watch/state.json`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use indicatif::ProgressBar;
use nurture_models::feedback::drift::{Adwin, AdwinConfig};
use nurture_models::feedback::{Arm, FeedbackStore, forget_unlistable};
use nurture_models::{ModelName, Registry};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use ort::environment::Environment;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::retrain::{self, RetrainOptions, RetrainReport};

/// What to watch and when to retrain.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How each retrain runs (and its gate and rollout).
    pub retrain: RetrainOptions,
    /// Retrain after this many new outcomes of the model.
    pub after_outcomes: u64,
    /// The drift detector's settings (the replicas' by default).
    pub drift: AdwinConfig,
    /// Time between checks.
    pub interval: Duration,
}

/// What the watcher remembers between checks, runs and restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchState {
    /// Outcomes of the model counted at the last retrain.
    pub outcomes_at_retrain: u64,
    /// Per version: the live outcomes of that version counted at the last
    /// retrain (an alarm after that index is new).
    pub live_outcomes_at_retrain: BTreeMap<u64, u64>,
    /// When the last retrain ran (ms since the epoch).
    pub last_retrain_ms: Option<i64>,
    /// What it did, in words.
    pub last_result: Option<String>,
    /// Retrains run, by trigger.
    pub retrains: BTreeMap<String, u64>,
}

/// Why a retrain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The live version's error rate changed (an ADWIN alarm).
    Drift,
    /// Enough new outcomes arrived.
    Outcomes,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Drift => "drift",
            Trigger::Outcomes => "outcomes",
        }
    }
}

/// One check's finding, printed as a line (or JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Finding {
    /// Nothing to do yet.
    Quiet {
        /// The live version.
        live: Option<u64>,
        /// Outcomes of the model read so far.
        outcomes: u64,
        /// New outcomes since the last retrain.
        since_retrain: u64,
        /// The live version's error rate over ADWIN's window.
        window_error_rate: Option<f64>,
        /// ADWIN's window (live outcomes since the last change it found).
        window: Option<u64>,
    },
    /// The live version's error stream changed.
    Drift {
        /// The live version.
        version: u64,
        /// Error rate over the window after the change.
        window_error_rate: f64,
        /// Outcomes in that window.
        window: u64,
    },
    /// A rollout is under way: no retrain until it ends.
    Waiting {
        /// The canary being rolled out.
        version: u64,
    },
    /// A retrain ran.
    Retrained {
        /// Why.
        trigger: Trigger,
        /// Its report.
        report: Box<RetrainReport>,
    },
}

/// The watcher of one model.
pub struct Watcher {
    name: ModelName,
    options: WatchOptions,
    registry: Registry,
    feedback: FeedbackStore,
    /// Batches folded (skipped when listed again).
    applied: HashSet<String>,
    newest: Option<i64>,
    /// Outcomes of the model folded.
    outcomes: u64,
    /// Per version: ADWIN on its live outcomes' errors, their count, and
    /// the index of the last one at which ADWIN alarmed.
    detectors: BTreeMap<u64, Detector>,
    state: WatchState,
}

struct Detector {
    adwin: Adwin,
    seen: u64,
    last_alarm_at: Option<u64>,
    /// Observation time of every [`TIME_STRIDE`]-th outcome: where ADWIN's
    /// window begins, in time.
    times: Vec<i64>,
}

/// Outcomes between two remembered observation times.
const TIME_STRIDE: u64 = 16;

impl Detector {
    /// When the first outcome of ADWIN's window was observed (rounded up
    /// to the next remembered time, so nothing before the change is in).
    fn window_start_ms(&self) -> Option<i64> {
        let start = self.seen - self.adwin.width();
        self.times
            .get(start.div_ceil(TIME_STRIDE) as usize)
            .copied()
    }
}

fn state_path(registry: &Registry, name: &ModelName) -> Path {
    registry
        .prefix()
        .clone()
        .join("feedback")
        .join(name.as_str())
        .join("watch")
        .join("state.json")
}

impl Watcher {
    /// A watcher of `model`, resuming from the state in the store.
    pub async fn open(model: &str, options: WatchOptions) -> Result<Watcher> {
        let name = ModelName::new(model)?;
        let registry = Registry::open(&options.retrain.registry)?;
        let feedback = FeedbackStore::beside(&registry, "nurture-trainer-watch");
        let state = match registry.store().get(&state_path(&registry, &name)).await {
            Ok(object) => {
                let bytes = object.bytes().await.map_err(nurture_models::Error::from)?;
                serde_json::from_slice(&bytes).map_err(|error| {
                    Error::usage(format!(
                        "the watch state of {name} in the store is unreadable ({error}); delete {} to start over",
                        state_path(&registry, &name)
                    ))
                })?
            }
            Err(object_store::Error::NotFound { .. }) => WatchState::default(),
            Err(error) => return Err(nurture_models::Error::from(error).into()),
        };
        Ok(Watcher {
            name,
            options,
            registry,
            feedback,
            applied: HashSet::new(),
            newest: None,
            outcomes: 0,
            detectors: BTreeMap::new(),
            state,
        })
    }

    /// The remembered state.
    pub fn state(&self) -> &WatchState {
        &self.state
    }

    /// Folds the outcomes written since the last check.
    async fn fold(&mut self) -> Result<()> {
        let (batches, newest) = self
            .feedback
            .read_batches(self.name.as_str(), self.newest, &self.applied)
            .await?;
        for (key, batch) in batches {
            self.applied.insert(key);
            for outcome in &batch.outcomes {
                self.outcomes += 1;
                metrics::counter!("nurture_watch_outcomes_total", "model" => self.name.to_string())
                    .increment(1);
                if outcome.arm != Arm::Live {
                    continue;
                }
                let Some(error) = outcome.error() else {
                    continue;
                };
                let config = self.options.drift;
                let detector = self
                    .detectors
                    .entry(outcome.version)
                    .or_insert_with(|| Detector {
                        adwin: Adwin::new(config),
                        seen: 0,
                        last_alarm_at: None,
                        times: Vec::new(),
                    });
                if detector.seen.is_multiple_of(TIME_STRIDE) {
                    detector.times.push(outcome.observed_at_ms);
                }
                detector.seen += 1;
                if detector.adwin.update(error) {
                    detector.last_alarm_at = Some(detector.seen);
                    metrics::counter!(
                        "nurture_watch_drift_alarms_total",
                        "model" => self.name.to_string(),
                        "version" => outcome.version.to_string()
                    )
                    .increment(1);
                }
            }
        }
        if let Some(newest) = newest {
            self.newest = Some(self.newest.map_or(newest, |n| n.max(newest)));
            forget_unlistable(&mut self.applied, newest);
        }
        Ok(())
    }

    /// Whether the live version has an alarm newer than the last retrain.
    fn pending_alarm(&self, live: u64) -> Option<&Detector> {
        let detector = self.detectors.get(&live)?;
        let after = self
            .state
            .live_outcomes_at_retrain
            .get(&live)
            .copied()
            .unwrap_or(0);
        detector
            .last_alarm_at
            .filter(|at| *at > after)
            .map(|_| detector)
    }

    /// One check: fold new outcomes, then retrain if drift or the count of
    /// new outcomes says so (and no rollout is under way).
    pub async fn check(
        &mut self,
        environment: &Environment,
        progress: &ProgressBar,
    ) -> Result<Vec<Finding>> {
        self.fold().await?;
        let model = self.name.to_string();
        metrics::gauge!("nurture_watch_last_check_timestamp_seconds", "model" => model.clone())
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        let since = self.outcomes.saturating_sub(self.state.outcomes_at_retrain);
        metrics::gauge!("nurture_watch_outcomes_since_retrain", "model" => model.clone())
            .set(since as f64);
        let registry_state = self.registry.state(&self.name).await?;
        if let Some(rollout) = &registry_state.rollout {
            return Ok(vec![Finding::Waiting {
                version: rollout.version,
            }]);
        }
        let live = registry_state.live;
        let detector = live.and_then(|v| self.detectors.get(&v));
        let window = detector.map(|d| d.adwin.width());
        let window_error_rate = detector
            .filter(|d| d.adwin.width() > 0)
            .map(|d| d.adwin.mean());
        if let Some(rate) = window_error_rate {
            metrics::gauge!("nurture_watch_live_window_error_rate", "model" => model.clone())
                .set(rate);
        }
        let mut findings = Vec::new();
        let mut retrain = self.options.retrain.clone();
        let trigger = match live.and_then(|v| self.pending_alarm(v).map(|d| (v, d))) {
            // Learn from what followed the change (ADWIN's window), once
            // there is enough of it; until then the outcome count waits
            // too, rather than train on outcomes from before the change.
            Some((version, detector)) => {
                findings.push(Finding::Drift {
                    version,
                    window_error_rate: detector.adwin.mean(),
                    window: detector.adwin.width(),
                });
                let window = detector.adwin.width() as usize;
                (window >= retrain.min_outcomes).then(|| {
                    // By time, not by count: answers reach the log later
                    // than their outcomes arrive.
                    retrain.since_ms = detector.window_start_ms();
                    Trigger::Drift
                })
            }
            None => (since >= self.options.after_outcomes).then_some(Trigger::Outcomes),
        };
        let Some(trigger) = trigger else {
            findings.push(Finding::Quiet {
                live,
                outcomes: self.outcomes,
                since_retrain: since,
                window_error_rate,
                window,
            });
            return Ok(findings);
        };

        let result = retrain::retrain(self.name.as_str(), &retrain, environment, progress).await;
        let (outcome, report) = match result {
            Ok(report) => {
                let outcome = if report.released {
                    "released"
                } else if report.evidence.is_some() {
                    "refused"
                } else {
                    "insufficient"
                };
                (outcome, Some(report))
            }
            Err(error) => {
                metrics::counter!(
                    "nurture_watch_retrains_total",
                    "model" => model,
                    "trigger" => trigger.as_str(),
                    "result" => "failed"
                )
                .increment(1);
                return Err(error);
            }
        };
        metrics::counter!(
            "nurture_watch_retrains_total",
            "model" => model,
            "trigger" => trigger.as_str(),
            "result" => outcome
        )
        .increment(1);
        let report = report.expect("set above");
        // A retrain that lacked data keeps the counters: more will come.
        if outcome != "insufficient" {
            self.state.outcomes_at_retrain = self.outcomes;
            for (version, detector) in &self.detectors {
                self.state
                    .live_outcomes_at_retrain
                    .insert(*version, detector.seen);
            }
        }
        self.state.last_retrain_ms = Some(chrono::Utc::now().timestamp_millis());
        self.state.last_result = Some(match (&report.published_version, &report.stopped) {
            (Some(version), _) => format!("released version {version}"),
            (None, Some(why)) => why.clone(),
            (None, None) => outcome.to_owned(),
        });
        *self
            .state
            .retrains
            .entry(trigger.as_str().to_owned())
            .or_insert(0) += 1;
        self.save().await?;
        findings.push(Finding::Retrained {
            trigger,
            report: Box::new(report),
        });
        Ok(findings)
    }

    async fn save(&self) -> Result<()> {
        let body = serde_json::to_vec_pretty(&self.state).expect("the state serialises");
        self.registry
            .store()
            .put(
                &state_path(&self.registry, &self.name),
                PutPayload::from(body),
            )
            .await
            .map_err(nurture_models::Error::from)?;
        Ok(())
    }
}
