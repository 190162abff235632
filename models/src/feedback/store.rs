//! Outcomes on the registry's object store (layout in the module above).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::{IdKey, ScoredOutcome};
use crate::error::{Error, Result};
use crate::experiments::store::RELIST_WINDOW_MS;

/// The outcomes one call recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeBatch {
    /// Replica that wrote it.
    pub replica: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The outcomes, scored.
    pub outcomes: Vec<ScoredOutcome>,
}

/// What recording a call's outcomes did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Per outcome, in order: `true` if newly recorded, `false` if it was
    /// recorded before (a replay).
    pub fresh: Vec<bool>,
    /// The batch written (key and contents), if any outcome was new.
    pub batch: Option<(String, OutcomeBatch)>,
}

/// Feedback storage on an object store.
#[derive(Clone)]
pub struct FeedbackStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    replica: String,
    counter: Arc<AtomicU64>,
}

impl std::fmt::Debug for FeedbackStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackStore")
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

fn already_there(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

impl FeedbackStore {
    /// Feedback under `prefix` (the registry's root), written as `replica`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, replica: &str) -> Self {
        FeedbackStore {
            store,
            prefix,
            replica: replica.to_owned(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    fn root(&self) -> Path {
        self.prefix.clone().join("feedback")
    }

    fn dir(&self, model: &str) -> Path {
        self.root().join(model)
    }

    /// The fleet's prediction-id key: read from `feedback/key`, or created
    /// there (32 random bytes, hex) by the first replica to ask. Racing
    /// replicas all end up with the one that was written first.
    pub async fn shared_key(&self) -> Result<IdKey> {
        let location = self.root().join("key");
        let mut fresh = [0u8; 32];
        rand::fill(&mut fresh);
        match self
            .store
            .put_opts(&location, PutPayload::from(hex::encode(fresh)), create())
            .await
        {
            Ok(_) => {}
            Err(error) if already_there(&error) => {}
            Err(error) => return Err(error.into()),
        }
        let text = self.store.get(&location).await?.bytes().await?;
        let bytes = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .ok_or_else(|| Error::Corrupt {
                object: location.to_string(),
                reason: "not a hex key".to_owned(),
            })?;
        IdKey::new(bytes).map_err(|reason| Error::Corrupt {
            object: location.to_string(),
            reason,
        })
    }

    /// Records outcomes durably and idempotently: an idempotency record per
    /// outcome (create-if-absent; one that exists marks a replay), then one
    /// batch of the new ones. Returns only once both are written.
    pub async fn record(&self, model: &str, outcomes: Vec<ScoredOutcome>) -> Result<Recorded> {
        let dir = self.dir(model);
        let now = Utc::now();
        let writes = outcomes.iter().map(|outcome| {
            let location = dir
                .clone()
                .join("outcomes")
                .join(&outcome.key[..2])
                .join(format!("{}.json", outcome.key));
            let body = serde_json::to_vec(outcome).expect("outcomes serialise");
            let store = self.store.clone();
            async move {
                match store
                    .put_opts(&location, PutPayload::from(body), create())
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(error) if already_there(&error) => Ok(false),
                    Err(error) => Err(Error::from(error)),
                }
            }
        });
        let fresh: Vec<bool> = futures::stream::iter(writes)
            .buffered(16)
            .try_collect()
            .await?;
        let new: Vec<ScoredOutcome> = outcomes
            .into_iter()
            .zip(&fresh)
            .filter_map(|(outcome, fresh)| fresh.then_some(outcome))
            .collect();
        if new.is_empty() {
            return Ok(Recorded { fresh, batch: None });
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let key = format!(
            "{:016}-{}-{n:010}.json",
            now.timestamp_millis(),
            self.replica
        );
        let batch = OutcomeBatch {
            replica: self.replica.clone(),
            at: now,
            outcomes: new,
        };
        let body = serde_json::to_vec(&batch).expect("batches serialise");
        self.store
            .put_opts(
                &dir.join("batches").join(key.as_str()),
                PutPayload::from(body),
                create(),
            )
            .await?;
        Ok(Recorded {
            fresh,
            batch: Some((key, batch)),
        })
    }

    /// Outcome batches of `model` written since `since_millis` (minus the
    /// relist window, so a replica with a late clock is still read), or all
    /// of them, leaving out the keys in `skip`; oldest first, with the
    /// newest timestamp seen.
    pub async fn read_batches(
        &self,
        model: &str,
        since_millis: Option<i64>,
        skip: &HashSet<String>,
    ) -> Result<(Vec<(String, OutcomeBatch)>, Option<i64>)> {
        let dir = self.dir(model).join("batches");
        let metas: Vec<_> = match since_millis {
            Some(since) => {
                let offset = dir
                    .clone()
                    .join(format!("{:016}", (since - RELIST_WINDOW_MS).max(0)));
                self.store
                    .list_with_offset(Some(&dir), &offset)
                    .try_collect()
                    .await?
            }
            None => self.store.list(Some(&dir)).try_collect().await?,
        };
        let mut locations: Vec<Path> = metas.into_iter().map(|meta| meta.location).collect();
        locations.sort();
        let newest = locations
            .last()
            .and_then(|l| l.filename())
            .and_then(|f| f.split('-').next())
            .and_then(|m| m.parse::<i64>().ok());
        let fresh: Vec<(String, Path)> = locations
            .into_iter()
            .filter_map(|location| {
                let key = location.filename()?.to_owned();
                (!skip.contains(&key)).then_some((key, location))
            })
            .collect();
        let store = &self.store;
        let batches = futures::stream::iter(fresh)
            .map(|(key, location)| async move {
                let bytes = store.get(&location).await?.bytes().await?;
                let batch = serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
                    object: location.to_string(),
                    reason: error.to_string(),
                })?;
                Ok::<_, Error>((key, batch))
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok((batches, newest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Arm, Label, ModelQuality, Prediction, outcome_key};
    use object_store::memory::InMemory;

    fn outcome(id: &str, p: f32, y: bool) -> ScoredOutcome {
        ScoredOutcome {
            key: outcome_key("churn", "pid", id),
            version: 1,
            arm: Arm::Live,
            served_at_ms: 1,
            observed_at_ms: 2,
            label: Label::Binary(y),
            value: None,
            prediction: Prediction::Binary(p),
        }
    }

    #[tokio::test]
    async fn replays_add_nothing_and_every_replica_reads_every_batch() {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = FeedbackStore::new(memory.clone(), Path::from("r"), "a");
        let b = FeedbackStore::new(memory.clone(), Path::from("r"), "b");
        let first = a
            .record(
                "churn",
                vec![outcome("o1", 0.9, true), outcome("o2", 0.2, false)],
            )
            .await
            .unwrap();
        assert_eq!(first.fresh, [true, true]);
        // The same two again from another replica, with a new one.
        let replay = b
            .record(
                "churn",
                vec![
                    outcome("o1", 0.9, true),
                    outcome("o3", 0.6, false),
                    outcome("o2", 0.2, false),
                ],
            )
            .await
            .unwrap();
        assert_eq!(replay.fresh, [false, true, false]);
        assert_eq!(replay.batch.as_ref().unwrap().1.outcomes.len(), 1);
        let nothing = a
            .record("churn", vec![outcome("o3", 0.6, false)])
            .await
            .unwrap();
        assert_eq!(nothing.batch, None);
        // A third reader folds both batches: three outcomes, once each.
        let reader = FeedbackStore::new(memory, Path::from("r"), "c");
        let (batches, newest) = reader
            .read_batches("churn", None, &HashSet::new())
            .await
            .unwrap();
        assert_eq!(batches.len(), 2);
        let mut quality = ModelQuality::default();
        for (_, batch) in &batches {
            quality.fold(batch);
        }
        assert_eq!(quality.states[&(1, Arm::Live)].outcomes, 3);
        // Reading again from the newest, skipping what was read: nothing new.
        let skip: HashSet<String> = batches.iter().map(|(key, _)| key.clone()).collect();
        let (again, _) = reader.read_batches("churn", newest, &skip).await.unwrap();
        assert!(again.is_empty());
    }

    #[tokio::test]
    async fn racing_replicas_share_one_key() {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let stores: Vec<FeedbackStore> = (0..8)
            .map(|i| FeedbackStore::new(memory.clone(), Path::from("r"), &format!("r{i}")))
            .collect();
        let keys = futures::future::join_all(stores.iter().map(FeedbackStore::shared_key)).await;
        let id = crate::feedback::PredictionId {
            model: "churn".into(),
            version: 1,
            arm: Arm::Live,
            served_at_ms: 0,
            nonce: 1,
            prediction: Prediction::Binary(0.5),
        };
        let signed = keys[0].as_ref().unwrap().sign(&id);
        for key in &keys {
            assert_eq!(key.as_ref().unwrap().verify(&signed).as_ref(), Ok(&id));
        }
    }
}
