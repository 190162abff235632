//! The model registry on object storage.
//!
//! Layout under the registry's prefix:
//!
//! ```text
//! models/{name}/versions/{version:08}/manifest.json   immutable, create-if-absent
//! models/{name}/versions/{version:08}/model.onnx      immutable, create-if-absent
//! models/{name}/log/{seq:010}.json                    release log, create-if-absent
//! ```
//!
//! Nothing is ever overwritten or deleted: every write uses
//! [`PutMode::Create`], so two writers racing for the same version number or
//! log position cannot both win. A version exists for readers once its
//! `published` event is in the log; the serving state is the fold of the log.

mod log;
mod name;
mod replicas;
mod store;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use ort::environment::Environment;
use sha2::{Digest, Sha256};

pub use self::log::{Canary, Event, EventKind, ModelState, Revocation, VersionRecord};
pub use self::name::{MAX_NAME_LEN, ModelName};
pub use self::replicas::{REPORT_EVERY, REPORT_FRESH, ReplicaReport};
pub use self::store::{DEFAULT_REGISTRY, local_folder, normalize, open_store};
use crate::error::{Error, Result};
use crate::kind::ModelKind;
use crate::manifest::{MANIFEST_FORMAT, Manifest, ManifestDraft};
use crate::rollout::policy::{Decision, RolloutPolicy};
use crate::rollout::sequential::Evidence;
use crate::runtime;

/// How often a publish retries when another publisher takes the same
/// version number or log position first.
const PUBLISH_ATTEMPTS: usize = 16;

/// Log objects fetched concurrently when reading a release log.
const LOG_READ_CONCURRENCY: usize = 16;

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A model registry on one object store.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL never carries credentials (they come from the environment).
        f.debug_struct("Registry")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Registry name of the model.
    pub name: ModelName,
    /// Kind whose contract the model must meet.
    pub kind: ModelKind,
    /// The ONNX bytes.
    pub onnx: Bytes,
    /// Author-supplied manifest fields.
    pub draft: ManifestDraft,
    /// Who publishes.
    pub actor: String,
    /// Publish bytes identical to a revoked version's as a new version
    /// (refused otherwise).
    pub force: bool,
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The version's manifest.
    pub manifest: Manifest,
    /// False when the bytes were already a version: that version is
    /// returned and nothing was written.
    pub created: bool,
}

impl std::ops::Deref for Published {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

/// A version's manifest and bytes, verified against each other.
#[derive(Debug, Clone)]
pub struct FetchedVersion {
    /// The manifest.
    pub manifest: Manifest,
    /// The ONNX bytes; their sha256 equals `manifest.sha256`.
    pub onnx: Bytes,
}

impl Registry {
    /// Opens the registry a URL names (see [`open_store`]).
    pub fn open(url: &str) -> Result<Self> {
        let (store, prefix) = open_store(url)?;
        Ok(Registry {
            store,
            prefix,
            url: store::normalize(url)?,
        })
    }

    /// [`Registry::open`] for readers: a local folder that does not exist
    /// is an error naming it (a mistyped `--registry` would otherwise read
    /// as an empty registry), and is not created.
    pub fn open_existing(url: &str) -> Result<Self> {
        if let Some(folder) = store::local_folder(url)
            && !folder.is_dir()
        {
            return Err(Error::invalid(
                "registry",
                format!(
                    "{}: the folder {} does not exist (check --registry or NURTURE_REGISTRY; \
                     publishing a model creates it)",
                    store::normalize(url)?,
                    folder.display()
                ),
            ));
        }
        Self::open(url)
    }

    /// A registry on an already configured store, under `prefix`.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: Path, description: &str) -> Self {
        Registry {
            store,
            prefix,
            url: description.to_owned(),
        }
    }

