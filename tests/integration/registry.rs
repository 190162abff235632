//! One registry suite, run against `file://`, `memory://` and the real
//! S3-compatible test server.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use nurture_models::manifest::{GoldenExample, ManifestDraft};
use nurture_models::registry::{EventKind, PublishRequest};
use nurture_models::{Error, LogFollower, ModelKind, ModelName, Registry, runtime};
use nurture_proto::onnx::tensor_proto::DataType;
use nurture_tests::fixtures::{self, Tabular};
use nurture_tests::s3::TestS3;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tempfile::TempDir;

/// A registry on one backend, with whatever keeps it alive.
struct Backend {
    registry: Registry,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    _dir: Option<TempDir>,
}

impl Backend {
    fn file() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let (store, prefix) = nurture_models::registry::open_store(&url).unwrap();
        let registry = Registry::open(&url).unwrap();
        Backend {
            registry,
            store,
            prefix,
            _dir: Some(dir),
        }
    }

    fn memory() -> Self {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let registry = Registry::from_store(store.clone(), Path::default(), "memory://");
        Backend {
            registry,
            store,
            prefix: Path::default(),
            _dir: None,
        }
    }

    fn s3() -> Self {
        let s3 = TestS3::from_env();
        let store = s3.store();
        let prefix = s3.fresh_prefix("suite");
        let registry = Registry::from_store(store.clone(), prefix.clone(), "s3 test server");
        Backend {
            registry,
            store,
            prefix,
            _dir: None,
        }
    }

    /// Every object under the registry's prefix with its bytes.
    async fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .unwrap();
        let mut objects = BTreeMap::new();
        for meta in metas {
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            objects.insert(meta.location.to_string(), bytes.to_vec());
        }
        objects
    }
}

fn env() -> &'static ort::environment::Environment {
    runtime::environment(None)
        .expect("ONNX Runtime is fetched by scripts/fetch-ort.sh (make test does it)")
}

fn name(value: &str) -> ModelName {
    ModelName::new(value).unwrap()
}

fn churn_width() -> usize {
    ModelKind::Churn.allowed_features().len()
}

fn request(model: &str, kind: ModelKind, onnx: Vec<u8>, draft: ManifestDraft) -> PublishRequest {
    PublishRequest {
        name: name(model),
        kind,
        onnx: onnx.into(),
        draft,
        actor: "ml-engineer".into(),
        force: false,
    }
}

async fn publish_churn(registry: &Registry, seed: u64) -> u64 {
    let onnx = Tabular::new(churn_width(), 2, seed).build();
    registry
        .publish(
            env(),
            request("churn", ModelKind::Churn, onnx, ManifestDraft::default()),
        )
        .await
        .unwrap()
        .version
}

