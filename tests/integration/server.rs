//! `nurture-server` end to end: a real process on 127.0.0.1, real ONNX
//! Runtime, models trained by `nurture-trainer`, versions moved by
//! `nurturectl`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{Datelike, Timelike};
use nurture_proto::inference as kserve;
use nurture_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nurture_proto::v1::channel_timing_service_client::ChannelTimingServiceClient;
use nurture_proto::v1::churn_service_client::ChurnServiceClient;
use nurture_proto::v1::emotion_service_client::EmotionServiceClient;
use nurture_proto::v1::journey_service_client::JourneyServiceClient;
use nurture_proto::v1::status_service_client::StatusServiceClient;
use nurture_proto::{prost_types, v1};
use nurture_tests::server::{LiveSwap, ServerProcess, churn_version_of, unix_micros_now};
use nurture_tests::{assert_invalid_argument, eventually, run_tool, write_bypassing_publish};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::Channel;

/// A registry with every kind trained and live (version 1).
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        fixture.train_everything();
        fixture
    }

    /// Generates data and trains and promotes every kind.
    fn train_everything(&self) {
        let data = self.path("data");
        let data = data.to_str().unwrap();
        self.run(
            "nurture-trainer",
            &["generate", "--out", data, "--rows", "1500"],
        );
        // Every iteration, as models of more data have (a refit would
        // choose fewer on these 1,500 rows): the overload test needs
        // requests that take a while.
        self.run(
            "nurture-trainer",
            &[
                "train",
                "all",
                "--data",
                data,
                "--promote",
                "--refit",
                "never",
            ],
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn registry(&self) -> String {
        format!("file://{}", self.path("registry").display())
    }

    fn run(&self, binary: &str, args: &[&str]) -> String {
        run_tool(
            binary,
            &self.registry(),
            args,
            &[("NURTURE_ACTOR", "tester")],
        )
    }

    fn server(&self, extra: &[&str]) -> ServerProcess {
        ServerProcess::start(&self.registry(), &self.path("cache"), extra)
    }

    /// A second churn version (fewer iterations).
    fn publish_second_churn(&self) {
        self.publish_brief_churn(30);
    }

    /// Another churn version, trained for `iterations` (distinct counts give
    /// distinct bytes; identical bytes would be the same version).
    fn publish_brief_churn(&self, iterations: u64) {
        let data = self.path("data").join("churn.csv");
        let iterations = iterations.to_string();
        self.run(
            "nurture-trainer",
            &[
                "train",
                "churn",
                "--data",
                data.to_str().unwrap(),
                "--publish",
                "--refit",
                "never",
                "--iterations",
                &iterations,
            ],
        );
    }
}

fn lead(id: &str) -> v1::LeadProfile {
    v1::LeadProfile {
        time_zone: "America/Chicago".to_owned(),
        ..nurture_tests::fixtures::lead_profile(id)
    }
}

async fn wait_until_live(server: &ServerProcess, models: usize) {
    let mut status = StatusServiceClient::new(server.channel().await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = status
            .get_status(v1::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if response
            .models
            .iter()
            .filter(|m| m.live_version > 0)
            .count()
            >= models
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "models not live in time: {response:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn churn_version(
    client: &mut ChurnServiceClient<Channel>,
    id: &str,
) -> Result<u64, tonic::Status> {
    churn_version_of(client, lead(id), 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_typed_rpc_with_the_version_that_answered() {
    let fixture = Fixture::new();
    let server = fixture.server(&["--poll-interval", "200ms"]);
    wait_until_live(&server, 5).await;
    let channel = server.channel().await;

    let mut churn = ChurnServiceClient::new(channel.clone());
    let response = churn
        .predict_churn(v1::PredictChurnRequest {
            leads: vec![lead("a"), lead("b")],
            version: 0,
            max_factors: 4,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.predictions.len(), 2);
    for (prediction, id) in response.predictions.iter().zip(["a", "b"]) {
        assert_eq!(prediction.lead_id, id, "request order kept");
        assert_eq!(
            prediction.model,
            Some(v1::ModelRef {
                name: "churn".into(),
                version: 1
            })
        );
        assert!((0.0..=1.0).contains(&prediction.churn_probability));
        assert!(prediction.risk_level > 0);
        assert_eq!(prediction.factors.len(), 4);
        assert!(
            prediction
                .factors
                .windows(2)
                .all(|w| w[0].effect.abs() >= w[1].effect.abs())
        );
        assert!(!prediction.interventions.is_empty());
    }

    let mut emotion = EmotionServiceClient::new(channel.clone());
    let texts = [
        "I'm so excited about the condo downtown!",
        "not happy with the inspection. at all",
    ];
    let response = emotion
        .analyze_emotion(v1::AnalyzeEmotionRequest {
            inputs: texts
                .iter()
                .map(|t| v1::EmotionInput {
                    text: (*t).to_owned(),
                    lead_id: "a".into(),
                })
                .collect(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].dominant,
        v1::EmotionalState::Excited as i32
    );
    assert_eq!(
        response.results[1].dominant,
        v1::EmotionalState::Disappointed as i32
    );
    assert!(response.results[0].sentiment > 0.0 && response.results[1].sentiment < 0.0);
    let total: f64 = response.results[0]
        .scores
        .iter()
        .map(|s| s.probability)
        .sum();
    assert!((total - 1.0).abs() < 1e-4);

    let mut journey = JourneyServiceClient::new(channel.clone());
    let response = journey
        .classify_stage(v1::ClassifyStageRequest {
            leads: vec![lead("a")],
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.predictions[0].probabilities.len(), 5);
    assert!(response.predictions[0].stage > 0);

    let mut timing = ChannelTimingServiceClient::new(channel.clone());
    // Wednesday 2026-06-10 15:30 UTC; Chicago keeps UTC-5 the whole week after.
    let as_of = chrono::DateTime::parse_from_rfc3339("2026-06-10T15:30:00Z").unwrap();
    let response = timing
        .recommend_timing(v1::RecommendTimingRequest {
            inputs: vec![v1::TimingInput {
                lead: Some(lead("a")),
                top_k: 10,
                do_not_contact: vec![v1::Channel::Call as i32],
                quiet_hours: Some(v1::QuietHours {
                    start_hour: 21,
                    end_hour: 8,
                }),
            }],
            version: 0,
            as_of: Some(prost_types::Timestamp {
                seconds: as_of.timestamp(),
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let slots = &response.recommendations[0].slots;
    assert_eq!(slots.len(), 10);
    assert!(
        slots
            .windows(2)
            .all(|w| w[0].response_probability >= w[1].response_probability)
    );
    assert!(
        slots
            .iter()
            .all(|s| s.channel != v1::Channel::Call as i32 && (8..21).contains(&s.hour))
    );
    // Each slot's `starts_at` is, in the lead's zone (America/Chicago), the
    // slot's own weekday and hour, within the week after `as_of`.
    let chicago = chrono::FixedOffset::west_opt(5 * 3600).unwrap();
    for slot in slots {
        let at = slot.starts_at.expect("starts_at");
        let at = chrono::DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap();
        assert!(
            at >= as_of && at < as_of + chrono::TimeDelta::days(7),
            "{slot:?}"
        );
        let local = at.with_timezone(&chicago);
        assert_eq!(
            (local.weekday().number_from_monday() as i32, local.hour()),
            (slot.weekday, slot.hour),
            "{slot:?} starts at {local}"
        );
        assert!(
            local.minute() == 0 || at == as_of,
            "{slot:?} starts at {local}"
        );
    }

    // Pinning the live version works; an unknown version is NOT_FOUND.
    let pinned = churn
        .predict_churn(v1::PredictChurnRequest {
            leads: vec![lead("a")],
            version: 1,
            max_factors: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        pinned.into_inner().predictions[0]
            .model
            .as_ref()
            .unwrap()
            .version,
        1
    );
    let missing = churn
        .predict_churn(v1::PredictChurnRequest {
            leads: vec![lead("a")],
            version: 9,
            max_factors: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// One answered request: when the client sent it, when the answer arrived
/// (microseconds since the Unix epoch) and the version that served it.
#[derive(Debug, Clone, Copy)]
struct Answered {
    sent_us: u64,
    received_us: u64,
    version: u64,
}

/// Whether `version` was live at some moment of `[from_us, to_us]`, judged
/// by the server's own swap log: the version went live inside some swap's
/// bracket and stayed live until the next swap's bracket ended.
fn live_during(swaps: &[LiveSwap], version: u64, from_us: u64, to_us: u64) -> bool {
    swaps.iter().enumerate().any(|(i, swap)| {
        let went_live = swap.swap_began_us;
        let left = swaps.get(i + 1).map_or(u64::MAX, |next| next.swap_done_us);
        swap.to_version == version && from_us <= left && to_us >= went_live
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_under_load_lose_no_request() {
    const POLL: Duration = Duration::from_millis(100);
    // Timer lateness of the watcher task on two cores shared with four
    // clients at full speed and the server's workers.
    const TIMER_SLACK_US: u64 = 100_000;
    let fixture = Fixture::new();
    fixture.publish_second_churn();
    let server = fixture.server(&["--poll-interval", "100ms", "--log-format", "json"]);
    wait_until_live(&server, 5).await;
    let channel = server.channel().await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client_id in 0..4 {
        let mut client = ChurnServiceClient::new(channel.clone());
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut failures = Vec::new();
            let started = Instant::now();
            // Bounded in time and count.
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(120)
                && answers.len() < 1_000_000
            {
                let sent_us = unix_micros_now();
                let id = format!("lead-{client_id}-{}", answers.len());
                match churn_version(&mut client, &id).await {
                    Ok(version) => answers.push(Answered {
                        sent_us,
                        received_us: unix_micros_now(),
                        version,
                    }),
                    Err(status) => failures.push(status.to_string()),
                }
            }
            (answers, failures)
        }));
    }

    // 20 changes; each waits for the server to act on it, then leaves the
    // clients on the new version for a while before the next.
    let mut changes = Vec::new();
    for change in 0..20 {
        let (args, target): (Vec<&str>, u64) = if change % 2 == 0 {
            (vec!["promote", "churn", "2", "--force"], 2)
        } else {
            (vec!["rollback", "churn", "--reason", "swap test"], 1)
        };
        fixture.run("nurturectl", &args);
        // The release log was written before nurturectl exited.
        changes.push((unix_micros_now(), target));
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.live_swaps("churn").len() < change + 2 {
            assert!(
                Instant::now() < deadline,
                "change {change} ({args:?}) not acted on:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let swaps = server.live_swaps("churn");
    let final_swap = *swaps.last().unwrap();
    // Requests that start after the last swap all carry the final version.
    let mut client = ChurnServiceClient::new(channel.clone());
    for i in 0..50 {
        let version = churn_version(&mut client, &format!("after-{i}"))
            .await
            .unwrap();
        assert_eq!(version, 1, "after the last swap");
    }
    stop.store(true, Ordering::Relaxed);

    // The server swapped exactly once per change, to the version asked for,
    // in a poll pass that began within one poll interval of the change; the
    // swap itself came after that pass's loading.
    assert_eq!(swaps.len(), 21, "initial load plus 20 changes: {swaps:#?}");
    assert_eq!((swaps[0].from_version, swaps[0].to_version), (0, 1));
    let mut worst_lag_us = 0;
    for (i, ((written_us, target), swap)) in changes.iter().zip(&swaps[1..]).enumerate() {
        assert_eq!(swap.to_version, *target, "change {i}: {swap:?}");
        assert_eq!(swap.from_version, 3 - target, "change {i}: {swap:?}");
        let load_us = swap.swap_done_us.saturating_sub(swap.pass_started_us);
        let lag_us = swap.swap_done_us.saturating_sub(*written_us);
        assert!(
            lag_us <= POLL.as_micros() as u64 + load_us + TIMER_SLACK_US,
            "change {i} took {lag_us} µs to go live (pass loaded for {load_us} µs): {swap:?}"
        );
        worst_lag_us = worst_lag_us.max(lag_us);
    }
    eprintln!("slowest change went live {worst_lag_us} µs after it was written");

    // No failures, and every answer names a version that was live at some
    // moment between the request's sending and its answer.
    let mut total = 0;
    let mut by_version = [0usize; 3];
    let mut after_final = 0;
    for client in clients {
        let (answers, failures) = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        for answer in &answers {
            assert!(
                live_during(&swaps, answer.version, answer.sent_us, answer.received_us),
                "{answer:?} was not live during the request; swaps: {swaps:#?}"
            );
            by_version[answer.version.min(2) as usize] += 1;
            if answer.sent_us > final_swap.swap_done_us {
                assert_eq!(answer.version, 1, "{answer:?} after {final_swap:?}");
                after_final += 1;
            }
        }
        total += answers.len();
    }
    eprintln!("{total} answers: {by_version:?} by version, {after_final} after the last swap");
    assert!(
        by_version[1] > 100 && by_version[2] > 100,
        "both versions answered: {by_version:?}"
    );
    assert!(
        after_final > 0,
        "the clients kept sending after the last swap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_named_and_overload_is_shed() {
    let fixture = Fixture::new();
    let server = fixture.server(&["--max-items", "8", "--max-text-bytes", "64"]);
    wait_until_live(&server, 5).await;
    let channel = server.channel().await;
    let mut churn = ChurnServiceClient::new(channel.clone());
    let mut emotion = EmotionServiceClient::new(channel.clone());

    let mut nan = lead("a");
    nan.sentiment_score = Some(f64::NAN);
    let mut negative = lead("b");
    negative.showings_attended = Some(-1);
    let mut missing = lead("c");
    missing.days_since_last_reply = None;
    let cases = vec![
        (vec![lead("ok"), nan], "leads[1].sentiment_score"),
        (vec![negative], "leads[0].showings_attended"),
        (vec![missing], "leads[0].days_since_last_reply"),
        (vec![], "invalid leads"),
        (
            (0..9).map(|i| lead(&format!("l{i}"))).collect(),
            "at most 8",
        ),
    ];
    for (leads, expected) in cases {
        let status = churn
            .predict_churn(v1::PredictChurnRequest {
                leads,
                version: 0,
                max_factors: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{expected}: {status:?}"
        );
        assert!(
            status.message().contains(expected),
            "{expected}: {}",
            status.message()
        );
    }
    let long = v1::EmotionInput {
        text: "so excited ".repeat(10),
        lead_id: String::new(),
    };
    let status = emotion
        .analyze_emotion(v1::AnalyzeEmotionRequest {
            inputs: vec![long],
            version: 0,
        })
        .await
        .unwrap_err();
    assert_invalid_argument(&status, "inputs[0].text");
    let mut timing = ChannelTimingServiceClient::new(channel.clone());
    let unknown_zone = v1::TimingInput {
        lead: Some(v1::LeadProfile {
            time_zone: "Mars/Olympus_Mons".to_owned(),
            ..lead("z")
        }),
        top_k: 1,
        do_not_contact: vec![],
        quiet_hours: None,
    };
    for (request, expected) in [
        (
            v1::RecommendTimingRequest {
                inputs: vec![unknown_zone],
                version: 0,
                as_of: None,
            },
            "inputs[0].lead.time_zone",
        ),
        (
            v1::RecommendTimingRequest {
                inputs: vec![v1::TimingInput {
                    lead: Some(lead("t")),
                    ..Default::default()
                }],
                version: 0,
                as_of: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
            },
            "as_of",
        ),
    ] {
        let status = timing.recommend_timing(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
    }

    // Still answering.
    assert_eq!(churn_version(&mut churn, "after").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_and_the_server_recovers() {
    let fixture = Fixture::new();
    let server = fixture.server(&[
        "--queue-capacity",
        "1",
        "--max-batch",
        "1",
        "--max-delay",
        "0ms",
        "--max-timing-leads",
        "16",
    ]);
    wait_until_live(&server, 5).await;
    let channel = server.channel().await;
    // Channel-timing requests of 16 leads are 16 x 672 rows each: slow enough
    // to fill a one-request queue.
    let request = v1::RecommendTimingRequest {
        inputs: (0..16)
            .map(|i| v1::TimingInput {
                lead: Some(lead(&format!("l{i}"))),
                top_k: 1,
                do_not_contact: vec![],
                quiet_hours: None,
            })
            .collect(),
        version: 0,
        as_of: None,
    };
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let mut client = ChannelTimingServiceClient::new(channel.clone());
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            client
                .recommend_timing(request)
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }));
    }
    let mut exhausted = 0;
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Code::ResourceExhausted) => exhausted += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(exhausted > 0, "some requests were shed ({ok} answered)");
    assert!(ok > 0, "some requests were answered");
    let mut churn = ChurnServiceClient::new(channel);
    assert_eq!(churn_version(&mut churn, "after").await.unwrap(), 1);
}

async fn pinned_churn(server: &ServerProcess, pin: u64) -> Result<u64, tonic::Status> {
    let mut client = ChurnServiceClient::new(server.channel().await);
    churn_version_of(&mut client, lead("pinned"), pin).await
}

/// How many times the server logged loading `version` of churn.
fn loads_of(server: &ServerProcess, version: u64) -> usize {
    server
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            event["message"] == "version loaded"
                && event["model"] == "churn"
                && event["version"] == version
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_versions_outside_the_deployment_load_on_demand() {
    let fixture = Fixture::new();
    for iterations in [30, 31, 32] {
        fixture.publish_brief_churn(iterations);
    }
    for version in ["2", "3", "4"] {
        fixture.run("nurturectl", &["promote", "churn", version]);
    }
    // Version 5 is in the log but its bytes do not match its manifest.
    let good =
        std::fs::read(fixture.path("registry/models/churn/versions/00000004/model.onnx")).unwrap();
    write_bypassing_publish(&fixture.registry(), 5, good, Some("0".repeat(64)), false).await;
    let server = fixture.server(&[
        "--poll-interval",
        "100ms",
        "--max-pinned-versions",
        "1",
        "--log-format",
        "json",
    ]);
    wait_until_live(&server, 5).await;
    assert_eq!(churn_status(&status(&server).await).loaded_versions, [4, 3]);

    // Eight concurrent requests pin version 1: one load, all answered by it.
    let pinned: Vec<_> = (0..8).map(|_| pinned_churn(&server, 1)).collect();
    for answer in futures::future::join_all(pinned).await {
        assert_eq!(answer.unwrap(), 1);
    }
    assert_eq!(loads_of(&server, 1), 1, "one load for concurrent pins");
    assert_eq!(
        churn_status(&status(&server).await).loaded_versions,
        [4, 3, 1]
    );
    // Unpinned traffic still goes to the live version.
    let mut churn = ChurnServiceClient::new(server.channel().await);
    assert_eq!(churn_version(&mut churn, "routed").await.unwrap(), 4);

    // One pinned version at most: pinning 2 drops 1.
    assert_eq!(pinned_churn(&server, 2).await.unwrap(), 2);
    assert_eq!(
        churn_status(&status(&server).await).loaded_versions,
        [4, 3, 2]
    );

    // A version that fails its checks is refused, shown in status, and not
    // loaded again at the next pin.
    for _ in 0..2 {
        let broken = pinned_churn(&server, 5).await.unwrap_err();
        assert_eq!(broken.code(), Code::FailedPrecondition, "{broken:?}");
        assert!(broken.message().contains("sha256"), "{}", broken.message());
    }
    let refusals = server
        .log()
        .lines()
        .filter(|line| line.contains("version refused") && line.contains(r#""version":5"#))
        .count();
    assert_eq!(refusals, 1, "refused once, remembered after");
    let churn_now = churn_status(&status(&server).await);
    assert!(
        churn_now.load_errors.iter().any(|e| e.version == 5),
        "{churn_now:?}"
    );
    assert_eq!(churn_now.loaded_versions, [4, 3, 2], "nothing dropped");

    // A version the release log does not name is NOT_FOUND, and says so.
    let missing = pinned_churn(&server, 9).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("not in its release log"),
        "{}",
        missing.message()
    );

    // Roll back 4: the watcher makes 3 live and reuses the pinned 2 as the
    // previous version instead of loading it again; 4 is revoked and a pin
    // on it is refused.
    fixture.run(
        "nurturectl",
        &["rollback", "churn", "--reason", "pinned replay test"],
    );
    eventually(
        "rollback not applied",
        Duration::from_secs(30),
        async || churn_status(&status(&server).await).live_version == 3,
    )
    .await;
    assert_eq!(loads_of(&server, 2), 1, "the pinned load was reused");
    let revoked = pinned_churn(&server, 4).await.unwrap_err();
    assert_eq!(revoked.code(), Code::FailedPrecondition, "{revoked:?}");
}

async fn status(server: &ServerProcess) -> v1::GetStatusResponse {
    let mut client = StatusServiceClient::new(server.channel().await);
    client
        .get_status(v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn churn_status(response: &v1::GetStatusResponse) -> v1::ModelStatus {
    response
        .models
        .iter()
        .find(|m| m.name == "churn")
        .cloned()
        .expect("churn is served")
}

async fn wait_for_load_error(server: &ServerProcess, version: u64) -> v1::LoadError {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let churn = churn_status(&status(server).await);
        if let Some(error) = churn.load_errors.iter().find(|e| e.version == version) {
            return error.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no load error for version {version}: {churn:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_contract_breaking_versions_are_refused_and_the_old_one_keeps_serving() {
    let fixture = Fixture::new();
    let server = fixture.server(&["--poll-interval", "100ms", "--log-format", "json"]);
    wait_until_live(&server, 5).await;
    let mut churn = ChurnServiceClient::new(server.channel().await);

    // Truncated bytes, with a manifest that matches them.
    let good =
        std::fs::read(fixture.path("registry/models/churn/versions/00000001/model.onnx")).unwrap();
    write_bypassing_publish(
        &fixture.registry(),
        2,
        good[..good.len() / 3].to_vec(),
        None,
        true,
    )
    .await;
    let error = wait_for_load_error(&server, 2).await;
    assert_eq!(error.error_type, "contract_violation", "{error:?}");
    // Bytes that do not match the manifest's sha256.
    write_bypassing_publish(
        &fixture.registry(),
        3,
        good.clone(),
        Some("0".repeat(64)),
        true,
    )
    .await;
    let error = wait_for_load_error(&server, 3).await;
    assert_eq!(error.error_type, "sha256_mismatch", "{error:?}");

    let state = churn_status(&status(&server).await);
    assert_eq!(state.live_version, 1);
    assert_eq!(state.desired_version, 3);
    assert_eq!(churn_version(&mut churn, "a").await.unwrap(), 1);
    // The runbook's search finds the refusal in JSON logs: the event's name
    // is its message, the error text a field of its own.
    let refusals: Vec<serde_json::Value> = server
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "version refused")
        .collect();
    assert!(
        refusals.iter().any(|e| e["error_type"] == "sha256_mismatch"
            && e["version"] == 3
            && e["error"].is_string()),
        "{refusals:?}"
    );
    let metrics = server.metrics();
    assert!(
        metrics
            .contains("nurture_model_loads_total{model=\"churn\",result=\"contract_violation\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nurture_model_loads_total{model=\"churn\",result=\"sha256_mismatch\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_rollback_serves_the_rolled_back_to_version() {
    let fixture = Fixture::new();
    fixture.publish_second_churn();
    fixture.run("nurturectl", &["promote", "churn", "2"]);
    let server = fixture.server(&["--poll-interval", "100ms"]);
    wait_until_live(&server, 5).await;
    let mut churn = ChurnServiceClient::new(server.channel().await);
    assert_eq!(churn_version(&mut churn, "a").await.unwrap(), 2);
    fixture.run(
        "nurturectl",
        &["rollback", "churn", "--reason", "bad calibration"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while churn_version(&mut churn, "a").await.unwrap() != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(churn);
    drop(server);

    let server = fixture.server(&["--poll-interval", "100ms"]);
    wait_until_live(&server, 5).await;
    let mut churn = ChurnServiceClient::new(server.channel().await);
    for i in 0..20 {
        assert_eq!(
            churn_version(&mut churn, &format!("lead-{i}"))
                .await
                .unwrap(),
            1
        );
    }
    let pinned = churn
        .predict_churn(v1::PredictChurnRequest {
            leads: vec![lead("a")],
            version: 2,
            max_factors: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(pinned.code(), Code::FailedPrecondition, "{pinned:?}");
    assert!(
        !churn_status(&status(&server).await)
            .loaded_versions
            .contains(&2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_store_is_unreachable_serves_the_cached_versions() {
    let fixture = Fixture::new();
    {
        let server = fixture.server(&[]);
        wait_until_live(&server, 5).await;
    }
    // Same cache, a store nobody answers for.
    let server = ServerProcess::start_with_env(
        "s3://nurture-unreachable/models",
        &fixture.path("cache"),
        &["--poll-interval", "1s"],
        &[
            ("AWS_ENDPOINT", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "y"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    wait_until_live(&server, 5).await;
    let mut churn = ChurnServiceClient::new(server.channel().await);
    assert_eq!(churn_version(&mut churn, "a").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_honest_and_metrics_follow_traffic() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let fixture = Fixture {
        dir: tempfile::tempdir().unwrap(),
    };
    let server = fixture.server(&["--poll-interval", "100ms"]);
    let mut health = HealthClient::new(server.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    // Nothing published: not ready, and typed RPCs say UNAVAILABLE.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for service in ["", "nurture.v1.ChurnService"] {
        let status = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }
    // Before any traffic: every series has HELP text, and the failure
    // counters an alert's increase() watches exist at zero.
    let metrics = server.metrics();
    let types: Vec<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    assert!(types.contains(&"nurture_build_info"), "{metrics}");
    for name in &types {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no HELP text in\n{metrics}"
        );
    }
    for zero in [
        "nurture_shed_requests_total{model=\"churn\",reason=\"queue_full\"} 0",
        "nurture_model_loads_total{model=\"churn\",result=\"ok\"} 0",
        "nurture_outcomes_total{model=\"churn\",result=\"forged_id\"} 0",
        "nurture_registry_poll_errors_total{model=\"emotion\"} 0",
        "nurture_auth_failures_total{reason=\"wrong_token\"} 0",
    ] {
        assert!(metrics.contains(zero), "missing {zero} in\n{metrics}");
    }
    let mut churn = ChurnServiceClient::new(server.channel().await);
    assert_eq!(
        churn_version(&mut churn, "a").await.unwrap_err().code(),
        Code::Unavailable
    );

    // Train and promote everything: every service turns SERVING.
    fixture.train_everything();
    wait_until_live(&server, 5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while health.check(check("")).await.unwrap().into_inner().status
        != ServingStatus::Serving as i32
    {
        assert!(
            Instant::now() < deadline,
            "overall health never turned SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still before any request: every metric the Grafana dashboard and the
    // alert rules query exists.
    let metrics = server.metrics();
    let root = nurture_tests::project_root().join("helm/nurture");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/nurture.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut queries = Vec::new();
    collect_exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    queries.push(std::fs::read_to_string(root.join("templates/prometheusrule.yaml")).unwrap());
    let mut names: Vec<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            exposed(&metrics, name),
            "{name} is queried but not exposed:\n{metrics}"
        );
    }
    for service in [
        "nurture.v1.EmotionService",
        "nurture.v1.ChurnService",
        "nurture.v1.JourneyService",
        "nurture.v1.ChannelTimingService",
    ] {
        assert_eq!(
            health
                .check(check(service))
                .await
                .unwrap()
                .into_inner()
                .status,
            ServingStatus::Serving as i32,
            "{service}"
        );
    }

    for i in 0..20 {
        churn_version(&mut churn, &format!("lead-{i}"))
            .await
            .unwrap();
    }
    let metrics = server.metrics();
    for expected in [
        "nurture_requests_total{model=\"churn\",version=\"1\",arm=\"live\",rpc=\"PredictChurn\",code=\"ok\"} 20",
        "nurture_request_duration_seconds_bucket{model=\"churn\",version=\"1\",arm=\"live\",rpc=\"PredictChurn\"",
        "nurture_batch_rows_bucket{model=\"churn\"",
        "nurture_inference_duration_seconds_bucket{model=\"churn\"",
        "nurture_live_version{model=\"churn\"} 1",
        "nurture_model_loads_total{model=\"emotion\",result=\"ok\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let fixture = Fixture::new();
    let mut server = fixture.server(&["--max-timing-leads", "16"]);
    wait_until_live(&server, 5).await;
    let mut timing = ChannelTimingServiceClient::new(server.channel().await);
    let request = v1::RecommendTimingRequest {
        inputs: (0..16)
            .map(|i| v1::TimingInput {
                lead: Some(lead(&format!("l{i}"))),
                top_k: 3,
                do_not_contact: vec![],
                quiet_hours: None,
            })
            .collect(),
        version: 0,
        as_of: None,
    };
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let mut client = timing.clone();
            let request = request.clone();
            tokio::spawn(async move { client.recommend_timing(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let exit = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
        .await
        .unwrap();
    for request in in_flight {
        let response = request
            .await
            .unwrap()
            .expect("in-flight requests are answered");
        assert_eq!(response.into_inner().recommendations.len(), 16);
    }
    assert!(exit.expect("the server exits").success());
    assert!(
        timing.recommend_timing(request).await.is_err(),
        "a stopped server answers nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_get_their_share_of_leads_sticky_per_lead() {
    let fixture = Fixture::new();
    fixture.publish_second_churn();
    let server = fixture.server(&["--poll-interval", "100ms"]);
    wait_until_live(&server, 5).await;
    fixture.run("nurturectl", &["canary", "churn", "2", "--percent", "30"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while churn_status(&status(&server).await).canary_version != 2 {
        assert!(Instant::now() < deadline, "canary not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut churn = ChurnServiceClient::new(server.channel().await);
    // One request of many leads: each lead is routed on its own.
    let leads: Vec<v1::LeadProfile> = (0..200).map(|i| lead(&format!("lead-{i}"))).collect();
    let first = churn
        .predict_churn(v1::PredictChurnRequest {
            leads: leads.clone(),
            version: 0,
            max_factors: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let on_canary = first
        .predictions
        .iter()
        .filter(|p| p.model.as_ref().unwrap().version == 2)
        .count();
    assert!(
        (30..90).contains(&on_canary),
        "{on_canary} of 200 leads on the 30% canary"
    );
    // The split request counts under each version that answered, with its
    // own items, in the request counters and the latency histogram.
    let metrics = server.metrics();
    let series = |name: &str, version: &str, arm: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| {
                line.starts_with(name)
                    && line.contains(r#"rpc="PredictChurn""#)
                    && line.contains(&format!(r#"version="{version}""#))
                    && line.contains(&format!(r#"arm="{arm}""#))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        series("nurture_request_items_total", "2", "canary"),
        on_canary as f64
    );
    assert_eq!(
        series("nurture_request_items_total", "1", "live"),
        (200 - on_canary) as f64
    );
    for (version, arm) in [("1", "live"), ("2", "canary")] {
        assert_eq!(series("nurture_requests_total", version, arm), 1.0);
        assert_eq!(
            series("nurture_request_duration_seconds_count", version, arm),
            1.0
        );
    }
    assert!(!metrics.contains(r#"version="mixed""#));
    // Sticky: the same leads land on the same versions again, one by one.
    for prediction in first.predictions.iter().take(40) {
        let again = churn_version(&mut churn, &prediction.lead_id)
            .await
            .unwrap();
        assert_eq!(
            again,
            prediction.model.as_ref().unwrap().version,
            "{}",
            prediction.lead_id
        );
    }
    // Clearing the canary sends everyone back to the live version.
    fixture.run("nurturectl", &["canary-clear", "churn"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while churn_status(&status(&server).await).canary_version != 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = churn
        .predict_churn(v1::PredictChurnRequest {
            leads,
            version: 0,
            max_factors: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        after
            .predictions
            .iter()
            .all(|p| p.model.as_ref().unwrap().version == 1)
    );
}

/// Sends `text` to the emotion model through the Open Inference Protocol,
/// as one BYTES element of the `text` input.
async fn infer_emotion_text(
    client: &mut GrpcInferenceServiceClient<Channel>,
    text: &str,
) -> Result<(), tonic::Status> {
    let input = kserve::model_infer_request::InferInputTensor {
        name: "text".into(),
        datatype: "BYTES".into(),
        shape: vec![1],
        contents: Some(kserve::InferTensorContents {
            bytes_contents: vec![text.as_bytes().to_vec()],
            ..Default::default()
        }),
        ..Default::default()
    };
    client
        .model_infer(kserve::ModelInferRequest {
            model_name: "emotion".into(),
            inputs: vec![input],
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_nul_bytes_never_fail_another_clients_requests() {
    let fixture = Fixture::new();
    let server = fixture.server(&[]);
    wait_until_live(&server, 5).await;
    let channel = server.channel().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut good = Vec::new();
    // Eight clients with ordinary texts, bounded in count and time.
    for client in 0..8 {
        let mut emotion = EmotionServiceClient::new(channel.clone());
        let stop = stop.clone();
        good.push(tokio::spawn(async move {
            let (mut answered, mut failed) = (0usize, Vec::new());
            for i in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let request = v1::AnalyzeEmotionRequest {
                    inputs: vec![v1::EmotionInput {
                        text: format!("client {client} is so excited about listing {i}"),
                        lead_id: format!("c{client}"),
                    }],
                    version: 0,
                };
                match emotion.analyze_emotion(request).await {
                    Ok(_) => answered += 1,
                    Err(status) => failed.push(status),
                }
            }
            (answered, failed)
        }));
    }
    // Two clients with NUL bytes: one typed, one through the protocol.
    let mut emotion = EmotionServiceClient::new(channel.clone());
    let typed_stop = stop.clone();
    let typed = tokio::spawn(async move {
        let mut refusals = Vec::new();
        while !typed_stop.load(Ordering::Relaxed) && refusals.len() < 5_000 {
            let request = v1::AnalyzeEmotionRequest {
                inputs: vec![v1::EmotionInput {
                    text: "so excited\0about this".into(),
                    lead_id: "nul".into(),
                }],
                version: 0,
            };
            refusals.push(emotion.analyze_emotion(request).await.unwrap_err());
        }
        refusals
    });
    let mut inference = GrpcInferenceServiceClient::new(channel.clone());
    let protocol_stop = stop.clone();
    let protocol = tokio::spawn(async move {
        let mut refusals = Vec::new();
        while !protocol_stop.load(Ordering::Relaxed) && refusals.len() < 5_000 {
            refusals.push(
                infer_emotion_text(&mut inference, "a\0b")
                    .await
                    .unwrap_err(),
            );
        }
        refusals
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for client in good {
        let (ok, failed) = client.await.unwrap();
        assert!(
            failed.is_empty(),
            "good requests failed: {:?}",
            &failed[..failed.len().min(3)]
        );
        answered += ok;
    }
    let typed = typed.await.unwrap();
    let protocol = protocol.await.unwrap();
    assert!(answered > 100 && !typed.is_empty() && !protocol.is_empty());
    for status in &typed {
        assert_invalid_argument(status, "inputs[0].text");
    }
    for status in &protocol {
        assert_invalid_argument(status, "inputs[0].contents");
    }
    // The same text without the NUL byte is served through both paths.
    let mut inference = GrpcInferenceServiceClient::new(channel);
    infer_emotion_text(&mut inference, "ab").await.unwrap();
}

/// Every `expr` string in a Grafana dashboard.
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Names of Nurture's and the process's series in a query.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["nurture_", "process_"] {
        for (at, _) in query.match_indices(prefix) {
            let before = query[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = query[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.push(name);
        }
    }
    names
}

/// Whether `/metrics` has a series named `name`, or declares its family
/// (a histogram's `_bucket` series exist from its first observation; its
/// family is declared from the start).
fn exposed(metrics: &str, name: &str) -> bool {
    let has_series = metrics.lines().any(|line| {
        line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
    });
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    has_series || metrics.contains(&format!("# TYPE {family} histogram"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_small_requests_at_once_on_one_connection_are_all_answered() {
    // HTTP/2 servers close a connection whose unread small DATA frames pass
    // an allowance (a defence against floods of tiny frames), failing every
    // request on it with UNKNOWN. A burst of small gRPC requests on one
    // connection, each a single small frame, used to pass it once a few
    // thousand waited; the server now bounds the streams a connection may
    // open and sizes the window so they always fit, and the client waits.
    const REQUESTS: usize = 8_000;
    let fixture = Fixture::new();
    let server = fixture.server(&[]);
    wait_until_live(&server, 5).await;
    let channel = server.channel().await;
    // One row of raw FP32 values: the message is one DATA frame of well
    // under 256 bytes.
    let small = crate::inference::request("churn", "", &crate::inference::rows(1), true);
    let started = Instant::now();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let mut client = GrpcInferenceServiceClient::new(channel.clone());
            let small = small.clone();
            tokio::spawn(async move {
                client
                    .model_infer(small)
                    .await
                    .map(|_| ())
                    .map_err(|status| {
                        let admission = status.metadata().contains_key("retry-after");
                        (status.code(), admission, status.message().to_owned())
                    })
            })
        })
        .collect();
    let (mut answered, mut refused, mut failed) = (0, 0, Vec::new());
    for task in tasks {
        let result = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("every request ends within two minutes")
            .unwrap();
        match result {
            Ok(()) => answered += 1,
            // Refused at admission (the queue's wait bound), with retry-after.
            Err((Code::ResourceExhausted, true, _)) => refused += 1,
            Err(failure) => failed.push(failure),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} requests failed ({answered} answered, {refused} refused), e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(answered > 0, "nothing was answered");
    eprintln!(
        "{answered} answered, {refused} refused in {:?}",
        started.elapsed()
    );
    // The connection survived: the same channel still answers.
    let mut client = GrpcInferenceServiceClient::new(channel);
    client.model_infer(small).await.unwrap();
}
