//! `nurture-trainer`: generate data, train, export ONNX, check parity and
//! publish.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics_exporter_prometheus::PrometheusBuilder;
use nurture_models::feedback::drift::AdwinConfig;
use nurture_models::registry::DEFAULT_REGISTRY;
use nurture_models::rollout::policy::RolloutPolicy;
use nurture_models::rollout::sequential::SequentialTest;
use nurture_models::{ModelKind, runtime};
use nurture_trainer::gbdt::Params;
use nurture_trainer::generate::Concept;
use nurture_trainer::retrain::{self, RetrainOptions, RetrainReport};
use nurture_trainer::text::TextParams;
use nurture_trainer::train::{DEFAULT_MAX_REGRESSION, RefitMode, TrainOptions, TrainReport};
use nurture_trainer::watch::{Finding, Trigger, WatchOptions, Watcher};
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
        /// The churn relationship: base, or shifted (a market change: the
        /// same kind of leads, churning for other reasons; see docs/data.md).
        #[arg(long, value_enum, default_value_t = Concept::Base)]
        concept: Concept,
    },
    /// Train a kind (or all five) from CSV, check parity in ONNX Runtime,
    /// and optionally publish and promote.
    Train(Box<TrainArgs>),
    /// Train a challenger on production feedback, compare it with the live
    /// version on the newest outcomes, and release it under a guarded
    /// rollout only if it is better by --min-gain.
    Retrain(Box<RetrainArgs>),
    /// Follow a model's outcomes and retrain it when its live version
    /// drifts or after --after-outcomes new outcomes; challengers go
    /// through retrain's gate and a guarded rollout.
    Watch(Box<WatchArgs>),
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
    /// Comma-separated features to use (tabular kinds); default: all.
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Model name; default: the kind's name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    fit: FitArgs,
}

/// How models are fit, and where they go: shared by `train` and `retrain`.
#[derive(Debug, clap::Args)]
struct FitArgs {
    /// Seed of the cross-validation folds (up to 10,000 rows) or of the
    /// early-stopping split (above), and of retrain's bootstrap; the same
    /// data and seed give byte-identical ONNX.
    #[arg(long, default_value_t = 42)]
    seed: u64,
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
    /// Who publishes, recorded in the release log. Defaults to $USER.
    #[arg(long, env = "NURTURE_ACTOR")]
    actor: Option<String>,
    /// Also write {kind}.onnx and {kind}.manifest.json here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Path of the ONNX Runtime library; else .ort/ of the project is used.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
}

impl FitArgs {
    /// Training options for `kind` from `data`, publishing nowhere yet.
    fn options(&self, kind: ModelKind, data: PathBuf, registry: &str) -> TrainOptions {
        TrainOptions {
            kind,
            data,
            features: None,
            seed: self.seed,
            gbdt: Params {
                iterations: self.iterations,
                learning_rate: self.learning_rate,
                max_leaves: self.max_leaves,
                ..Params::default()
            },
            text: TextParams::default(),
            c: self.c,
            registry: Some(registry.to_owned()),
            name: None,
            publish: false,
            promote: false,
            force: false,
            max_regression: DEFAULT_MAX_REGRESSION,
            actor: self
                .actor
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "nurture-trainer".into()),
            out_dir: self.out_dir.clone(),
            refit: self.refit,
        }
    }
}

#[derive(Debug, clap::Args)]
struct RetrainArgs {
    /// Model to retrain (its live version is the champion).
    model: String,
    /// Train on the prediction log joined with outcomes, read from the store
    /// (the only source there is; the flag says so where it is used).
    #[arg(long, required = true)]
    from_feedback: bool,
    #[command(flatten)]
    judge: JudgeArgs,
}

