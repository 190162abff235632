//! `nurturectl`: publish model versions and move them forward and back.
//!
//! Exit codes: 0 success, 1 error, 2 usage, 3 conflict (another writer got
//! there first; nothing was written).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nurture_models::manifest::ManifestDraft;
use nurture_models::registry::{
    DEFAULT_REGISTRY, Event, EventKind, ModelState, PublishRequest, ReplicaReport,
};
use nurture_models::rollout::policy::{Decision, RolloutPolicy};
use nurture_models::rollout::sequential::{Metric, SequentialTest};
use nurture_models::{Error, ModelKind, ModelName, Registry, runtime};
use serde_json::json;

/// Exit code for a lost race on the release log.
const EXIT_CONFLICT: u8 = 3;
/// Exit code of `rollout-wait` when the rollout ended without promoting.
const EXIT_NOT_PROMOTED: u8 = 4;

/// A rollout that ended without promoting its canary (`rollout-wait`).
#[derive(Debug)]
struct NotPromoted(String);

impl std::fmt::Display for NotPromoted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPromoted {}

/// Publish, promote, canary and roll back Nurture model versions.
#[derive(Debug, Parser)]
#[command(name = "nurturectl", version)]
struct Cli {
    /// Registry URL: file://PATH, memory://, s3://BUCKET[/PREFIX], gs://..., az://...
    /// (S3 endpoint and credentials come from the usual AWS_* variables).
    #[arg(long, env = "NURTURE_REGISTRY", default_value = DEFAULT_REGISTRY, global = true)]
    registry: String,

    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// Who is acting, recorded in the release log. Defaults to $USER.
    #[arg(long, env = "NURTURE_ACTOR", global = true)]
    actor: Option<String>,

