//! What each model serves: an `ArcSwap` slot holding the live version, an
//! optional canary and the previous live version (kept loaded so a rollback
//! is a pointer swap). A request loads the slot once and stays on the
//! version it picked, whatever swaps happen meanwhile. A request that pins
//! another version of the release log gets it loaded on demand, into a
//! small per-model set of pinned versions (least recently used dropped).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use nurture_models::ModelKind;
use nurture_models::feedback::Arm;

use crate::error::ServeError;
use crate::model::{LoadError, LoadedVersion, VersionSource};

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
    /// Receives a copy of `percent` of the live version's requests, off the
    /// response path (its own instance, whose workers run at the lowest
    /// priority; not routable, not among [`Deployment::loaded`]).
    pub shadow: Option<(Arc<LoadedVersion>, u8)>,
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
    /// Shadow according to the release log.
    pub desired_shadow: Option<(u64, u8)>,
    /// Revoked versions: never served, not even when pinned.
    pub revoked: BTreeSet<u64>,
    /// Every version the release log names (what a pin may load).
    pub known: BTreeSet<u64>,
    /// Recent load failures, newest first.
    pub load_errors: VecDeque<LoadError>,
    /// Last successful read of the release log.
    pub last_poll_at: Option<DateTime<Utc>>,
    /// Last failed read, if the latest read failed.
    pub last_poll_error: Option<String>,
}

impl SlotStatus {
    /// Whether the release log names `version` of `model`; UNAVAILABLE while
    /// this replica has not read the log since it started (it knows no
    /// version yet), which a retry outlives: an answer of "not found" then
    /// would be wrong, and final.
    pub fn names(&self, model: &str, version: u64) -> Result<bool, ServeError> {
        if self.known.is_empty() {
            return Err(ServeError::Unavailable(format!(
                "this replica has not read the release log of {model} yet; retry shortly"
            )));
        }
        Ok(self.known.contains(&version))
    }

    /// The recorded failure of `version` for what it is (a store that could
    /// not be reached is not held against it).
    pub fn refused(&self, version: u64) -> Option<&LoadError> {
        self.load_errors
            .iter()
            .find(|e| e.version == version && !e.is_transient())
    }
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
    /// Versions loaded because requests pinned them, most recently used
    /// first; at most `max_pinned`.
    pinned: Mutex<Vec<Arc<LoadedVersion>>>,
    max_pinned: usize,
    /// Where pinned versions are loaded from; `None`: pins reach only the
    /// versions the release log keeps loaded.
    source: Option<Arc<VersionSource>>,
    /// One pinned load at a time per model, so concurrent requests for the
    /// same version share it.
    pin_loading: tokio::sync::Mutex<()>,
}

/// Sticky canary bucket of a lead, 0..100 (FNV-1a of the id).
pub fn bucket(lead_id: &str) -> u8 {
    (nurture_models::fnv1a64(lead_id.as_bytes()) % 100) as u8
}

impl Slot {
    /// An empty slot whose pins reach only loaded versions.
    pub fn new(name: &str, kind: ModelKind) -> Self {
        Slot {
            name: name.to_owned(),
            kind,
            deployment: ArcSwap::from_pointee(Deployment::default()),
            status: Mutex::new(SlotStatus::default()),
            pinned: Mutex::new(Vec::new()),
            max_pinned: 0,
            source: None,
            pin_loading: tokio::sync::Mutex::new(()),
        }
    }

    /// An empty slot that loads pinned versions from `source` on demand,
    /// keeping at most `max_pinned` of them (0: pins reach only the
    /// versions the release log keeps loaded).
    pub fn with_pins(
        name: &str,
        kind: ModelKind,
        source: Arc<VersionSource>,
        max_pinned: usize,
    ) -> Self {
        Slot {
            source: Some(source),
            max_pinned,
            ..Slot::new(name, kind)
        }
    }

    /// `version` if this replica has it loaded: in `deployment` (live,
    /// canary, previous) or among the pinned versions (marked as just used).
    pub fn loaded_version(
        &self,
        deployment: &Deployment,
        version: u64,
    ) -> Option<Arc<LoadedVersion>> {
        deployment
            .find(version)
            .cloned()
            .or_else(|| self.pinned_version(version))
    }

