//! Message optimization end to end: experiments, the bandit over real
//! gRPC, durable outcomes, statistics.

use std::time::{Duration, Instant};

use nurture_proto::v1;
use nurture_proto::v1::feedback_service_client::FeedbackServiceClient;
use nurture_proto::v1::optimization_service_client::OptimizationServiceClient;
use nurture_tests::server::ServerProcess;
use nurture_tests::{assert_invalid_argument, run_tool};
use rand::{RngExt, SeedableRng};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::Channel;

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    /// A registry with an optimization model trained and live.
    fn new() -> Self {
        let fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        let data = fixture.dir.path().join("data");
        let data = data.to_str().unwrap();
        fixture.run(
            "nurture-trainer",
            &["generate", "--out", data, "--rows", "1500"],
        );
        let csv = format!("{data}/optimization.csv");
        fixture.run(
            "nurture-trainer",
            &["train", "optimization", "--data", &csv, "--promote"],
        );
        fixture
    }

    fn registry(&self) -> String {
        format!("file://{}", self.dir.path().join("registry").display())
    }

    fn run(&self, binary: &str, args: &[&str]) {
        run_tool(binary, &self.registry(), args, &[]);
    }

    fn server(&self) -> ServerProcess {
        ServerProcess::start(
            &self.registry(),
            &self.dir.path().join("cache"),
            &[
                "--models",
                "optimization",
                "--bandit-seed",
                "7",
                "--poll-interval",
                "200ms",
            ],
        )
    }
}

async fn connect(server: &ServerProcess) -> OptimizationServiceClient<Channel> {
    let channel = server.channel().await;
    OptimizationServiceClient::new(channel)
}

fn lead(id: &str) -> v1::LeadProfile {
    v1::LeadProfile {
        lead_id: id.to_owned(),
        days_since_first_contact: Some(40.0),
        days_since_last_contact: Some(3.0),
        days_since_last_reply: Some(5.0),
        email_open_rate: Some(0.45),
        email_click_rate: Some(0.1),
        sms_reply_rate: Some(0.4),
        call_answer_rate: Some(0.2),
        video_join_rate: Some(0.1),
        messages_sent_30d: Some(6),
        messages_received_30d: Some(3),
        avg_response_hours: Some(8.0),
        sentiment_score: Some(0.2),
        complaints_90d: Some(0),
        website_visits_30d: Some(6),
        listings_viewed_30d: Some(9),
        saved_searches: Some(2),
        showings_attended: Some(1),
        pre_approved: Some(true),
        mortgage_calculator_uses_30d: Some(1),
        budget_k_usd: Some(450.0),
        time_zone: String::new(),
    }
}

fn variant(id: &str, tone: v1::Tone, channel: v1::Channel) -> v1::Variant {
    v1::Variant {
        id: id.to_owned(),
        tone: tone as i32,
        channel: channel as i32,
        length_words: 120,
        has_incentive: false,
        personalized: true,
        traffic_share: 0.0,
    }
}

fn experiment(name: &str) -> v1::Experiment {
    v1::Experiment {
        name: name.to_owned(),
        variants: vec![
            variant("control", v1::Tone::Conservative, v1::Channel::Email),
            variant("friendly", v1::Tone::Friendly, v1::Channel::Sms),
            variant("bold", v1::Tone::Aggressive, v1::Channel::Email),
        ],
        min_samples: 50,
        target_confidence: 0.95,
        stopped: false,
        created_at: String::new(),
    }
}

