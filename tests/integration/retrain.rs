//! Retraining from production feedback, end to end: a real server answers
//! and logs, outcomes come back, and `nurture-trainer retrain` joins the
//! log with them from the store, gates a challenger against the live
//! version on the newest outcomes, and releases it only through a guarded
//! rollout.

use std::path::Path;
use std::time::{Duration, Instant};

use nurture_models::{ModelName, Registry};
use nurture_tests::fixtures::labelled_leads;
use nurture_tests::run_tool;
use nurture_tests::server::ServerProcess;
use nurture_tests::traffic::{serve_and_report, serving};
use serde_json::Value;
use tempfile::TempDir;

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn registry(&self) -> String {
        format!("file://{}", self.path("registry"))
    }

    fn run(&self, binary: &str, args: &[&str]) -> String {
        run_tool(binary, &self.registry(), args, &[])
    }

    fn retrain(&self, extra: &[&str]) -> Value {
        self.retrain_model("churn", extra)
    }

    fn retrain_model(&self, model: &str, extra: &[&str]) -> Value {
        let mut args = vec![
            "--json",
            "retrain",
            model,
            "--from-feedback",
            "--min-outcomes",
            "200",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.run("nurture-trainer", &args)).unwrap()
    }

    /// Retrains churn once `joined` answers reached the prediction log.
    fn retrain_when_logged(&self, joined: u64, extra: &[&str]) -> Value {
        self.retrain_kind_when_logged("churn", joined, extra)
    }

    /// Retrains `model` once every served answer has reached the
    /// prediction log (the server writes it in batches): the report of
    /// that run.
    fn retrain_kind_when_logged(&self, model: &str, joined: u64, extra: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let report = self.retrain_model(model, extra);
            if report["feedback"]["joined"].as_u64() >= Some(joined) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "answers not logged in time: {report}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn generate(fixture: &Fixture, out: &str, concept: &str, seed: &str) -> String {
    fixture.run(
        "nurture-trainer",
        &[
            "generate",
            "--out",
            &fixture.path(out),
            "--rows",
            "1500",
            "--concept",
            concept,
            "--seed",
            seed,
        ],
    );
    fixture.path(&format!("{out}/churn.csv"))
}

fn onnx_of(dir: &str) -> Vec<u8> {
    std::fs::read(Path::new(dir).join("churn.onnx")).unwrap()
}

