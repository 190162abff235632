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

use anyhow::bail;
use clap::Parser;
use nurture_proto::v1;
use nurture_proto::v1::emotion_service_client::EmotionServiceClient;
use nurture_proto::v1::feedback_service_client::FeedbackServiceClient;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

// Shared with the end-to-end test of corrections, without a dependency on
// the test-support crate.
#[path = "../../tests/src/corrections.rs"]
mod corrections;
use corrections::{Message, accuracy, analyse, corrections, read, score_onnx};

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
    #[arg(long, default_value = corrections::MESSAGES)]
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
        let order: Vec<Message> = order.into_iter().cloned().collect();
        let answers = analyse(&mut emotion, &order).await?;
        let corrections = corrections(&answers, &order, &format!("trial-{trial}"));
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
                .args([
                    "--json",
                    "retrain",
                    "emotion",
                    "--from-feedback",
                    "--no-release",
                ])
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
