//! Closing the loop: prediction ids, outcomes, and live quality per version.
//!
//! ```text
//! feedback/key                                              the shared prediction-id key (create-if-absent)
//! feedback/{model}/outcomes/{h:2}/{h}.json                  one per outcome: its idempotency record, naming its batch (create-if-absent)
//! feedback/{model}/batches/{millis:016}-{replica}-{n:010}.json   the outcomes one call recorded, scored (create-if-absent)
//! feedback/{model}/adopted/{h:2}/{h}.json                   an orphaned outcome adopted by a later call (create-if-absent)
//! ```
//!
//! `h` is the sha256 of (model, prediction id, outcome id): a replayed
//! outcome finds its record already there and adds nothing. A call's new
//! outcomes are then written as one batch; only after both writes is the
//! caller acknowledged. A writer that dies between the two leaves records
//! whose batch never appears; a replay adopts them once they are older than
//! any writer can take ([`store::record`](FeedbackStore::record)). Every replica (and `nurturectl quality`) folds every
//! batch into per version × arm [`Quality`] states, which merge, so the whole
//! fleet reports one figure per version. docs/feedback.md has the details.

pub mod drift;
pub mod id;
pub mod log;
pub mod quality;
pub mod reference;
pub mod store;

use std::collections::BTreeMap;

use crate::rollout::sequential::{ArmLoss, Metric};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use id::{Arm, IdError, IdKey, Prediction, PredictionId};
pub use quality::{Estimate, Quality, Report};
pub use store::{Fate, FeedbackStore, OutcomeBatch, Recorded, forget_unlistable};

/// An observed outcome, in the kind's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Churned, responded or converted (binary kinds).
    Binary(bool),
    /// The class observed: the stage reached, the lead's true emotional
    /// state (0-based, in the manifest's label order).
    Class(u32),
}

/// An outcome scored against the prediction its id carries: what a batch
/// stores and what quality folds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredOutcome {
    /// Hash of (model, prediction id, outcome id): the idempotency key.
    pub key: String,
    /// The prediction id the outcome is about (joins the prediction log).
    pub prediction_id: String,
    /// Version that made the prediction.
    pub version: u64,
    /// Arm that made it.
    pub arm: Arm,
    /// When the prediction was served (ms since the Unix epoch).
    pub served_at_ms: i64,
    /// When the outcome was observed (ms since the Unix epoch).
    pub observed_at_ms: i64,
    /// The outcome.
    pub label: Label,
    /// Value of the outcome (e.g. revenue), if any.
    pub value: Option<f64>,
    /// The prediction, from the id.
    pub prediction: Prediction,
}

impl ScoredOutcome {
    /// Whether the prediction was wrong: 1 if the most probable class (for
    /// a binary kind, p ≥ 0.5 for positive) is not the observed one, else 0;
    /// `None` when the label does not fit the prediction. The stream drift
    /// detection watches.
    pub fn error(&self) -> Option<f64> {
        let wrong = match (&self.prediction, self.label) {
            (Prediction::Binary(p), Label::Binary(y)) => (*p >= 0.5) != y,
            (Prediction::Classes(ps), Label::Class(truth)) => {
                let best = ps
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, p)| if *p > ps[best] { i } else { best });
                best != truth as usize
            }
            _ => return None,
        };
        Some(f64::from(u8::from(wrong)))
    }
}

/// The idempotency key of an outcome: hex sha256 of the model, the
/// prediction id and the client's outcome id.
pub fn outcome_key(model: &str, prediction_id: &str, outcome_id: &str) -> String {
    let mut hash = Sha256::new();
    for part in [model, prediction_id, outcome_id] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// Quality of every version × arm of one model, folded from batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelQuality {
    /// State per (version, arm).
    pub states: BTreeMap<(u64, Arm), Quality>,
    /// Per-outcome losses per (version, arm) by the minute their prediction
    /// was served: what a rollout's guard compares over the same period.
    pub minutes: BTreeMap<(u64, Arm), BTreeMap<i64, Losses>>,
}

