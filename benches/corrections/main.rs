//! `nurture-corrections`: do agents' corrections teach the emotion model?
//!
//! Against a running server whose live emotion version was trained on the
//! generator's synthetic messages, for each trial: the realistic messages
//! of the pool (benches/corrections/messages.csv, written for this purpose
//! and kept apart from any training set) are analysed in a shuffled order
//! and each answer is corrected with the message's true state through
//! `RecordOutcomes`, as an agent would. Then `nurture-trainer retrain
//! emotion --from-feedback --newest K` builds a challenger from the newest
//! K corrections (this trial's) mixed with the synthetic data, for each K,
//! and its ONNX is scored in ONNX Runtime on the held-apart messages. The
//! live version's score on them is the curve's start. Prints one JSON line
//! per retrain and a markdown table.
//!
//! ```text
//! nurture-corrections --target http://127.0.0.1:50051 --registry file://... \
//!     --synthetic DATA/emotion.csv [--trials 5] [--steps 25,100,400] [--mix-weight 0.2]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use nurture_models::kind::{EMOTION_LABELS, PROBABILITIES_OUTPUT, TEXT_INPUT};
use nurture_models::runtime;
use nurture_proto::v1;
use nurture_proto::v1::emotion_service_client::EmotionServiceClient;
use nurture_proto::v1::feedback_service_client::FeedbackServiceClient;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Parser)]
#[command(name = "nurture-corrections")]
struct Cli {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Registry the server follows (and the feedback store beside it).
    #[arg(long)]
    registry: String,
    /// The realistic messages: lead_id, text, emotion, set (pool or heldout).
    #[arg(long, default_value = "benches/corrections/messages.csv")]
    messages: PathBuf,
    /// The synthetic training data mixed into each retrain.
    #[arg(long)]
    synthetic: PathBuf,
    /// Weight of each synthetic row (corrections weigh 1).
    #[arg(long, default_value_t = 0.2)]
    mix_weight: f64,
    /// Independent shuffles of the pool.
    #[arg(long, default_value_t = 5)]
    trials: u64,
    /// Numbers of corrections retrained on.
    #[arg(long, value_delimiter = ',', default_value = "25,100,400")]
    steps: Vec<usize>,
    /// The trainer binary.
    #[arg(long, default_value = "target/release/nurture-trainer")]
    trainer: PathBuf,
    /// Scratch folder for the challengers.
    #[arg(long)]
    work: PathBuf,
}

struct Message {
    id: String,
    text: String,
    label: usize,
}

fn read(path: &PathBuf) -> anyhow::Result<(Vec<Message>, Vec<Message>)> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader.headers()?.clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no {name} column", path.display()))
    };
    let (id, text, emotion, set) = (
        column("lead_id")?,
        column("text")?,
        column("emotion")?,
        column("set")?,
    );
    let (mut pool, mut heldout) = (Vec::new(), Vec::new());
    for (line, row) in reader.records().enumerate() {
        let row = row?;
        let label = EMOTION_LABELS
            .iter()
            .position(|l| *l == &row[emotion])
            .with_context(|| format!("line {}: unknown emotion {:?}", line + 2, &row[emotion]))?;
        let message = Message {
            id: row[id].to_owned(),
            text: row[text].to_owned(),
            label,
        };
        match &row[set] {
            "pool" => pool.push(message),
            "heldout" => heldout.push(message),
            other => bail!("line {}: set {other:?}; use pool or heldout", line + 2),
        }
    }
    Ok((pool, heldout))
}

/// Share of `messages` whose most probable state is their label.
fn accuracy(probabilities: &[Vec<f32>], messages: &[Message]) -> f64 {
    let right = probabilities
        .iter()
        .zip(messages)
        .filter(|(p, m)| {
            let best = p
                .iter()
                .enumerate()
                .fold(0, |best, (i, v)| if *v > p[best] { i } else { best });
            best == m.label
        })
        .count();
    right as f64 / messages.len() as f64
}

fn score_onnx(path: &PathBuf, messages: &[Message]) -> anyhow::Result<Vec<Vec<f32>>> {
    let environment = runtime::environment(None)?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut session = runtime::session(environment, &bytes, 1)?;
    let texts: Vec<String> = messages.iter().map(|m| m.text.clone()).collect();
    let tensor = ort::value::Tensor::from_string_array(([texts.len()], &texts[..]))?;
    let outputs = session.run(ort::inputs![TEXT_INPUT => tensor])?;
    let (_, values) = outputs[PROBABILITIES_OUTPUT].try_extract_tensor::<f32>()?;
    Ok(values
        .chunks(EMOTION_LABELS.len())
        .map(<[f32]>::to_vec)
        .collect())
}