async fn publish_fetch_and_promote(backend: Backend) {
    let registry = &backend.registry;
    let onnx = Tabular::new(churn_width(), 2, 1).build();
    let draft = ManifestDraft {
        metrics: [("auc".to_owned(), 0.91)].into(),
        ..Default::default()
    };
    let manifest = registry
        .publish(
            env(),
            request("churn", ModelKind::Churn, onnx.clone(), draft),
        )
        .await
        .unwrap();
    assert_eq!(manifest.version, 1);
    assert_eq!(manifest.kind, ModelKind::Churn);
    assert_eq!(manifest.features.len(), churn_width());
    assert_eq!(manifest.inputs[0].name, "features");
    assert_eq!(manifest.inputs[0].shape, vec![-1, churn_width() as i64]);
    assert_eq!(manifest.metrics["auc"], 0.91);
    assert_eq!(manifest.risk_thresholds.map(|t| t.len()), Some(4));

    let fetched = registry.fetch(&name("churn"), 1).await.unwrap();
    assert_eq!(fetched.onnx.as_ref(), onnx.as_slice());
    assert_eq!(fetched.manifest, manifest.manifest);

    assert_eq!(publish_churn(registry, 2).await, 2);
    let emotion = registry
        .publish(
            env(),
            request(
                "emotion",
                ModelKind::Emotion,
                fixtures::emotion(1),
                ManifestDraft::default(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(emotion.version, 1);
    assert_eq!(emotion.labels.len(), 10);

    let state = registry.state(&name("churn")).await.unwrap();
    assert_eq!(state.live, None);
    assert_eq!(
        state.versions.keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );

    registry
        .promote(&name("churn"), 1, false, "sre", None)
        .await
        .unwrap()
        .unwrap();
    registry
        .promote(&name("churn"), 2, false, "sre", None)
        .await
        .unwrap()
        .unwrap();
    // Promoting the live version again writes nothing.
    assert!(
        registry
            .promote(&name("churn"), 2, false, "sre", None)
            .await
            .unwrap()
            .is_none()
    );
    let state = registry.state(&name("churn")).await.unwrap();
    assert_eq!(state.live, Some(2));
    assert_eq!(state.seq, 4);

    let names: Vec<String> = registry
        .list_models()
        .await
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["churn", "emotion"]);

    // A model keeps its kind.
    let error = registry
        .publish(
            env(),
            request(
                "churn",
                ModelKind::Journey,
                Tabular::new(churn_width(), 5, 3).build(),
                ManifestDraft::default(),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("holds churn versions"),
        "{error}"
    );
}

async fn rollback_revokes_and_promote_needs_force(backend: Backend) {
    let registry = &backend.registry;
    let churn = name("churn");
    for seed in 1..=3 {
        publish_churn(registry, seed).await;
    }
    for version in 1..=3 {
        registry
            .promote(&churn, version, false, "sre", None)
            .await
            .unwrap();
    }
    registry
        .set_canary(&churn, 1, 10, false, "sre", None)
        .await
        .unwrap();

    let event = registry
        .rollback(&churn, None, "p99 doubled after deploy", "oncall", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event.kind,
        EventKind::RolledBack {
            from: 3,
            to: 2,
            reason: "p99 doubled after deploy".into()
        }
    );

    let state = registry.state(&churn).await.unwrap();
    assert_eq!(state.live, Some(2));
    assert_eq!(state.canary, None, "a rollback clears the canary");
    let revoked = state.versions[&3]
        .revoked
        .as_ref()
        .expect("version 3 is revoked");
    assert_eq!(revoked.reason, "p99 doubled after deploy");
    assert_eq!(revoked.actor, "oncall");

    let refused = registry
        .promote(&churn, 3, false, "sre", None)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Refused(_)));
    let message = refused.to_string();
    assert!(
        message.contains("rolled back")
            && message.contains("p99 doubled after deploy")
            && message.contains("--force"),
        "{message}"
    );
    // A later publish does not bring it back either.
    publish_churn(registry, 4).await;
    let state = registry.state(&churn).await.unwrap();
    assert_eq!(state.live, Some(2));
    assert!(state.versions[&3].revoked.is_some());

    // Revoked stays revoked: its bytes are refused as a new version,
    // naming the version and why, unless forced.
    let onnx = |seed| Tabular::new(churn_width(), 2, seed).build();
    let republish = |seed, force| {
        let mut request = request(
            "churn",
            ModelKind::Churn,
            onnx(seed),
            ManifestDraft::default(),
        );
        request.force = force;
        registry.publish(env(), request)
    };
    let seq = registry.state(&churn).await.unwrap().seq;
    let refused = republish(3, false).await.unwrap_err();
    assert!(matches!(refused, Error::Refused(_)));
    let message = refused.to_string();
    assert!(
        message.contains("version 3")
            && message.contains("p99 doubled after deploy")
            && message.contains("--force"),
        "{message}"
    );
    assert_eq!(
        registry.state(&churn).await.unwrap().seq,
        seq,
        "nothing written"
    );
    // Bytes of a version in good standing are that version: nothing written.
    let again = republish(2, false).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.version, 2);
    let state = registry.state(&churn).await.unwrap();
    assert_eq!((state.seq, state.versions.len()), (seq, 4));
    // Forced, the revoked bytes become a new version.
    let forced = republish(3, true).await.unwrap();
    assert!(forced.created);
    assert_eq!(forced.version, 5);
    assert!(
        registry.state(&churn).await.unwrap().versions[&5]
            .revoked
            .is_none()
    );

    let forced = registry
        .promote(&churn, 3, true, "sre", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        forced.kind,
        EventKind::Promoted {
            version: 3,
            forced: true
        }
    );
    let history = registry.read_log(&churn).await.unwrap();
    assert_eq!(
        history.last().unwrap().kind,
        EventKind::Promoted {
            version: 3,
            forced: true
        }
    );
    assert_eq!(registry.state(&churn).await.unwrap().live, Some(3));

    // Rollback to an explicit version.
    registry
        .rollback(&churn, Some(1), "go back further", "oncall", None)
        .await
        .unwrap();
    assert_eq!(registry.state(&churn).await.unwrap().live, Some(1));
}

