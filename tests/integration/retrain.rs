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
use nurture_tests::traffic::serve_and_report;
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
        let mut args = vec![
            "--json",
            "retrain",
            "churn",
            "--from-feedback",
            "--min-outcomes",
            "200",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.run("nurture-trainer", &args)).unwrap()
    }

    /// Retrains once every served answer has reached the prediction log
    /// (the server writes it in batches): the report of that run.
    fn retrain_when_logged(&self, joined: u64, extra: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let report = self.retrain(extra);
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
