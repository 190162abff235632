//! `nurture-trainer retrain MODEL --from-feedback`: a challenger trained on
//! production feedback (the prediction log joined with outcomes, both read
//! from the store), gated against the live version (the champion) on the
//! newest outcomes, and released only through a guarded canary.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use indicatif::ProgressBar;
use nurture_models::feedback::log::{Logged, feature_columns};
use nurture_models::feedback::{FeedbackStore, Label, ScoredOutcome};
use nurture_models::manifest::RetrainEvidence;
use nurture_models::rollout::policy::RolloutPolicy;
use nurture_models::{Manifest, ModelKind, ModelName, Registry, runtime};
use ort::environment::Environment;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dataset::{self, Dataset, Inputs};
use crate::error::{Error, Result};
use crate::metrics;
use crate::train::{self, Splits, Timings, TrainOptions, TrainReport};

/// Resamples of the paired bootstrap behind the gate's interval.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// What to retrain, and how to judge and release it.
#[derive(Debug, Clone)]
pub struct RetrainOptions {
    /// Registry (and feedback store) URL.
    pub registry: String,
    /// Fitting settings; `kind`, `features` and `data` are taken from the
    /// champion and the feedback, the rest (seed, booster, text, refit,
    /// actor, out_dir) apply as in `train`.
    pub train: TrainOptions,
    /// Share of the joined outcomes, newest by observation time, that
    /// judges champion and challenger.
    pub holdout_share: f64,
    /// Fewest joined outcomes worth a retrain.
    pub min_outcomes: usize,
    /// Use only the newest this many joined outcomes.
    pub newest: Option<usize>,
    /// Use only outcomes observed at or after this time (ms since the
    /// epoch), e.g. since a drift alarm's change point.
    pub since_ms: Option<i64>,
    /// Smallest gain of the primary metric (challenger − champion) that
    /// releases the challenger; its paired-bootstrap 95% interval must also
    /// lie above zero.
    pub min_gain: f64,
    /// Original training data mixed into the challenger's training rows.
    pub mix: Option<PathBuf>,
    /// Weight of each mixed-in row (feedback rows weigh 1).
    pub mix_weight: f64,
    /// Publish and start a guarded rollout when the gate passes.
    pub release: bool,
    /// The rollout's policy.
    pub policy: RolloutPolicy,
}

/// What the feedback held for the model.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedbackCounts {
    /// Outcomes read (after duplicates of one prediction were merged).
    pub outcomes: usize,
    /// Answers read from the prediction log: none when there are no
    /// outcomes, and no file written before the oldest outcome's answer
    /// was served.
    pub logged: usize,
    /// Outcomes joined with a logged, non-shadow answer.
    pub joined: usize,
    /// Outcomes whose answer is not in the log (sampled out, dropped, or
    /// not written yet).
    pub unlogged: usize,
    /// Joined answers without a value for one of the champion's features.
    pub incomplete: usize,
    /// Joined rows left out by `--newest` or `--since`.
    pub older: usize,
}

/// What a retrain did.
#[derive(Debug, Clone, Serialize)]
pub struct RetrainReport {
    /// The model.
    pub model: String,
    /// The feedback read.
    pub feedback: FeedbackCounts,
    /// The challenger's training report (holdout = the newest outcomes).
    pub challenger: Option<TrainReport>,
    /// Champion against challenger.
    pub evidence: Option<RetrainEvidence>,
    /// Whether the challenger was published and its rollout started.
    pub released: bool,
    /// The published version, if any.
    pub published_version: Option<u64>,
    /// Why it stopped short of a release, if it did.
    pub stopped: Option<String>,
}

/// One outcome joined with the answer it is about.
struct Joined {
    observed_at_ms: i64,
    served_at_ms: i64,
    prediction_id: String,
    lead_id: Option<String>,
    label: usize,
    features: Vec<f32>,
    text: Option<String>,
}

/// The newest outcome of each prediction (a later correction wins).
fn latest_outcomes(
    outcomes: impl IntoIterator<Item = ScoredOutcome>,
) -> HashMap<String, ScoredOutcome> {
    let mut latest: HashMap<String, ScoredOutcome> = HashMap::new();
    for outcome in outcomes {
        match latest.get(&outcome.prediction_id) {
            Some(kept)
                if (kept.observed_at_ms, &kept.key) >= (outcome.observed_at_ms, &outcome.key) => {}
            _ => {
                latest.insert(outcome.prediction_id.clone(), outcome);
            }
        }
    }
    latest
}