async fn bad_artifacts_leave_the_registry_unchanged(backend: Backend) {
    let registry = &backend.registry;
    publish_churn(registry, 1).await;
    registry
        .promote(&name("churn"), 1, false, "sre", None)
        .await
        .unwrap();
    let before = backend.snapshot().await;

    let width = churn_width();
    let valid = Tabular::new(width, 2, 7).build();
    let unknown_feature = ManifestDraft {
        features: Some(vec!["email_open_rate".into(), "favourite_colour".into()]),
        ..Default::default()
    };
    let narrow = ManifestDraft {
        features: Some(vec!["email_open_rate".into(), "sms_reply_rate".into()]),
        ..Default::default()
    };
    let wrong_golden = ManifestDraft {
        golden: vec![GoldenExample {
            features: Some(vec![0.0; width]),
            text: None,
            probabilities: vec![0.99, 0.01],
        }],
        ..Default::default()
    };
    let cases: Vec<(&str, ModelKind, Vec<u8>, ManifestDraft, &str)> = vec![
        (
            "truncated",
            ModelKind::Churn,
            valid[..valid.len() / 2].to_vec(),
            ManifestDraft::default(),
            "cannot load",
        ),
        (
            "not onnx",
            ModelKind::Churn,
            b"this is not an ONNX model".to_vec(),
            ManifestDraft::default(),
            "cannot load",
        ),
        (
            "empty",
            ModelKind::Churn,
            Vec::new(),
            ManifestDraft::default(),
            "empty",
        ),
        (
            "wrong input name",
            ModelKind::Churn,
            Tabular {
                input_name: "input",
                ..Tabular::new(width, 2, 7)
            }
            .build(),
            ManifestDraft::default(),
            "input is named \"input\"",
        ),
        (
            "wrong dtype",
            ModelKind::Churn,
            Tabular {
                input_type: DataType::Double,
                ..Tabular::new(width, 2, 7)
            }
            .build(),
            ManifestDraft::default(),
            "float64, expected float32",
        ),
        (
            "three classes for churn",
            ModelKind::Churn,
            Tabular::new(width, 3, 7).build(),
            ManifestDraft::default(),
            "[batch, 2]",
        ),
        (
            "three classes behind a dynamic dimension",
            ModelKind::Churn,
            Tabular {
                dynamic_classes: true,
                ..Tabular::new(width, 3, 7)
            }
            .build(),
            ManifestDraft::default(),
            "[batch, 2]",
        ),
        (
            "raw scores instead of probabilities",
            ModelKind::Churn,
            Tabular {
                softmax: false,
                ..Tabular::new(width, 2, 7)
            }
            .build(),
            ManifestDraft::default(),
            "not a probability distribution",
        ),
        (
            "unknown feature",
            ModelKind::Churn,
            valid.clone(),
            unknown_feature,
            "manifest.features[1]",
        ),
        (
            "width differs from manifest",
            ModelKind::Churn,
            valid.clone(),
            narrow,
            "[batch, 2]",
        ),
        (
            "golden not reproduced",
            ModelKind::Churn,
            valid.clone(),
            wrong_golden,
            "golden example 0",
        ),
        (
            "text model as churn",
            ModelKind::Churn,
            fixtures::emotion(1),
            ManifestDraft::default(),
            "expected \"features\"",
        ),
        (
            "tabular model as emotion",
            ModelKind::Emotion,
            valid.clone(),
            ManifestDraft::default(),
            "expected \"text\"",
        ),
    ];
    for (case, kind, onnx, draft, expected) in cases {
        let error = registry
            .publish(env(), request("churn", kind, onnx, draft))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains(expected), "{case}: {message}");
        assert_eq!(
            backend.snapshot().await,
            before,
            "{case}: the registry changed"
        );
    }
    let error = ModelName::new("team/churn").unwrap_err().to_string();
    assert!(error.contains("path separators"), "{error}");
    assert_eq!(backend.snapshot().await, before);
}

