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
    /// A retrain was due but found too few joined outcomes (answers not
    /// yet in the prediction log, or too few since the change): its trigger
    /// stays, and the next check tries again.
    Held {
        /// Why it was due.
        trigger: Trigger,
        /// What was missing.
        reason: String,
    },
    /// A retrain ran and judged a challenger.
    Retrained {
        /// Why.
        trigger: Trigger,
        /// Its report.
        report: Box<RetrainReport>,
    },
}

/// A drift alarm newer than the last retrain, as `plan` needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarm {
    /// Live outcomes in ADWIN's window: those since the change it found.
    pub window: u64,
    /// When the window's first outcome was observed.
    pub since_ms: Option<i64>,
}

/// What a check does, once no rollout is under way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// Retrain on the outcomes observed since the change.
    Drift {
        /// The cut (`retrain --since`).
        since_ms: Option<i64>,
    },
    /// An alarm waits for its window to reach the minimum: no retrain, not
    /// even by count (that would train on outcomes from before the change).
    Hold,
    /// Retrain on all feedback: enough new outcomes.
    Outcomes,
    /// Nothing to do.
    Quiet,
}

/// The watcher's decision rule: a pending alarm decides (retrain on its
/// window once it holds `min_outcomes`, else hold); without one, retrain
/// after `after_outcomes` new outcomes.
pub fn plan(
    alarm: Option<Alarm>,
    since_retrain: u64,
    min_outcomes: usize,
    after_outcomes: u64,
) -> Plan {
    match alarm {
        Some(alarm) if alarm.window >= min_outcomes as u64 => Plan::Drift {
            since_ms: alarm.since_ms,
        },
        Some(_) => Plan::Hold,
        None if since_retrain >= after_outcomes => Plan::Outcomes,
        None => Plan::Quiet,
    }
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
    fn new(config: AdwinConfig) -> Detector {
        Detector {
            adwin: Adwin::new(config),
            seen: 0,
            last_alarm_at: None,
            times: Vec::new(),
        }
    }

    /// Feeds one live outcome's error observed at `observed_at_ms`; whether
    /// ADWIN alarmed.
    fn update(&mut self, error: f64, observed_at_ms: i64) -> bool {
        if self.seen.is_multiple_of(TIME_STRIDE) {
            self.times.push(observed_at_ms);
        }
        self.seen += 1;
        let alarmed = self.adwin.update(error);
        if alarmed {
            self.last_alarm_at = Some(self.seen);
        }
        alarmed
    }

    /// Whether ADWIN alarmed after the `after`-th outcome (the count at the
    /// last retrain): an alarm the last retrain has not answered.
    fn alarmed_after(&self, after: u64) -> bool {
        self.last_alarm_at.is_some_and(|at| at > after)
    }

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
                    .or_insert_with(|| Detector::new(config));
                if detector.update(error, outcome.observed_at_ms) {
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
        detector.alarmed_after(after).then_some(detector)
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
        let alarm = live.and_then(|v| self.pending_alarm(v).map(|d| (v, d)));
        if let Some((version, detector)) = alarm {
            findings.push(Finding::Drift {
                version,
                window_error_rate: detector.adwin.mean(),
                window: detector.adwin.width(),
            });
        }
        let decision = plan(
            alarm.map(|(_, d)| Alarm {
                window: d.adwin.width(),
                since_ms: d.window_start_ms(),
            }),
            since,
            self.options.retrain.min_outcomes,
            self.options.after_outcomes,
        );
        let mut retrain = self.options.retrain.clone();
        let trigger = match decision {
            Plan::Drift { since_ms } => {
                retrain.since_ms = since_ms;
                Trigger::Drift
            }
            Plan::Outcomes => Trigger::Outcomes,
            Plan::Hold | Plan::Quiet => {
                findings.push(Finding::Quiet {
                    live,
                    outcomes: self.outcomes,
                    since_retrain: since,
                    window_error_rate,
                    window,
                });
                return Ok(findings);
            }
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
        // A retrain that lacked data keeps its trigger and the counters:
        // more will come (answers reach the log within seconds).
        if outcome == "insufficient" {
            findings.push(Finding::Held {
                trigger,
                reason: report.stopped.unwrap_or_default(),
            });
            return Ok(findings);
        }
        self.state.outcomes_at_retrain = self.outcomes;
        for (version, detector) in &self.detectors {
            self.state
                .live_outcomes_at_retrain
                .insert(*version, detector.seen);
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_YET: Option<Alarm> = None;

    #[test]
    fn a_pending_alarm_decides_and_holds_the_count_until_its_window_is_long_enough() {
        let short = Alarm {
            window: 150,
            since_ms: Some(7),
        };
        let long = Alarm {
            window: 250,
            since_ms: Some(7),
        };
        assert_eq!(plan(Some(short), 50_000, 200, 1_000), Plan::Hold);
        assert_eq!(
            plan(Some(long), 0, 200, 1_000),
            Plan::Drift { since_ms: Some(7) }
        );
        assert_eq!(plan(NOT_YET, 1_000, 200, 1_000), Plan::Outcomes);
        assert_eq!(plan(NOT_YET, 999, 200, 1_000), Plan::Quiet);
    }

    #[test]
    fn an_alarm_is_pending_until_a_retrain_has_seen_it() {
        let mut detector = Detector::new(nurture_models::feedback::drift::SERVER);
        // 2,000 right answers, then 2,000 with half wrong.
        let mut alarmed_at = None;
        for i in 0..4_000_u64 {
            let error = if i < 2_000 { 0.0 } else { (i % 2) as f64 };
            if detector.update(error, 1_000 + i as i64) && alarmed_at.is_none() {
                alarmed_at = Some(i + 1);
            }
        }
        let at = alarmed_at.expect("the change is found");
        assert!(at > 2_000, "no alarm before the change: {at}");
        assert!(detector.alarmed_after(0) && detector.alarmed_after(2_000));
        assert!(
            !detector.alarmed_after(4_000),
            "answered by a retrain at 4,000"
        );
        // The window starts at the change, in time, within two of ADWIN's
        // checks (64 outcomes each here).
        let start = detector.window_start_ms().unwrap();
        assert!((start - 3_000).abs() <= 128, "{start}");
    }
}
