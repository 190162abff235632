//! `nurture-trainer`: generate data, train, export ONNX, check parity and
//! publish.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nurture_models::registry::DEFAULT_REGISTRY;
use nurture_models::{ModelKind, runtime};
use nurture_trainer::gbdt::Params;
use nurture_trainer::text::TextParams;
use nurture_trainer::train::{DEFAULT_MAX_REGRESSION, RefitMode, TrainOptions, TrainReport};
use nurture_trainer::{dataset, generate, train};

/// Train Nurture's models and publish them to the registry.
#[derive(Debug, Parser)]
#[command(name = "nurture-trainer", version)]
struct Cli {
    /// Print JSON for scripts instead of tables; hides progress bars.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write synthetic datasets for every kind ({kind}.csv) and their Bayes
    /// rates (bayes.json) into a folder.
    Generate {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Rows per dataset.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Random seed; the same seed gives the same files.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Train a kind (or all five) from CSV, check parity in ONNX Runtime,
    /// and optionally publish and promote.
    Train(Box<TrainArgs>),
}

#[derive(Debug, clap::Args)]
struct TrainArgs {
    /// Kind to train, or "all" (then --data is a folder holding {kind}.csv).
    kind: String,
    /// The CSV (or, with "all", the folder of CSVs).
    #[arg(long)]
    data: PathBuf,
    /// Registry URL to publish to.
    #[arg(long, env = "NURTURE_REGISTRY", default_value = DEFAULT_REGISTRY)]
    registry: String,
    /// Publish the new version.
    #[arg(long)]
    publish: bool,
    /// Publish and make it live, unless it scores worse than the live version
    /// by more than --max-regression on the same holdout.
    #[arg(long)]
    promote: bool,
    /// Promote even when the quality gate refuses.
    #[arg(long)]
    force: bool,
    /// Largest allowed drop of the primary metric (AUC or macro-F1) against the live version.
    #[arg(long, default_value_t = DEFAULT_MAX_REGRESSION)]
    max_regression: f64,
    /// Seed of the early-stopping split of tabular kinds, which is made only above 10,000
    /// training rows (below it the seed changes nothing); the same data and seed give
    /// byte-identical ONNX.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Comma-separated features to use (tabular kinds); default: all.
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Model name; default: the kind's name.
    #[arg(long)]
    name: Option<String>,
    /// Who publishes, recorded in the release log. Defaults to $USER.
    #[arg(long, env = "NURTURE_ACTOR")]
    actor: Option<String>,
    /// Also write {kind}.onnx and {kind}.manifest.json here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Whether the published model is fit again on every row once the holdout
    /// has measured a model fit without it: auto does so up to 10,000 rows
    /// (tabular kinds first choose their iterations by 5-fold cross-validation).
    #[arg(long, value_enum, env = "NURTURE_REFIT", default_value_t = RefitMode::Auto)]
    refit: RefitMode,
    /// Most boosting iterations (tabular kinds).
    #[arg(long, default_value_t = Params::default().iterations)]
    iterations: usize,
    /// Boosting learning rate.
    #[arg(long, default_value_t = Params::default().learning_rate)]
    learning_rate: f64,
    /// Most leaves per tree.
    #[arg(long, default_value_t = Params::default().max_leaves)]
    max_leaves: usize,
    /// Inverse regularisation of the emotion classifier (as scikit-learn's C).
    #[arg(long, default_value_t = 10.0)]
    c: f64,
    /// Path of the ONNX Runtime library; else .ort/ of the project is used.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
}

fn progress_bar(json: bool) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} ({elapsed})")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
    }
    bar
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NURTURE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => {
            let kinds: Vec<ModelKind> = if args.kind == "all" {
                ModelKind::ALL.to_vec()
            } else {
                vec![args.kind.parse()?]
            };
            if kinds.len() > 1 && (args.name.is_some() || args.features.is_some()) {
                anyhow::bail!("--name and --features apply to one kind, not to \"all\"");
            }
            let environment = runtime::environment(args.ort_dylib.as_deref())?;
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut reports = Vec::new();
            for kind in kinds {
                let data = if args.kind == "all" {
                    dataset::default_file(&args.data, kind)
                } else {
                    args.data.clone()
                };
                let options = TrainOptions {
                    kind,
                    data,
                    features: args.features.clone(),
                    seed: args.seed,
                    gbdt: Params {
                        iterations: args.iterations,
                        learning_rate: args.learning_rate,
                        max_leaves: args.max_leaves,
                        ..Params::default()
                    },
                    text: TextParams::default(),
                    c: args.c,
                    registry: Some(args.registry.clone()),
                    name: args.name.clone(),
                    publish: args.publish,
                    promote: args.promote,
                    force: args.force,
                    max_regression: args.max_regression,
                    actor: args
                        .actor
                        .clone()
                        .or_else(|| std::env::var("USER").ok())
                        .unwrap_or_else(|| "nurture-trainer".into()),
                    out_dir: args.out_dir.clone(),
                    refit: args.refit,
                };
                let bar = progress_bar(cli.json);
                let report = tokio.block_on(train::train(&options, environment, &bar))?;
                if !cli.json {
                    print_report(&report);
                }
                reports.push(report);
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else if reports.len() > 1 {
                print_summary(&reports);
            }
        }
        Command::Generate { out, rows, seed } => {
            let bar = progress_bar(cli.json);
            let reports = generate::generate(&out, rows, seed, &bar)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                println!(
                    "wrote {} datasets of {rows} rows to {}",
                    reports.len(),
                    out.display()
                );
                println!("{:<16} best possible holdout scores (Bayes rate)", "KIND");
                for (kind, report) in &reports {
                    let metrics: Vec<String> = report
                        .metrics
                        .iter()
                        .map(|(name, value)| format!("{name}={value:.4}"))
                        .collect();
                    println!("{:<16} {}", kind.as_str(), metrics.join(" "));
                }
            }
        }
    }
    Ok(())
}

