//! Experiments beside the models in the registry's object store:
//!
//! ```text
//! experiments/{name}/log/{seq:010}.json         created, stopped (create-if-absent)
//! experiments/{name}/outcomes/{millis:016}-{replica}-{n:010}.json   one batch per RecordOutcome call
//! ```
//!
//! Outcome batches are written create-if-absent *before* the caller gets its
//! acknowledgement, so an acknowledged outcome survives any crash; every
//! replica folds every batch, deduplicating by outcome id, so all replicas
//! converge on the same counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::spec::{ExperimentEvent, ExperimentSpec, OutcomeRecord, check_id};
use crate::error::{Error, Result};

/// How far back (in milliseconds) a reader re-lists outcome batches, so a
/// batch written by a replica with a slightly late clock is still read.
/// Re-read batches are harmless: outcomes are deduplicated by id.
pub const RELIST_WINDOW_MS: i64 = 120_000;

/// Forgets the keys of outcome batches that [`ExperimentStore::read_outcomes`]
/// can no longer list when asked for batches since `since_millis`: those
/// written more than [`RELIST_WINDOW_MS`] before it. What is left is what a
/// reader must keep to skip batches it has already counted.
pub fn forget_unlistable(applied: &mut std::collections::HashSet<String>, since_millis: i64) {
    crate::batches::forget_unlistable(applied, since_millis, RELIST_WINDOW_MS);
}

/// One `RecordOutcome` call's outcomes for one experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeBatch {
    /// Replica that wrote it.
    pub replica: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The outcomes.
    pub outcomes: Vec<OutcomeRecord>,
}

/// An experiment's definition and whether it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentState {
    /// Definition.
    pub spec: ExperimentSpec,
    /// Stop reason, once stopped.
    pub stopped: Option<String>,
    /// Last log position.
    pub seq: u64,
}

/// Experiment storage on an object store.
#[derive(Clone)]
pub struct ExperimentStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    replica: String,
    counter: Arc<AtomicU64>,
}

impl std::fmt::Debug for ExperimentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExperimentStore")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

impl ExperimentStore {
    /// Experiments under `prefix`, written as `replica`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, replica: &str) -> Self {
        ExperimentStore {
            store,
            prefix,
            replica: replica.to_owned(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    fn dir(&self, name: &str) -> Path {
        self.prefix.clone().join("experiments").join(name)
    }

    /// Creates an experiment; a taken name is a conflict.
    pub async fn create(&self, spec: ExperimentSpec) -> Result<ExperimentSpec> {
        let spec = spec.validate()?;
        let event = ExperimentEvent::Created { spec: spec.clone() };
        let location = self
            .dir(&spec.name)
            .join("log")
            .join(format!("{:010}.json", 1));
        let body = serde_json::to_vec_pretty(&event).expect("events serialise");
        match self
            .store
            .put_opts(&location, PutPayload::from(body), create())
            .await
        {
            Ok(_) => Ok(spec),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(Error::Conflict(format!(
                "experiment {} already exists",
                spec.name
            ))),
            Err(other) => Err(other.into()),
        }
    }

    /// Reads an experiment's log.
    pub async fn get(&self, name: &str) -> Result<ExperimentState> {
        check_id(name, "experiment")?;
        let log = self.dir(name).join("log");
        let mut locations: Vec<Path> = self
            .store
            .list(Some(&log))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        locations.sort();
        let mut state: Option<ExperimentState> = None;
        for (index, location) in locations.iter().enumerate() {
            let bytes = self.store.get(location).await?.bytes().await?;
            let event: ExperimentEvent =
                serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
                    object: location.to_string(),
                    reason: error.to_string(),
                })?;
            match (event, state.as_mut()) {
                (ExperimentEvent::Created { spec }, None) => {
                    state = Some(ExperimentState {
                        spec,
                        stopped: None,
                        seq: 1,
                    })
                }
                (ExperimentEvent::Stopped { reason }, Some(current)) => {
                    current.stopped.get_or_insert(reason);
                    current.seq = index as u64 + 1;
                }
                _ => {
                    return Err(Error::Corrupt {
                        object: location.to_string(),
                        reason: "unexpected event".to_owned(),
                    });
                }
            }
        }
        state.ok_or_else(|| Error::NotFound(format!("experiment {name}")))
    }

    /// Every experiment, by name.
    pub async fn list(&self) -> Result<Vec<ExperimentState>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.prefix.clone().join("experiments")))
            .await?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            out.push(self.get(&name).await?);
        }
        Ok(out)
    }

    /// Stops an experiment (a second stop changes nothing).
    pub async fn stop(&self, name: &str, reason: &str) -> Result<ExperimentState> {
        let mut state = self.get(name).await?;
        if state.stopped.is_some() {
            return Ok(state);
        }
        let event = ExperimentEvent::Stopped {
            reason: reason.to_owned(),
        };
        let location = self
            .dir(name)
            .join("log")
            .join(format!("{:010}.json", state.seq + 1));
        let body = serde_json::to_vec_pretty(&event).expect("events serialise");
        match self
            .store
            .put_opts(&location, PutPayload::from(body), create())
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(other) => return Err(other.into()),
        }
        state.stopped = Some(reason.to_owned());
        state.seq += 1;
        Ok(state)
    }

    /// Persists outcomes; returns (once they are durably stored) the key of
    /// the batch.
    pub async fn append_outcomes(
        &self,
        name: &str,
        outcomes: Vec<OutcomeRecord>,
    ) -> Result<String> {
        let now = Utc::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let key = format!(
            "{:016}-{}-{n:010}.json",
            now.timestamp_millis(),
            self.replica
        );
        let batch = OutcomeBatch {
            replica: self.replica.clone(),
            at: now,
            outcomes,
        };
        let body = serde_json::to_vec(&batch).expect("batches serialise");
        self.store
            .put_opts(
                &self.dir(name).join("outcomes").join(key.as_str()),
                PutPayload::from(body),
                create(),
            )
            .await?;
        Ok(key)
    }

    /// Outcome batches written since `since_millis` (minus
    /// [`RELIST_WINDOW_MS`]), or all of them, leaving out the keys in
    /// `skip`; with their keys, oldest first, and the newest timestamp seen.
    pub async fn read_outcomes(
        &self,
        name: &str,
        since_millis: Option<i64>,
        skip: &std::collections::HashSet<String>,
    ) -> Result<(Vec<(String, OutcomeBatch)>, Option<i64>)> {
        let dir = self.dir(name).join("outcomes");
        let (listed, newest) =
            crate::batches::list(&self.store, &dir, since_millis, RELIST_WINDOW_MS).await?;
        let fresh = listed
            .into_iter()
            .filter(|(key, _)| !skip.contains(key))
            .collect();
        let batches = crate::batches::fetch(&self.store, fresh).await?;
        Ok((batches, newest))
    }
}

#[cfg(test)]
mod forget_tests {
    use super::*;

    #[test]
    fn only_keys_older_than_the_relist_window_are_forgotten() {
        let since = 10_000_000;
        let key = |millis: i64| format!("{millis:016}-replica-a-{:010}.json", 1);
        let mut applied: std::collections::HashSet<String> = [
            key(since - RELIST_WINDOW_MS - 1),
            key(since - RELIST_WINDOW_MS),
            key(since),
            "not-a-batch-key".to_owned(),
        ]
        .into();
        forget_unlistable(&mut applied, since);
        let mut left: Vec<_> = applied.into_iter().collect();
        left.sort();
        assert_eq!(
            left,
            [
                key(since - RELIST_WINDOW_MS),
                key(since),
                "not-a-batch-key".to_owned()
            ]
        );
    }
}