/// Feedback that follows the champion's own concept trains no better
/// model: nothing is released. After the churn relationship changes, a
/// challenger trained on the newest outcomes beats the champion on the
/// newest of them, its evidence goes into the manifest and the release
/// log, and it is released as a guarded rollout. The same feedback and
/// seed give the same ONNX bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_trained_on_feedback_is_released_only_when_it_beats_the_champion() {
    let fixture = Fixture {
        dir: tempfile::tempdir().unwrap(),
    };
    let base = generate(&fixture, "base", "base", "1");
    let shifted = generate(&fixture, "shifted", "shifted", "2");
    fixture.run(
        "nurture-trainer",
        &["train", "churn", "--data", &base, "--promote"],
    );
    let server = ServerProcess::start(
        &fixture.registry(),
        &fixture.dir.path().join("cache"),
        &[
            "--models",
            "churn",
            "--prediction-log-flush",
            "200ms",
            "--feedback-refresh",
            "200ms",
        ],
    );
    let channel = server.channel().await;

    // Control: the same concept the champion learnt. Fresh leads (another
    // seed than its training data), so the champion is at its best.
    let same = labelled_leads(
        Path::new(&generate(&fixture, "same", "base", "3")),
        "churned",
    );
    serve_and_report(&channel, &same[..1000]).await;
    let control = fixture.retrain_when_logged(1000, &[]);
    assert_eq!(control["released"], false, "{control}");
    assert!(control["published_version"].is_null(), "{control}");
    let evidence = &control["evidence"];
    assert_eq!(evidence["passed"], false, "{control}");
    assert_eq!(evidence["holdout_outcomes"], 200, "{control}");
    assert!(
        control["stopped"].as_str().unwrap().contains("interval"),
        "{control}"
    );

    // The market shifts: the same kind of leads churn for other reasons.
    let changed = labelled_leads(Path::new(&shifted), "churned");
    serve_and_report(&channel, &changed[..1000]).await;
    let judge = ["--newest", "1000", "--no-release"];
    let first_dir = fixture.path("first");
    let second_dir = fixture.path("second");
    let first =
        fixture.retrain_when_logged(2000, &[&judge[..], &["--out-dir", &first_dir]].concat());
    let second = fixture.retrain(&[&judge[..], &["--out-dir", &second_dir]].concat());
    assert_eq!(first["feedback"]["older"], 1000, "{first}");
    let evidence = &first["evidence"];
    assert_eq!(evidence["passed"], true, "{first}");
    let gain = evidence["challenger"].as_f64().unwrap() - evidence["champion"].as_f64().unwrap();
    assert!(gain > 0.1, "the challenger learnt the new concept: {first}");
    assert!(evidence["interval"][0].as_f64().unwrap() > 0.0, "{first}");
    assert_eq!(evidence["champion_version"], 1);
    assert_eq!(first["released"], false, "--no-release: {first}");
    assert_eq!(
        onnx_of(&first_dir),
        onnx_of(&second_dir),
        "the same feedback snapshot and seed give the same ONNX"
    );
    assert_eq!(
        evidence["snapshot_sha256"],
        second["evidence"]["snapshot_sha256"]
    );

    let released = fixture.retrain(&["--newest", "1000", "--steps", "50"]);
    assert_eq!(released["released"], true, "{released}");
    assert_eq!(released["published_version"], 2, "{released}");
    assert_eq!(
        released["challenger"]["sha256"], first["challenger"]["sha256"],
        "the released model is the one judged"
    );
    let registry = Registry::open(&fixture.registry()).unwrap();
    let name = ModelName::new("churn").unwrap();
    let state = registry.state(&name).await.unwrap();
    assert_eq!(
        state.live,
        Some(1),
        "the champion serves until the guard decides"
    );
    let rollout = state.rollout.expect("a guarded rollout of the challenger");
    assert_eq!(rollout.version, 2);
    let manifest = registry.manifest(&name, 2).await.unwrap();
    let stored = manifest.retrain.expect("the evidence is in the manifest");
    assert_eq!(stored.champion_version, 1);
    assert!(stored.passed && stored.interval[0] > 0.0);
    let history = fixture.run("nurturectl", &["history", "churn"]);
    assert!(
        history.contains("retrained from feedback"),
        "the release log carries the evidence: {history}"
    );

    // While the rollout runs, another retrain waits for it.
    let waiting = fixture.retrain(&["--newest", "1000"]);
    assert!(
        waiting["stopped"].as_str().unwrap().contains("under way"),
        "{waiting}"
    );
}