fn class_of(label: Label, classes: usize) -> Option<usize> {
    let class = match label {
        Label::Binary(positive) => usize::from(positive),
        Label::Class(class) => class as usize,
    };
    (class < classes).then_some(class)
}

/// Joins logged answers with their outcomes, keeping the champion's
/// features (by name) of each; shadow answers are left out (they mirror a
/// live answer with the same inputs). Oldest outcome first.
fn join(
    kind: ModelKind,
    features: &[String],
    logged: Vec<Logged>,
    outcomes: &HashMap<String, ScoredOutcome>,
    counts: &mut FeedbackCounts,
) -> Result<Vec<Joined>> {
    let columns = feature_columns(kind);
    let mut slots = Vec::with_capacity(features.len());
    for feature in features {
        let slot = columns.iter().position(|c| c == feature).ok_or_else(|| {
            Error::usage(format!(
                "the live version takes {feature:?}, which {kind} answers do not log"
            ))
        })?;
        slots.push(slot);
    }
    let classes = kind.labels().len();
    let mut seen = HashSet::new();
    let mut joined = Vec::new();
    for answer in logged {
        if answer.arm == "shadow" || !seen.insert(answer.prediction_id.clone()) {
            continue;
        }
        let Some(outcome) = outcomes.get(&answer.prediction_id) else {
            continue;
        };
        let Some(label) = class_of(outcome.label, classes) else {
            continue;
        };
        let values: Option<Vec<f32>> = slots
            .iter()
            .map(|slot| answer.features[*slot].map(|v| v as f32))
            .collect();
        let Some(values) = values else {
            counts.incomplete += 1;
            continue;
        };
        if kind.input() == nurture_models::kind::InputContract::Text && answer.text.is_none() {
            counts.incomplete += 1;
            continue;
        }
        joined.push(Joined {
            observed_at_ms: outcome.observed_at_ms,
            served_at_ms: answer.served_at_ms,
            prediction_id: answer.prediction_id,
            lead_id: answer.lead_id,
            label,
            features: values,
            text: answer.text,
        });
    }
    counts.joined = joined.len();
    counts.unlogged = outcomes.keys().filter(|id| !seen.contains(*id)).count();
    joined.sort_by(|a, b| {
        (a.observed_at_ms, a.served_at_ms, &a.prediction_id).cmp(&(
            b.observed_at_ms,
            b.served_at_ms,
            &b.prediction_id,
        ))
    });
    Ok(joined)
}

/// The joined rows as a dataset of the champion's inputs, and the sha256
/// of what the rows hold (ids, labels, inputs, in order): the snapshot.
fn to_dataset(kind: ModelKind, features: &[String], rows: &[Joined]) -> (Dataset, String) {
    let mut hash = Sha256::new();
    for row in rows {
        hash.update(row.prediction_id.as_bytes());
        hash.update((row.label as u64).to_le_bytes());
        for value in &row.features {
            hash.update(value.to_le_bytes());
        }
        if let Some(text) = &row.text {
            hash.update(text.as_bytes());
        }
        hash.update([0xff]);
    }
    let inputs = if kind.input() == nurture_models::kind::InputContract::Text {
        Inputs::Texts(
            rows.iter()
                .map(|r| r.text.clone().unwrap_or_default())
                .collect(),
        )
    } else {
        Inputs::Features {
            names: features.to_vec(),
            values: rows
                .iter()
                .flat_map(|r| r.features.iter().copied())
                .collect(),
        }
    };
    let dataset = Dataset {
        kind,
        ids: rows
            .iter()
            .map(|r| r.lead_id.clone().unwrap_or_else(|| r.prediction_id.clone()))
            .collect(),
        inputs,
        labels: rows.iter().map(|r| r.label).collect(),
        weights: None,
    };
    (dataset, hex::encode(hash.finalize()))
}

/// The feedback's training and holdout rows: the newest `holdout_share`
/// of the outcomes judges, the rest (with any mixed-in data) trains.
fn time_split(options: &RetrainOptions, all: Dataset) -> Result<Splits> {
    let n = all.len();
    let holdout_rows = ((n as f64 * options.holdout_share).ceil() as usize).clamp(1, n - 1);
    let first_holdout = n - holdout_rows;
    let feedback_train = all.subset(|row| row < first_holdout);
    let holdout = all.subset(|row| row >= first_holdout);
    let (train, data) = match &options.mix {
        Some(path) => {
            let mixed = dataset::load(all.kind, path)?;
            let mixed = match &all.inputs {
                Inputs::Features { names, .. } => mixed.select_features(names)?,
                Inputs::Texts(_) => mixed,
            }
            .with_weight(options.mix_weight);
            (feedback_train.concat(mixed.clone())?, all.concat(mixed)?)
        }
        None => (feedback_train, all),
    };
    Ok(Splits {
        data,
        train,
        holdout,
    })
}

