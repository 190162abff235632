//! Guarded rollouts end to end: a real server's guard judges a canary on
//! the outcomes of its answers and writes its decision to the release log:
//! a degraded canary is rolled back with its evidence and leaves traffic, a
//! rollout with no traffic is left alone, a good canary is promoted.

use std::path::PathBuf;
use std::time::Duration;

use nurture_models::registry::EventKind;
use nurture_models::rollout::policy::Decision;
use nurture_models::{ModelName, Registry};
use nurture_proto::v1;
use nurture_proto::v1::churn_service_client::ChurnServiceClient;
use nurture_proto::v1::feedback_service_client::FeedbackServiceClient;
use nurture_tests::fixtures::labelled_leads;
use nurture_tests::server::ServerProcess;
use nurture_tests::traffic::{
    predict, report_outcomes, serve_and_report, serve_here_report_there, serving, true_outcomes,
};
use nurture_tests::{eventually, run_tool};
use tempfile::TempDir;
use tonic::transport::Channel;

struct Fixture {
    dir: TempDir,
    /// The registry's URL (a directory in `dir` unless given).
    url: Option<String>,
    /// What processes need to reach it.
    env: Vec<(&'static str, String)>,
}

impl Fixture {
    /// A file registry with churn live as version 1 (trained on the
    /// generated data).
    fn new() -> Fixture {
        Fixture::at(None, Vec::new())
    }

    /// The same on the registry at `url`, reached with `env`.
    fn at(url: Option<String>, env: Vec<(&'static str, String)>) -> Fixture {
        let fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
            url,
            env,
        };
        let data = fixture.data();
        let data = data.to_str().unwrap();
        fixture.run(
            "nurture-trainer",
            &["generate", "--out", data, "--rows", "3000"],
        );
        fixture.train(&fixture.churn_csv(), "40", &["--promote"]);
        fixture
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn churn_csv(&self) -> PathBuf {
        self.data().join("churn.csv")
    }

    fn registry(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.dir.path().join("registry").display()))
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn run(&self, binary: &str, args: &[&str]) -> String {
        run_tool(binary, &self.registry(), args, &self.env())
    }

    fn train(&self, csv: &std::path::Path, iterations: &str, extra: &[&str]) {
        let mut args = vec![
            "train",
            "churn",
            "--data",
            csv.to_str().unwrap(),
            "--refit",
            "never",
            "--iterations",
            iterations,
        ];
        args.extend_from_slice(extra);
        self.run("nurture-trainer", &args);
    }

    /// Starts a guarded rollout of churn `version` at 50%, tuned to find
    /// large regressions on little traffic.
    fn rollout(&self, version: &str, extra: &[&str]) {
        let mut args = vec![
            "rollout",
            "churn",
            version,
            "--steps",
            "50",
            "--tau",
            "0.1",
            "--min-outcomes",
            "50",
        ];
        args.extend_from_slice(extra);
        self.run("nurturectl", &args);
    }

    /// The churn data with its labels moved to other rows: a model trained
    /// on it has learned nothing.
    fn shuffled_churn_csv(&self) -> PathBuf {
        let text = std::fs::read_to_string(self.churn_csv()).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        let column = header.split(',').position(|c| c == "churned").unwrap();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        let n = rows.len();
        let mut out = vec![header.to_owned()];
        for (i, row) in rows.iter().enumerate() {
            let mut row = row.clone();
            row[column] = rows[(i * 7 + n / 3) % n][column];
            out.push(row.join(","));
        }
        let path = self.data().join("churn-shuffled.csv");
        std::fs::write(&path, out.join("\n") + "\n").unwrap();
        path
    }

    /// A server polling the release log every `poll`.
    fn server(&self, poll: &str) -> ServerProcess {
        self.server_with(poll, &[])
    }

    /// The same with `extra` arguments.
    fn server_with(&self, poll: &str, extra: &[&str]) -> ServerProcess {
        let mut args = vec![
            "--models",
            "churn",
            "--poll-interval",
            poll,
            "--feedback-refresh",
            "200ms",
            "--guard-every",
            "200ms",
        ];
        args.extend_from_slice(extra);
        ServerProcess::start(&self.registry(), &self.dir.path().join("cache"), &args)
    }