/// Analyses `messages` on the server: each answer's prediction id and
/// probabilities (in label order).
async fn analyse(
    client: &mut EmotionServiceClient<tonic::transport::Channel>,
    messages: &[Message],
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let mut out = Vec::new();
    for chunk in messages.chunks(50) {
        let response = client
            .analyze_emotion(v1::AnalyzeEmotionRequest {
                inputs: chunk
                    .iter()
                    .map(|m| v1::EmotionInput {
                        text: m.text.clone(),
                        lead_id: m.id.clone(),
                    })
                    .collect(),
                version: 0,
            })
            .await?
            .into_inner();
        for result in response.results {
            let mut probabilities = vec![0.0; EMOTION_LABELS.len()];
            for score in &result.scores {
                probabilities[(score.state - 1) as usize] = score.probability as f32;
            }
            out.push((result.prediction_id, probabilities));
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (pool, heldout) = read(&cli.messages)?;
    let channel = tonic::transport::Endpoint::from_shared(cli.target.clone())?
        .connect()
        .await?;
    let mut emotion = EmotionServiceClient::new(channel.clone());
    let mut feedback = FeedbackServiceClient::new(channel);

    let live: Vec<Vec<f32>> = analyse(&mut emotion, &heldout)
        .await?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let before = accuracy(&live, &heldout);
    println!(
        "{}",
        serde_json::json!({"corrections": 0, "heldout_accuracy": before})
    );
    let mut curve: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for trial in 0..cli.trials {
        let mut order: Vec<&Message> = pool.iter().collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(trial));
        let order: Vec<Message> = order
            .into_iter()
            .map(|m| Message {
                id: m.id.clone(),
                text: m.text.clone(),
                label: m.label,
            })
            .collect();
        let answers = analyse(&mut emotion, &order).await?;
        let corrections: Vec<v1::OutcomeReport> = answers
            .iter()
            .zip(&order)
            .map(|((id, _), message)| v1::OutcomeReport {
                prediction_id: id.clone(),
                outcome_id: format!("correction-{trial}-{}", message.id),
                label: Some(v1::outcome_report::Label::Emotion(
                    message.label as i32 + 1,
                )),
                ..Default::default()
            })
            .collect();
        // One per call, so that observation times follow the shuffled
        // order and "the newest K" is the last K corrected.
        for correction in corrections {
            feedback
                .record_outcomes(v1::RecordOutcomesRequest {
                    outcomes: vec![correction],
                })
                .await?;
        }
        // The server writes its prediction log in batches.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for k in &cli.steps {
            let out = cli.work.join(format!("trial-{trial}-k-{k}"));
            let report = Command::new(&cli.trainer)
                .args(["--json", "retrain", "emotion", "--from-feedback", "--no-release"])
                .args(["--registry", &cli.registry, "--newest", &k.to_string()])
                .args(["--min-outcomes", "10", "--refit", "always"])
                .arg("--mix")
                .arg(&cli.synthetic)
                .args(["--mix-weight", &cli.mix_weight.to_string()])
                .arg("--out-dir")
                .arg(&out)
                .output()?;
            if !report.status.success() {
                bail!(
                    "retrain failed: {}",
                    String::from_utf8_lossy(&report.stderr)
                );
            }
            let json: serde_json::Value = serde_json::from_slice(&report.stdout)?;
            let joined = json["feedback"]["joined"].as_u64().unwrap_or(0);
            let used = joined - json["feedback"]["older"].as_u64().unwrap_or(0);
            if used != *k as u64 {
                bail!("retrain used {used} corrections, not {k}: {json}");
            }
            let score = accuracy(&score_onnx(&out.join("emotion.onnx"), &heldout)?, &heldout);
            println!(
                "{}",
                serde_json::json!({"trial": trial, "corrections": k, "heldout_accuracy": score})
            );
            curve.entry(*k).or_default().push(score);
        }
    }
    println!();
    println!(
        "| corrections | held-apart accuracy, mean (min to max over {} trials) |",
        cli.trials
    );
    println!("|---|---|");
    println!("| 0 (the live version) | {before:.3} |");
    for (k, scores) in &curve {
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let low = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let high = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!("| {k} | {mean:.3} ({low:.3} to {high:.3}) |");
    }
    Ok(())
}
