//! `nurture-trainer`: generate data, train, export ONNX, check parity and
//! publish.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nurture_trainer::generate;

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
            tracing_subscriber::EnvFilter::try_from_env("NURTURE_LOG").unwrap_or_else(|_| "warn".into()),
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
        Command::Generate { out, rows, seed } => {
            let bar = progress_bar(cli.json);
            let reports = generate::generate(&out, rows, seed, &bar)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                println!("wrote {} datasets of {rows} rows to {}", reports.len(), out.display());
                println!("{:<16} best possible holdout scores (Bayes rate)", "KIND");
                for (kind, report) in &reports {
                    let metrics: Vec<String> =
                        report.metrics.iter().map(|(name, value)| format!("{name}={value:.4}")).collect();
                    println!("{:<16} {}", kind.as_str(), metrics.join(" "));
                }
            }
        }
    }
    Ok(())
}
