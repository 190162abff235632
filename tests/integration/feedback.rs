//! Closing the loop end to end: prediction ids on answers, outcomes recorded
//! by id through `FeedbackService`, live quality per version equal to
//! scikit-learn's on the same pairs, replays and bad ids that move nothing,
//! durability across SIGKILL, and one fleet-wide figure across replicas.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nurture_models::feedback::{Arm, IdKey, Prediction, PredictionId};
use nurture_proto::prost_types;
use nurture_proto::v1::churn_service_client::ChurnServiceClient;
use nurture_proto::v1::feedback_service_client::FeedbackServiceClient;
use nurture_proto::v1::journey_service_client::JourneyServiceClient;
use nurture_proto::v1::{self, outcome_report::Label};
use nurture_tests::fixtures::labelled_leads;
use nurture_tests::server::ServerProcess;
use nurture_tests::{assert_invalid_argument, eventually, run_python, run_tool};
use tempfile::TempDir;
use tonic::transport::Channel;

/// Journey stages in label order (the proto enum counts from 1).
const STAGES: [&str; 5] = [
    "initial_interest",
    "active_search",
    "property_evaluation",
    "decision_making",
    "ready_to_buy",
];

/// A file registry with churn and journey trained and live, and the data
/// they were trained from (labels known).
struct Loop {
    dir: TempDir,
}