    fn pinned_version(&self, version: u64) -> Option<Arc<LoadedVersion>> {
        let mut pinned = self.pinned.lock().expect("pinned lock");
        let at = pinned.iter().position(|v| v.version == version)?;
        let found = pinned.remove(at);
        pinned.insert(0, found.clone());
        Some(found)
    }

    /// Versions loaded for pinned requests, most recently used first.
    pub fn pinned_versions(&self) -> Vec<u64> {
        let pinned = self.pinned.lock().expect("pinned lock");
        pinned.iter().map(|v| v.version).collect()
    }

    fn keep_pinned(&self, version: Arc<LoadedVersion>) {
        let mut pinned = self.pinned.lock().expect("pinned lock");
        pinned.retain(|v| v.version != version.version);
        pinned.insert(0, version);
        // Dropping the last `Arc` of a version stops its workers.
        pinned.truncate(self.max_pinned);
    }

    /// Makes a pinned version routable: when `pin` is a version of the
    /// release log that is neither revoked nor loaded, loads it (once, even
    /// for concurrent requests). Errors name the version; anything this
    /// cannot help (revoked, not loaded with pins off) is left to
    /// [`Slot::route`] to explain.
    pub async fn prepare_pin(&self, pin: u64) -> Result<(), ServeError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        if pin == 0 || self.max_pinned == 0 {
            return Ok(());
        }
        let routable = |slot: &Slot| slot.loaded_version(&slot.deployment.load(), pin).is_some();
        if routable(self) {
            return Ok(());
        }
        {
            let status = self.status.lock().expect("status lock");
            if status.revoked.contains(&pin) {
                return Ok(());
            }
            if !status.names(&self.name, pin)? {
                return Err(ServeError::NotFound(format!(
                    "version {pin} of {} is not in its release log",
                    self.name
                )));
            }
            // Refused before for what it is: not loaded again per request.
            if let Some(error) = status.refused(pin) {
                return Err(ServeError::FailedPrecondition(format!(
                    "version {pin} of {} cannot be loaded ({}): {}",
                    self.name, error.error_type, error.message
                )));
            }
        }
        let _one_at_a_time = self.pin_loading.lock().await;
        if routable(self) {
            return Ok(());
        }
        match source.load(&self.name, self.kind, pin).await {
            Ok(loaded) => {
                self.keep_pinned(Arc::new(loaded));
                Ok(())
            }
            Err(error) => {
                let message = format!(
                    "version {pin} of {} cannot be loaded ({}): {}",
                    self.name, error.error_type, error.message
                );
                let transient = error.is_transient();
                let not_found = error.error_type == "not_found";
                // Shown by the status RPC; the watcher will not retry it either.
                self.record_load_error(error);
                Err(if not_found {
                    ServeError::NotFound(message)
                } else if transient {
                    ServeError::Unavailable(message)
                } else {
                    ServeError::FailedPrecondition(message)
                })
            }
        }
    }

    /// Picks the version for one lead: the pinned one when `pin > 0`, the
    /// canary for leads in its buckets, else the live one.
    pub fn route(
        &self,
        deployment: &Deployment,
        lead_id: &str,
        pin: u64,
    ) -> Result<(Arc<LoadedVersion>, Arm), ServeError> {
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
            return self
                .loaded_version(deployment, pin)
                .map(|v| (v, Arm::Pinned))
                .ok_or_else(|| {
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
            return Ok((canary.clone(), Arm::Canary));
        }
        deployment
            .live
            .clone()
            .map(|v| (v, Arm::Live))
            .ok_or_else(|| {
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
    fn versions_are_named_only_once_the_release_log_is_read() {
        let mut status = SlotStatus::default();
        assert!(matches!(
            status.names("churn", 1),
            Err(ServeError::Unavailable(message)) if message.contains("release log of churn")
        ));
        status.known = [1, 2].into();
        assert!(matches!(status.names("churn", 2), Ok(true)));
        assert!(matches!(status.names("churn", 3), Ok(false)));
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
