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

/// What became of one outcome handed to [`FeedbackStore::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Newly recorded (or adopted: recorded by a writer that died before
    /// its batch was written, and now counted).
    Recorded,
    /// Recorded and counted before: a replay.
    Duplicate,
    /// Recorded by another call whose batch is not written yet; the caller
    /// should retry later (it is adopted once that call is surely dead).
    Pending,
}

/// What recording a call's outcomes did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Per outcome, in order.
    pub fates: Vec<Fate>,
    /// The batches written (key and contents): the call's new outcomes, and
    /// any it adopted.
    pub batches: Vec<(String, OutcomeBatch)>,
}

/// An outcome's idempotency record: the outcome and the batch its writer
/// put it in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Claim {
    batch: String,
    outcome: ScoredOutcome,
}

/// How long a writer may take from its idempotency records to its batch
/// before it gives up (without acknowledging).
pub const WRITE_BUDGET_MS: i64 = 20_000;
/// Default age after which an idempotency record whose batch never
/// appeared is adopted by a replay: past the write budget plus the object
/// store client's longest retry (3 minutes), so its writer is surely gone.
pub const DEFAULT_ADOPT_AFTER_MS: i64 = 600_000;

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

/// Creates `location` unless it exists; `true` if this call created it.
async fn create_if_absent(store: &dyn ObjectStore, location: &Path, body: Vec<u8>) -> Result<bool> {
    match store
        .put_opts(location, PutPayload::from(body), create())
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if already_there(&error) => Ok(false),
        Err(error) => Err(Error::from(error)),
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

    /// Feedback beside `registry` (under its root), written as `writer`.
    pub fn beside(registry: &crate::Registry, writer: &str) -> Self {
        FeedbackStore::new(registry.store().clone(), registry.prefix().clone(), writer)
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

    /// Records outcomes durably and idempotently, returning once they are
    /// stored. Each outcome first gets its idempotency record
    /// (create-if-absent), naming the batch this call will write; then the
    /// batch of the new ones is written. A record that exists marks a
    /// replay: if its batch exists, a duplicate; if not, its writer is still
    /// at work ([`Fate::Pending`]) or died between the two writes, and past
    /// `adopt_after_ms` this call adopts it (once: an adoption record is
    /// created first) into a batch of its own.
    pub async fn record(
        &self,
        model: &str,
        outcomes: Vec<ScoredOutcome>,
        adopt_after_ms: i64,
    ) -> Result<Recorded> {
        let dir = self.dir(model);
        let started = Utc::now().timestamp_millis();
        let batch_key = self.next_batch_key(started);
        // NOTE: owned (location, body) pairs, so the future stays `Send`
        // for tonic (a closure over borrowed outcomes would not be).
        let writes: Vec<(Path, Vec<u8>)> = outcomes
            .iter()
            .map(|outcome| {
                let claim = Claim {
                    batch: batch_key.clone(),
                    outcome: outcome.clone(),
                };
                (
                    self.claim_location(model, &outcome.key, "outcomes"),
                    serde_json::to_vec(&claim).expect("claims serialise"),
                )
            })
            .collect();
        let store = &self.store;
        let created: Vec<bool> = futures::stream::iter(writes)
            .map(|(location, body)| async move {
                create_if_absent(store.as_ref(), &location, body).await
            })
            .buffered(16)
            .try_collect()
            .await?;
        let mut fates = Vec::with_capacity(outcomes.len());
        let mut fresh = Vec::new();
        let mut adopted = Vec::new();
        for (outcome, created) in outcomes.into_iter().zip(created) {
            if created {
                fates.push(Fate::Recorded);
                fresh.push(outcome);
                continue;
            }
            let fate = self.replayed(model, &outcome, adopt_after_ms).await?;
            if let Some(claimed) = fate.1 {
                adopted.push(claimed);
            }
            fates.push(fate.0);
        }
        if Utc::now().timestamp_millis() - started > WRITE_BUDGET_MS {
            // The records stay without a batch; a replay adopts them later.
            return Err(Error::Store(format!(
                "recording took longer than {WRITE_BUDGET_MS} ms; not acknowledged, retry later"
            )));
        }
        let mut batches = Vec::new();
        for (key, outcomes) in [
            (batch_key, fresh),
            (self.next_batch_key(Utc::now().timestamp_millis()), adopted),
        ] {
            if outcomes.is_empty() {
                continue;
            }
            let batch = OutcomeBatch {
                replica: self.replica.clone(),
                at: Utc::now(),
                outcomes,
            };
            let body = serde_json::to_vec(&batch).expect("batches serialise");
            self.store
                .put_opts(
                    &dir.clone().join("batches").join(key.as_str()),
                    PutPayload::from(body),
                    create(),
                )
                .await?;
            batches.push((key, batch));
        }
        Ok(Recorded { fates, batches })
    }

    /// Writes one Parquet file of `model`'s prediction log, served on `date`
    /// (YYYY-MM-DD, UTC), under Hive-style partitions
    /// `feedback/predictions/model={model}/date={date}/`; returns its path.
    pub async fn write_predictions(
        &self,
        model: &str,
        date: &str,
        parquet: Vec<u8>,
    ) -> Result<String> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let location = self
            .root()
            .join("predictions")
            .join(format!("model={model}"))
            .join(format!("date={date}"))
            .join(format!(
                "{:016}-{}-{n:010}.parquet",
                Utc::now().timestamp_millis(),
                self.replica
            ));
        self.store
            .put_opts(&location, PutPayload::from(parquet), create())
            .await?;
        Ok(location.to_string())
    }

    fn next_batch_key(&self, millis: i64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{millis:016}-{}-{n:010}.json", self.replica)
    }

    fn claim_location(&self, model: &str, key: &str, kind: &str) -> Path {
        self.dir(model)
            .join(kind)
            .join(&key[..2.min(key.len())])
            .join(format!("{key}.json"))
    }

    /// What an outcome whose idempotency record exists is: a duplicate, one
    /// still being written, or an orphan this call now adopts (returned).
    async fn replayed(
        &self,
        model: &str,
        outcome: &ScoredOutcome,
        adopt_after_ms: i64,
    ) -> Result<(Fate, Option<ScoredOutcome>)> {
        let location = self.claim_location(model, &outcome.key, "outcomes");
        let bytes = self.store.get(&location).await?.bytes().await?;
        let claim: Claim = serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
            object: location.to_string(),
            reason: error.to_string(),
        })?;
        let batch = self.dir(model).join("batches").join(claim.batch.as_str());
        match self.store.head(&batch).await {
            Ok(_) => return Ok((Fate::Duplicate, None)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        let age = Utc::now().timestamp_millis() - crate::batches::millis(&claim.batch).unwrap_or(0);
        if age < adopt_after_ms {
            return Ok((Fate::Pending, None));
        }
        let adoption = self.claim_location(model, &outcome.key, "adopted");
        let body = serde_json::to_vec(&claim).expect("claims serialise");
        if create_if_absent(self.store.as_ref(), &adoption, body).await? {
            Ok((Fate::Recorded, Some(claim.outcome)))
        } else {
            Ok((Fate::Duplicate, None))
        }
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
        crate::batches::list(&self.store, &dir, since_millis, FEEDBACK_RELIST_MS).await
    }

    /// The answers of `model` (of `kind`) in the prediction log that `keep`
    /// accepts, file by file in name order (the writer's time, then
    /// replica), each file's rows in the order they were written; and how
    /// many answers were read in all. Only the kept answers are held, so a
    /// reader that keeps a few answers of a long log holds a few.
    ///
    /// With `served_from` (ms since the epoch), files written before it
    /// (less [`LOG_WRITE_SLACK_MS`]) are not read: a file is named by the
    /// time it was written, after every answer in it was served, so such a
    /// file holds no answer served since.
    pub async fn read_predictions(
        &self,
        model: &str,
        kind: crate::kind::ModelKind,
        served_from: Option<i64>,
        keep: impl Fn(&super::log::Logged) -> bool,
    ) -> Result<(Vec<super::log::Logged>, usize)> {
        let dir = self
            .root()
            .join("predictions")
            .join(format!("model={model}"));
        let mut files: Vec<Path> = self
            .store
            .list(Some(&dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        files.retain(|file| {
            file.extension() == Some("parquet")
                && served_from.is_none_or(|from| {
                    // Named `{ms:016}-{replica}-{n}` like an outcome batch.
                    let written = file.filename().and_then(crate::batches::millis);
                    written.is_none_or(|written| written >= from.saturating_sub(LOG_WRITE_SLACK_MS))
                })
        });
        files.sort_by(|a, b| a.filename().cmp(&b.filename()).then(a.cmp(b)));
        let store = &self.store;
        let mut decoded = futures::stream::iter(files)
            .map(|file| async move {
                let bytes = store.get(&file).await?.bytes().await?;
                super::log::decode(kind, file.as_ref(), bytes)
            })
            .buffered(8);
        let (mut kept, mut read) = (Vec::new(), 0);
        while let Some(answers) = decoded.try_next().await? {
            read += answers.len();
            kept.extend(answers.into_iter().filter(|answer| keep(answer)));
        }
        Ok((kept, read))
    }

    /// Reads the listed batches, in order.
    pub async fn fetch_batches(
        &self,
        listed: Vec<(String, Path)>,
    ) -> Result<Vec<(String, OutcomeBatch)>> {
        crate::batches::fetch(&self.store, listed).await
    }
}

/// How far back (ms) a reader re-lists outcome batches before the newest it
/// has seen. A batch's key takes its time just before it is written, so
/// only a replica whose clock is more than this far behind, or a write that
/// takes longer, can be missed. Re-listed batches cost a list entry each and
/// are skipped by key.
pub const FEEDBACK_RELIST_MS: i64 = 60_000;

/// How much earlier than `served_from` a prediction log file may be named
/// and still be read (see [`FeedbackStore::read_predictions`]): a file's
/// name takes the writer's clock after its answers took the same clock, so
/// only a step back of that clock by more than this between the two can
/// hide an answer.
pub const LOG_WRITE_SLACK_MS: i64 = 60_000;

/// Forgets the keys a reader that has seen batches up to `newest` can no
/// longer list: what is left bounds the skip set to the relist window.
pub fn forget_unlistable(applied: &mut HashSet<String>, newest: i64) {
    crate::batches::forget_unlistable(applied, newest, FEEDBACK_RELIST_MS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Arm, Label, ModelQuality, Prediction, outcome_key};
    use object_store::memory::InMemory;

    const NEVER: i64 = i64::MAX;

    fn outcome(id: &str, p: f32, y: bool) -> ScoredOutcome {
        ScoredOutcome {
            key: outcome_key("churn", "pid", id),
            prediction_id: "pid".into(),
            version: 1,
            arm: Arm::Live,
            served_at_ms: 1,
            observed_at_ms: 2,
            label: Label::Binary(y),
            value: None,
            prediction: Prediction::Binary(p),
        }
    }

    async fn fold_all(store: &FeedbackStore) -> ModelQuality {
        let (batches, _) = store
            .read_batches("churn", None, &HashSet::new())
            .await
            .unwrap();
        let mut quality = ModelQuality::default();
        for (_, batch) in &batches {
            quality.fold(batch);
        }
        quality
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
                NEVER,
            )
            .await
            .unwrap();
        assert_eq!(first.fates, [Fate::Recorded, Fate::Recorded]);
        // The same two again from another replica, with a new one.
        let replay = b
            .record(
                "churn",
                vec![
                    outcome("o1", 0.9, true),
                    outcome("o3", 0.6, false),
                    outcome("o2", 0.2, false),
                ],
                NEVER,
            )
            .await
            .unwrap();
        assert_eq!(
            replay.fates,
            [Fate::Duplicate, Fate::Recorded, Fate::Duplicate]
        );
        assert_eq!(replay.batches.len(), 1);
        assert_eq!(replay.batches[0].1.outcomes.len(), 1);
        let nothing = a
            .record("churn", vec![outcome("o3", 0.6, false)], NEVER)
            .await
            .unwrap();
        assert!(nothing.batches.is_empty());
        // A third reader folds both batches: three outcomes, once each.
        let reader = FeedbackStore::new(memory, Path::from("r"), "c");
        assert_eq!(fold_all(&reader).await.states[&(1, Arm::Live)].outcomes, 3);
        let (batches, newest) = reader
            .read_batches("churn", None, &HashSet::new())
            .await
            .unwrap();
        let skip: HashSet<String> = batches.iter().map(|(key, _)| key.clone()).collect();
        let (again, _) = reader.read_batches("churn", newest, &skip).await.unwrap();
        assert!(again.is_empty());
    }

    #[tokio::test]
    async fn an_outcome_whose_writer_died_before_its_batch_is_adopted_once() {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = FeedbackStore::new(memory.clone(), Path::from("r"), "a");
        // A writer that died after its idempotency record: no batch.
        let orphan = outcome("o1", 0.7, true);
        let claim = Claim {
            batch: format!("{:016}-dead-{:010}.json", Utc::now().timestamp_millis(), 0),
            outcome: orphan.clone(),
        };
        memory
            .put(
                &store.claim_location("churn", &orphan.key, "outcomes"),
                PutPayload::from(serde_json::to_vec(&claim).unwrap()),
            )
            .await
            .unwrap();
        // While its writer may still be at work, a replay is told to wait.
        let early = store
            .record("churn", vec![orphan.clone()], 60_000)
            .await
            .unwrap();
        assert_eq!(early.fates, [Fate::Pending]);
        assert!(fold_all(&store).await.states.is_empty());
        // Past the adoption age, two racing replays: one adopts, one is a duplicate.
        let other = FeedbackStore::new(memory, Path::from("r"), "b");
        let (x, y) = tokio::join!(
            store.record("churn", vec![orphan.clone()], 0),
            other.record("churn", vec![orphan.clone()], 0)
        );
        let mut fates = [x.unwrap().fates[0], y.unwrap().fates[0]];
        fates.sort_by_key(|f| *f as u8);
        assert_eq!(fates, [Fate::Recorded, Fate::Duplicate]);
        assert_eq!(fold_all(&store).await.states[&(1, Arm::Live)].outcomes, 1);
        // And afterwards it is a plain duplicate.
        let later = store.record("churn", vec![orphan], 0).await.unwrap();
        assert_eq!(later.fates, [Fate::Duplicate]);
        assert_eq!(fold_all(&store).await.states[&(1, Arm::Live)].outcomes, 1);
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

    /// A prediction log file of churn answers `ids`, each served at
    /// `served`, put under the name a writer at `written` gives it.
    async fn put_log(store: &FeedbackStore, written: &str, served: i64, ids: &[&str]) {
        use crate::feedback::log::{LogBatch, Row, encode};
        use crate::kind::ModelKind;
        let mut batch = LogBatch::new(ModelKind::Churn);
        for id in ids {
            batch.push(&Row {
                prediction_id: id,
                version: 1,
                arm: Arm::Live,
                mirror_of: None,
                served_at_ms: served,
                lead_id: "",
                features: &[],
                text: None,
                probabilities: &[0.5, 0.5],
            });
        }
        let bytes = encode("churn", "a", &[batch]).unwrap();
        let location = store
            .root()
            .join("predictions")
            .join("model=churn")
            .join("date=2026-01-01")
            .join(format!("{written}.parquet"));
        store.store.put(&location, bytes.into()).await.unwrap();
    }

    #[tokio::test]
    async fn a_log_is_read_from_the_first_file_that_can_hold_an_answer_served_since() {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = FeedbackStore::new(memory, Path::from("r"), "a");
        // Each file is named after its answers were served.
        put_log(
            &store,
            "0000001000000000-a-0000000000",
            999_000_000,
            &["old-1", "old-2"],
        )
        .await;
        let edge = 2_000_000_000 - LOG_WRITE_SLACK_MS;
        put_log(
            &store,
            &format!("{edge:016}-a-0000000001"),
            edge - 1,
            &["edge"],
        )
        .await;
        put_log(
            &store,
            "0000003000000000-b-0000000000",
            2_999_000_000,
            &["new-1", "new-2"],
        )
        .await;
        put_log(&store, "renamed-by-hand", 1, &["unnamed"]).await;
        let ids = |answers: &[super::super::log::Logged]| -> Vec<String> {
            answers.iter().map(|a| a.prediction_id.clone()).collect()
        };
        let kind = crate::kind::ModelKind::Churn;

        // Everything, in name order.
        let (all, read) = store
            .read_predictions("churn", kind, None, |_| true)
            .await
            .unwrap();
        assert_eq!(
            ids(&all),
            ["old-1", "old-2", "edge", "new-1", "new-2", "unnamed"]
        );
        assert_eq!(read, 6);

        // From 2,000,000,000 ms: the first file was written a second before
        // it and is skipped; the one written within the clock slack is read;
        // a file whose name holds no time is read.
        let (since, read) = store
            .read_predictions("churn", kind, Some(2_000_000_000), |_| true)
            .await
            .unwrap();
        assert_eq!(ids(&since), ["edge", "new-1", "new-2", "unnamed"]);
        assert_eq!(read, 4);

        // Only the answers kept are held; every answer read is counted.
        let (kept, read) = store
            .read_predictions("churn", kind, Some(2_000_000_000), |a| {
                a.prediction_id.starts_with("new")
            })
            .await
            .unwrap();
        assert_eq!(ids(&kept), ["new-1", "new-2"]);
        assert_eq!(read, 4);
    }
}