async fn fetch_detects_tampered_bytes(backend: Backend) {
    let registry = &backend.registry;
    publish_churn(registry, 1).await;
    // Bypass the registry and overwrite the stored bytes.
    let tampered = Tabular::new(churn_width(), 2, 99).build();
    let location = registry.model_path(&name("churn"), 1);
    backend
        .store
        .put(&location, PutPayload::from(tampered))
        .await
        .unwrap();
    let error = registry.fetch(&name("churn"), 1).await.unwrap_err();
    assert!(matches!(error, Error::Integrity { .. }), "{error}");
    assert!(error.to_string().contains("sha256"), "{error}");
    assert!(matches!(
        registry.fetch(&name("churn"), 7).await,
        Err(Error::NotFound(_))
    ));
}

async fn racing_appends_have_exactly_one_winner(backend: Backend) {
    let registry = &backend.registry;
    let churn = name("churn");
    publish_churn(registry, 1).await;
    publish_churn(registry, 2).await;
    let seq = registry.state(&churn).await.unwrap().seq;

    let writers = 16;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let registry = registry.clone();
        let churn = churn.clone();
        tasks.push(tokio::spawn(async move {
            let event = EventKind::Promoted {
                version: 1 + writer % 2,
                forced: false,
            };
            registry
                .append(&churn, seq + 1, &format!("writer-{writer}"), event)
                .await
        }));
    }
    let mut winners = Vec::new();
    for (writer, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(event) => winners.push((writer, event)),
            Err(Error::Conflict(_)) => {}
            Err(other) => panic!("writer {writer}: unexpected error {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    let (_, won) = &winners[0];
    let log = registry.read_log(&churn).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=seq + 1).collect::<Vec<_>>(),
        "no gap"
    );
    assert_eq!(
        log.last().unwrap(),
        won,
        "the stored event is the winner's, not overwritten"
    );
}

