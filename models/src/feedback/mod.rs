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
}

impl ModelQuality {
    /// Folds the outcomes of one batch. Outcomes that do not fit their
    /// prediction (which the writer already refused) are skipped.
    pub fn fold(&mut self, batch: &OutcomeBatch) {
        for outcome in &batch.outcomes {
            let _ = self
                .states
                .entry((outcome.version, outcome.arm))
                .or_default()
                .add(&outcome.prediction, outcome.label, outcome.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_keys_separate_their_parts() {
        assert_ne!(outcome_key("a", "bc", "d"), outcome_key("a", "b", "cd"));
        assert_eq!(outcome_key("m", "p", "o"), outcome_key("m", "p", "o"));
        assert_eq!(outcome_key("m", "p", "o").len(), 64);
    }
}