async fn wait_live(client: &mut OptimizationServiceClient<Channel>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = v1::ChooseVariantRequest {
            experiment: name.to_owned(),
            leads: vec![lead("probe")],
            version: 0,
        };
        match client.choose_variant(request).await {
            Ok(_) => return,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

/// Three variants converting at 5%, 7% and 10% (unknown to the server). The
/// bandit must find the 10% one, the statistics must recommend it, and the
/// cumulative (pseudo-)regret must stay under half of what a uniform A/B/C
/// split would lose: N × (0.10 − 0.0733) / 2.
///
/// Why half: a uniform split loses 0.0267 per lead. Thompson sampling's
/// regret grows like log N (Agrawal and Goyal, 2012) while the split's grows
/// like N; with N = 3000 and gaps of 0.03 and 0.05 the bandit spends most
/// leads on the best variant after a few hundred, so it loses well under half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandit_sends_most_traffic_to_the_best_variant() {
    let fixture = Fixture::new();
    let server = fixture.server();
    let mut client = connect(&server).await;
    client
        .create_experiment(v1::CreateExperimentRequest {
            experiment: Some(experiment("spring")),
        })
        .await
        .unwrap();
    wait_live(&mut client, "spring").await;

    let true_rates = [("control", 0.05), ("friendly", 0.07), ("bold", 0.10)];
    let best = 0.10;
    let leads = 3_000;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut counts = [0usize; 3];
    let mut regret = 0.0;
    for i in 0..leads {
        let choice = client
            .choose_variant(v1::ChooseVariantRequest {
                experiment: "spring".into(),
                leads: vec![lead(&format!("lead-{i}"))],
                version: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .choices
            .remove(0);
        let index = true_rates
            .iter()
            .position(|(id, _)| *id == choice.variant_id)
            .unwrap();
        counts[index] += 1;
        let rate = true_rates[index].1;
        regret += best - rate;
        let converted = rng.random_bool(rate);
        let outcome = v1::Outcome {
            outcome_id: format!("o-{i}"),
            experiment: "spring".into(),
            lead_id: format!("lead-{i}"),
            variant_id: choice.variant_id.clone(),
            converted,
            value: if converted { 1.0 } else { 0.0 },
            prediction_id: choice.prediction_id.clone(),
        };
        let answer = client
            .record_outcome(v1::RecordOutcomeRequest {
                outcomes: vec![outcome],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.feedback, [v1::OutcomeResult::Recorded as i32]);
    }
    let uniform_regret = leads as f64 * (best - (0.05 + 0.07 + 0.10) / 3.0);
    eprintln!("traffic {counts:?}, regret {regret:.1} (uniform split: {uniform_regret:.1})");
    assert!(
        counts[2] > leads / 2,
        "the 10% variant gets most traffic: {counts:?}"
    );
    assert!(
        regret < uniform_regret / 2.0,
        "regret {regret:.1} vs uniform {uniform_regret:.1}; traffic {counts:?}"
    );

    let stats = client
        .get_experiment_stats(v1::GetExperimentStatsRequest {
            name: "spring".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let exposures: u64 = stats.variants.iter().map(|v| v.exposures).sum();
    assert_eq!(exposures, leads as u64);
    assert_eq!(stats.recommended_winner, "bold", "{stats:?}");
    assert!(stats.early_stop);
    let bold = stats
        .variants
        .iter()
        .find(|v| v.variant_id == "bold")
        .unwrap();
    assert!(bold.credible_low < bold.conversion_rate && bold.conversion_rate < bold.credible_high);
    assert!(bold.probability_best >= 0.95);
    assert!(
        server
            .metrics()
            .contains("nurture_experiment_leader{experiment=\"spring\",variant=\"bold\"} 1")
    );
    // The same conversions count in the optimization model's live quality.
    let quality = FeedbackServiceClient::new(server.channel().await)
        .get_quality(v1::GetQualityRequest {
            model: "optimization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let live = quality
        .versions
        .iter()
        .find(|v| v.arm == "live")
        .expect("the live version's quality");
    assert_eq!(live.outcomes, leads as u64);
    assert!(
        live.auc.is_some() && live.value_per_prediction.is_some(),
        "{live:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_outcomes_survive_sigkill_and_count_once() {
    let fixture = Fixture::new();
    let mut server = fixture.server();
    let mut client = connect(&server).await;
    client
        .create_experiment(v1::CreateExperimentRequest {
            experiment: Some(experiment("crash")),
        })
        .await
        .unwrap();

    let outcome = |i: usize| v1::Outcome {
        outcome_id: format!("o-{i}"),
        experiment: "crash".into(),
        lead_id: format!("lead-{i}"),
        variant_id: ["control", "friendly", "bold"][i % 3].into(),
        converted: i.is_multiple_of(4),
        value: 1.0,
        prediction_id: String::new(),
    };
    // A stream of outcomes from a separate task; the server dies mid-stream.
    let mut sender = client.clone();
    let stream = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0..100_000 {
            match sender
                .record_outcome(v1::RecordOutcomeRequest {
                    outcomes: vec![outcome(i)],
                })
                .await
            {
                Ok(_) => acknowledged.push(i),
                Err(_) => break,
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    let acknowledged = stream.await.unwrap();
    assert!(
        acknowledged.len() > 20,
        "the stream was running: {}",
        acknowledged.len()
    );

    let server = fixture.server();
    let mut client = connect(&server).await;
    let stats = client
        .get_experiment_stats(v1::GetExperimentStatsRequest {
            name: "crash".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let counted: u64 = stats.variants.iter().map(|v| v.exposures).sum();
    // Every acknowledged outcome counts; at most the one in flight at the
    // kill may have been stored without its acknowledgement.
    assert!(
        counted >= acknowledged.len() as u64 && counted <= acknowledged.len() as u64 + 1,
        "{counted} vs {}",
        acknowledged.len()
    );

    // Sending them all again counts nothing twice.
    let replay: Vec<v1::Outcome> = acknowledged.iter().take(200).map(|i| outcome(*i)).collect();
    let replayed = replay.len() as u64;
    let mut total_duplicates = 0;
    for chunk in replay.chunks(50) {
        let response = client
            .record_outcome(v1::RecordOutcomeRequest {
                outcomes: chunk.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.recorded, 0);
        total_duplicates += response.duplicates;
    }
    assert_eq!(total_duplicates, replayed);
    let again = client
        .get_experiment_stats(v1::GetExperimentStatsRequest {
            name: "crash".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.variants.iter().map(|v| v.exposures).sum::<u64>(),
        counted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_malformed_and_stopped_are_refused_with_the_right_codes() {
    let fixture = Fixture::new();
    let server = fixture.server();
    let mut client = connect(&server).await;
    client
        .create_experiment(v1::CreateExperimentRequest {
            experiment: Some(experiment("e1")),
        })
        .await
        .unwrap();
    wait_live(&mut client, "e1").await;

    let duplicate = client
        .create_experiment(v1::CreateExperimentRequest {
            experiment: Some(experiment("e1")),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let mut lonely = experiment("e2");
    lonely.variants.truncate(1);
    let status = client
        .create_experiment(v1::CreateExperimentRequest {
            experiment: Some(lonely),
        })
        .await
        .unwrap_err();
    assert_invalid_argument(&status, "experiment.variants");
    let mut toneless = experiment("e3");
    toneless.variants[1].tone = 0;
    let status = client
        .create_experiment(v1::CreateExperimentRequest {
            experiment: Some(toneless),
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("experiment.variants[1].tone"),
        "{}",
        status.message()
    );

    let status = client
        .choose_variant(v1::ChooseVariantRequest {
            experiment: "nope".into(),
            leads: vec![lead("a")],
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_experiment_stats(v1::GetExperimentStatsRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let bad_variant = v1::Outcome {
        outcome_id: "x".into(),
        experiment: "e1".into(),
        lead_id: "a".into(),
        variant_id: "ghost".into(),
        converted: true,
        value: 1.0,
        prediction_id: String::new(),
    };
    let status = client
        .record_outcome(v1::RecordOutcomeRequest {
            outcomes: vec![bad_variant.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("ghost"), "{}", status.message());
    let nan = v1::Outcome {
        variant_id: "bold".into(),
        value: f64::NAN,
        ..bad_variant.clone()
    };
    let status = client
        .record_outcome(v1::RecordOutcomeRequest {
            outcomes: vec![nan],
        })
        .await
        .unwrap_err();
    assert_invalid_argument(&status, "outcomes[0].value");
    let mut bad_lead = lead("a");
    bad_lead.email_open_rate = Some(2.0);
    let status = client
        .choose_variant(v1::ChooseVariantRequest {
            experiment: "e1".into(),
            leads: vec![bad_lead],
            version: 0,
        })
        .await
        .unwrap_err();
    assert_invalid_argument(&status, "leads[0].email_open_rate");

    let stopped = client
        .stop_experiment(v1::StopExperimentRequest {
            name: "e1".into(),
            reason: "budget".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stopped.stopped);
    let status = client
        .choose_variant(v1::ChooseVariantRequest {
            experiment: "e1".into(),
            leads: vec![lead("a")],
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("budget"), "{}", status.message());
    let listed = client
        .list_experiments(v1::ListExperimentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.experiments.len(), 1);
}