/// How a challenger is trained on feedback, judged and released: shared by
/// `retrain` and `watch`.
#[derive(Debug, clap::Args)]
struct JudgeArgs {
    /// Registry URL (the feedback store lies beside it).
    #[arg(long, env = "NURTURE_REGISTRY", default_value = DEFAULT_REGISTRY)]
    registry: String,
    /// Share of the joined outcomes, the newest by observation time, on
    /// which champion and challenger are compared.
    #[arg(long, default_value_t = 0.2)]
    holdout_share: f64,
    /// Fewest joined outcomes worth a retrain.
    #[arg(long, default_value_t = 200)]
    min_outcomes: usize,
    /// Use only the newest N joined outcomes.
    #[arg(long)]
    newest: Option<usize>,
    /// Use only outcomes observed at or after this time (RFC 3339, e.g.
    /// 2026-12-01T09:30:00Z).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Smallest gain of AUC or macro-F1 over the champion that releases the
    /// challenger (its 95% paired-bootstrap interval must also be above 0).
    #[arg(long, default_value_t = 0.01)]
    min_gain: f64,
    /// Original training data (CSV or Parquet) to mix into the training rows.
    #[arg(long)]
    mix: Option<PathBuf>,
    /// Weight of each mixed-in row; feedback rows weigh 1.
    #[arg(long, default_value_t = 0.5)]
    mix_weight: f64,
    /// Judge the challenger but publish nothing.
    #[arg(long)]
    no_release: bool,
    /// The guarded rollout's canary percentages; success at the last promotes.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    steps: Vec<u8>,
    /// What the rollout's sequential test compares: error_rate or log_loss.
    #[arg(long, default_value = "error_rate")]
    rollout_metric: String,
    /// Fewest outcomes per arm before the rollout's test decides.
    #[arg(long, default_value_t = SequentialTest::default().min_outcomes)]
    rollout_min_outcomes: u64,
    #[command(flatten)]
    fit: FitArgs,
}

impl JudgeArgs {
    fn options(&self) -> anyhow::Result<RetrainOptions> {
        let metric = self
            .rollout_metric
            .parse()
            .map_err(|why: String| anyhow::anyhow!("--rollout-metric {why}"))?;
        let options = RetrainOptions {
            registry: self.registry.clone(),
            train: self
                .fit
                .options(ModelKind::Churn, PathBuf::from("feedback"), &self.registry),
            holdout_share: self.holdout_share,
            min_outcomes: self.min_outcomes,
            newest: self.newest,
            since_ms: self.since.map(|t| t.timestamp_millis()),
            min_gain: self.min_gain,
            mix: self.mix.clone(),
            mix_weight: self.mix_weight,
            release: !self.no_release,
            policy: RolloutPolicy {
                metric,
                test: SequentialTest {
                    min_outcomes: self.rollout_min_outcomes,
                    ..SequentialTest::default()
                },
                steps: self.steps.clone(),
                ..RolloutPolicy::default()
            },
        };
        retrain::check(&options)?;
        Ok(options)
    }
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Model to watch.
    model: String,
    /// Retrain after this many new outcomes of the model, drift or not.
    #[arg(long, env = "NURTURE_WATCH_AFTER_OUTCOMES", default_value_t = 10_000)]
    after_outcomes: u64,
    /// Time between checks of the store.
    #[arg(long, env = "NURTURE_WATCH_INTERVAL", default_value = "30s", value_parser = nurture_models::parse_duration)]
    interval: std::time::Duration,
    /// Check once and exit (for a CronJob); the state carries over in the store.
    #[arg(long)]
    once: bool,
    /// ADWIN's confidence on the live version's error stream (the replicas' default).
    #[arg(long, default_value_t = nurture_models::feedback::drift::SERVER.delta)]
    drift_delta: f64,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "NURTURE_WATCH_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    judge: JudgeArgs,
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
            let environment = runtime::environment(args.fit.ort_dylib.as_deref())?;
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
                    features: args.features.clone(),
                    name: args.name.clone(),
                    publish: args.publish,
                    promote: args.promote,
                    force: args.force,
                    max_regression: args.max_regression,
                    ..args.fit.options(kind, data, &args.registry)
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
        Command::Watch(args) => watch(*args, cli.json)?,
        Command::Retrain(args) => {
            let options = args.judge.options()?;
            let environment = runtime::environment(args.judge.fit.ort_dylib.as_deref())?;
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let bar = progress_bar(cli.json);
            let report =
                tokio.block_on(retrain::retrain(&args.model, &options, environment, &bar))?;
            bar.finish_and_clear();
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_retrain(&report);
            }
        }
        Command::Generate {
            out,
            rows,
            seed,
            concept,
        } => {
            let bar = progress_bar(cli.json);
            let reports = generate::generate(&out, rows, seed, concept, &bar)?;
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

/// `watch`: checks every interval (or once) until SIGINT or SIGTERM.
fn watch(args: WatchArgs, json: bool) -> anyhow::Result<()> {
    let options = WatchOptions {
        retrain: args.judge.options()?,
        after_outcomes: args.after_outcomes,
        drift: AdwinConfig {
            delta: args.drift_delta,
            ..nurture_models::feedback::drift::SERVER
        },
        interval: args.interval,
    };
    anyhow::ensure!(
        args.drift_delta > 0.0 && args.drift_delta < 1.0,
        "--drift-delta must be in (0, 1), got {}",
        args.drift_delta
    );
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    let environment = runtime::environment(args.judge.fit.ort_dylib.as_deref())?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        if let Some(address) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(address).await?;
            // On stderr whatever the log level: with port 0 this is how a
            // supervisor or a test learns the port.
            eprintln!(
                "watch {}: metrics on http://{}/metrics",
                args.model,
                listener.local_addr()?
            );
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let handle = handle.clone();
                    async move { handle.render() }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        let mut watcher = Watcher::open(&args.model, options).await?;
        let mut ticks = tokio::time::interval(args.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            }
            let bar = progress_bar(json);
            match watcher.check(environment, &bar).await {
                Ok(findings) => {
                    bar.finish_and_clear();
                    for finding in &findings {
                        print_finding(&args.model, finding, json)?;
                    }
                }
                // A store or registry hiccup is reported and retried at the
                // next check; --once reports it as a failure.
                Err(error) if !args.once => {
                    bar.finish_and_clear();
                    tracing::warn!(%error, "check failed; retrying at the next interval");
                    eprintln!("watch {}: check failed: {error}", args.model);
                }
                Err(error) => return Err(error.into()),
            }
            if args.once {
                break;
            }
        }
        Ok::<(), anyhow::Error>(())
    })
}