async fn concurrent_publishes_get_distinct_versions(backend: Backend) {
    let registry = &backend.registry;
    let mut tasks = Vec::new();
    for seed in 0..4 {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            publish_churn(&registry, 10 + seed).await
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let state = registry.state(&name("churn")).await.unwrap();
    assert_eq!(state.versions.len(), 4);
    assert_eq!(state.seq, 4);
    for version in 1..=4 {
        registry.fetch(&name("churn"), version).await.unwrap();
    }
}

async fn golden_examples_are_replayed_at_publish(backend: Backend) {
    let registry = &backend.registry;
    let width = churn_width();
    let onnx = Tabular::new(width, 2, 5).build();
    let mut session = runtime::session(env(), &onnx, 1).unwrap();
    let row: Vec<f32> = (0..width).map(|i| (i % 3) as f32 * 0.25).collect();
    let input = ort::value::Tensor::from_array(([1usize, width], row.clone())).unwrap();
    let outputs = session.run(ort::inputs!["features" => input]).unwrap();
    let (_, probabilities) = outputs["probabilities"]
        .try_extract_tensor::<f32>()
        .unwrap();
    let golden = GoldenExample {
        features: Some(row),
        text: None,
        probabilities: probabilities.to_vec(),
    };
    let draft = ManifestDraft {
        golden: vec![golden.clone()],
        ..Default::default()
    };
    let manifest = registry
        .publish(env(), request("churn", ModelKind::Churn, onnx, draft))
        .await
        .unwrap();
    assert_eq!(manifest.golden, vec![golden]);
}

async fn a_follower_reads_only_new_events(backend: Backend) {
    let registry = &backend.registry;
    let churn = name("churn");
    let mut follower = LogFollower::new(churn.clone());
    assert_eq!(follower.state(registry).await.unwrap().seq, 0, "no log yet");
    publish_churn(registry, 1).await;
    publish_churn(registry, 2).await;
    let state = follower.state(registry).await.unwrap();
    assert_eq!(state, registry.state(&churn).await.unwrap());
    assert_eq!(follower.len(), 2);

    // Garble an event the follower already read, behind the registry's
    // back: a full read now fails, the follower never reads it again.
    let event = |seq: u64| {
        backend
            .prefix
            .clone()
            .join("models")
            .join("churn")
            .join("log")
            .join(format!("{seq:010}.json"))
    };
    backend
        .store
        .put(&event(1), PutPayload::from_static(b"garbled"))
        .await
        .unwrap();
    assert!(matches!(
        registry.state(&churn).await,
        Err(Error::Corrupt { .. })
    ));
    registry
        .append(
            &churn,
            3,
            "sre",
            EventKind::Promoted {
                version: 2,
                forced: false,
            },
        )
        .await
        .unwrap();
    let state = follower.state(registry).await.unwrap();
    assert_eq!((state.seq, state.live), (3, Some(2)));
    assert_eq!(follower.len(), 3);

    // An event written past a gap is refused and not kept; once the gap
    // is filled the follower reads both.
    let promoted = |seq: u64, version: u64| {
        serde_json::to_vec(&nurture_models::registry::Event {
            seq,
            at: chrono::Utc::now(),
            actor: "sre".into(),
            kind: EventKind::Promoted {
                version,
                forced: false,
            },
        })
        .unwrap()
    };
    backend
        .store
        .put(&event(5), PutPayload::from(promoted(5, 2)))
        .await
        .unwrap();
    assert!(follower.state(registry).await.is_err(), "gap at 4");
    assert_eq!(follower.len(), 3, "nothing kept from the failed read");
    backend
        .store
        .put(&event(4), PutPayload::from(promoted(4, 1)))
        .await
        .unwrap();
    let state = follower.state(registry).await.unwrap();
    assert_eq!((state.seq, state.live), (5, Some(2)));
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn publish_fetch_and_promote() {
                super::publish_fetch_and_promote(Backend::$backend()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_revokes_and_promote_needs_force() {
                super::rollback_revokes_and_promote_needs_force(Backend::$backend()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_artifacts_leave_the_registry_unchanged() {
                super::bad_artifacts_leave_the_registry_unchanged(Backend::$backend()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fetch_detects_tampered_bytes() {
                super::fetch_detects_tampered_bytes(Backend::$backend()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn racing_appends_have_exactly_one_winner() {
                super::racing_appends_have_exactly_one_winner(Backend::$backend()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_publishes_get_distinct_versions() {
                super::concurrent_publishes_get_distinct_versions(Backend::$backend()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_follower_reads_only_new_events() {
                super::a_follower_reads_only_new_events(Backend::$backend()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn golden_examples_are_replayed_at_publish() {
                super::golden_examples_are_replayed_at_publish(Backend::$backend()).await;
            }
        }
    };
}

suite!(file);
suite!(memory);
suite!(s3);
