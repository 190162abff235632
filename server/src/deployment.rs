//! What each model serves: an `ArcSwap` slot holding the live version, an
//! optional canary and the previous live version (kept loaded so a rollback
//! is a pointer swap). A request loads the slot once and stays on the
//! version it picked, whatever swaps happen meanwhile.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use nurture_models::ModelKind;

use crate::error::ServeError;
use crate::model::{LoadError, LoadedVersion};

/// Load failures remembered per model.
const LOAD_ERRORS_KEPT: usize = 8;

/// The versions one model serves at one moment.
#[derive(Debug, Default)]
pub struct Deployment {
    /// Answers routed requests.
    pub live: Option<Arc<LoadedVersion>>,
    /// Receives `percent` of leads, sticky by lead id.
    pub canary: Option<(Arc<LoadedVersion>, u8)>,
    /// The previous live version, kept warm for rollback.
    pub previous: Option<Arc<LoadedVersion>>,
}

impl Deployment {
    /// Every loaded version, live first.
    pub fn loaded(&self) -> Vec<&Arc<LoadedVersion>> {
        let mut loaded: Vec<&Arc<LoadedVersion>> = Vec::new();
        for version in [
            self.live.as_ref(),
            self.canary.as_ref().map(|(v, _)| v),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !loaded.iter().any(|l| l.version == version.version) {
                loaded.push(version);
            }
        }
        loaded
    }

    /// A loaded version by number.
    pub fn find(&self, version: u64) -> Option<&Arc<LoadedVersion>> {
        self.loaded()
            .into_iter()
            .find(|loaded| loaded.version == version)
    }
}

/// What the watcher last learned about a model, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct SlotStatus {
    /// Live version according to the release log.
    pub desired_live: Option<u64>,
    /// Canary according to the release log.
    pub desired_canary: Option<(u64, u8)>,
    /// Revoked versions: never served, not even when pinned.
    pub revoked: BTreeSet<u64>,
    /// Recent load failures, newest first.
    pub load_errors: VecDeque<LoadError>,
    /// Last successful read of the release log.
    pub last_poll_at: Option<DateTime<Utc>>,
    /// Last failed read, if the latest read failed.
    pub last_poll_error: Option<String>,
}

/// One model's slot.
#[derive(Debug)]
pub struct Slot {
    /// Registry name.
    pub name: String,
    /// Kind.
    pub kind: ModelKind,
    /// Current deployment.
    pub deployment: ArcSwap<Deployment>,
    /// Watcher's view.
    pub status: Mutex<SlotStatus>,
}

/// Sticky canary bucket of a lead, 0..100 (FNV-1a of the id).
pub fn bucket(lead_id: &str) -> u8 {
    (nurture_models::fnv1a64(lead_id.as_bytes()) % 100) as u8
}

impl Slot {
    /// An empty slot.
    pub fn new(name: &str, kind: ModelKind) -> Self {
        Slot {
            name: name.to_owned(),
            kind,
            deployment: ArcSwap::from_pointee(Deployment::default()),
            status: Mutex::new(SlotStatus::default()),
        }
    }

    /// Picks the version for one lead: the pinned one when `pin > 0`, the
    /// canary for leads in its buckets, else the live one.
    pub fn route(
        &self,
        deployment: &Deployment,
        lead_id: &str,
        pin: u64,
    ) -> Result<Arc<LoadedVersion>, ServeError> {
        if pin > 0 {
            if self
                .status
                .lock()
                .expect("status lock")
                .revoked
                .contains(&pin)
            {
                return Err(ServeError::FailedPrecondition(format!(
                    "version {pin} of {} was revoked and is not served",
                    self.name
                )));
            }
            return deployment.find(pin).cloned().ok_or_else(|| {
                let loaded: Vec<String> = deployment
                    .loaded()
                    .iter()
                    .map(|v| v.version.to_string())
                    .collect();
                ServeError::NotFound(format!(
                    "version {pin} of {} is not loaded on this replica (loaded: {})",
                    self.name,
                    if loaded.is_empty() {
                        "none".to_owned()
                    } else {
                        loaded.join(", ")
                    }
                ))
            });
        }
        if let Some((canary, percent)) = &deployment.canary
            && !lead_id.is_empty()
            && bucket(lead_id) < *percent
        {
            return Ok(canary.clone());
        }
        deployment.live.clone().ok_or_else(|| {
            ServeError::Unavailable(format!(
                "no version of {} is live on this replica yet",
                self.name
            ))
        })
    }

    /// Records a load failure.
    pub fn record_load_error(&self, error: LoadError) {
        let mut status = self.status.lock().expect("status lock");
        status.load_errors.push_front(error);
        status.load_errors.truncate(LOAD_ERRORS_KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("lead-42"), bucket("lead-42"));
        let in_ten: usize = (0..10_000)
            .filter(|i| bucket(&format!("lead-{i}")) < 10)
            .count();
        assert!((800..1_200).contains(&in_ten), "{in_ten}");
    }

    #[test]
    fn an_empty_slot_is_unavailable_and_pins_are_named() {
        let slot = Slot::new("churn", ModelKind::Churn);
        let deployment = slot.deployment.load();
        assert!(matches!(
            slot.route(&deployment, "lead-1", 0),
            Err(ServeError::Unavailable(_))
        ));
        let error = slot.route(&deployment, "lead-1", 3).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("version 3 of churn is not loaded"),
            "{error}"
        );
        slot.status.lock().unwrap().revoked.insert(3);
        assert!(matches!(
            slot.route(&deployment, "lead-1", 3),
            Err(ServeError::FailedPrecondition(_))
        ));
    }
}