fn print_report(report: &TrainReport) {
    println!(
        "{} ({}): {} training rows, {} holdout rows",
        report.kind, report.model_summary, report.train_rows, report.holdout_rows
    );
    for (name, value) in &report.metrics {
        if name.ends_with("_rows") {
            continue;
        }
        let bayes = report
            .bayes
            .as_ref()
            .and_then(|b| b.metrics.get(name))
            .map(|v| format!("   (best possible {v:.4})"))
            .unwrap_or_default();
        println!("  {name:<10} {value:.4}{bayes}");
    }
    if let Some(refit) = &report.refit {
        let iterations = match (&refit.iterations, &refit.chosen_by) {
            (Some(n), Some(how)) => format!(", {n} iterations by {how}"),
            _ => String::new(),
        };
        println!(
            "  refit      published model fit on all {} rows{iterations}; the metrics above are the holdout's",
            refit.rows
        );
    }
    println!(
        "  parity     max |trainer - ONNX Runtime| = {:.2e}",
        report.parity_max_diff
    );
    println!(
        "  onnx       {} bytes, sha256 {}",
        report.onnx_bytes,
        &report.sha256[..16]
    );
    if let Some(gate) = &report.gate {
        println!(
            "  gate       {} {:.4} vs live version {} {:.4}: {}",
            gate.metric,
            gate.candidate,
            gate.live_version,
            gate.live,
            if gate.forced {
                "forced"
            } else if gate.passed {
                "passed"
            } else {
                "refused"
            }
        );
    }
    match (report.published_version, report.promoted) {
        (Some(version), true) => println!("  published  version {version}, now live"),
        (Some(version), false) => println!("  published  version {version}"),
        (None, _) => {}
    }
    println!(
        "  time       {:.1} s (fit {:.1} s, parity {:.1} s)",
        report.timings.total, report.timings.fit, report.timings.parity
    );
}

fn print_summary(reports: &[TrainReport]) {
    println!();
    println!(
        "{:<16} {:>8} {:>8} {:>10} {:>8} {:>9} {:>8}",
        "KIND", "METRIC", "SCORE", "BEST", "PARITY", "VERSION", "SECONDS"
    );
    for report in reports {
        let metric = nurture_trainer::metrics::primary(report.kind.labels().len());
        let best = report
            .bayes
            .as_ref()
            .and_then(|b| b.metrics.get(metric))
            .map_or("-".to_owned(), |v| format!("{v:.4}"));
        println!(
            "{:<16} {:>8} {:>8.4} {:>10} {:>8.1e} {:>9} {:>8.1}",
            report.kind.as_str(),
            metric,
            report.metrics[metric],
            best,
            report.parity_max_diff,
            report
                .published_version
                .map_or("-".to_owned(), |v| v.to_string()),
            report.timings.total
        );
    }
}