    /// The URL or description the registry was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path prefix of the registry inside its store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The underlying store, for components that keep their own records
    /// beside the models (e.g. experiments).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn model_dir(&self, name: &ModelName) -> Path {
        self.prefix.clone().join("models").join(name.as_str())
    }

    fn version_dir(&self, name: &ModelName, version: u64) -> Path {
        self.model_dir(name)
            .join("versions")
            .join(format!("{version:08}"))
    }

    fn log_dir(&self, name: &ModelName) -> Path {
        self.model_dir(name).join("log")
    }

    fn event_path(&self, name: &ModelName, seq: u64) -> Path {
        self.log_dir(name).join(format!("{seq:010}.json"))
    }

    /// Names of every model with at least one log entry, sorted.
    pub async fn list_models(&self) -> Result<Vec<ModelName>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.prefix.clone().join("models")))
            .await?;
        let mut names: Vec<ModelName> = listing
            .common_prefixes
            .iter()
            .filter_map(|prefix| prefix.filename().and_then(|name| ModelName::new(name).ok()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every event of a model's release log, in order. Fails if the log has
    /// a gap or an entry cannot be parsed.
    pub async fn read_log(&self, name: &ModelName) -> Result<Vec<Event>> {
        self.read_log_after(name, 0).await
    }

    /// The events of a model's release log after position `seq` (all of
    /// them for 0), in order; only those are listed and fetched. Events are
    /// immutable, so a reader that keeps what it read needs only these.
    pub async fn read_log_after(&self, name: &ModelName, seq: u64) -> Result<Vec<Event>> {
        let log_dir = self.log_dir(name);
        let listing = if seq == 0 {
            self.store.list(Some(&log_dir))
        } else {
            // Positions are zero-padded, so "after this key" is "after seq".
            self.store
                .list_with_offset(Some(&log_dir), &self.event_path(name, seq))
        };
        let mut locations: Vec<(u64, Path)> = listing
            .map_err(Error::from)
            .try_filter_map(|meta| async move {
                let seq = meta
                    .location
                    .filename()
                    .and_then(|file| file.strip_suffix(".json"))
                    .and_then(|stem| stem.parse::<u64>().ok());
                Ok(seq.map(|seq| (seq, meta.location)))
            })
            .try_collect()
            .await?;
        locations.sort_by_key(|(seq, _)| *seq);
        let store = &self.store;
        let events: Vec<Event> = futures::stream::iter(locations)
            .map(|(seq, location)| async move {
                let bytes = store.get(&location).await?.bytes().await?;
                let event: Event =
                    serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
                        object: location.to_string(),
                        reason: error.to_string(),
                    })?;
                if event.seq != seq {
                    return Err(Error::Corrupt {
                        object: location.to_string(),
                        reason: format!("holds seq {}", event.seq),
                    });
                }
                Ok(event)
            })
            .buffered(LOG_READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(events)
    }

    /// The current serving state of a model (the fold of its log). An unknown
    /// model has an empty state.
    pub async fn state(&self, name: &ModelName) -> Result<ModelState> {
        let events = self.read_log(name).await?;
        ModelState::fold(name.as_str(), &events)
    }
}

/// One model's release log as a long-lived reader (a serving replica's
/// watcher) has seen it. Events are never overwritten, so each
/// [`LogFollower::state`] lists and fetches only the events written since
/// the last one, instead of the whole log at every poll.
#[derive(Debug, Clone)]
pub struct LogFollower {
    name: ModelName,
    events: Vec<Event>,
}

impl LogFollower {
    /// A follower that has read nothing yet.
    pub fn new(name: ModelName) -> Self {
        LogFollower {
            name,
            events: Vec::new(),
        }
    }

    /// Reads the events written since the last call and folds the whole log.
    /// On an error nothing read in this call is kept.
    pub async fn state(&mut self, registry: &Registry) -> Result<ModelState> {
        let seen = self.events.last().map_or(0, |event| event.seq);
        let new = registry.read_log_after(&self.name, seen).await?;
        let before = self.events.len();
        self.events.extend(new);
        // The fold refuses gaps and reorders, so a torn listing fails here.
        let state = ModelState::fold(self.name.as_str(), &self.events);
        if state.is_err() {
            self.events.truncate(before);
        }
        state
    }

