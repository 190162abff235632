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
        IdKey::from_hex(&String::from_utf8_lossy(&text)).map_err(|reason| Error::Corrupt {
            object: location.to_string(),
            reason,
        })
    }

    /// Records outcomes durably and idempotently: an idempotency record per
    /// outcome (create-if-absent; one that exists marks a replay), then one
    /// batch of the new ones. Returns only once both are written.
    pub async fn record(&self, model: &str, outcomes: Vec<ScoredOutcome>) -> Result<Recorded> {
        let dir = self.dir(model);
        // NOTE: owned (location, body) pairs, so the future stays `Send`
        // for tonic (a closure over borrowed outcomes would not be).
        let writes: Vec<(Path, Vec<u8>)> = outcomes
            .iter()
            .map(|outcome| {
                let location = dir
                    .clone()
                    .join("outcomes")
                    .join(&outcome.key[..2])
                    .join(format!("{}.json", outcome.key));
                (location, serde_json::to_vec(outcome).expect("outcomes serialise"))
            })
            .collect();
        let store = &self.store;
        let fresh: Vec<bool> = futures::stream::iter(writes)
            .map(|(location, body)| async move {
                match store
                    .put_opts(&location, PutPayload::from(body), create())
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(error) if already_there(&error) => Ok(false),
                    Err(error) => Err(Error::from(error)),
                }
            })
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
        // NOTE: the key's time is taken just before the batch is written, so
        // readers relisting FEEDBACK_RELIST_MS back see it even when the
        // idempotency records took long.
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

    /// Outcome batches of `model` written since `since_millis` (minus
    /// [`FEEDBACK_RELIST_MS`], so a replica with a late clock or a slow
    /// write is still read), or all of them, leaving out the keys `skip`
    /// names; oldest first, with the newest timestamp seen.
    pub async fn read_batches(
        &self,
        model: &str,
        since_millis: Option<i64>,
        skip: &HashSet<String>,
    ) -> Result<(Vec<(String, OutcomeBatch)>, Option<i64>)> {
        let (listed, newest) = self.list_batches(model, since_millis).await?;
        let fresh = listed
            .into_iter()
            .filter(|(key, _)| !skip.contains(key))
            .collect();
        Ok((self.fetch_batches(fresh).await?, newest))
    }

    /// The keys and locations of `model`'s batches since `since_millis`
    /// (see [`FeedbackStore::read_batches`]), oldest first, and the newest
    /// timestamp seen.
    pub async fn list_batches(
        &self,
        model: &str,
        since_millis: Option<i64>,
    ) -> Result<(Vec<(String, Path)>, Option<i64>)> {
        let dir = self.dir(model).join("batches");
        let metas: Vec<_> = match since_millis {
            Some(since) => {
                let offset = dir
                    .clone()
                    .join(format!("{:016}", (since - FEEDBACK_RELIST_MS).max(0)));
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
            .and_then(batch_millis);
        let listed = locations
            .into_iter()
            .filter_map(|location| Some((location.filename()?.to_owned(), location)))
            .collect();
        Ok((listed, newest))
    }

    /// Reads the listed batches, in order.
    pub async fn fetch_batches(
        &self,
        listed: Vec<(String, Path)>,
    ) -> Result<Vec<(String, OutcomeBatch)>> {
        let store = &self.store;
        futures::stream::iter(listed)
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
            .await
    }
}

/// How far back (ms) a reader re-lists outcome batches before the newest it
/// has seen. A batch's key takes its time just before it is written, so
/// only a replica whose clock is more than this far behind, or a write that
/// takes longer, can be missed. Re-listed batches cost a list entry each and
/// are skipped by key.
pub const FEEDBACK_RELIST_MS: i64 = 60_000;

/// The millisecond timestamp a batch key starts with.
pub fn batch_millis(key: &str) -> Option<i64> {
    key.split('-').next()?.parse().ok()
}

/// Forgets the keys a reader that has seen batches up to `newest` can no
/// longer list: what is left bounds the skip set to the relist window.
pub fn forget_unlistable(applied: &mut HashSet<String>, newest: i64) {
    let horizon = newest - FEEDBACK_RELIST_MS;
    applied.retain(|key| batch_millis(key).is_none_or(|millis| millis >= horizon));
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
