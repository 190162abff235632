//! `nurture-retrain-sim`: how often does `retrain`'s gate release a
//! challenger, with and without a reason to? The gate's code
//! (`nurture_trainer::retrain::judge`: time split, fit, champion and
//! challenger on the newest outcomes, paired bootstrap) on simulated
//! feedback: `N` outcomes in observation order from the generator, each
//! trial with its own seed. The champion is trained once on 20,000 rows of
//! the base concept.
//!
//! - `same concept`: feedback follows the champion's concept; a release
//!   is a false release (the challenger is not better).
//! - `shifted`: the churn relationship changed before the window
//!   (`generate --concept shifted`); a release is the power.
//! - `shifted halfway`: the first half of the window is the old concept,
//!   the second the new (the holdout, the newest fifth, is all new).
//!
//! Prints a markdown table.
//!
//! ```text
//! nurture-retrain-sim [--trials 100] [--sizes 200,500,1000,2000]
//! ```

use clap::Parser;
use indicatif::ProgressBar;
use nurture_models::ModelKind;
use nurture_trainer::dataset::{self, Dataset};
use nurture_trainer::generate::{self, Concept};
use nurture_trainer::retrain::{self, RetrainOptions};
use nurture_trainer::train::{self, RefitMode, Timings, TrainOptions};

#[derive(Debug, Parser)]
#[command(name = "nurture-retrain-sim")]
struct Cli {
    /// Trials per scenario and size.
    #[arg(long, default_value_t = 100)]
    trials: u64,
    /// Outcomes per simulated feedback window.
    #[arg(long, value_delimiter = ',', default_value = "200,500,1000,2000")]
    sizes: Vec<usize>,
    /// Smallest gain the gate asks for.
    #[arg(long, default_value_t = 0.01)]
    min_gain: f64,
}

fn options(work: &std::path::Path, seed: u64, min_gain: f64) -> RetrainOptions {
    RetrainOptions {
        registry: String::new(),
        train: TrainOptions {
            kind: ModelKind::Churn,
            data: work.join("feedback"),
            features: None,
            seed,
            gbdt: Default::default(),
            text: Default::default(),
            c: 10.0,
            registry: None,
            name: None,
            publish: false,
            promote: false,
            force: false,
            max_regression: train::DEFAULT_MAX_REGRESSION,
            actor: "sim".into(),
            out_dir: None,
            refit: RefitMode::Auto,
        },
        holdout_share: 0.2,
        min_outcomes: 0,
        newest: None,
        since_ms: None,
        min_gain,
        mix: None,
        mix_weight: 0.5,
        release: false,
        policy: Default::default(),
    }
}

/// `rows` churn rows of `concept` from `seed`, in generation order.
fn churn_rows(
    work: &std::path::Path,
    rows: usize,
    seed: u64,
    concept: Concept,
) -> anyhow::Result<Dataset> {
    let dir = work.join(format!("gen-{seed}-{rows}-{concept:?}"));
    generate::generate(&dir, rows.max(100), seed, concept, &ProgressBar::hidden())?;
    let data = dataset::load(ModelKind::Churn, &dir.join("churn.csv"))?;
    std::fs::remove_dir_all(&dir)?;
    Ok(data.subset(|row| row < rows))
}

/// The 95% Wilson interval of `k` successes in `n`.
fn wilson(k: u64, n: u64) -> (f64, f64) {
    let (k, n, z) = (k as f64, n as f64, 1.96_f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let environment = nurture_models::runtime::environment(None)?;
    let work = std::env::temp_dir().join(format!("nurture-retrain-sim-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    // The champion: the base concept, plenty of rows.
    let base = work.join("base");
    generate::generate(&base, 20_000, 1, Concept::Base, &ProgressBar::hidden())?;
    let champion_dir = work.join("champion");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(train::train(
        &TrainOptions {
            data: base.join("churn.csv"),
            out_dir: Some(champion_dir.clone()),
            ..options(&work, 42, cli.min_gain).train
        },
        environment,
        &ProgressBar::hidden(),
    ))?;
    let champion = std::fs::read(champion_dir.join("churn.onnx"))?;

    println!("| feedback | outcomes | trials | released | 95% interval | mean gain (AUC) |");
    println!("|---|---|---|---|---|---|");
    for scenario in ["same concept", "shifted", "shifted halfway"] {
        for &size in &cli.sizes {
            let (mut released, mut gains) = (0_u64, 0.0);
            for trial in 0..cli.trials {
                let seed = 1_000 + trial;
                let feedback =
                    match scenario {
                        "same concept" => churn_rows(&work, size, seed, Concept::Base)?,
                        "shifted" => churn_rows(&work, size, seed, Concept::Shifted)?,
                        _ => churn_rows(&work, size / 2, seed, Concept::Base)?.concat(
                            churn_rows(&work, size - size / 2, seed + 7_919, Concept::Shifted)?,
                        )?,
                    };
                let judged = retrain::judge(
                    &options(&work, seed, cli.min_gain),
                    environment,
                    &champion,
                    feedback,
                    "simulated feedback",
                    String::new(),
                    &ProgressBar::hidden(),
                    &mut Timings::default(),
                )?;
                let Ok(judged) = judged else { continue };
                released += u64::from(judged.passed);
                gains += judged.challenger - judged.champion;
            }
            let (low, high) = wilson(released, cli.trials);
            println!(
                "| {scenario} | {size} | {} | {:.1}% | {:.1}% to {:.1}% | {:+.3} |",
                cli.trials,
                100.0 * released as f64 / cli.trials as f64,
                100.0 * low,
                100.0 * high,
                gains / cli.trials as f64
            );
        }
    }
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