    /// The events read so far, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Events read so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event has been read.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl Registry {
    /// Appends `kind` at position `seq` with create-if-absent. Fails with
    /// [`Error::Conflict`] when that position is taken.
    pub async fn append(
        &self,
        name: &ModelName,
        seq: u64,
        actor: &str,
        kind: EventKind,
    ) -> Result<Event> {
        let event = Event {
            seq,
            at: Utc::now(),
            actor: actor.to_owned(),
            kind,
        };
        let body =
            serde_json::to_vec_pretty(&event).expect("events always serialise; this is a bug");
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.event_path(name, seq), PutPayload::from(body), options)
            .await
        {
            Ok(_) => Ok(event),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(Error::Conflict(format!(
                "another writer appended event {seq} to the release log of {name} first"
            ))),
            Err(other) => Err(other.into()),
        }
    }

    /// Folds the log, asks `plan` for the event to write, and appends it at
    /// the next position. With `expect_seq`, fails with a conflict unless the
    /// log ends at exactly that position (optimistic concurrency for scripts
    /// and operators). Returns `None` when `plan` decides nothing needs
    /// writing.
    pub async fn change(
        &self,
        name: &ModelName,
        actor: &str,
        expect_seq: Option<u64>,
        plan: impl FnOnce(&ModelState) -> Result<Option<EventKind>>,
    ) -> Result<Option<Event>> {
        let state = self.state(name).await?;
        if state.versions.is_empty() {
            return Err(Error::NotFound(format!("model {name}")));
        }
        if let Some(expected) = expect_seq
            && expected != state.seq
        {
            return Err(Error::Conflict(format!(
                "the release log of {name} ends at {}, not at the expected {expected}",
                state.seq
            )));
        }
        match plan(&state)? {
            Some(kind) => Ok(Some(self.append(name, state.seq + 1, actor, kind).await?)),
            None => Ok(None),
        }
    }

    /// Makes `version` live. A revoked version needs `force`.
    pub async fn promote(
        &self,
        name: &ModelName,
        version: u64,
        force: bool,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            state.plan_promote(version, force)
        })
        .await
    }

    /// Routes `percent` of leads (sticky by lead id) to `version`.
    pub async fn set_canary(
        &self,
        name: &ModelName,
        version: u64,
        percent: u8,
        force: bool,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            state.plan_canary(version, percent, force).map(Some)
        })
        .await
    }

    /// Starts a guarded rollout of `version` under `policy` (the canary is
    /// set to its first step).
    pub async fn start_rollout(
        &self,
        name: &ModelName,
        version: u64,
        policy: RolloutPolicy,
        force: bool,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            state.plan_rollout(version, policy, force).map(Some)
        })
        .await
    }

    /// Records a decision about the rollout of `version`. With `expect_seq`
    /// (as the guard gives it: the log's end when it judged) exactly one of
    /// several deciders succeeds; the others get a conflict.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_rollout(
        &self,
        name: &ModelName,
        version: u64,
        decision: Decision,
        reason: &str,
        evidence: Option<Evidence>,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            state
                .plan_rollout_decision(version, decision, reason, evidence)
                .map(Some)
        })
        .await
    }

    /// Removes the canary (nothing is written when there is none).
    pub async fn clear_canary(
        &self,
        name: &ModelName,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            Ok(state.plan_canary_clear())
        })
        .await
    }

    /// Mirrors `percent` of the live version's requests to `version`.
    pub async fn set_shadow(
        &self,
        name: &ModelName,
        version: u64,
        percent: u8,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            state.plan_shadow(version, percent).map(Some)
        })
        .await
    }

    /// Removes the shadow (`None` when there is none).
    pub async fn clear_shadow(
        &self,
        name: &ModelName,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            Ok(state.plan_shadow_clear())
        })
        .await
    }

    /// Revokes the live version and makes `to` (default: the previous good
    /// live version) live.
    pub async fn rollback(
        &self,
        name: &ModelName,
        to: Option<u64>,
        reason: &str,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            state.plan_rollback(to, reason).map(Some)
        })
        .await
    }

    /// Revokes a version that is neither live nor canary.
    pub async fn revoke(
        &self,
        name: &ModelName,
        version: u64,
        reason: &str,
        actor: &str,
        expect_seq: Option<u64>,
    ) -> Result<Option<Event>> {
        self.change(name, actor, expect_seq, |state| {
            state.plan_revoke(version, reason).map(Some)
        })
        .await
    }

    /// Validates and publishes a new version: the draft against the kind,
    /// the ONNX graph against the kind's contract in ONNX Runtime (probe run
    /// and golden examples), then writes bytes, manifest and the `published`
    /// event. Nothing is written unless every check passes.
    pub async fn publish(
        &self,
        environment: &Environment,
        request: PublishRequest,
    ) -> Result<Published> {
        let PublishRequest {
            name,
            kind,
            onnx,
            draft,
            actor,
            force,
        } = request;
        if onnx.is_empty() {
            return Err(Error::contract(kind, "the ONNX file is empty"));
        }
        let checked = draft.check(kind)?;
        let signature = runtime::check_contract(environment, &onnx, &checked)?;
        let sha256 = sha256_hex(&onnx);

        let state = self.state(&name).await?;
        if let Some(existing) = state.kind
            && existing != kind
        {
            return Err(Error::invalid(
                "kind",
                format!(
                    "model {name} holds {existing} versions; publish {kind} models under another name"
                ),
            ));
        }

        // The same bytes again: a revoked version's stay refused (unless
        // forced); any other version's are that version, and nothing is
        // written.
        if let Some(same) = state.versions.values().find(|v| v.sha256 == sha256) {
            match &same.revoked {
                Some(revocation) if !force => {
                    return Err(Error::Refused(format!(
                        "these bytes are version {} of {name}, revoked: {}; publish them again with --force",
                        same.version, revocation.reason
                    )));
                }
                Some(_) => {}
                None => {
                    return Ok(Published {
                        manifest: self.manifest(&name, same.version).await?,
                        created: false,
                    });
                }
            }
        }

        let draft = checked.draft;
        let defaulted = if kind == ModelKind::Churn && draft.risk_thresholds.is_none() {
            vec!["risk_thresholds".to_owned()]
        } else {
            Vec::new()
        };
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            kind,
            version: 0,
            sha256: sha256.clone(),
            size_bytes: onnx.len() as u64,
            inputs: signature.inputs,
            outputs: signature.outputs,
            features: checked.features,
            labels: checked.labels,
            risk_thresholds: checked.risk_thresholds,
            metrics: draft.metrics,
            feature_means: draft.feature_means,
            feature_importances: draft.feature_importances,
            golden: draft.golden,
            data_hash: draft.data_hash,
            trainer_version: draft.trainer_version,
            description: draft.description,
            reference: draft.reference,
            defaulted,
            retrain: draft.retrain,
            created_at: Utc::now(),
            created_by: actor.clone(),
        };

        // Claim a version number: the manifest is written create-if-absent,
        // so a concurrent publisher that picked the same number loses and
        // moves on to the next.
        let mut version = self.next_version(&name, &state).await?;
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let mut claimed = false;
        for _ in 0..PUBLISH_ATTEMPTS {
            manifest.version = version;
            let body = serde_json::to_vec_pretty(&manifest)
                .expect("manifests always serialise; this is a bug");
            let location = self.version_dir(&name, version).join("manifest.json");
            match self
                .store
                .put_opts(&location, PutPayload::from(body), create())
                .await
            {
                Ok(_) => {
                    claimed = true;
                    break;
                }
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {
                    version += 1;
                }
                Err(other) => return Err(other.into()),
            }
        }
        if !claimed {
            return Err(Error::Conflict(format!(
                "could not claim a version number for {name} after {PUBLISH_ATTEMPTS} attempts"
            )));
        }
        self.store
            .put_opts(
                &self.version_dir(&name, version).join("model.onnx"),
                PutPayload::from(onnx),
                create(),
            )
            .await?;

        // Record the publication; other writers may append meanwhile, so
        // re-read and retry at the new end of the log.
        let mut state = state;
        for attempt in 0..PUBLISH_ATTEMPTS {
            if attempt > 0 {
                state = self.state(&name).await?;
            }
            let event = EventKind::Published {
                version,
                kind,
                sha256: sha256.clone(),
                retrain: manifest.retrain.clone().map(Box::new),
            };
            match self.append(&name, state.seq + 1, &actor, event).await {
                Ok(_) => {
                    return Ok(Published {
                        manifest,
                        created: true,
                    });
                }
                Err(Error::Conflict(_)) => continue,
                Err(other) => return Err(other),
            }
        }
        Err(Error::Conflict(format!(
            "version {version} of {name} is stored but its published event lost {PUBLISH_ATTEMPTS} races; retry"
        )))
    }

    /// One more than the highest version number in the log or in storage
    /// (storage may hold versions whose publication did not finish).
    async fn next_version(&self, name: &ModelName, state: &ModelState) -> Result<u64> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.model_dir(name).join("versions")))
            .await?;
        let stored: BTreeSet<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|prefix| prefix.filename().and_then(|file| file.parse().ok()))
            .collect();
        let highest = stored
            .last()
            .copied()
            .max(state.latest_version())
            .unwrap_or(0);
        Ok(highest + 1)
    }

    /// Reads a version's manifest.
    pub async fn manifest(&self, name: &ModelName, version: u64) -> Result<Manifest> {
        let location = self.version_dir(name, version).join("manifest.json");
        let bytes = match self.store.get(&location).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound(format!(
                    "version {version} of model {name}"
                )));
            }
            Err(other) => return Err(other.into()),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
                object: location.to_string(),
                reason: error.to_string(),
            })?;
        if manifest.version != version || manifest.name != name.as_str() {
            return Err(Error::Corrupt {
                object: location.to_string(),
                reason: format!("describes {} version {}", manifest.name, manifest.version),
            });
        }
        Ok(manifest)
    }

    /// Reads a version's manifest and bytes and verifies the sha256.
    pub async fn fetch(&self, name: &ModelName, version: u64) -> Result<FetchedVersion> {
        let manifest = self.manifest(name, version).await?;
        let location = self.version_dir(name, version).join("model.onnx");
        let onnx = self.store.get(&location).await?.bytes().await?;
        let actual = sha256_hex(&onnx);
        if actual != manifest.sha256 {
            return Err(Error::Integrity {
                object: location.to_string(),
                expected: manifest.sha256,
                actual,
            });
        }
        Ok(FetchedVersion { manifest, onnx })
    }

    /// Object path of a version's ONNX bytes (for tools and tests that need
    /// to reach the raw object).
    pub fn model_path(&self, name: &ModelName, version: u64) -> Path {
        self.version_dir(name, version).join("model.onnx")
    }
}