    /// Path of the ONNX Runtime library; else .ort/ of the project is used.
    #[arg(long, env = "ORT_DYLIB_PATH", global = true)]
    ort_dylib: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// `publish`'s arguments.
#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// Model kind (emotion, churn, journey, channel_timing, optimization),
    /// or with --generic the model's name.
    #[arg(value_name = "KIND|NAME")]
    target: String,
    /// The ONNX file.
    file: PathBuf,
    /// Publish any ONNX model under the name given instead of a kind;
    /// its signature, read from the graph, becomes its contract. Served
    /// through the Open Inference Protocol.
    #[arg(long)]
    generic: bool,
    /// Model name; defaults to the kind's name.
    #[arg(long)]
    name: Option<String>,
    /// JSON manifest draft: features, labels, thresholds, metrics, golden examples...
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Make the new version live right away.
    #[arg(long)]
    promote: bool,
    /// Publish bytes identical to a revoked version's as a new version.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check an ONNX file against a kind's contract and publish it as the
    /// model's next version.
    Publish(PublishArgs),
    /// List models with their live and canary versions.
    Ls,
    /// List a model's versions and their state.
    Versions {
        /// Model name (for the standard models, the kind: churn, emotion...).
        model: String,
    },
    /// Show one version's manifest: what it takes, what it answers, how it
    /// was trained and how it scored.
    Show {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
    },
    /// Compare two versions' manifests: features, labels, thresholds,
    /// metrics, golden examples, sha256.
    Diff {
        /// Model name.
        model: String,
        /// One version.
        a: u64,
        /// The other.
        b: u64,
    },
    /// Show a model's serving state.
    Status {
        /// Model name.
        model: String,
    },
    /// Make a version live.
    Promote {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// Promote even a version that was rolled back or revoked.
        #[arg(long)]
        force: bool,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Route a share of leads (sticky per lead id) to a version.
    Canary {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// Percent of leads, 1 to 100.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: u8,
        /// Allow a revoked version as canary.
        #[arg(long)]
        force: bool,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Start a guarded rollout: VERSION becomes the canary at the first
    /// step, and the servers' guard promotes it step by step or rolls it
    /// back on its outcomes (docs/rollouts.md).
    Rollout {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// Canary percent at each step, ascending; success at the last promotes.
        #[arg(long, value_delimiter = ',', default_value = "10")]
        steps: Vec<u8>,
        /// What is compared on outcomes: error_rate or log_loss.
        #[arg(long, default_value = "error_rate")]
        metric: String,
        /// Bound on rolling back a canary no worse than live.
        #[arg(long, default_value_t = SequentialTest::default().alpha)]
        alpha: f64,
        /// Size of regression to find, in the metric's units.
        #[arg(long, default_value_t = SequentialTest::default().tau)]
        tau: f64,
        /// Promote once the canary is shown at most this share worse than live.
        #[arg(long, default_value_t = SequentialTest::default().margin)]
        margin: f64,
        /// Outcomes per arm before any decision.
        #[arg(long, default_value_t = SequentialTest::default().min_outcomes)]
        min_outcomes: u64,
        /// Longest the rollout may run (e.g. 2h, 3d); then it expires and a person decides.
        #[arg(long, default_value = "24h", value_parser = nurture_models::parse_duration)]
        max_duration: std::time::Duration,
        /// Operational guard: roll back when the canary's share of failed calls exceeds this many times live's, plus one point.
        #[arg(long, default_value_t = RolloutPolicy::default().max_error_ratio)]
        max_error_ratio: f64,
        /// Operational guard: roll back when the canary's p99 latency exceeds this many times live's (and is 2 ms slower or more).
        #[arg(long, default_value_t = RolloutPolicy::default().max_p99_ratio)]
        max_p99_ratio: f64,
        /// Start even after the guard rolled back the last 3 rollouts in a row.
        #[arg(long)]
        force: bool,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// End the guarded rollout under way; the canary stays where it is.
    RolloutStop {
        /// Model name.
        model: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Wait for the model's latest guarded rollout to end, printing each
    /// release-log event as it comes. Exit 0 when the canary was promoted,
    /// 4 when the rollout ended otherwise (rolled back, stopped, expired,
    /// taken over by hand), 1 on timeout.
    RolloutWait {
        /// Model name.
        model: String,
        /// Give up after this long (e.g. 90s, 10m).
        #[arg(long, default_value = "10m", value_parser = nurture_models::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Mirror a share of the live version's requests to VERSION, off the
    /// response path: its answers are logged and scored on outcomes, never
    /// returned (docs/rollouts.md, "Shadow").
    Shadow {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// Percent of live requests mirrored, 1 to 100.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: u8,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Remove the shadow.
    ShadowClear {
        /// Model name.
        model: String,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Remove the canary.
    CanaryClear {
        /// Model name.
        model: String,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Revoke the live version and make the previous good one (or --to N) live.
    Rollback {
        /// Model name.
        model: String,
        /// Version to go back to; default: the most recent earlier live version not revoked.
        #[arg(long)]
        to: Option<u64>,
        /// Why; recorded in the log and shown to anyone promoting the revoked version.
        #[arg(long)]
        reason: String,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Revoke a version that is neither live nor canary.
    Revoke {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Fail with a conflict unless the release log ends at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
    },
    /// Show a model's release log.
    History {
        /// Model name.
        model: String,
    },
    /// Live quality of every version and arm of a model, over every outcome
    /// the fleet recorded (read from the store; no server needed).
    Quality {
        /// Model name.
        model: String,
        /// Figures need at least this many outcomes.
        #[arg(long, default_value_t = 30)]
        min_outcomes: u64,
    },
    /// Download a version's ONNX bytes, verifying their sha256.
    Fetch {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// Where to write the ONNX file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a completion script for SHELL (e.g. `source <(nurturectl completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Whether the command only reads the registry: then a registry folder
    /// that does not exist is an error, not an empty registry.
    fn reads_only(&self) -> bool {
        matches!(
            self,
            Command::Ls
                | Command::Versions { .. }
                | Command::Show { .. }
                | Command::Diff { .. }
                | Command::Status { .. }
                | Command::History { .. }
                | Command::Quality { .. }
                | Command::Fetch { .. }
                | Command::RolloutWait { .. }
        )
    }
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built; this is a bug");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error
                .downcast_ref::<nurture_models::kind::UnknownKind>()
                .is_some()
            {
                // A kind that does not exist is a usage error, like any bad argument.
                return ExitCode::from(2);
            }
            if error.downcast_ref::<NotPromoted>().is_some() {
                return ExitCode::from(EXIT_NOT_PROMOTED);
            }
            match error.downcast_ref::<Error>() {
                Some(Error::Conflict(_)) => ExitCode::from(EXIT_CONFLICT),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let actor = cli
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "nurturectl", &mut std::io::stdout());
        return Ok(());
    }
    let registry = if cli.command.reads_only() {
        Registry::open_existing(&cli.registry)?
    } else {
        Registry::open(&cli.registry)?
    };
    let json = cli.json;
    match cli.command {
        Command::Publish(args) => {
            publish(&registry, cli.ort_dylib.as_deref(), &actor, json, args).await?
        }
        Command::Ls => {
            let mut states = Vec::new();
            for name in registry.list_models().await? {
                states.push(registry.state(&name).await?);
            }
            if states.is_empty() {
                eprintln!(
                    "registry {} holds no models (publish one with `nurturectl publish` or `nurture-trainer train --publish`)",
                    registry.url()
                );
            }
            if json {
                let rows: Vec<_> = states.iter().map(state_summary).collect();
                print_json(&json!({ "models": rows }));
            } else {
                let rows = states
                    .iter()
                    .map(|state| {
                        vec![
                            state.name.clone(),
                            state.kind.map_or("-".into(), |k| k.to_string()),
                            opt(state.live),
                            state
                                .canary
                                .map_or("-".into(), |c| format!("{} ({}%)", c.version, c.percent)),
                            state.versions.len().to_string(),
                        ]
                    })
                    .collect();
                print_table(&["MODEL", "KIND", "LIVE", "CANARY", "VERSIONS"], rows);
            }
        }
        Command::Show { model, version } => {
            let name = ModelName::new(&model)?;
            let state = existing_state(&registry, &name).await?;
            let manifest = registry.manifest(&name, version).await?;
            show(&state, &manifest, json);
        }
        Command::Diff { model, a, b } => {
            let name = ModelName::new(&model)?;
            existing_state(&registry, &name).await?;
            let (a, b) = (
                registry.manifest(&name, a).await?,
                registry.manifest(&name, b).await?,
            );
            diff(&a, &b, json);
        }
        Command::Versions { model } => versions(&registry, &model, json).await?,
        Command::Status { model } => {
            let name = ModelName::new(&model)?;
            let state = existing_state(&registry, &name).await?;
            // What each replica serves, as it last reported.
            let replicas = registry
                .replica_reports(&name, nurture_models::registry::REPORT_FRESH)
                .await?;
            if json {
                let mut value = serde_json::to_value(&state)?;
                value["replicas"] = serde_json::to_value(&replicas)?;
                print_json(&value);
            } else {
                print_status(&state, &replicas);
            }
        }
        Command::Promote {
            model,
            version,
            force,
            expect_seq,
        } => {
            let name = ModelName::new(&model)?;
            let event = registry
                .promote(&name, version, force, &actor, expect_seq)
                .await?;
            report(
                json,
                &name,
                event,
                &format!("version {version} is already live; nothing written"),
            );
        }
        Command::Canary {
            model,
            version,
            percent,
            force,
            expect_seq,
        } => {
            let name = ModelName::new(&model)?;
            let event = registry
                .set_canary(&name, version, percent, force, &actor, expect_seq)
                .await?;
            report(json, &name, event, "");
        }
        Command::Rollout {
            model,
            version,
            steps,
            metric,
            alpha,
            tau,
            margin,
            min_outcomes,
            max_duration,
            max_error_ratio,
            max_p99_ratio,
            force,
            expect_seq,
        } => {
            let name = ModelName::new(&model)?;
            let metric: Metric = metric
                .parse()
                .map_err(|why: String| Error::invalid("--metric", why))?;
            let policy = RolloutPolicy {
                metric,
                test: SequentialTest {
                    alpha,
                    tau,
                    margin,
                    min_outcomes,
                    ..SequentialTest::default()
                },
                steps,
                max_duration_secs: max_duration.as_secs(),
                max_error_ratio,
                max_p99_ratio,
            };
            let event = registry
                .start_rollout(&name, version, policy, force, &actor, expect_seq)
                .await?;
            report(json, &name, event, "");
        }
        Command::RolloutWait { model, timeout } => {
            let name = ModelName::new(&model)?;
            wait_for_rollout(&registry, &name, timeout, json).await?;
        }
        Command::RolloutStop {
            model,
            reason,
            expect_seq,
        } => {
            let name = ModelName::new(&model)?;
            let state = registry.state(&name).await?;
            let Some(rollout) = state.rollout else {
                return Err(Error::Refused(format!("no rollout of {name} is under way")).into());
            };
            let event = registry
                .decide_rollout(
                    &name,
                    rollout.version,
                    Decision::Stopped,
                    &reason,
                    None,
                    &actor,
                    expect_seq,
                )
                .await?;
            report(json, &name, event, "");
        }
        Command::Shadow {
            model,
            version,
            percent,
            expect_seq,
        } => {
            let name = ModelName::new(&model)?;
            let event = registry
                .set_shadow(&name, version, percent, &actor, expect_seq)
                .await?;
            report(json, &name, event, "");
        }
        Command::ShadowClear { model, expect_seq } => {
            let name = ModelName::new(&model)?;
            let event = registry.clear_shadow(&name, &actor, expect_seq).await?;
            report(json, &name, event, "no shadow is set; nothing written");
        }
        Command::CanaryClear { model, expect_seq } => {
            let name = ModelName::new(&model)?;
            let event = registry.clear_canary(&name, &actor, expect_seq).await?;
            report(json, &name, event, "no canary is set; nothing written");
        }
        Command::Rollback {
            model,
            to,
            reason,
            expect_seq,
        } => {
            let name = ModelName::new(&model)?;
            let event = registry
                .rollback(&name, to, &reason, &actor, expect_seq)
                .await?;
            report(json, &name, event, "");
        }
        Command::Revoke {
            model,
            version,
            reason,
            expect_seq,
        } => {
            let name = ModelName::new(&model)?;
            let event = registry
                .revoke(&name, version, &reason, &actor, expect_seq)
                .await?;
            report(json, &name, event, "");
        }
        Command::History { model } => {
            let name = ModelName::new(&model)?;
            let events = registry.read_log(&name).await?;
            if events.is_empty() {
                return Err(Error::NotFound(format!("model {name}")).into());
            }
            if json {
                print_json(&json!({ "model": name.as_str(), "events": events }));
            } else {
                let rows = events
                    .iter()
                    .map(|event| {
                        vec![
                            event.seq.to_string(),
                            event.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            event.actor.clone(),
                            event.kind.name().to_owned(),
                            describe(&event.kind),
                        ]
                    })
                    .collect();
                print_table(&["SEQ", "AT (UTC)", "ACTOR", "EVENT", "DETAILS"], rows);
            }
        }
        Command::Quality {
            model,
            min_outcomes,
        } => quality(&registry, &model, min_outcomes, json).await?,
        Command::Completions { .. } => unreachable!("answered before the registry is opened"),
        Command::Fetch {
            model,
            version,
            out,
        } => {
            let name = ModelName::new(&model)?;
            let fetched = registry.fetch(&name, version).await?;
            std::fs::write(&out, &fetched.onnx)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if json {
                print_json(&json!({ "manifest": fetched.manifest, "path": out }));
            } else {
                println!(
                    "wrote {} ({} bytes, sha256 verified)",
                    out.display(),
                    fetched.onnx.len()
                );
            }
        }
    }
    Ok(())
}

async fn existing_state(registry: &Registry, name: &ModelName) -> anyhow::Result<ModelState> {
    let state = registry.state(name).await?;
    if state.versions.is_empty() {
        return Err(Error::NotFound(format!("model {name}")).into());
    }
    Ok(state)
}

/// `nurturectl show`.
fn show(state: &ModelState, manifest: &nurture_models::Manifest, json: bool) {
    let role = version_role(state, manifest.version);
    if json {
        print_json(&json!({
            "state": role,
            "manifest": manifest,
            "serving_defaults": manifest.serving_defaults(),
        }));
        return;
    }
    let record = state.versions.get(&manifest.version);
    println!("model      {} ({})", manifest.name, manifest.kind);
    println!("version    {} ({role})", manifest.version);
    if let Some(record) = record {
        println!(
            "published  {} by {}",
            record.published_at.format("%Y-%m-%d %H:%M:%S UTC"),
            record.published_by
        );
        if let Some(revoked) = &record.revoked {
            println!("revoked    by {}: {}", revoked.actor, revoked.reason);
        }
    }
    println!(
        "sha256     {} ({} bytes)",
        manifest.sha256, manifest.size_bytes
    );
    println!(
        "features   {} {:?}",
        manifest.features.len(),
        manifest.features
    );
    println!("labels     {:?}", manifest.labels);
    if manifest.risk_thresholds.is_some() {
        println!(
            "risk       thresholds {}",
            thresholds(manifest.risk_thresholds)
        );
    }
    for (metric, value) in &manifest.metrics {
        println!("metric     {metric} = {value:.4}");
    }
    println!(
        "means      {} of {} features (churn factors use them)",
        manifest.feature_means.len(),
        manifest.features.len()
    );
    println!("golden     {} examples", manifest.golden.len());
    println!(
        "reference  {}",
        if manifest.reference.is_some() {
            "training distributions present (label-free drift is checked)"
        } else {
            "none (label-free drift is not checked)"
        }
    );
    if let Some(hash) = &manifest.data_hash {
        println!("data       sha256 {hash}");
    }
    if let Some(trainer) = &manifest.trainer_version {
        println!("trainer    {trainer}");
    }
    for note in manifest.serving_defaults() {
        println!("default    {note}");
    }
}

/// Risk thresholds to three decimals.
fn thresholds(thresholds: Option<[f64; 4]>) -> String {
    thresholds.map_or("none".to_owned(), |t| {
        format!("{:.3} {:.3} {:.3} {:.3}", t[0], t[1], t[2], t[3])
    })
}

/// `nurturectl diff`: every difference between two manifests, one per line.
fn diff(a: &nurture_models::Manifest, b: &nurture_models::Manifest, json: bool) {
    let (va, vb) = (a.version, b.version);
    let mut lines: Vec<String> = Vec::new();
    if a.sha256 != b.sha256 {
        lines.push(format!(
            "sha256     {va}: {}  {vb}: {}",
            &a.sha256[..12],
            &b.sha256[..12]
        ));
    }
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        x.iter().filter(|f| !y.contains(f)).cloned().collect()
    };
    let (removed, added) = (
        only(&a.features, &b.features),
        only(&b.features, &a.features),
    );
    if !removed.is_empty() {
        lines.push(format!("features   only in {va}: {removed:?}"));
    }
    if !added.is_empty() {
        lines.push(format!("features   only in {vb}: {added:?}"));
    }
    if removed.is_empty() && added.is_empty() && a.features != b.features {
        lines.push("features   same names, another order".to_owned());
    }
    if a.labels != b.labels {
        lines.push(format!(
            "labels     {va}: {:?}  {vb}: {:?}",
            a.labels, b.labels
        ));
    }
    if a.risk_thresholds != b.risk_thresholds {
        lines.push(format!(
            "risk       {va}: {}  {vb}: {}",
            thresholds(a.risk_thresholds),
            thresholds(b.risk_thresholds)
        ));
    }
    let metrics: std::collections::BTreeSet<&String> =
        a.metrics.keys().chain(b.metrics.keys()).collect();
    let mut metric_rows = Vec::new();
    for metric in metrics {
        let (x, y) = (a.metrics.get(metric), b.metrics.get(metric));
        if x != y {
            let show = |v: Option<&f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
            let delta = match (x, y) {
                (Some(x), Some(y)) => format!(" ({:+.4})", y - x),
                _ => String::new(),
            };
            lines.push(format!(
                "metric     {metric}: {} -> {}{delta}",
                show(x),
                show(y)
            ));
            metric_rows.push(json!({ "metric": metric, "a": x, "b": y }));
        }
    }
    if a.golden != b.golden {
        lines.push(format!(
            "golden     {va}: {} examples  {vb}: {} examples (differ)",
            a.golden.len(),
            b.golden.len()
        ));
    }
    if a.data_hash != b.data_hash {
        lines.push(format!(
            "data       {va}: {}  {vb}: {}",
            a.data_hash.as_deref().unwrap_or("-"),
            b.data_hash.as_deref().unwrap_or("-")
        ));
    }
    if json {
        print_json(&json!({
            "a": va,
            "b": vb,
            "same_bytes": a.sha256 == b.sha256,
            "features_only_in_a": removed,
            "features_only_in_b": added,
            "metrics": metric_rows,
            "differences": lines,
        }));
        return;
    }
    if lines.is_empty() {
        println!("versions {va} and {vb} have the same manifest");
    }
    for line in lines {
        println!("{line}");
    }
}

fn opt(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn version_role(state: &ModelState, version: u64) -> &'static str {
    if state.live == Some(version) {
        "live"
    } else if state.canary.is_some_and(|c| c.version == version) {
        "canary"
    } else if state.shadow.is_some_and(|c| c.version == version) {
        "shadow"
    } else if state
        .versions
        .get(&version)
        .is_some_and(|r| r.revoked.is_some())
    {
        "revoked"
    } else {
        "available"
    }
}

fn state_summary(state: &ModelState) -> serde_json::Value {
    json!({
        "name": state.name,
        "kind": state.kind,
        "live": state.live,
        "canary": state.canary,
        "shadow": state.shadow,
        "rollout": state.rollout,
        "versions": state.versions.len(),
        "seq": state.seq,
    })
}

/// `publish`: checks an ONNX file against its contract and publishes it,
/// warning of what serving will fill in.
async fn publish(
    registry: &Registry,
    ort_dylib: Option<&std::path::Path>,
    actor: &str,
    json: bool,
    args: PublishArgs,
) -> anyhow::Result<()> {
    let PublishArgs {
        target,
        file,
        generic,
        name,
        manifest,
        promote,
        force,
    } = args;
    let (kind, name) = if generic {
        if name.is_some() {
            return Err(
                Error::invalid("--name", "with --generic the name is the first argument").into(),
            );
        }
        (ModelKind::Generic, ModelName::new(&target)?)
    } else {
        let kind: ModelKind = target.parse()?;
        if kind == ModelKind::Generic {
            return Err(
                Error::invalid("kind", "publish a generic model with --generic NAME FILE").into(),
            );
        }
        (
            kind,
            ModelName::new(name.as_deref().unwrap_or(kind.as_str()))?,
        )
    };
    let onnx = std::fs::read(&file).map_err(|error| Error::Io {
        path: file.clone(),
        reason: error.to_string(),
    })?;
    let draft = match &manifest {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|error| Error::Io {
                path: path.clone(),
                reason: error.to_string(),
            })?;
            ManifestDraft::from_json(&bytes)?
        }
        None => ManifestDraft::default(),
    };
    let environment = runtime::environment(ort_dylib)?;
    let manifest = registry
        .publish(
            environment,
            PublishRequest {
                name: name.clone(),
                kind,
                onnx: onnx.into(),
                draft,
                actor: actor.to_owned(),
                force,
            },
        )
        .await?;
    let promoted = if promote {
        registry
            .promote(&name, manifest.version, false, actor, None)
            .await
            .with_context(|| {
                format!(
                    "version {} of {name} was published but not promoted",
                    manifest.version
                )
            })?
            .is_some()
    } else {
        false
    };
    for note in manifest.serving_defaults() {
        eprintln!("warning: {note}");
    }
    if json {
        print_json(&json!({
            "manifest": manifest.manifest,
            "created": manifest.created,
            "promoted": promoted,
            "serving_defaults": manifest.serving_defaults(),
        }));
    } else if !manifest.created {
        println!(
            "{name} version {} already holds these bytes (sha256 {}); nothing written{}",
            manifest.version,
            &manifest.sha256[..12],
            if promoted { "; now live" } else { "" }
        );
    } else {
        println!(
            "published {name} version {} ({kind}, {} bytes, sha256 {}){}",
            manifest.version,
            manifest.size_bytes,
            &manifest.sha256[..12],
            if promoted { "; now live" } else { "" }
        );
    }
    Ok(())
}

/// `versions MODEL`: every version with its role, metrics and revocation.
async fn versions(registry: &Registry, model: &str, json: bool) -> anyhow::Result<()> {
    let name = ModelName::new(model)?;
    let state = existing_state(registry, &name).await?;
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for record in state.versions.values() {
        let manifest = registry.manifest(&name, record.version).await?;
        let role = version_role(&state, record.version);
        let metrics = manifest
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect::<Vec<_>>()
            .join(" ");
        json_rows.push(json!({
            "version": record.version,
            "state": role,
            "sha256": record.sha256,
            "published_at": record.published_at,
            "published_by": record.published_by,
            "revoked": record.revoked,
            "metrics": manifest.metrics,
        }));
        rows.push(vec![
            record.version.to_string(),
            role.to_owned(),
            record.published_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            record.published_by.clone(),
            record.sha256[..12].to_owned(),
            if metrics.is_empty() {
                "-".into()
            } else {
                metrics
            },
            record
                .revoked
                .as_ref()
                .map_or(String::new(), |r| r.reason.clone()),
        ]);
    }
    if json {
        print_json(&json!({ "model": state.name, "versions": json_rows }));
    } else {
        print_table(
            &[
                "VERSION",
                "STATE",
                "PUBLISHED",
                "BY",
                "SHA256",
                "METRICS",
                "REVOKED BECAUSE",
            ],
            rows,
        );
    }
    Ok(())
}

/// `quality MODEL`: live quality per version and arm, from the outcomes in the store.
async fn quality(
    registry: &Registry,
    model: &str,
    min_outcomes: u64,
    json: bool,
) -> anyhow::Result<()> {
    let name = ModelName::new(model)?;
    existing_state(registry, &name).await?;
    let store = nurture_models::feedback::FeedbackStore::beside(registry, "nurturectl");
    let (batches, _) = store
        .read_batches(name.as_str(), None, &Default::default())
        .await?;
    let mut quality = nurture_models::feedback::ModelQuality::default();
    for (_, batch) in &batches {
        quality.fold(batch);
    }
    let mut reports: Vec<_> = quality
        .states
        .iter()
        .map(|((version, arm), state)| (*version, *arm, state.report(min_outcomes)))
        .collect();
    reports.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    if json {
        let versions: Vec<_> = reports
            .iter()
            .map(|(version, arm, report)| {
                json!({ "version": version, "arm": arm.as_str(), "report": report })
            })
            .collect();
        print_json(&json!({
            "model": name.as_str(),
            "min_outcomes": min_outcomes,
            "versions": versions,
        }));
    } else if reports.is_empty() {
        println!("no outcomes recorded for {name} yet");
    } else {
        let figure = |e: Option<nurture_models::feedback::Estimate>| {
            e.map_or("-".to_owned(), |e| {
                format!("{:.4} [{:.4}, {:.4}]", e.value, e.low, e.high)
            })
        };
        let rows = reports
            .iter()
            .map(|(version, arm, r)| {
                vec![
                    version.to_string(),
                    arm.as_str().to_owned(),
                    r.outcomes.to_string(),
                    figure(r.auc.or(r.accuracy)),
                    figure(r.log_loss),
                    figure(r.ece.or(r.macro_f1)),
                    figure(r.value_per_prediction),
                ]
            })
            .collect();
        print_table(
            &[
                "VERSION",
                "ARM",
                "OUTCOMES",
                "AUC | ACCURACY",
                "LOG-LOSS",
                "ECE | MACRO-F1",
                "VALUE/PREDICTION",
            ],
            rows,
        );
        println!("95% intervals; figures need {min_outcomes} outcomes");
    }
    Ok(())
}

/// `rollout-wait`: follows `name`'s release log from its latest
/// `rollout_started` until that rollout ends.
async fn wait_for_rollout(
    registry: &Registry,
    name: &ModelName,
    timeout: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let mut follower = nurture_models::LogFollower::new(name.clone());
    let mut state = follower.state(registry).await?;
    let events = follower.events();
    let Some(mut printed) = events
        .iter()
        .rposition(|e| matches!(e.kind, EventKind::RolloutStarted { .. }))
    else {
        return Err(Error::NotFound(format!("a guarded rollout of {name}")).into());
    };
    let EventKind::RolloutStarted { version, .. } = events[printed].kind else {
        unreachable!("found as a rollout_started event")
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        for event in &follower.events()[printed..] {
            if json {
                println!("{}", serde_json::to_string(event)?);
            } else {
                println!(
                    "{name}: seq {} at {} {}: {}",
                    event.seq,
                    event.at.format("%H:%M:%S"),
                    event.kind.name(),
                    describe(&event.kind)
                );
            }
        }
        printed = follower.len();
        if state.rollout.as_ref().is_none_or(|r| r.version != version) {
            if state.live == Some(version) {
                return Ok(());
            }
            let live = state.live.map_or("none".to_owned(), |v| v.to_string());
            return Err(NotPromoted(format!(
                "the rollout of {name} version {version} ended without promoting it; live is {live}"
            ))
            .into());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the rollout of {name} version {version} is still under way after {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        state = follower.state(registry).await?;
    }
}

fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::Published {
            version,
            kind,
            sha256,
            retrain,
        } => {
            let evidence = retrain
                .as_ref()
                .map(|e| {
                    format!(
                        ", retrained from feedback: {} {:.4} vs champion {} {:.4}, gain interval [{:+.4}, {:+.4}] on {} fresh outcomes",
                        e.metric,
                        e.challenger,
                        e.champion_version,
                        e.champion,
                        e.interval[0],
                        e.interval[1],
                        e.holdout_outcomes
                    )
                })
                .unwrap_or_default();
            format!(
                "version {version} ({kind}, sha256 {}){evidence}",
                &sha256[..12.min(sha256.len())]
            )
        }
        EventKind::Promoted { version, forced } => format!(
            "version {version} live{}",
            if *forced { " (forced)" } else { "" }
        ),
        EventKind::CanarySet { version, percent } => {
            format!("version {version} canary at {percent}%")
        }
        EventKind::CanaryCleared {} => "canary removed".to_owned(),
        EventKind::ShadowSet { version, percent } => {
            format!("version {version} shadows {percent}% of live requests")
        }
        EventKind::ShadowCleared {} => "shadow removed".to_owned(),
        EventKind::RolledBack { from, to, reason } => {
            format!("{from} -> {to}, {from} revoked: {reason}")
        }
        EventKind::Revoked { version, reason } => format!("version {version} revoked: {reason}"),
        EventKind::RolloutStarted {
            version, policy, ..
        } => format!(
            "guarded rollout of version {version}: steps {:?}%, {} at α = {}, τ = {}",
            policy.steps,
            policy.metric.as_str(),
            policy.test.alpha,
            policy.test.tau
        ),
        EventKind::RolloutDecided {
            version,
            decision,
            reason,
            evidence,
        } => {
            let mut text = format!("version {version} {}: {reason}", decision.as_str());
            if let Some(e) = evidence {
                text.push_str(&format!(
                    " ({} {:+.4}, interval [{:.4}, {:.4}], live {} outcomes, canary {})",
                    e.metric.as_str(),
                    e.effect,
                    e.interval.0,
                    e.interval.1,
                    e.live.0,
                    e.canary.0
                ));
            }
            text
        }
    }
}

fn report(json: bool, name: &ModelName, event: Option<Event>, nothing: &str) {
    match (json, event) {
        (true, event) => print_json(&json!({ "model": name.as_str(), "written": event })),
        (false, Some(event)) => println!(
            "{name}: seq {} {}: {}",
            event.seq,
            event.kind.name(),
            describe(&event.kind)
        ),
        (false, None) => println!("{name}: {nothing}"),
    }
}

fn print_status(state: &ModelState, replicas: &[ReplicaReport]) {
    println!("model     {}", state.name);
    println!(
        "kind      {}",
        state.kind.map_or("-".into(), |k| k.to_string())
    );
    match state.live.and_then(|v| state.versions.get(&v)) {
        Some(record) => println!(
            "live      {} (published {} by {})",
            record.version,
            record.published_at.format("%Y-%m-%d %H:%M:%S UTC"),
            record.published_by
        ),
        None => println!("live      -"),
    }
    match state.canary {
        Some(canary) => {
            let serving = replicas
                .iter()
                .filter(|r| r.canary == Some(canary.version))
                .count();
            println!(
                "canary    {} at {}% of leads (desired; served by {serving} of {} reporting replicas)",
                canary.version,
                canary.percent,
                replicas.len()
            );
        }
        None => println!("canary    -"),
    }
    if let Some(shadow) = state.shadow {
        println!(
            "shadow    {} mirrors {}% of live requests",
            shadow.version, shadow.percent
        );
    }
    if let Some(rollout) = &state.rollout {
        println!(
            "rollout   version {}, step {} of {} ({}%){}, since {}",
            rollout.version,
            rollout.step + 1,
            rollout.policy.steps.len(),
            rollout.percent(),
            rollout
                .paused
                .as_deref()
                .map(|reason| format!(", paused: {reason}"))
                .unwrap_or_default(),
            rollout.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    for report in replicas {
        println!(
            "replica   {}: live {}, canary {}{} (at {})",
            report.replica,
            opt(report.live),
            opt(report.canary),
            report
                .canary_error
                .as_deref()
                .map(|error| format!(", refused canary {}: {error}", opt(report.desired_canary)))
                .unwrap_or_default(),
            report.at.format("%H:%M:%S UTC")
        );
    }
    println!("latest    {}", opt(state.latest_version()));
    println!("log seq   {}", state.seq);
    for record in state.versions.values() {
        if let Some(revoked) = &record.revoked {
            println!(
                "revoked   {} by {} at {}: {}",
                record.version,
                revoked.actor,
                revoked.at.format("%Y-%m-%d %H:%M:%S UTC"),
                revoked.reason
            );
        }
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialise; this is a bug")
    );
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}