/// Losses of the outcomes of one minute's predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Losses {
    /// 0/1 errors.
    pub errors: ArmLoss,
    /// Log-losses.
    pub log_loss: ArmLoss,
}

impl Losses {
    /// The losses `metric` compares.
    pub fn of(&self, metric: Metric) -> ArmLoss {
        match metric {
            Metric::ErrorRate => self.errors,
            Metric::LogLoss => self.log_loss,
        }
    }
}

/// Milliseconds in a minute.
const MINUTE_MS: i64 = 60_000;

impl ModelQuality {
    /// Folds the outcomes of one batch. Outcomes that do not fit their
    /// prediction (which the writer already refused) are skipped.
    pub fn fold(&mut self, batch: &OutcomeBatch) {
        for outcome in &batch.outcomes {
            let key = (outcome.version, outcome.arm);
            if self
                .states
                .entry(key)
                .or_default()
                .add(&outcome.prediction, outcome.label, outcome.value)
                .is_err()
            {
                continue;
            }
            if let (Some(error), Some(loss)) = (
                outcome.error(),
                quality::log_loss(&outcome.prediction, outcome.label),
            ) {
                let minute = self
                    .minutes
                    .entry(key)
                    .or_default()
                    .entry(outcome.served_at_ms.div_euclid(MINUTE_MS))
                    .or_default();
                minute.errors.push(error);
                minute.log_loss.push(loss);
            }
        }
    }

    /// `metric`'s losses of `version` on `arm` over outcomes of predictions
    /// served at or after `since_ms` (whole minutes: the minute holding
    /// `since_ms` counts).
    pub fn losses_since(&self, version: u64, arm: Arm, metric: Metric, since_ms: i64) -> ArmLoss {
        self.minutes
            .get(&(version, arm))
            .map(|minutes| {
                minutes
                    .range(since_ms.div_euclid(MINUTE_MS)..)
                    .fold(ArmLoss::default(), |all, (_, m)| all.merge(&m.of(metric)))
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_count_from_the_minute_a_rollout_began() {
        let outcome = |served_at_ms: i64, p: f32, churned: bool| ScoredOutcome {
            key: format!("{served_at_ms}{p}"),
            prediction_id: String::new(),
            version: 2,
            arm: Arm::Canary,
            served_at_ms,
            observed_at_ms: served_at_ms,
            label: Label::Binary(churned),
            value: None,
            prediction: Prediction::Binary(p),
        };
        let mut quality = ModelQuality::default();
        quality.fold(&OutcomeBatch {
            replica: "r".into(),
            at: chrono::Utc::now(),
            outcomes: vec![
                outcome(0, 0.9, false),      // minute 0: wrong
                outcome(60_000, 0.9, true),  // minute 1: right
                outcome(125_000, 0.2, true), // minute 2: wrong
            ],
        });
        let all = quality.losses_since(2, Arm::Canary, Metric::ErrorRate, 0);
        assert_eq!((all.n, all.sum), (3, 2.0));
        let later = quality.losses_since(2, Arm::Canary, Metric::ErrorRate, 90_000);
        assert_eq!(
            (later.n, later.sum),
            (2, 1.0),
            "the minute holding the start counts"
        );
        let loss = quality.losses_since(2, Arm::Canary, Metric::LogLoss, 120_000);
        assert!((loss.sum - -(0.2f64.ln())).abs() < 1e-6);
        assert_eq!(
            quality.losses_since(2, Arm::Live, Metric::ErrorRate, 0).n,
            0
        );
    }

    #[test]
    fn outcome_keys_separate_their_parts() {
        assert_ne!(outcome_key("a", "bc", "d"), outcome_key("a", "b", "cd"));
        assert_eq!(outcome_key("m", "p", "o"), outcome_key("m", "p", "o"));
        assert_eq!(outcome_key("m", "p", "o").len(), 64);
    }
}