/// `nurture-trainer watch` as a process, killed when dropped; its JSON
/// lines go to a file.
struct Watch {
    child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Watch {
    fn start(fixture: &Fixture, extra: &[&str]) -> Watch {
        let out = fixture.dir.path().join("watch.jsonl");
        let err = fixture.dir.path().join("watch.err");
        let mut args = vec![
            "--json",
            "watch",
            "churn",
            "--interval",
            "300ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let child = std::process::Command::new(nurture_tests::binary("nurture-trainer"))
            .args(&args)
            .env("NURTURE_REGISTRY", fixture.registry())
            .env_remove("ORT_DYLIB_PATH")
            .current_dir(nurture_tests::project_root())
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Watch { child, out, err }
    }

    /// Every finding printed so far.
    fn findings(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// `GET /metrics` of the watcher (its address is on its stderr).
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let log = std::fs::read_to_string(&self.err).unwrap();
        let address = log
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no metrics address in {log}"));
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    fn retrains(&self) -> Vec<Value> {
        self.findings()
            .into_iter()
            .filter(|f| f["event"] == "retrained")
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AUC of churn probabilities against the leads' true outcomes.
fn auc(scored: &[(f64, bool)]) -> f64 {
    let positives: Vec<f64> = scored.iter().filter(|s| s.1).map(|s| s.0).collect();
    let negatives: Vec<f64> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
    let mut wins = 0.0;
    for p in &positives {
        for n in &negatives {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (positives.len() * negatives.len()) as f64
}

/// Serves `leads` (100 per request), reports their true outcomes, and
/// returns (version, churn probability, churned) of each answer.
async fn serve_scored(
    channel: &tonic::transport::Channel,
    leads: &[(nurture_proto::v1::LeadProfile, String)],
) -> Vec<(u64, f64, bool)> {
    let predictions = nurture_tests::traffic::predict(channel, leads).await;
    nurture_tests::traffic::report_outcomes(
        channel,
        &nurture_tests::traffic::true_outcomes(&predictions, leads),
    )
    .await;
    predictions
        .iter()
        .zip(leads)
        .map(|(p, (_, label))| {
            (
                p.model.as_ref().unwrap().version,
                p.churn_probability,
                label == "1",
            )
        })
        .collect()
}

/// The loop closes by itself, on real processes: a server answers and
/// judges rollouts, `watch` follows the outcomes. While leads behave as
/// the champion learnt, `watch` retrains after its outcome count and gates
/// nothing through. When the churn relationship changes mid-stream, the
/// drift alarm fires (in the replica and in `watch`), `watch` retrains a
/// challenger on the outcomes since the change, the challenger beats the
/// champion on the newest of them, the guarded canary promotes it, and
/// live quality recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retrains_on_concept_drift_and_the_guarded_canary_restores_live_quality() {
    let fixture = Fixture {
        dir: tempfile::tempdir().unwrap(),
    };
    let base = generate(&fixture, "base", "base", "1");
    fixture.run(
        "nurture-trainer",
        &["train", "churn", "--data", &base, "--promote"],
    );
    let same = labelled_leads(
        Path::new(&generate(&fixture, "same", "base", "3")),
        "churned",
    );
    let shifted_csv = {
        fixture.run(
            "nurture-trainer",
            &[
                "generate",
                "--out",
                &fixture.path("shifted"),
                "--rows",
                "6000",
                "--concept",
                "shifted",
                "--seed",
                "2",
            ],
        );
        fixture.path("shifted/churn.csv")
    };
    let changed = labelled_leads(Path::new(&shifted_csv), "churned");
    let server = ServerProcess::start(
        &fixture.registry(),
        &fixture.dir.path().join("cache"),
        &[
            "--models",
            "churn",
            "--poll-interval",
            "300ms",
            "--prediction-log-flush",
            "200ms",
            "--feedback-refresh",
            "200ms",
            "--guard-every",
            "200ms",
        ],
    );
    let channel = server.channel().await;
    let watch = Watch::start(
        &fixture,
        &[
            "--after-outcomes",
            "800",
            "--min-outcomes",
            "800",
            "--steps",
            "50",
            "--rollout-min-outcomes",
            "100",
        ],
    );

    // Control: the concept the champion learnt.
    serving(&channel, &same, 1).await;
    for chunk in same[..1000].chunks(100) {
        serve_scored(&channel, chunk).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while watch.retrains().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no retrain after 800 outcomes: {:?}",
            watch.findings()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let control = &watch.retrains()[0];
    assert_eq!(control["trigger"], "outcomes", "{control}");
    assert_eq!(control["report"]["released"], false, "{control}");
    assert!(
        watch.findings().iter().all(|f| f["event"] != "drift"),
        "no drift while the concept holds: {:?}",
        watch.findings()
    );

    // The market shifts. Serve until the guard has promoted a challenger.
    let registry = Registry::open(&fixture.registry()).unwrap();
    let name = ModelName::new("churn").unwrap();
    let mut answers = Vec::new();
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while registry.state(&name).await.unwrap().live == Some(1) {
        assert!(
            served + 100 <= changed.len() && Instant::now() < deadline,
            "no promotion after {served} changed leads: {:?}\n{}",
            watch.findings(),
            server.log()
        );
        answers.extend(serve_scored(&channel, &changed[served..served + 100]).await);
        served += 100;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let findings = watch.findings();
    let drift = findings
        .iter()
        .find(|f| f["event"] == "drift")
        .expect("watch saw the drift");
    assert_eq!(drift["version"], 1);
    let released = watch
        .retrains()
        .into_iter()
        .find(|r| r["report"]["released"] == true)
        .expect("a released challenger");
    assert_eq!(released["trigger"], "drift", "{released}");
    let evidence = &released["report"]["evidence"];
    assert!(
        evidence["challenger"].as_f64().unwrap() > evidence["champion"].as_f64().unwrap() + 0.1,
        "{evidence}"
    );
    let version = released["report"]["published_version"].as_u64().unwrap();
    let metrics = watch.metrics();
    for series in [
        "nurture_watch_retrains_total{model=\"churn\",trigger=\"drift\",result=\"released\"} 1",
        "nurture_watch_retrains_total{model=\"churn\",trigger=\"outcomes\",result=\"refused\"}",
        "nurture_watch_drift_alarms_total{model=\"churn\",version=\"1\"}",
        "nurture_watch_outcomes_total{model=\"churn\"}",
        "nurture_watch_last_check_timestamp_seconds{model=\"churn\"}",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    assert_eq!(registry.state(&name).await.unwrap().live, Some(version));
    assert!(
        server
            .metrics()
            .lines()
            .any(|l| l.starts_with("nurture_drift_alarms_total{")
                && l.contains("version=\"1\"")
                && !l.ends_with(" 0")),
        "the replica's own detector alarmed too"
    );

    // Live quality recovers: the promoted version ranks the changed leads
    // far better than the champion did.
    let before: Vec<(f64, bool)> = answers
        .iter()
        .filter(|a| a.0 == 1)
        .map(|a| (a.1, a.2))
        .collect();
    let after: Vec<(f64, bool)> = serve_scored(&channel, &changed[served..served + 500])
        .await
        .iter()
        .map(|a| {
            assert_eq!(a.0, version, "the promoted version answers");
            (a.1, a.2)
        })
        .collect();
    let (was, now) = (auc(&before), auc(&after));
    assert!(
        now > 0.7 && now > was + 0.15,
        "AUC {was:.3} before, {now:.3} after"
    );
    eprintln!(
        "watch: {served} changed leads until promotion; AUC {was:.3} -> {now:.3}; {} findings",
        findings.len()
    );
}

/// Agents' corrections teach the emotion model: realistic messages
/// (written for Nurture, unlike the generator's) are analysed by a live
/// version trained on synthetic messages, each answer is corrected with the
/// message's true state, and a challenger retrained on the 400 corrections
/// (mixed with the synthetic data at a fifth of their weight) reads the 100
/// held-apart messages better than the live version. The learning curve
/// over 25, 100 and 400 corrections is `benches/corrections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_of_realistic_messages_teach_the_emotion_model() {
    use nurture_proto::v1::emotion_service_client::EmotionServiceClient;
    use nurture_tests::corrections;
    let fixture = Fixture {
        dir: tempfile::tempdir().unwrap(),
    };
    let base = generate(&fixture, "base", "base", "1");
    let synthetic = base.replace("churn.csv", "emotion.csv");
    fixture.run(
        "nurture-trainer",
        &["train", "emotion", "--data", &synthetic, "--promote"],
    );
    let server = ServerProcess::start(
        &fixture.registry(),
        &fixture.dir.path().join("cache"),
        &["--models", "emotion", "--prediction-log-flush", "200ms"],
    );
    let (pool, heldout) =
        corrections::read(&nurture_tests::project_root().join(corrections::MESSAGES)).unwrap();
    assert_eq!((pool.len(), heldout.len()), (400, 100));
    let channel = server.channel().await;
    let mut emotion = EmotionServiceClient::new(channel.clone());
    nurture_tests::eventually("emotion serves", Duration::from_secs(60), async || {
        corrections::analyse(&mut emotion.clone(), &heldout[..1])
            .await
            .is_ok()
    })
    .await;
    let live = corrections::analyse(&mut emotion, &heldout).await.unwrap();
    let before = corrections::accuracy(
        &live.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
        &heldout,
    );
    let answers = corrections::analyse(&mut emotion, &pool).await.unwrap();
    nurture_tests::traffic::report_outcomes(
        &channel,
        &corrections::corrections(&answers, &pool, "agent"),
    )
    .await;

    let out = fixture.path("challenger");
    let report = fixture.retrain_kind_when_logged(
        "emotion",
        400,
        &[
            "--mix",
            &synthetic,
            "--mix-weight",
            "0.2",
            "--refit",
            "always",
            "--no-release",
            "--out-dir",
            &out,
        ],
    );
    assert_eq!(report["evidence"]["mixed_rows"], 1500, "{report}");
    let probabilities =
        corrections::score_onnx(&Path::new(&out).join("emotion.onnx"), &heldout).unwrap();
    let after = corrections::accuracy(&probabilities, &heldout);
    eprintln!("corrections: held-apart accuracy {before:.2} -> {after:.2}");
    assert!(
        after >= before + 0.05,
        "400 corrections moved held-apart accuracy from {before:.2} to {after:.2}"
    );
}