/// A challenger fit on feedback and compared with the champion.
pub struct Judged {
    pub(crate) built: train::Built,
    pub(crate) splits: Splits,
    /// The champion's primary metric on the holdout.
    pub champion: f64,
    /// The challenger's, fit without the holdout.
    pub challenger: f64,
    /// 95% paired-bootstrap interval of challenger − champion.
    pub interval: [f64; 2],
    /// Whether the gain reaches `min_gain` with the interval above 0.
    pub passed: bool,
}

/// The gate, on feedback rows already joined and ordered oldest outcome
/// first (`feedback`, of the champion's kind and inputs): time split, fit
/// (with any mixed-in data), and the champion's and the challenger's
/// scores on the newest outcomes. `Ok(Err(why))` when the rows cannot be
/// judged (a split with one class). What `retrain` runs after the join,
/// and what `benches/retrain` simulates.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    options: &RetrainOptions,
    environment: &Environment,
    champion: &[u8],
    feedback: Dataset,
    source: &str,
    data_hash: String,
    progress: &ProgressBar,
    timings: &mut Timings,
) -> Result<std::result::Result<Judged, String>> {
    let kind = feedback.kind;
    let mut train_options = options.train.clone();
    train_options.kind = kind;
    train_options.features = match &feedback.inputs {
        Inputs::Features { names, .. } => Some(names.clone()),
        Inputs::Texts(_) => None,
    };
    let splits = time_split(options, feedback)?;
    if let Err(error) = splits.check(&PathBuf::from(source)) {
        return Ok(Err(error.to_string()));
    }
    let built = train::build(
        &train_options,
        environment,
        &splits,
        source,
        data_hash,
        progress,
        timings,
    )?;
    progress.set_message(format!("{kind}: judging"));
    let classes = kind.labels().len();
    let mut session = runtime::session(environment, champion, 1)?;
    let champion_scores = train::score_onnx(&mut session, &splits.holdout)?;
    let challenger_scores = &built.measured.served;
    let labels = &splits.holdout.labels;
    let champion = metrics::primary_score(&champion_scores, labels, classes);
    let challenger = metrics::primary_score(challenger_scores, labels, classes);
    let interval = metrics::paired_bootstrap(
        &champion_scores,
        challenger_scores,
        labels,
        classes,
        BOOTSTRAP_RESAMPLES,
        options.train.seed,
    );
    let passed = challenger - champion >= options.min_gain && interval[0] > 0.0;
    Ok(Ok(Judged {
        built,
        splits,
        champion,
        challenger,
        interval,
        passed,
    }))
}