fn trigger_name(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Drift => "drift",
        Trigger::Outcomes => "new outcomes",
    }
}

fn print_finding(model: &str, finding: &Finding, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, finding)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let now = chrono::Utc::now().format("%H:%M:%S");
    match finding {
        Finding::Quiet {
            live,
            outcomes,
            since_retrain,
            window_error_rate,
            window,
        } => writeln!(
            out,
            "{now} {model}: live {}, {outcomes} outcomes ({since_retrain} since the last retrain), \
             window error rate {} over {} outcomes",
            live.map_or("none".to_owned(), |v| format!("version {v}")),
            window_error_rate.map_or("-".to_owned(), |r| format!("{r:.3}")),
            window.unwrap_or(0)
        )?,
        Finding::Drift {
            version,
            window_error_rate,
            window,
        } => writeln!(
            out,
            "{now} {model}: drift in version {version}'s errors: {window_error_rate:.3} over the {window} outcomes since the change"
        )?,
        Finding::Held { trigger, reason } => writeln!(
            out,
            "{now} {model}: a retrain is due ({}) but waits: {reason}",
            trigger_name(*trigger)
        )?,
        Finding::Waiting { version } => writeln!(
            out,
            "{now} {model}: the rollout of version {version} is under way; waiting for its decision"
        )?,
        Finding::Retrained { trigger, report } => {
            writeln!(
                out,
                "{now} {model}: retraining ({})",
                trigger_name(*trigger)
            )?;
            drop(out);
            print_retrain(report);
        }
    }
    Ok(())
}

fn print_retrain(report: &RetrainReport) {
    let f = &report.feedback;
    println!(
        "{}: {} outcomes, {} logged answers, {} joined ({} answers not in the log, {} without every input{})",
        report.model,
        f.outcomes,
        f.logged,
        f.joined,
        f.unlogged,
        f.incomplete,
        if f.older > 0 {
            format!(", {} older left out", f.older)
        } else {
            String::new()
        }
    );
    if let Some(challenger) = &report.challenger {
        print_report(challenger);
    }
    if let Some(e) = &report.evidence {
        println!(
            "  judged     on the newest {} outcomes: challenger {} {:.4}, champion (version {}) {:.4}, \
             gain {:+.4}, 95% interval [{:+.4}, {:+.4}]: {}",
            e.holdout_outcomes,
            e.metric,
            e.challenger,
            e.champion_version,
            e.champion,
            e.challenger - e.champion,
            e.interval[0],
            e.interval[1],
            if e.passed { "passed" } else { "refused" }
        );
    }
    match (report.released, report.published_version, &report.stopped) {
        (true, Some(version), _) => println!(
            "released   version {version} under a guarded rollout (watch it: nurturectl rollout-wait {})",
            report.model
        ),
        (_, _, Some(why)) => println!("stopped    {why}"),
        _ => {}
    }
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