    async fn state(&self) -> nurture_models::ModelState {
        let registry = Registry::open(&self.registry()).unwrap();
        registry
            .state(&ModelName::new("churn").unwrap())
            .await
            .unwrap()
    }

    async fn last_event(&self) -> nurture_models::registry::Event {
        let registry = Registry::open(&self.registry()).unwrap();
        let log = registry
            .read_log(&ModelName::new("churn").unwrap())
            .await
            .unwrap();
        log.last().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_rolls_back_a_degraded_canary_and_promotes_a_good_one() {
    let fixture = Fixture::new();
    let shuffled = fixture.shuffled_churn_csv();
    fixture.train(&shuffled, "40", &["--publish"]);
    // Long polls: the deciding replica's traffic must follow its own
    // decision without waiting for one.
    let server = fixture.server("5s");
    let channel = server.channel().await;
    let leads = labelled_leads(&fixture.churn_csv(), "churned");

    fixture.rollout("2", &[]);
    serving(&channel, &leads, 2).await;
    // Traffic with true outcomes until the guard decides.
    let mut served = 0;
    while fixture.state().await.rollout.is_some() && served < 3000 {
        let versions = serve_and_report(&channel, &leads[served..served + 200]).await;
        assert!(versions.contains(&2), "the canary answers a share");
        served += 200;
    }
    let state = fixture.state().await;
    let revoked = state.versions[&2]
        .revoked
        .as_ref()
        .expect("the degraded canary is rolled back");
    assert!(revoked.actor.starts_with("guard@"), "{}", revoked.actor);
    assert_eq!(state.canary, None);
    let event = fixture.last_event().await;
    let EventKind::RolloutDecided {
        version: 2,
        decision: Decision::RolledBack,
        reason,
        evidence: Some(evidence),
    } = event.kind
    else {
        panic!("{:?}", event.kind)
    };
    assert!(reason.contains("worse than live"), "{reason}");
    assert!(evidence.effect > 0.0 && evidence.interval.0 > -evidence.effect);
    assert!(
        evidence.canary.0 >= 50 && evidence.live.0 >= 50,
        "{evidence:?}"
    );
    println!("rolled back after {served} leads: {reason}");
    // Traffic leaves the canary at once on the deciding replica (its
    // watcher polls only every 5 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let versions = serve_and_report(&channel, &leads[..200]).await;
    assert!(versions.iter().all(|v| *v == 1), "{versions:?}");

    // A good canary (trained longer on the same data) with no traffic:
    // nothing is decided.
    fixture.train(&fixture.churn_csv(), "80", &["--publish"]);
    fixture.rollout("3", &["--margin", "1.0"]);
    let started = fixture.state().await.seq;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = fixture.state().await;
    assert_eq!(state.seq, started, "no traffic, no decision");
    assert_eq!(state.rollout.as_ref().unwrap().version, 3);

    // With traffic and outcomes it is promoted.
    serving(&channel, &leads, 3).await;
    let mut served = 1000;
    while fixture.state().await.rollout.is_some() && served < 2800 {
        serve_and_report(&channel, &leads[served..served + 200]).await;
        served += 200;
    }
    let state = fixture.state().await;
    assert_eq!(
        state.live,
        Some(3),
        "the good canary is promoted: {:?}",
        fixture.last_event().await
    );
    let event = fixture.last_event().await;
    assert!(
        matches!(
            event.kind,
            EventKind::RolloutDecided {
                version: 3,
                decision: Decision::Promoted,
                ..
            }
        ),
        "{:?}",
        event.kind
    );
    println!("promoted after {} leads: {:?}", served - 1000, event.kind);
}

/// A canary that answers the same but slowly is rolled back by the latency
/// guard on requests alone, before any outcome comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operational_guard_rolls_back_a_slow_canary_without_outcomes() {
    let fixture = Fixture::new();
    let slow = nurture_tests::fixtures::Tabular {
        slow: 200,
        ..nurture_tests::fixtures::Tabular::new(
            nurture_models::ModelKind::Churn.allowed_features().len(),
            2,
            7,
        )
    };
    let path = fixture.dir.path().join("slow.onnx");
    std::fs::write(&path, slow.build()).unwrap();
    fixture.run("nurturectl", &["publish", "churn", path.to_str().unwrap()]);
    let server = fixture.server("500ms");
    let channel = server.channel().await;
    fixture.rollout("2", &[]);
    let leads = labelled_leads(&fixture.churn_csv(), "churned");
    serving(&channel, &leads, 2).await;

    // One-lead requests from four clients, no outcomes, until the guard
    // decides (replicas report their calls every 10 s).
    let mut answered = Vec::new();
    let started = std::time::Instant::now();
    for round in 0.. {
        if fixture.state().await.rollout.is_none() || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let clients: Vec<_> = (0..4)
            .map(|client| {
                let mut churn = ChurnServiceClient::new(channel.clone());
                let leads: Vec<_> = leads
                    .iter()
                    .cycle()
                    .skip((round * 200 + client * 50) % leads.len())
                    .take(50)
                    .map(|(lead, _)| lead.clone())
                    .collect();
                tokio::spawn(async move {
                    let mut versions = Vec::new();
                    for lead in leads {
                        let answer = churn
                            .predict_churn(v1::PredictChurnRequest {
                                leads: vec![lead],
                                ..Default::default()
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        versions.push(answer.predictions[0].model.as_ref().unwrap().version);
                    }
                    versions
                })
            })
            .collect();
        for client in clients {
            answered.extend(client.await.unwrap());
        }
    }
    let state = fixture.state().await;
    let revoked = state.versions[&2].revoked.as_ref().unwrap_or_else(|| {
        panic!(
            "the slow canary is rolled back; {:?} after {} answers, {} by the canary",
            state.rollout,
            answered.len(),
            answered.iter().filter(|v| **v == 2).count()
        )
    });
    assert!(revoked.actor.starts_with("guard@"), "{}", revoked.actor);
    assert!(
        revoked.reason.contains("operational guard") && revoked.reason.contains("p99"),
        "{}",
        revoked.reason
    );
    let canary_calls = answered.iter().filter(|v| **v == 2).count();
    assert!(
        canary_calls >= 500,
        "judged on {canary_calls} canary answers"
    );
    println!(
        "rolled back after {} answers ({canary_calls} by the canary): {}",
        answered.len(),
        revoked.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_fails_to_load_pauses_the_rollout_visibly() {
    let fixture = Fixture::new();
    // Version 2: bytes ONNX Runtime cannot load, written past publish's
    // checks (as a broken pipeline could).
    nurture_tests::write_bypassing_publish(
        &fixture.registry(),
        2,
        b"not an onnx graph".to_vec(),
        None,
        false,
    )
    .await;
    let server = fixture.server("200ms");
    let channel = server.channel().await;
    let leads = labelled_leads(&fixture.churn_csv(), "churned");
    serving(&channel, &leads, 1).await;
    fixture.rollout("2", &[]);
    eventually("the rollout pauses", Duration::from_secs(30), async || {
        fixture
            .state()
            .await
            .rollout
            .is_some_and(|r| r.paused.is_some())
    })
    .await;
    let rollout = fixture.state().await.rollout.unwrap();
    let reason = rollout.paused.unwrap();
    assert!(
        reason.starts_with("load failure: 1 of 1 replicas refused version 2"),
        "{reason}"
    );
    // Visible in status: the desired canary, what each replica serves, why.
    let status: serde_json::Value =
        serde_json::from_str(&fixture.run("nurturectl", &["--json", "status", "churn"])).unwrap();
    assert_eq!(status["canary"]["version"], 2);
    let replica = &status["replicas"][0];
    assert_eq!(replica["desired_canary"], 2);
    assert!(replica["canary"].is_null(), "{replica}");
    assert!(replica["canary_error"].as_str().is_some(), "{replica}");
    let text = fixture.run("nurturectl", &["status", "churn"]);
    assert!(
        text.contains("served by 0 of 1 reporting replicas")
            && text.contains("paused: load failure")
            && text.contains("refused canary 2"),
        "{text}"
    );
    // And in the Status RPC.
    let mut status =
        nurture_proto::v1::status_service_client::StatusServiceClient::new(channel.clone());
    let mut churn = v1::ModelStatus::default();
    eventually(
        "the Status RPC shows the replicas",
        Duration::from_secs(30),
        async || {
            churn = status
                .get_status(v1::GetStatusRequest::default())
                .await
                .unwrap()
                .into_inner()
                .models
                .into_iter()
                .find(|m| m.name == "churn")
                .unwrap();
            churn.replicas.iter().any(|r| !r.canary_error.is_empty())
        },
    )
    .await;
    assert_eq!((churn.desired_canary_version, churn.canary_version), (2, 0));
    assert_eq!(churn.replicas.len(), 1);
    assert_eq!(churn.replicas[0].desired_canary_version, 2);
    assert!(!churn.replicas[0].canary_error.is_empty());
    // Paused, the guard decides nothing on traffic: live answers it all.
    let versions = serve_and_report(&channel, &leads[100..400]).await;
    assert!(versions.iter().all(|v| *v == 1));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(fixture.state().await.rollout.unwrap().paused.is_some());
}

/// Whether `channel`'s replica still answers any of `leads` with `version`.
async fn answers_with(
    channel: &Channel,
    leads: &[(v1::LeadProfile, String)],
    version: u64,
) -> bool {
    ChurnServiceClient::new(channel.clone())
        .predict_churn(v1::PredictChurnRequest {
            leads: leads.iter().map(|(lead, _)| lead.clone()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .predictions
        .iter()
        .any(|p| p.model.as_ref().unwrap().version == version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_s3_follow_one_guard_decision() {
    let s3 = nurture_tests::s3::TestS3::from_env();
    let prefix = nurture_tests::s3::TestS3::unique_prefix("rollout");
    let (url, env) = s3.url_and_env(&prefix);
    let fixture = Fixture::at(Some(url.clone()), env);
    let env = fixture.env();
    fixture.train(&fixture.shuffled_churn_csv(), "40", &["--publish"]);
    let replicas: Vec<ServerProcess> = (0..3)
        .map(|i| {
            ServerProcess::start_with_env(
                &url,
                &fixture.dir.path().join(format!("cache-{i}")),
                &[
                    "--models",
                    "churn",
                    "--poll-interval",
                    "500ms",
                    "--feedback-refresh",
                    "200ms",
                    "--guard-every",
                    "200ms",
                    "--replica-id",
                    &format!("replica-{i}"),
                ],
                &env,
            )
        })
        .collect();
    let channels: Vec<Channel> =
        futures::future::join_all(replicas.iter().map(ServerProcess::channel)).await;
    let leads = labelled_leads(&fixture.churn_csv(), "churned");
    fixture.rollout("2", &[]);
    for channel in &channels {
        serving(channel, &leads, 2).await;
    }
    // Each replica is watched every 20 ms for the moment its answers leave
    // the canary.
    let probes: Vec<_> = channels
        .iter()
        .map(|channel| {
            let (channel, leads) = (channel.clone(), leads[..60].to_vec());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                while started.elapsed() < Duration::from_secs(60) {
                    if !answers_with(&channel, &leads, 2).await {
                        return Some(chrono::Utc::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None
            })
        })
        .collect();
    // Served by A, outcomes to B, until some replica's guard decides.
    let registry = Registry::from_store(
        s3.store(),
        object_store::path::Path::from(prefix.as_str()),
        "s3 test server",
    );
    let name = ModelName::new("churn").unwrap();
    let mut served = 0;
    while registry.state(&name).await.unwrap().rollout.is_some() && served < 3000 {
        serve_here_report_there(&channels[0], &channels[1], &leads[served..served + 100]).await;
        served += 100;
    }
    let left: Vec<Option<chrono::DateTime<chrono::Utc>>> = futures::future::join_all(probes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let log = registry.read_log(&name).await.unwrap();
    let decisions: Vec<_> = log
        .iter()
        .filter(|e| matches!(e.kind, EventKind::RolloutDecided { .. }))
        .collect();
    assert_eq!(
        decisions.len(),
        1,
        "exactly one replica's decision is written"
    );
    let decision = decisions[0];
    assert!(
        matches!(
            &decision.kind,
            EventKind::RolloutDecided {
                decision: Decision::RolledBack,
                evidence: Some(_),
                ..
            }
        ),
        "{:?}",
        decision.kind
    );
    let decider = decision.actor.trim_start_matches("guard@");
    let mut after = Vec::new();
    for (i, at) in left.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("replica-{i} still serves the rolled-back canary"));
        let ms = (at - decision.at).num_milliseconds();
        after.push(format!(
            "replica-{i}{} {ms} ms",
            if decider == format!("replica-{i}") {
                " (decided)"
            } else {
                ""
            }
        ));
        // One poll interval (500 ms) plus the time to notice, on a loaded
        // two-core machine: a replica that missed its poll would take 1 s
        // more.
        assert!(
            ms <= 1_500,
            "replica-{i} left the canary {ms} ms after the decision"
        );
    }
    println!(
        "rolled back by {} after {served} leads; traffic left the canary: {}",
        decision.actor,
        after.join(", ")
    );
}

/// Churn probabilities of `leads`, answered by live (version 1): in order.
async fn probabilities(channel: &Channel, leads: &[(v1::LeadProfile, String)]) -> Vec<f64> {
    predict(channel, leads)
        .await
        .into_iter()
        .map(|prediction| {
            assert_eq!(prediction.model.unwrap().version, 1, "live answers");
            prediction.churn_probability
        })
        .collect()
}

/// The sum of a counter's series whose labels contain every one of `labels`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A shadow at 100% on an idle server: every live answer is mirrored off
/// the response path, no answer changes, and the shadow (trained on
/// shuffled labels) is scored on the outcomes of the live answers it
/// mirrored, beside live, in the quality RPC; the status RPC shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_mirrors_every_answer_changes_none_and_is_scored_on_their_outcomes() {
    let fixture = Fixture::new();
    let shuffled = fixture.shuffled_churn_csv();
    fixture.train(&shuffled, "40", &["--publish"]);
    let server = fixture.server_with("200ms", &["--prediction-log-flush", "300ms"]);
    let channel = server.channel().await;
    let leads = labelled_leads(&fixture.churn_csv(), "churned");
    let leads = &leads[..600];
    serving(&channel, leads, 1).await;
    let alone = probabilities(&channel, leads).await;

    fixture.run("nurturectl", &["shadow", "churn", "2", "--percent", "100"]);
    let mut status =
        nurture_proto::v1::status_service_client::StatusServiceClient::new(channel.clone());
    eventually(
        "the shadow is loaded",
        Duration::from_secs(60),
        async || {
            let response = status
                .get_status(v1::GetStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            response.models.iter().any(|m| {
                m.name == "churn"
                    && m.shadow_version == 2
                    && m.shadow_percent == 100
                    && m.desired_shadow_version == 2
            })
        },
    )
    .await;
    let mirrored_before = counter(
        &server.metrics(),
        "nurture_shadow_requests_total",
        &["result=\"mirrored\""],
    );
    let shadowed = probabilities(&channel, leads).await;
    assert_eq!(shadowed, alone, "a shadow changes no answer");
    let mirrored = |server: &ServerProcess| {
        counter(
            &server.metrics(),
            "nurture_shadow_requests_total",
            &["result=\"mirrored\""],
        ) - mirrored_before
    };
    eventually(
        "every request is mirrored",
        Duration::from_secs(30),
        async || mirrored(&server) >= 6.0,
    )
    .await;
    // Open Inference Protocol requests to the typed model are mirrored too.
    let oip = nurture_tests::oip_churn(&channel, &[0.25, 0.5]).await;
    assert_eq!(oip.len(), 2);
    eventually(
        "the protocol's request is mirrored",
        Duration::from_secs(30),
        async || mirrored(&server) >= 7.0,
    )
    .await;
    let shed = counter(
        &server.metrics(),
        "nurture_shadow_requests_total",
        &["result=\"shed\""],
    );
    eprintln!("mirrored {} requests, shed {shed}", mirrored(&server));
    assert_eq!(shed, 0.0, "an idle server sheds none");

    // Outcomes of the live answers score the shadow's mirrors of them.
    let predictions = predict(&channel, leads).await;
    assert!(
        predictions
            .iter()
            .all(|p| p.model.as_ref().unwrap().version == 1)
    );
    // The shadow scores mirrors at idle priority: on a busy machine it can
    // lag its live answers by seconds. An outcome is scored for the shadow
    // only once its mirror is remembered (in production outcomes come
    // hours later), so wait for the six requests' mirrors first.
    eventually(
        "the answers' mirrors are scored",
        Duration::from_secs(60),
        async || mirrored(&server) >= 13.0,
    )
    .await;
    let outcomes = true_outcomes(&predictions, leads);
    report_outcomes(&channel, &outcomes).await;
    let mut feedback = FeedbackServiceClient::new(channel.clone());
    let quality = eventually_quality(&mut feedback, 600).await;
    let arm = |version: u64, arm: &str| {
        quality
            .iter()
            .find(|q| q.version == version && q.arm == arm)
            .cloned()
            .unwrap_or_else(|| panic!("version {version} on {arm} in {quality:?}"))
    };
    let (live, shadow) = (arm(1, "live"), arm(2, "shadow"));
    assert_eq!((live.outcomes, shadow.outcomes), (600, 600));
    let auc = |q: &v1::VersionQuality| q.auc.unwrap().value;
    eprintln!(
        "AUC on the same outcomes: live {:.3}, shadow {:.3}",
        auc(&live),
        auc(&shadow)
    );
    assert!(
        auc(&live) > auc(&shadow) + 0.1,
        "live {} shadow {}",
        auc(&live),
        auc(&shadow)
    );
    // Replaying the outcomes scores neither twice.
    report_outcomes(&channel, &outcomes).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quality = eventually_quality(&mut feedback, 600).await;
    let outcomes_of = |arm: &str| quality.iter().find(|q| q.arm == arm).unwrap().outcomes;
    assert_eq!(
        (outcomes_of("live"), outcomes_of("shadow")),
        (600, 600),
        "{quality:?}"
    );

    // The log holds the shadow's answers with ids of their own, each naming
    // the live answer it mirrors.
    let root = fixture.dir.path().join("registry");
    let mut shadow_rows = Vec::new();
    eventually(
        "the shadow's answers are logged",
        Duration::from_secs(30),
        async || {
            let output = nurture_tests::run_python(
                "analysis-venv",
                "tests/feedback/duckdb_log.py",
                &[root.to_str().unwrap(), "churn"],
                &[],
            );
            let log: serde_json::Value = serde_json::from_slice(&output).unwrap();
            shadow_rows = log["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|row| row["arm"] == "shadow")
                .cloned()
                .collect();
            shadow_rows.len() >= 1200
        },
    )
    .await;
    let mirrored: std::collections::HashSet<&str> = shadow_rows
        .iter()
        .map(|row| {
            assert_eq!(row["version"], 2);
            assert_ne!(row["prediction_id"], row["mirror_of"]);
            row["mirror_of"].as_str().unwrap()
        })
        .collect();
    assert!(
        outcomes
            .iter()
            .all(|o| mirrored.contains(o.prediction_id.as_str()))
    );

    // Clearing the shadow stops the mirroring.
    fixture.run("nurturectl", &["shadow-clear", "churn"]);
    eventually("the shadow is gone", Duration::from_secs(30), async || {
        let response = status
            .get_status(v1::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        response
            .models
            .iter()
            .any(|m| m.name == "churn" && m.shadow_version == 0)
    })
    .await;
}

/// The quality figures once the shadow has `outcomes` of them.
async fn eventually_quality(
    feedback: &mut FeedbackServiceClient<Channel>,
    outcomes: u64,
) -> Vec<v1::VersionQuality> {
    let mut last = Vec::new();
    eventually(
        "the shadow is scored",
        Duration::from_secs(30),
        async || {
            last = feedback
                .get_quality(v1::GetQualityRequest {
                    model: "churn".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .versions;
            last.iter()
                .any(|q| q.arm == "shadow" && q.outcomes >= outcomes)
        },
    )
    .await;
    last
}