/// Reads the champion, the feedback, trains a challenger, gates it, and
/// releases it under a guarded rollout when it passes.
pub async fn retrain(
    model: &str,
    options: &RetrainOptions,
    environment: &Environment,
    progress: &ProgressBar,
) -> Result<RetrainReport> {
    let started = Instant::now();
    let name = ModelName::new(model)?;
    let registry = Registry::open_existing(&options.registry)?;
    let state = registry.state(&name).await?;
    let mut report = RetrainReport {
        model: name.to_string(),
        feedback: FeedbackCounts::default(),
        challenger: None,
        evidence: None,
        released: false,
        published_version: None,
        stopped: None,
    };
    let Some(live) = state.live else {
        return Err(Error::usage(format!(
            "{name} has no live version: there is no champion to challenge"
        )));
    };
    if let Some(rollout) = &state.rollout {
        report.stopped = Some(format!(
            "a rollout of version {} is under way; retrain once it has ended",
            rollout.version
        ));
        return Ok(report);
    }
    progress.set_message(format!("{name}: reading feedback"));
    let champion = registry.fetch(&name, live).await?;
    let Manifest { kind, features, .. } = champion.manifest.clone();
    let feedback = FeedbackStore::beside(&registry, "nurture-trainer");
    let (batches, _) = feedback
        .read_batches(name.as_str(), None, &HashSet::new())
        .await?;
    let outcomes = latest_outcomes(batches.into_iter().flat_map(|(_, batch)| batch.outcomes));
    // Only answers that have an outcome can join, and none of them was
    // served before the oldest such answer: the log is read from there, and
    // only those answers are held.
    let served_from = outcomes.values().map(|outcome| outcome.served_at_ms).min();
    let (logged, read) = match served_from {
        Some(from) => {
            feedback
                .read_predictions(name.as_str(), kind, Some(from), |answer| {
                    outcomes.contains_key(&answer.prediction_id)
                })
                .await?
        }
        None => (Vec::new(), 0),
    };
    report.feedback.outcomes = outcomes.len();
    report.feedback.logged = read;
    let mut joined = join(kind, &features, logged, &outcomes, &mut report.feedback)?;
    let mut keep_from = 0;
    if let Some(since) = options.since_ms {
        keep_from = joined.partition_point(|row| row.observed_at_ms < since);
    }
    if let Some(newest) = options.newest {
        keep_from = keep_from.max(joined.len().saturating_sub(newest));
    }
    report.feedback.older = keep_from;
    joined.drain(..keep_from);
    if joined.len() < options.min_outcomes.max(2) {
        report.stopped = Some(format!(
            "only {} outcomes joined with logged answers (need {}): wait for more feedback",
            joined.len(),
            options.min_outcomes
        ));
        return Ok(report);
    }
    let (all, snapshot) = to_dataset(kind, &features, &joined);
    let mut timings = Timings {
        load: started.elapsed().as_secs_f64(),
        ..Timings::default()
    };
    let source = format!(
        "{} outcomes of {name} (feedback snapshot {})",
        joined.len(),
        &snapshot[..12]
    );
    let judged = match judge(
        options,
        environment,
        &champion.onnx,
        all,
        &source,
        snapshot.clone(),
        progress,
        &mut timings,
    )? {
        Ok(judged) => judged,
        Err(why) => {
            report.stopped = Some(why);
            return Ok(report);
        }
    };
    let Judged {
        mut built,
        splits,
        champion: champion_score,
        challenger: challenger_score,
        interval,
        passed,
    } = judged;
    let gain = challenger_score - champion_score;
    let mixed_rows = splits.data.len() - joined.len();
    let evidence = RetrainEvidence {
        champion_version: live,
        metric: metrics::primary(kind.labels().len()).to_owned(),
        champion: champion_score,
        challenger: challenger_score,
        interval,
        min_gain: options.min_gain,
        passed,
        holdout_outcomes: splits.holdout.len(),
        train_outcomes: splits.train.len() - mixed_rows,
        mixed_rows,
        mixed_weight: options.mix_weight,
        holdout_observed_ms: [
            joined[joined.len() - splits.holdout.len()].observed_at_ms,
            joined[joined.len() - 1].observed_at_ms,
        ],
        snapshot_sha256: snapshot,
    };
    built.draft.retrain = Some(evidence.clone());
    if let Some(dir) = &options.train.out_dir {
        train::write_artifacts(dir, kind, &built.published().onnx, &built.draft)?;
    }
    report.challenger = Some(built.report(&splits, None, timings));
    report.evidence = Some(evidence.clone());
    if !passed {
        report.stopped = Some(format!(
            "the challenger's {} is {challenger_score:.4} against the champion's (version {live}) {champion_score:.4} \
             on the newest {} outcomes: a gain of {gain:+.4}, 95% interval [{:+.4}, {:+.4}]; \
             releasing needs a gain of at least {} with the interval above 0",
            evidence.metric, evidence.holdout_outcomes, interval[0], interval[1], options.min_gain
        ));
        return Ok(report);
    }
    if !options.release {
        report.stopped = Some("the challenger passed; --no-release kept it unpublished".to_owned());
        return Ok(report);
    }

    progress.set_message(format!("{name}: publishing"));
    let manifest = built
        .publish(&registry, environment, &name, &options.train.actor)
        .await?;
    report.published_version = Some(manifest.version);
    registry
        .start_rollout(
            &name,
            manifest.version,
            options.policy.clone(),
            false,
            &options.train.actor,
            None,
        )
        .await?;
    report.released = true;
    if let Some(challenger) = report.challenger.as_mut() {
        challenger.published_version = Some(manifest.version);
        challenger.timings.total = started.elapsed().as_secs_f64();
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Checks the options a person gave, naming the first that is wrong.
pub fn check(options: &RetrainOptions) -> Result<()> {
    if !(options.holdout_share > 0.0 && options.holdout_share < 1.0) {
        return Err(Error::usage(format!(
            "--holdout-share must be in (0, 1), got {}",
            options.holdout_share
        )));
    }
    if !(options.mix_weight.is_finite() && options.mix_weight > 0.0) {
        return Err(Error::usage(format!(
            "--mix-weight must be above 0, got {}",
            options.mix_weight
        )));
    }
    if !options.min_gain.is_finite() {
        return Err(Error::usage("--min-gain must be a number"));
    }
    options
        .policy
        .check()
        .map_err(|error| Error::usage(error.to_string()))?;
    Ok(())
}