impl Loop {
    fn new() -> Loop {
        let fixture = Loop {
            dir: tempfile::tempdir().unwrap(),
        };
        let data = fixture.data();
        let data = data.to_str().unwrap();
        fixture.run(
            "nurture-trainer",
            &["generate", "--out", data, "--rows", "1500"],
        );
        for kind in ["churn", "journey"] {
            let csv = format!("{data}/{kind}.csv");
            fixture.run(
                "nurture-trainer",
                &[
                    "train",
                    kind,
                    "--data",
                    &csv,
                    "--promote",
                    "--refit",
                    "never",
                    "--iterations",
                    "40",
                ],
            );
        }
        fixture
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn registry(&self) -> String {
        format!("file://{}", self.dir.path().join("registry").display())
    }

    fn run(&self, binary: &str, args: &[&str]) -> String {
        run_tool(binary, &self.registry(), args, &[])
    }

    fn server(&self, extra: &[&str]) -> ServerProcess {
        let mut args = vec![
            "--prediction-log-flush",
            "200ms",
            "--models",
            "churn,journey",
            "--feedback-refresh",
            "200ms",
            "--quality-min-outcomes",
            "30",
        ];
        args.extend_from_slice(extra);
        ServerProcess::start(&self.registry(), &self.dir.path().join("cache"), &args)
    }

    /// The fleet's prediction-id key, as a replica created it in the store.
    fn key(&self) -> IdKey {
        let text = std::fs::read_to_string(self.dir.path().join("registry/feedback/key")).unwrap();
        IdKey::from_hex(&text).unwrap()
    }
}

/// Waits (at most 60 s) until churn answers on `channel` with prediction
/// ids (the model is live and the fleet's key is known).
async fn answers_with_ids(channel: &Channel, lead: &v1::LeadProfile) {
    eventually(
        "churn answers with ids",
        Duration::from_secs(60),
        async || {
            ChurnServiceClient::new(channel.clone())
                .predict_churn(v1::PredictChurnRequest {
                    leads: vec![lead.clone()],
                    version: 0,
                    max_factors: 0,
                })
                .await
                .is_ok_and(|r| !r.into_inner().predictions[0].prediction_id.is_empty())
        },
    )
    .await;
}

/// One churn answer: its id and the probability served.
struct Served {
    id: String,
    probability: f64,
    churned: bool,
}

async fn predict_churn(channel: &Channel, leads: &[(v1::LeadProfile, String)]) -> Vec<Served> {
    let mut client = ChurnServiceClient::new(channel.clone());
    let mut served = Vec::new();
    for chunk in leads.chunks(100) {
        let response = client
            .predict_churn(v1::PredictChurnRequest {
                leads: chunk.iter().map(|(lead, _)| lead.clone()).collect(),
                version: 0,
                max_factors: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for (prediction, (_, label)) in response.predictions.into_iter().zip(chunk) {
            assert!(
                !prediction.prediction_id.is_empty(),
                "every answer has an id"
            );
            served.push(Served {
                id: prediction.prediction_id,
                probability: prediction.churn_probability,
                churned: label == "1",
            });
        }
    }
    served
}

fn churn_outcome(served: &Served, outcome_id: &str) -> v1::OutcomeReport {
    v1::OutcomeReport {
        prediction_id: served.id.clone(),
        outcome_id: outcome_id.to_owned(),
        label: Some(Label::Churned(served.churned)),
        value: Some(if served.churned { 0.0 } else { 120.0 }),
        observed_at: None,
    }
}

async fn record(
    client: &mut FeedbackServiceClient<Channel>,
    outcomes: Vec<v1::OutcomeReport>,
) -> Result<Vec<v1::OutcomeResult>, tonic::Status> {
    let response = client
        .record_outcomes(v1::RecordOutcomesRequest { outcomes })
        .await?
        .into_inner();
    Ok(response
        .results
        .into_iter()
        .map(|r| v1::OutcomeResult::try_from(r).unwrap())
        .collect())
}

async fn quality(channel: &Channel, model: &str) -> Vec<v1::VersionQuality> {
    FeedbackServiceClient::new(channel.clone())
        .get_quality(v1::GetQualityRequest {
            model: model.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions
}

fn live(versions: &[v1::VersionQuality]) -> v1::VersionQuality {
    versions
        .iter()
        .find(|v| v.version == 1 && v.arm == "live")
        .cloned()
        .unwrap_or_default()
}

/// scikit-learn's figures on `rows` (written as CSV).
fn reference(mode: &str, rows: &[String], dir: &Path) -> serde_json::Value {
    let path = dir.join(format!("{mode}-pairs.csv"));
    std::fs::write(&path, rows.join("\n")).unwrap();
    let path = path.to_str().unwrap();
    let output = run_python(
        "oip-venv",
        "tests/feedback/quality_check.py",
        &[mode, path],
        &[],
    );
    serde_json::from_slice(&output).unwrap()
}

fn close(ours: Option<v1::Interval>, theirs: &serde_json::Value, tolerance: f64, what: &str) {
    let ours = ours.unwrap_or_else(|| panic!("{what} is reported")).value;
    let theirs = theirs.as_f64().unwrap();
    assert!(
        (ours - theirs).abs() <= tolerance,
        "{what}: ours {ours}, scikit-learn {theirs}"
    );
}

fn counted(server: &ServerProcess, result: &str) -> f64 {
    server
        .metrics()
        .lines()
        .filter(|line| {
            line.starts_with("nurture_outcomes_total")
                && line.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_quality_matches_scikit_learn_and_nothing_else_moves_it() {
    let fixture = Loop::new();
    let server = fixture.server(&["--max-items", "100"]);
    let channel = server.channel().await;
    let churn_leads = labelled_leads(&fixture.data().join("churn.csv"), "churned");
    answers_with_ids(&channel, &churn_leads[0].0).await;

    // Churn: 600 answers, then their true outcomes.
    let served = predict_churn(&channel, &churn_leads[..600]).await;
    let mut feedback = FeedbackServiceClient::new(channel.clone());
    for (chunk_index, chunk) in served.chunks(100).enumerate() {
        let outcomes = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| churn_outcome(s, &format!("o-{chunk_index}-{i}")))
            .collect();
        let results = record(&mut feedback, outcomes).await.unwrap();
        assert!(results.iter().all(|r| *r == v1::OutcomeResult::Recorded));
    }
    let before = live(&quality(&channel, "churn").await);
    assert_eq!(before.outcomes, 600);
    let rows: Vec<String> = served
        .iter()
        .map(|s| format!("{},{}", s.probability, u8::from(s.churned)))
        .collect();
    let sklearn = reference("binary", &rows, fixture.dir.path());
    close(before.auc, &sklearn["auc"], 0.005, "AUC");
    close(before.log_loss, &sklearn["log_loss"], 1e-6, "log-loss");
    close(before.brier, &sklearn["brier"], 1e-6, "Brier score");
    close(before.ece, &sklearn["ece"], 1e-6, "ECE");
    let auc = before.auc.unwrap();
    assert!(auc.low < auc.value && auc.value < auc.high, "{auc:?}");
    let value = before.value_per_prediction.unwrap().value;
    let expected_value = served.iter().filter(|s| !s.churned).count() as f64 * 120.0 / 600.0;
    assert!((value - expected_value).abs() < 1e-9, "{value}");
    println!(
        "churn v1 live over 600 outcomes: AUC {:.4} (scikit-learn {:.4}), log-loss {:.4}, ECE {:.4}",
        auc.value,
        sklearn["auc"],
        before.log_loss.unwrap().value,
        before.ece.unwrap().value
    );

    // Replays: acknowledged as duplicates, counted once.
    for (chunk_index, chunk) in served.chunks(100).enumerate() {
        let outcomes = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| churn_outcome(s, &format!("o-{chunk_index}-{i}")))
            .collect();
        let results = record(&mut feedback, outcomes).await.unwrap();
        assert!(results.iter().all(|r| *r == v1::OutcomeResult::Duplicate));
    }

    // Forged, garbled, unknown and late ids: each counted on its own.
    let key = fixture.key();
    let signed = |model: &str, version: u64| {
        key.sign(&PredictionId {
            model: model.into(),
            version,
            arm: Arm::Live,
            served_at_ms: chrono::Utc::now().timestamp_millis(),
            nonce: 7,
            prediction: Prediction::Binary(0.5),
        })
    };
    let forged = IdKey::new(vec![9; 32]).unwrap().sign(&PredictionId {
        model: "churn".into(),
        version: 1,
        arm: Arm::Live,
        served_at_ms: chrono::Utc::now().timestamp_millis(),
        nonce: 7,
        prediction: Prediction::Binary(0.99),
    });
    // One character of the signature changed (ten from the end: a whole
    // base64 group inside the 16-byte tag, so the id still decodes).
    let mut altered: Vec<char> = served[0].id.chars().collect();
    let at = altered.len() - 10;
    altered[at] = if altered[at] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    let late = v1::OutcomeReport {
        observed_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 200 * 86_400,
            nanos: 0,
        }),
        ..churn_outcome(&served[1], "late")
    };
    let cases = vec![
        (
            churn_outcome(
                &Served {
                    id: forged,
                    probability: 0.99,
                    churned: false,
                },
                "f",
            ),
            v1::OutcomeResult::ForgedId,
        ),
        (
            churn_outcome(
                &Served {
                    id: altered,
                    probability: 0.0,
                    churned: true,
                },
                "a",
            ),
            v1::OutcomeResult::ForgedId,
        ),
        (
            churn_outcome(
                &Served {
                    id: "hello".into(),
                    probability: 0.0,
                    churned: true,
                },
                "g",
            ),
            v1::OutcomeResult::GarbledId,
        ),
        (
            churn_outcome(
                &Served {
                    id: signed("nonesuch", 1),
                    probability: 0.0,
                    churned: true,
                },
                "u1",
            ),
            v1::OutcomeResult::UnknownId,
        ),
        (
            churn_outcome(
                &Served {
                    id: signed("churn", 99),
                    probability: 0.0,
                    churned: true,
                },
                "u2",
            ),
            v1::OutcomeResult::UnknownId,
        ),
        (late, v1::OutcomeResult::Late),
    ];
    let (outcomes, expected): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
    assert_eq!(record(&mut feedback, outcomes).await.unwrap(), expected);
    for (result, times) in [
        ("forged_id", 2.0),
        ("garbled_id", 1.0),
        ("unknown_id", 2.0),
        ("late", 1.0),
        ("duplicate", 600.0),
        ("recorded", 600.0),
    ] {
        assert_eq!(counted(&server, result), times, "{result}");
    }

    // Bad reports: INVALID_ARGUMENT naming the field; nothing recorded.
    let good = churn_outcome(&served[2], "bad");
    let bad = |change: &dyn Fn(&mut v1::OutcomeReport)| {
        let mut report = good.clone();
        change(&mut report);
        vec![report]
    };
    let cases: Vec<(Vec<v1::OutcomeReport>, &str)> = vec![
        (
            bad(&|r| r.prediction_id.clear()),
            "outcomes[0].prediction_id",
        ),
        (bad(&|r| r.outcome_id.clear()), "outcomes[0].outcome_id"),
        (bad(&|r| r.label = None), "outcomes[0]"),
        (bad(&|r| r.label = Some(Label::Stage(2))), "outcomes[0]"),
        (bad(&|r| r.value = Some(f64::NAN)), "outcomes[0].value"),
        (bad(&|r| r.value = Some(-1.0)), "outcomes[0].value"),
        (vec![], "outcomes"),
        (vec![good.clone(); 101], "outcomes"),
    ];
    for (outcomes, field) in cases {
        let status = record(&mut feedback, outcomes).await.unwrap_err();
        assert_invalid_argument(&status, field);
    }
    let after = live(&quality(&channel, "churn").await);
    assert_eq!(after, before, "nothing but new outcomes moves a figure");
    assert_eq!(
        live(&status_of(&channel, "churn").await.quality),
        before,
        "status shows it too"
    );
    // nurturectl reads the same figures from the store, without a server.
    let shown: serde_json::Value =
        serde_json::from_str(&fixture.run("nurturectl", &["--json", "quality", "churn"])).unwrap();
    let row = &shown["versions"][0];
    assert_eq!(
        (row["version"].as_u64(), row["arm"].as_str()),
        (Some(1), Some("live"))
    );
    assert_eq!(row["report"]["outcomes"], 600);
    let auc = row["report"]["auc"]["value"].as_f64().unwrap();
    assert!((auc - before.auc.unwrap().value).abs() < 1e-12);

    // Journey (multiclass): accuracy, macro-F1 and log-loss.
    let journey_leads = labelled_leads(&fixture.data().join("journey.csv"), "stage");
    let mut journey = JourneyServiceClient::new(channel.clone());
    let mut rows = Vec::new();
    for (chunk_index, chunk) in journey_leads[..300].chunks(100).enumerate() {
        let response = journey
            .classify_stage(v1::ClassifyStageRequest {
                leads: chunk.iter().map(|(lead, _)| lead.clone()).collect(),
                version: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut outcomes = Vec::new();
        for (i, (prediction, (_, stage))) in response.predictions.iter().zip(chunk).enumerate() {
            let truth = STAGES.iter().position(|s| s == stage).unwrap();
            let probabilities: Vec<String> = prediction
                .probabilities
                .iter()
                .map(|p| p.probability.to_string())
                .collect();
            rows.push(format!("{truth},{}", probabilities.join(",")));
            outcomes.push(v1::OutcomeReport {
                prediction_id: prediction.prediction_id.clone(),
                outcome_id: format!("j-{chunk_index}-{i}"),
                label: Some(Label::Stage(truth as i32 + 1)),
                value: None,
                observed_at: None,
            });
        }
        let results = record(&mut feedback, outcomes).await.unwrap();
        assert!(results.iter().all(|r| *r == v1::OutcomeResult::Recorded));
    }
    let stages = live(&quality(&channel, "journey").await);
    let sklearn = reference("classes", &rows, fixture.dir.path());
    assert_eq!(stages.outcomes, 300);
    // Ids carry class probabilities to 1/65535, so these match closely
    // rather than exactly.
    close(stages.accuracy, &sklearn["accuracy"], 0.005, "accuracy");
    close(stages.macro_f1, &sklearn["macro_f1"], 0.005, "macro-F1");
    close(stages.log_loss, &sklearn["log_loss"], 1e-3, "log-loss");
    assert!(stages.auc.is_none() && stages.brier.is_none());

    // Concept drift: the relationship flips (outcomes opposite to the
    // data's labels); ADWIN on churn's error stream raises an alarm.
    assert_eq!(
        live(&quality(&channel, "churn").await)
            .drift
            .unwrap()
            .alarms,
        0
    );
    let flipped: Vec<Served> = predict_churn(&channel, &churn_leads[600..1200])
        .await
        .into_iter()
        .map(|s| Served {
            churned: !s.churned,
            ..s
        })
        .collect();
    for (chunk_index, chunk) in flipped.chunks(100).enumerate() {
        let outcomes = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| churn_outcome(s, &format!("d-{chunk_index}-{i}")))
            .collect();
        record(&mut feedback, outcomes).await.unwrap();
    }
    let drift = live(&quality(&channel, "churn").await).drift.unwrap();
    assert!(drift.alarms >= 1, "{drift:?}");
    assert!(drift.window_error_rate > 0.5, "{drift:?}");
    assert!(
        server
            .metrics()
            .lines()
            .any(|line| line.starts_with("nurture_drift_alarms_total")
                && line.contains(r#"version="1""#)
                && !line.ends_with(" 0")),
        "the alarm is a metric"
    );
    assert!(
        server.log().contains("concept drift"),
        "the alarm is logged"
    );

    // The log joins with the outcomes in DuckDB, by prediction id, as
    // docs/feedback.md shows.
    let root = fixture.dir.path().join("registry");
    let root = root.to_str().unwrap();
    eventually(
        "every scored answer joins its outcome",
        Duration::from_secs(30),
        async || {
            duckdb(&[root, "churn", "join"], &[])["rows"]
                .as_array()
                .is_some_and(|rows| rows.len() == 1200)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_outcomes_survive_sigkill_and_replays_add_nothing() {
    let fixture = Loop::new();
    let flags = ["--outcome-adopt-after", "2s"];
    let mut server = fixture.server(&flags);
    let channel = server.channel().await;
    let leads = labelled_leads(&fixture.data().join("churn.csv"), "churned");
    answers_with_ids(&channel, &leads[0].0).await;
    let served = predict_churn(&channel, &leads[..800]).await;
    let stream: Vec<Vec<v1::OutcomeReport>> = served
        .chunks(10)
        .enumerate()
        .map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(i, s)| churn_outcome(s, &format!("k-{c}-{i}")))
                .collect()
        })
        .collect();
    // Stream batches from a task; kill the server while it runs.
    let progress = Arc::new(AtomicUsize::new(0));
    let sender = {
        let channel = channel.clone();
        let stream = stream.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut client = FeedbackServiceClient::new(channel);
            let mut acknowledged = 0usize;
            for batch in stream {
                match record(&mut client, batch).await {
                    Ok(_) => acknowledged += 1,
                    Err(_) => break,
                }
                progress.store(acknowledged, Ordering::SeqCst);
            }
            acknowledged
        })
    };
    eventually(
        "the stream is under way",
        Duration::from_secs(30),
        async || progress.load(Ordering::SeqCst) >= 10,
    )
    .await;
    server.kill();
    let acknowledged = sender.await.unwrap();
    assert!(
        acknowledged > 0 && acknowledged < stream.len(),
        "killed mid-stream ({acknowledged} of {} batches acknowledged)",
        stream.len()
    );

    let server = fixture.server(&flags);
    let channel = server.channel().await;
    let mut client = FeedbackServiceClient::new(channel.clone());
    eventually(
        "the restarted replica has the key",
        Duration::from_secs(30),
        async || {
            FeedbackServiceClient::new(channel.clone())
                .record_outcomes(v1::RecordOutcomesRequest {
                    outcomes: stream[0].clone(),
                })
                .await
                .is_ok()
        },
    )
    .await;
    // Every acknowledged outcome is there: replaying them adds nothing.
    for (n, batch) in stream[..acknowledged].iter().enumerate() {
        let results = record(&mut client, batch.clone()).await.unwrap();
        assert!(
            results.iter().all(|r| *r == v1::OutcomeResult::Duplicate),
            "replayed batch {n} of {acknowledged} acknowledged: {results:?}"
        );
    }
    let at_least = (acknowledged * 10) as u64;
    eventually(
        "every acknowledged outcome is counted",
        Duration::from_secs(10),
        async || live(&quality(&channel, "churn").await).outcomes >= at_least,
    )
    .await;
    // Replaying the whole stream (retrying what was never acknowledged)
    // ends with every outcome counted exactly once: one caught mid-write
    // is adopted once its writer is surely gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for batch in &stream {
        let results = record(&mut client, batch.clone()).await.unwrap();
        assert!(results.iter().all(|r| matches!(
            r,
            v1::OutcomeResult::Duplicate | v1::OutcomeResult::Recorded
        )));
    }
    assert_eq!(live(&quality(&channel, "churn").await).outcomes, 800);
    for batch in &stream {
        let results = record(&mut client, batch.clone()).await.unwrap();
        assert!(results.iter().all(|r| *r == v1::OutcomeResult::Duplicate));
    }
    assert_eq!(live(&quality(&channel, "churn").await).outcomes, 800);
}

/// Three replicas on the S3-compatible server: predictions served by A,
/// outcomes sent to B, quality read from C (and A). Every outcome shows in
/// C's fleet-wide figure within seconds, and all replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_sent_to_one_replica_show_in_every_replicas_quality() {
    let s3 = nurture_tests::s3::TestS3::from_env();
    let (url, env) = s3.url_and_env(&nurture_tests::s3::TestS3::unique_prefix("feedback"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_text = data.to_str().unwrap();
    let tool = |binary: &str, args: &[&str]| run_tool(binary, &url, args, &env);
    tool(
        "nurture-trainer",
        &["generate", "--out", data_text, "--rows", "1500"],
    );
    tool(
        "nurture-trainer",
        &[
            "train",
            "churn",
            "--data",
            &format!("{data_text}/churn.csv"),
            "--promote",
            "--refit",
            "never",
            "--iterations",
            "40",
        ],
    );
    let replicas: Vec<ServerProcess> = (0..3)
        .map(|i| {
            ServerProcess::start_with_env(
                &url,
                &dir.path().join(format!("cache-{i}")),
                &[
                    "--models",
                    "churn",
                    "--poll-interval",
                    "200ms",
                    "--replica-id",
                    &format!("replica-{i}"),
                    "--prediction-log-flush",
                    "300ms",
                ],
                &env,
            )
        })
        .collect();
    let channels: Vec<Channel> =
        futures::future::join_all(replicas.iter().map(ServerProcess::channel)).await;
    let leads = labelled_leads(&data.join("churn.csv"), "churned");
    for channel in &channels {
        answers_with_ids(channel, &leads[0].0).await;
    }
    let served = predict_churn(&channels[0], &leads[..1000]).await;
    // A's prediction log, read by DuckDB straight from S3.
    eventually("A's log is in S3", Duration::from_secs(30), async || {
        duckdb_rows(&url, "churn", &env)["rows"]
            .as_array()
            .is_some_and(|rows| rows.len() > 1000)
    })
    .await;
    let log = duckdb_rows(&url, "churn", &env);
    let ids: std::collections::HashSet<&str> = log["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["replica"] == "replica-0")
        .map(|row| row["prediction_id"].as_str().unwrap())
        .collect();
    assert!(served.iter().all(|s| ids.contains(s.id.as_str())));

    // C is watched every 50 ms, until it counts all 1,000 (at most 120 s),
    // while B takes outcomes in batches of 10.
    let watcher = {
        let channel = channels[2].clone();
        tokio::spawn(async move {
            let mut seen = Vec::<(std::time::Instant, u64)>::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < deadline {
                let count = live(&quality(&channel, "churn").await).outcomes;
                seen.push((std::time::Instant::now(), count));
                if count >= 1000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let mut feedback = FeedbackServiceClient::new(channels[1].clone());
    let mut acknowledged = Vec::new();
    for (c, chunk) in served.chunks(10).enumerate() {
        let outcomes = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| churn_outcome(s, &format!("f-{c}-{i}")))
            .collect();
        let results = record(&mut feedback, outcomes).await.unwrap();
        assert!(results.iter().all(|r| *r == v1::OutcomeResult::Recorded));
        acknowledged.push((std::time::Instant::now(), ((c + 1) * 10) as u64));
    }
    let seen = watcher.await.unwrap();
    assert_eq!(
        seen.last().map(|(_, count)| *count),
        Some(1000),
        "C counts every outcome"
    );
    // Each outcome's delay: from its acknowledgement to the first look at C
    // that counts it (each of a batch's 10 outcomes shares the delay).
    let mut delays: Vec<Duration> = acknowledged
        .iter()
        .flat_map(|(at, total)| {
            let shown = seen
                .iter()
                .find(|(when, count)| when >= at && count >= total)
                .map_or(Duration::from_secs(3600), |(when, _)| *when - *at);
            std::iter::repeat_n(shown, 10)
        })
        .collect();
    delays.sort();
    let p = |q: f64| delays[((q * delays.len() as f64) as usize).min(delays.len() - 1)];
    println!(
        "outcome → fleet quality on another replica, over {} outcomes: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        p(0.5),
        p(0.99),
        delays.last().unwrap()
    );
    assert!(p(0.99) <= Duration::from_secs(5), "p99 {:?}", p(0.99));
    // Every replica reports the same figures (each at its next refresh).
    eventually("all replicas agree", Duration::from_secs(10), async || {
        let figures: Vec<v1::VersionQuality> =
            futures::future::join_all(channels.iter().map(|c| quality(c, "churn")))
                .await
                .iter()
                .map(|versions| live(versions))
                .collect();
        figures
            .iter()
            .all(|f| f.outcomes == 1000 && f.auc == figures[0].auc)
    })
    .await;
}

/// DuckDB's view of `model`'s prediction log under `root` (a directory or an
/// s3:// URL), read where it lies.
fn duckdb_rows(root: &str, model: &str, env: &[(&str, &str)]) -> serde_json::Value {
    duckdb(&[root, model], env)
}

fn duckdb(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let output = run_python("analysis-venv", "tests/feedback/duckdb_log.py", args, env);
    serde_json::from_slice(&output).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prediction_log_is_parquet_that_duckdb_reads_where_it_lies() {
    let fixture = Loop::new();
    let server = fixture.server(&[]);
    let channel = server.channel().await;
    let leads = labelled_leads(&fixture.data().join("churn.csv"), "churned");
    answers_with_ids(&channel, &leads[0].0).await;
    let served = predict_churn(&channel, &leads[..300]).await;
    let oip = nurture_tests::oip_churn(&channel, &[0.25, 0.5]).await;
    let root = fixture.dir.path().join("registry");
    let root = root.to_str().unwrap();
    let mut log = serde_json::Value::Null;
    eventually(
        "the log holds every answer",
        Duration::from_secs(30),
        async || {
            log = duckdb_rows(root, "churn", &[]);
            log["rows"]
                .as_array()
                .is_some_and(|rows| rows.len() > served.len() + oip.len())
        },
    )
    .await;
    let rows = log["rows"].as_array().unwrap();
    let by_id: std::collections::HashMap<&str, &serde_json::Value> = rows
        .iter()
        .map(|row| (row["prediction_id"].as_str().unwrap(), row))
        .collect();
    // Open Inference Protocol rows are logged too, their model columns
    // spread back over the lead's features.
    for ((id, probability), value) in oip.iter().zip([0.25, 0.5]) {
        let row = by_id[id.as_str()];
        assert_eq!(row["version"], 1);
        assert_eq!(row["email_open_rate"].as_f64(), Some(value));
        assert_eq!(row["budget_k_usd"].as_f64(), Some(value));
        assert!((row["score"].as_f64().unwrap() - f64::from(*probability)).abs() < 1e-6);
    }
    for (answer, (lead, _)) in served.iter().zip(&leads[..300]) {
        let row = by_id[answer.id.as_str()];
        assert_eq!(row["model"], "churn");
        assert_eq!(row["version"], 1);
        assert_eq!(row["arm"], "live");
        assert_eq!(row["lead_id"], lead.lead_id.as_str());
        assert_eq!(row["email_open_rate"].as_f64(), lead.email_open_rate);
        assert_eq!(row["budget_k_usd"].as_f64(), lead.budget_k_usd);
        assert!((row["score"].as_f64().unwrap() - answer.probability).abs() < 1e-6);
        assert_eq!(row["probabilities"].as_array().unwrap().len(), 2);
    }
    let columns = log["columns"].as_array().unwrap();
    assert!(
        columns.iter().any(|c| c == "date"),
        "Hive partitions read: {columns:?}"
    );
    println!(
        "DuckDB read {} churn predictions from the file registry",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_buffer_drops_and_counts_and_every_answer_stands() {
    let fixture = Loop::new();
    let server = fixture.server(&["--prediction-log-buffer", "8"]);
    let channel = server.channel().await;
    let leads = labelled_leads(&fixture.data().join("churn.csv"), "churned");
    answers_with_ids(&channel, &leads[0].0).await;
    // 100 answers in one request, far more than the buffer holds between
    // two drains: most records are dropped, no answer is.
    let served = predict_churn(&channel, &leads[..100]).await;
    assert_eq!(served.len(), 100);
    let dropped: f64 = server
        .metrics()
        .lines()
        .filter(|line| line.starts_with("nurture_prediction_log_dropped_total{model=\"churn\"}"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (80.0..=100.0).contains(&dropped),
        "{dropped} of 100 records dropped by an 8-record buffer"
    );
}

/// Sum of `nurture_input_drift_alarms_total` per variable.
fn input_drift_alarms(server: &ServerProcess) -> std::collections::BTreeMap<String, f64> {
    let mut alarms = std::collections::BTreeMap::new();
    for line in server
        .metrics()
        .lines()
        .filter(|line| line.starts_with("nurture_input_drift_alarms_total{"))
    {
        let variable = line
            .split("variable=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *alarms.entry(variable).or_insert(0.0) += value;
    }
    alarms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_input_feature_raises_a_label_free_alarm() {
    let fixture = Loop::new();
    let server = fixture.server(&[
        "--input-drift-check",
        "500ms",
        "--input-drift-min-values",
        "200",
    ]);
    let channel = server.channel().await;
    let leads = labelled_leads(&fixture.data().join("churn.csv"), "churned");
    answers_with_ids(&channel, &leads[0].0).await;
    // Traffic like the training data: judged, and nothing is flagged.
    predict_churn(&channel, &leads[..300]).await;
    eventually("PSI is reported", Duration::from_secs(30), async || {
        server.metrics().contains(
            "nurture_input_psi{model=\"churn\",version=\"1\",variable=\"email_open_rate\"}",
        )
    })
    .await;
    let before = input_drift_alarms(&server);
    assert!(
        before.len() > 20,
        "every variable's counter exists: {before:?}"
    );
    assert!(before.values().all(|v| *v == 0.0), "{before:?}");
    // Then every lead's email open rate jumps to 0.95.
    let shifted: Vec<(v1::LeadProfile, String)> = leads[300..600]
        .iter()
        .map(|(lead, label)| {
            (
                v1::LeadProfile {
                    email_open_rate: Some(0.95),
                    ..lead.clone()
                },
                label.clone(),
            )
        })
        .collect();
    predict_churn(&channel, &shifted).await;
    eventually(
        "the shifted feature is flagged",
        Duration::from_secs(30),
        async || {
            input_drift_alarms(&server)
                .get("email_open_rate")
                .is_some_and(|v| *v >= 1.0)
        },
    )
    .await;
    let after = input_drift_alarms(&server);
    for (variable, alarms) in &after {
        if variable != "email_open_rate" && variable != "prediction_score" {
            assert_eq!(*alarms, 0.0, "{variable} did not move: {after:?}");
        }
    }
    assert!(server.log().contains("input drift"));
    // Status shows it, per variable.
    let status = status_of(&channel, "churn").await;
    let flagged = status
        .input_drift
        .iter()
        .find(|d| d.variable == "email_open_rate")
        .expect("email_open_rate in status");
    assert!(flagged.alarms >= 1 && flagged.psi > 0.25, "{flagged:?}");
    assert_eq!(flagged.version, 1);
}

async fn status_of(channel: &Channel, model: &str) -> v1::ModelStatus {
    nurture_proto::v1::status_service_client::StatusServiceClient::new(channel.clone())
        .get_status(v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .find(|m| m.name == model)
        .unwrap()
}
