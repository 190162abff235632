//! `nurture-load replay`: plays a labelled churn table against a server as
//! production would: each lead is predicted, and its true outcome is
//! reported for the answer's prediction id. For rehearsing a guarded
//! rollout (docs/rollouts.md), or filling live quality on a test fleet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nurture_proto::v1;
use nurture_proto::v1::churn_service_client::ChurnServiceClient;
use nurture_proto::v1::feedback_service_client::FeedbackServiceClient;

/// What to replay, where.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// CSV with a header: lead features by name, `lead_id`, and the label.
    #[arg(long)]
    data: PathBuf,
    /// The label column: 1 (churned) or 0.
    #[arg(long, default_value = "churned")]
    label: String,
    /// Leads to replay; the table repeats when it is shorter.
    #[arg(long, default_value_t = 2_000)]
    leads: usize,
    /// Leads per request.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Most leads per second (default: as fast as answers come).
    #[arg(long)]
    rate: Option<f64>,
}

/// Reads the leads of `path` with their labels; errors name the row and
/// column.
fn read(path: &PathBuf, label: &str) -> anyhow::Result<Vec<(v1::LeadProfile, bool)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("the file is empty")?
        .split(',')
        .collect();
    if !header.contains(&label) {
        bail!("{} has no {label:?} column", path.display());
    }
    let mut leads = Vec::new();
    for (row, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let mut lead = v1::LeadProfile::default();
        let mut outcome = None;
        for (column, cell) in header.iter().zip(line.split(',')) {
            let number = || -> anyhow::Result<f64> {
                cell.parse().with_context(|| {
                    format!("row {}, column {column}: {cell:?} is not a number", row + 1)
                })
            };
            if *column == "lead_id" {
                lead.lead_id = cell.to_owned();
            } else if *column == label {
                outcome = Some(number()? != 0.0);
            } else if v1::LeadProfile::default().set_feature(column, 0.0) {
                lead.set_feature(column, number()?);
            }
        }
        let outcome = outcome.with_context(|| format!("row {}: no {label}", row + 1))?;
        leads.push((lead, outcome));
    }
    if leads.is_empty() {
        bail!("{} holds no leads", path.display());
    }
    Ok(leads)
}

/// Replays, printing progress to stderr and a summary to stdout.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let table = read(&args.data, &args.label)?;
    let channel = tonic::transport::Endpoint::from_shared(args.target.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.target))?;
    let mut churn = ChurnServiceClient::new(channel.clone());
    let mut feedback = FeedbackServiceClient::new(channel);
    let batch = args.batch.max(1);
    let started = Instant::now();
    let mut by_version: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut sent, mut recorded, mut next_progress) = (0usize, 0u64, 500usize);
    while sent < args.leads {
        let chunk: Vec<&(v1::LeadProfile, bool)> = (sent..(sent + batch).min(args.leads))
            .map(|i| &table[i % table.len()])
            .collect();
        let answer = churn
            .predict_churn(v1::PredictChurnRequest {
                leads: chunk.iter().map(|(lead, _)| lead.clone()).collect(),
                ..Default::default()
            })
            .await
            .context("PredictChurn")?
            .into_inner();
        let outcomes = answer
            .predictions
            .iter()
            .zip(&chunk)
            .enumerate()
            .map(|(i, (prediction, (_, churned)))| {
                let version = prediction.model.as_ref().map_or(0, |m| m.version);
                *by_version.entry(version).or_default() += 1;
                v1::OutcomeReport {
                    prediction_id: prediction.prediction_id.clone(),
                    outcome_id: format!("replay-{}", sent + i),
                    label: Some(v1::outcome_report::Label::Churned(*churned)),
                    ..Default::default()
                }
            })
            .collect();
        let results = feedback
            .record_outcomes(v1::RecordOutcomesRequest { outcomes })
            .await
            .context("RecordOutcomes")?
            .into_inner();
        recorded += results.results.len() as u64;
        sent += chunk.len();
        if sent >= next_progress || sent == args.leads {
            eprintln!(
                "replayed {sent} of {} leads; answered by version {}",
                args.leads,
                describe(&by_version)
            );
            next_progress += 500;
        }
        if let Some(rate) = args.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        }
    }
    println!(
        "replayed {sent} leads in {:.1} s, {recorded} outcomes reported; answered by version {}",
        started.elapsed().as_secs_f64(),
        describe(&by_version)
    );
    Ok(())
}

fn describe(by_version: &BTreeMap<u64, u64>) -> String {
    by_version
        .iter()
        .map(|(version, n)| format!("{version}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
