//! `nurture-trainer train`: load, split, fit, export, prove parity in ONNX
//! Runtime, build the manifest, and publish behind the quality gate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use nurture_models::feedback::reference::{Bins, Reference};
use nurture_models::manifest::{GoldenExample, ManifestDraft};
use nurture_models::registry::{PublishRequest, sha256_hex};
use nurture_models::{ModelKind, ModelName, Registry, runtime};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use serde::Serialize;

use crate::dataset::{self, Dataset, Inputs};
use crate::error::{Error, Result};
use crate::export;
use crate::gbdt::{self, Booster, Params};
use crate::generate::{self, BayesReport};
use crate::metrics;
use crate::text::logistic::Logistic;
use crate::text::{TextParams, Vectorizer};

/// Largest difference allowed between the trainer's and ONNX Runtime's
/// probabilities on any holdout row.
pub const PARITY_TOLERANCE: f64 = 1e-4;
/// Default `--max-regression`: how much lower (absolute) the primary metric
/// may be than the live version's before `--promote` is refused.
pub const DEFAULT_MAX_REGRESSION: f64 = 0.01;
/// Golden examples stored in the manifest.
pub const GOLDEN_EXAMPLES: usize = 5;
/// Rows per ONNX Runtime call when scoring the holdout.
const SCORING_BATCH: usize = 1024;
/// Holdout quantiles of predicted churn probability that separate the five
/// risk levels: 40% of leads very_low, 25% low, 20% medium, 10% high, 5%
/// critical.
pub const RISK_QUANTILES: [f64; 4] = [0.40, 0.65, 0.85, 0.95];

/// What to train and where to publish it.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Kind to train.
    pub kind: ModelKind,
    /// The kind's CSV.
    pub data: PathBuf,
    /// Use only these features (tabular kinds); default: all of the dataset.
    pub features: Option<Vec<String>>,
    /// Seed (early-stopping split); the same data and seed give the same ONNX bytes.
    pub seed: u64,
    /// Booster settings (tabular kinds).
    pub gbdt: Params,
    /// Text settings (emotion).
    pub text: TextParams,
    /// Inverse regularisation strength of the emotion classifier.
    pub c: f64,
    /// Registry URL; needed to publish.
    pub registry: Option<String>,
    /// Model name; default: the kind's.
    pub name: Option<String>,
    /// Publish the version.
    pub publish: bool,
    /// Make it live (implies publish), subject to the quality gate.
    pub promote: bool,
    /// Promote even when the gate says no.
    pub force: bool,
    /// Allowed drop of the primary metric against the live version.
    pub max_regression: f64,
    /// Who publishes.
    pub actor: String,
    /// Write `{kind}.onnx` and `{kind}.manifest.json` here.
    pub out_dir: Option<PathBuf>,
    /// Whether the published model is refit on every row.
    pub refit: RefitMode,
}

/// Whether the published model is fit again on every row, holdout included,
/// after the holdout has measured a model fit without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RefitMode {
    /// Refit when the data has at most [`REFIT_AUTO_MAX_ROWS`] rows.
    #[default]
    Auto,
    /// Always refit.
    Always,
    /// Publish the model fit on the training split.
    Never,
}

impl RefitMode {
    /// Whether a dataset of `rows` rows is refit.
    pub fn applies(self, rows: usize) -> bool {
        match self {
            RefitMode::Auto => rows <= REFIT_AUTO_MAX_ROWS,
            RefitMode::Always => true,
            RefitMode::Never => false,
        }
    }
}

/// Largest dataset that `--refit auto` refits: above it the holdout's fifth
/// costs little, and the booster's own early stopping chooses iterations.
pub const REFIT_AUTO_MAX_ROWS: usize = 10_000;
/// Folds of the cross-validation that chooses iterations before a refit.
pub const CV_FOLDS: usize = 5;

/// How the published model was refit.
#[derive(Debug, Clone, Serialize)]
pub struct Refit {
    /// Rows of the published model's fit: every row of the data.
    pub rows: usize,
    /// Boosting iterations of both fits (tabular kinds).
    pub iterations: Option<usize>,
    /// How the iterations were chosen.
    pub chosen_by: Option<String>,
    /// Cross-validated log-loss at those iterations.
    pub cv_log_loss: Option<f64>,
}

/// Wall time of each step, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Reading and validating the CSV.
    pub load: f64,
    /// Fitting.
    pub fit: f64,
    /// Exporting ONNX.
    pub export: f64,
    /// Scoring the holdout in ONNX Runtime.
    pub parity: f64,
    /// Everything, including publishing.
    pub total: f64,
}

/// The quality gate's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// Metric compared.
    pub metric: String,
    /// Live version.
    pub live_version: u64,
    /// Live version's score on this holdout.
    pub live: f64,
    /// New model's score.
    pub candidate: f64,
    /// Whether the promotion may go ahead (or was forced).
    pub passed: bool,
    /// Whether `--force` overrode a failure.
    pub forced: bool,
}

/// What a training run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Kind.
    pub kind: ModelKind,
    /// Rows used for fitting.
    pub train_rows: usize,
    /// Holdout rows.
    pub holdout_rows: usize,
    /// Features used (tabular).
    pub features: Vec<String>,
    /// Holdout metrics (from ONNX Runtime's outputs).
    pub metrics: BTreeMap<String, f64>,
    /// The generator's best possible scores, when `bayes.json` is beside the data.
    pub bayes: Option<BayesReport>,
    /// Largest |trainer − ONNX Runtime| probability difference on the holdout.
    pub parity_max_diff: f64,
    /// sha256 of the ONNX bytes.
    pub sha256: String,
    /// Size of the ONNX bytes.
    pub onnx_bytes: usize,
    /// Trees or logistic-regression size, for people.
    pub model_summary: String,
    /// Published version, if any.
    pub published_version: Option<u64>,
    /// Whether it was made live.
    pub promoted: bool,
    /// Quality gate, when a live version existed.
    pub gate: Option<GateReport>,
    /// Whether the published model was refit on every row; the metrics are
    /// the holdout's, of the model fit on the training split.
    pub refit: Option<Refit>,
    /// Step timings.
    pub timings: Timings,
}

/// A fitted model of either family.
pub(crate) enum Fitted {
    Trees(Booster),
    Text(Vectorizer, Logistic),
}

impl Fitted {
    fn predict(&self, data: &Dataset, row: usize) -> Vec<f64> {
        match self {
            Fitted::Trees(booster) => booster.predict(data.row(row)),
            Fitted::Text(vectorizer, classifier) => {
                classifier.predict(&vectorizer.transform(data.text(row)))
            }
        }
    }
}

/// Scores `data` with an ONNX session, in batches.
pub fn score_onnx(session: &mut Session, data: &Dataset) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(data.len());
    let classes = data.kind.labels().len();
    let mut start = 0;
    while start < data.len() {
        let end = (start + SCORING_BATCH).min(data.len());
        let outputs = match &data.inputs {
            Inputs::Features { names, values } => {
                let width = names.len();
                let batch = values[start * width..end * width].to_vec();
                let tensor = Tensor::from_array(([end - start, width], batch))?;
                session.run(ort::inputs![nurture_models::kind::FEATURES_INPUT => tensor])?
            }
            Inputs::Texts(texts) => {
                let tensor = Tensor::from_string_array(([end - start], &texts[start..end]))?;
                session.run(ort::inputs![nurture_models::kind::TEXT_INPUT => tensor])?
            }
        };
        let (_, values) =
            outputs[nurture_models::kind::PROBABILITIES_OUTPUT].try_extract_tensor::<f32>()?;
        out.extend(
            values
                .chunks(classes)
                .map(|row| row.iter().map(|p| f64::from(*p)).collect::<Vec<f64>>()),
        );
        start = end;
    }
    Ok(out)
}

/// Bins per variable in the drift reference (deciles).
const REFERENCE_BINS: usize = 10;

fn feature_means(data: &Dataset) -> BTreeMap<String, f64> {
    let Inputs::Features { names, .. } = &data.inputs else {
        return BTreeMap::new();
    };
    names
        .iter()
        .enumerate()
        .map(|(column, name)| {
            let sum: f64 = (0..data.len())
                .map(|row| f64::from(data.row(row)[column]))
                .sum();
            (name.clone(), sum / data.len() as f64)
        })
        .collect()
}

/// Bins of every training feature and of the holdout score: what the server
/// compares served inputs and predictions with (label-free drift).
fn reference(train: &Dataset, served: &[Vec<f64>]) -> Reference {
    let features = match &train.inputs {
        Inputs::Features { names, .. } => names
            .iter()
            .enumerate()
            .filter_map(|(column, name)| {
                let values: Vec<f64> = (0..train.len())
                    .map(|row| f64::from(train.row(row)[column]))
                    .collect();
                Some((name.clone(), Bins::from_sample(&values, REFERENCE_BINS)?))
            })
            .collect(),
        Inputs::Texts(_) => BTreeMap::new(),
    };
    let scores: Vec<f64> = served
        .iter()
        .map(|row| match row.as_slice() {
            [_, positive] => *positive,
            row => row.iter().copied().fold(0.0, f64::max),
        })
        .collect();
    Reference {
        features,
        score: Bins::from_sample(&scores, REFERENCE_BINS),
    }
}

fn risk_thresholds(probabilities: &[Vec<f64>]) -> [f64; 4] {
    let mut churn: Vec<f64> = probabilities.iter().map(|row| row[1]).collect();
    churn.sort_by(f64::total_cmp);
    let mut thresholds = [0.0; 4];
    let mut previous = 0.0_f64;
    for (slot, quantile) in thresholds.iter_mut().zip(RISK_QUANTILES) {
        let value = churn[((churn.len() - 1) as f64 * quantile) as usize];
        // Strictly ascending inside (0, 1), even where predictions tie.
        *slot = value.max(previous + 1e-4).clamp(1e-4, 1.0 - 1e-4);
        previous = *slot;
    }
    thresholds
}

/// A fitted model, exported, whose ONNX Runtime outputs match it.
pub(crate) struct Checked {
    pub fitted: Fitted,
    pub onnx: Vec<u8>,
    pub summary: String,
    /// ONNX Runtime's probabilities on the holdout.
    pub served: Vec<Vec<f64>>,
    pub parity_max_diff: f64,
}

/// Fits on `rows` (with `iterations` fixed, for tabular kinds, when given),
/// exports, and checks parity on `holdout`.
fn fit_checked(
    options: &TrainOptions,
    environment: &Environment,
    rows: &Dataset,
    iterations: Option<usize>,
    holdout: &Dataset,
    progress: &ProgressBar,
    timings: &mut Timings,
) -> Result<Checked> {
    let (fitted, onnx, summary) = fit(options, rows, iterations, progress, timings)?;
    let parity_started = Instant::now();
    let (served, parity_max_diff) = check_parity(environment, &onnx, &fitted, holdout)?;
    timings.parity += parity_started.elapsed().as_secs_f64();
    Ok(Checked {
        fitted,
        onnx,
        summary,
        served,
        parity_max_diff,
    })
}

/// The boosting iterations of a refit, chosen by cross-validation on the
/// training split (tabular kinds; the text model has none to choose).
fn cross_validate(options: &TrainOptions, train: &Dataset) -> Option<gbdt::CvChoice> {
    let Inputs::Features { values, names } = &train.inputs else {
        return None;
    };
    Some(gbdt::choose_iterations(
        values,
        names.len(),
        &train.labels,
        train.weights.as_deref(),
        options.kind.labels().len(),
        Params {
            seed: options.seed,
            ..options.gbdt
        },
        CV_FOLDS,
    ))
}

fn producer() -> String {
    format!("nurture-trainer {}", env!("CARGO_PKG_VERSION"))
}

/// Fits the kind's model on `train` and exports it: the fitted model, its
/// ONNX bytes and a one-line summary.
fn fit(
    options: &TrainOptions,
    train: &Dataset,
    iterations: Option<usize>,
    progress: &ProgressBar,
    timings: &mut Timings,
) -> Result<(Fitted, Vec<u8>, String)> {
    let kind = options.kind;
    let classes = kind.labels().len();
    let producer = producer();
    let producer = producer.as_str();
    let fit_started = Instant::now();
    Ok(match &train.inputs {
        Inputs::Features { values, names } => {
            let mut params = Params {
                seed: options.seed,
                ..options.gbdt
            };
            if let Some(iterations) = iterations {
                params.iterations = iterations;
                params.early_stopping_above = usize::MAX;
            }
            let booster = Booster::fit_weighted(
                values,
                names.len(),
                &train.labels,
                train.weights.as_deref(),
                classes,
                params,
                progress,
            );
            timings.fit += fit_started.elapsed().as_secs_f64();
            let export_started = Instant::now();
            let onnx = export::trees::to_onnx(&booster, names.len(), producer);
            timings.export += export_started.elapsed().as_secs_f64();
            let summary = format!(
                "{} iterations x {} trees, {} leaves",
                booster.trees.len(),
                booster.outputs(),
                booster
                    .trees
                    .iter()
                    .flatten()
                    .map(|t| t.nodes.iter().filter(|n| n.leaf).count())
                    .sum::<usize>()
            );
            (Fitted::Trees(booster), onnx, summary)
        }
        Inputs::Texts(texts) => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectorizer = Vectorizer::fit(&refs, options.text);
            let rows: Vec<_> = refs.iter().map(|t| vectorizer.transform(t)).collect();
            progress.set_length(1);
            let classifier = Logistic::fit_weighted(
                &rows,
                &train.labels,
                train.weights.as_deref(),
                vectorizer.width(),
                classes,
                options.c,
                300,
            )?;
            progress.inc(1);
            timings.fit += fit_started.elapsed().as_secs_f64();
            let export_started = Instant::now();
            let onnx = export::text::to_onnx(&vectorizer, &classifier, producer);
            timings.export += export_started.elapsed().as_secs_f64();
            let summary = format!(
                "{} word + {} character n-grams",
                vectorizer.words.width(),
                vectorizer.chars.width()
            );
            (Fitted::Text(vectorizer, classifier), onnx, summary)
        }
    })
}

/// Scores the holdout in ONNX Runtime and proves it reproduces the
/// trainer's probabilities on every row (within [`PARITY_TOLERANCE`]):
/// ONNX Runtime's probabilities and the largest difference.
fn check_parity(
    environment: &Environment,
    onnx: &[u8],
    fitted: &Fitted,
    holdout: &Dataset,
) -> Result<(Vec<Vec<f64>>, f64)> {
    let mut session = runtime::session(environment, onnx, 1)?;
    let served = score_onnx(&mut session, holdout)?;
    let mut parity_max_diff = 0.0_f64;
    for (row, onnx_row) in served.iter().enumerate() {
        let own = fitted.predict(holdout, row);
        for (a, b) in own.iter().zip(onnx_row) {
            let diff = (a - b).abs();
            if diff.is_nan() || diff > PARITY_TOLERANCE {
                return Err(Error::Parity(format!(
                    "holdout row {row} (id {}): trainer {own:?}, ONNX Runtime {onnx_row:?}",
                    holdout.ids[row]
                )));
            }
            parity_max_diff = parity_max_diff.max(diff);
        }
    }
    Ok((served, parity_max_diff))
}

/// The rows of one training run.
pub(crate) struct Splits {
    /// Every row: what a refit is fit on.
    pub data: Dataset,
    /// The rows the measured model is fit on.
    pub train: Dataset,
    /// The rows that measure it.
    pub holdout: Dataset,
}

impl Splits {
    /// Refuses splits that cannot be fit or measured: fewer than two
    /// classes in either part.
    pub fn check(&self, source: &Path) -> Result<()> {
        for (part, set) in [("training", &self.train), ("holdout", &self.holdout)] {
            let present = set.class_counts().iter().filter(|c| **c > 0).count();
            if present < 2 {
                return Err(Error::data(
                    source,
                    None,
                    Some(dataset::label_column(self.data.kind)),
                    format!("the {part} split has fewer than two classes; add rows"),
                ));
            }
        }
        Ok(())
    }
}

/// A model fit on the training split and measured on the holdout, then
/// (small data) fit again on every row: ready to publish.
pub(crate) struct Built {
    /// Fit on the training split; its holdout scores are the metrics.
    pub measured: Checked,
    /// Fit on every row, when refit.
    pub refitted: Option<Checked>,
    /// The holdout metrics, with the row counts.
    pub metrics: BTreeMap<String, f64>,
    /// The manifest to publish with.
    pub draft: ManifestDraft,
    /// How the refit was made.
    pub refit: Option<Refit>,
}

impl Built {
    /// The model to publish.
    pub fn published(&self) -> &Checked {
        self.refitted.as_ref().unwrap_or(&self.measured)
    }

    /// Publishes the model as a new version of `name`, with its manifest.
    pub async fn publish(
        &self,
        registry: &Registry,
        environment: &Environment,
        name: &ModelName,
        actor: &str,
    ) -> Result<nurture_models::Manifest> {
        let published = registry
            .publish(
                environment,
                PublishRequest {
                    name: name.clone(),
                    kind: self
                        .draft
                        .kind
                        .expect("build() names the kind in every draft; this is a bug"),
                    onnx: self.published().onnx.clone().into(),
                    draft: self.draft.clone(),
                    actor: actor.to_owned(),
                    force: false,
                },
            )
            .await?;
        Ok(published.manifest)
    }

    /// The training report, before publishing.
    pub fn report(
        &self,
        splits: &Splits,
        bayes: Option<BayesReport>,
        timings: Timings,
    ) -> TrainReport {
        let published = self.published();
        TrainReport {
            kind: splits.data.kind,
            train_rows: splits.train.len(),
            holdout_rows: splits.holdout.len(),
            features: self.draft.features.clone().unwrap_or_default(),
            metrics: self.metrics.clone(),
            bayes,
            parity_max_diff: self.measured.parity_max_diff.max(published.parity_max_diff),
            sha256: sha256_hex(&published.onnx),
            onnx_bytes: published.onnx.len(),
            model_summary: published.summary.clone(),
            published_version: None,
            promoted: false,
            gate: None,
            refit: self.refit.clone(),
            timings,
        }
    }
}

/// Fits on the training split, measures on the holdout, refits small data
/// on every row, and drafts the manifest (`source` and `data_hash` name the
/// data in it).
pub(crate) fn build(
    options: &TrainOptions,
    environment: &Environment,
    splits: &Splits,
    source: &str,
    data_hash: String,
    progress: &ProgressBar,
    timings: &mut Timings,
) -> Result<Built> {
    let Splits {
        data,
        train,
        holdout,
    } = splits;
    let kind = options.kind;
    // The holdout measures a model fit without it. Small data is then fit
    // again on every row (the published model), with the iterations that
    // cross-validation on the training split chose for both fits.
    let refit = options.refit.applies(data.len());
    let choice = if refit {
        progress.set_message(format!("{kind}: cross-validating"));
        let started = Instant::now();
        let choice = cross_validate(options, train);
        timings.fit += started.elapsed().as_secs_f64();
        choice
    } else {
        None
    };
    let iterations = choice.map(|c| c.iterations);
    progress.set_message(format!("{kind}: fitting"));
    let measured = fit_checked(
        options,
        environment,
        train,
        iterations,
        holdout,
        progress,
        timings,
    )?;
    let mut metrics = metrics::evaluate(&measured.served, &holdout.labels, kind.labels().len());
    let refitted = if refit {
        progress.set_message(format!("{kind}: refitting on all rows"));
        Some(fit_checked(
            options,
            environment,
            data,
            iterations,
            holdout,
            progress,
            timings,
        )?)
    } else {
        None
    };
    let published = refitted.as_ref().unwrap_or(&measured);
    let fitted_on = if refit { data } else { train };

    let golden = (0..holdout.len().min(GOLDEN_EXAMPLES))
        .map(|row| GoldenExample {
            features: matches!(holdout.inputs, Inputs::Features { .. })
                .then(|| holdout.row(row).to_vec()),
            text: matches!(holdout.inputs, Inputs::Texts(_)).then(|| holdout.text(row).to_owned()),
            probabilities: published.served[row].iter().map(|p| *p as f32).collect(),
        })
        .collect();
    let features = match &data.inputs {
        Inputs::Features { names, .. } => names.clone(),
        Inputs::Texts(_) => Vec::new(),
    };
    let importances = match &published.fitted {
        Fitted::Trees(booster) => {
            let total: f64 = booster.gains.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            features
                .iter()
                .zip(&booster.gains)
                .map(|(name, gain)| (name.clone(), gain / total))
                .collect()
        }
        Fitted::Text(..) => BTreeMap::new(),
    };
    metrics.insert("holdout_rows".to_owned(), holdout.len() as f64);
    metrics.insert("train_rows".to_owned(), train.len() as f64);
    metrics.insert("fit_rows".to_owned(), fitted_on.len() as f64);
    let draft = ManifestDraft {
        kind: Some(kind),
        features: (!features.is_empty()).then_some(features),
        labels: None,
        risk_thresholds: (kind == ModelKind::Churn).then(|| risk_thresholds(&measured.served)),
        metrics: metrics.clone(),
        feature_means: feature_means(fitted_on),
        reference: Some(reference(fitted_on, &measured.served)),
        feature_importances: importances,
        golden,
        data_hash: Some(data_hash),
        trainer_version: Some(producer()),
        description: Some(format!(
            "{kind} model trained on {source} ({})",
            published.summary
        )),
        retrain: None,
    };
    Ok(Built {
        refit: refit.then(|| Refit {
            rows: data.len(),
            iterations,
            chosen_by: choice
                .map(|_| format!("{CV_FOLDS}-fold cross-validation on the training split")),
            cv_log_loss: choice.map(|c| c.log_loss),
        }),
        measured,
        refitted,
        metrics,
        draft,
    })
}

/// Trains one kind; publishes and promotes as asked.
pub async fn train(
    options: &TrainOptions,
    environment: &Environment,
    progress: &ProgressBar,
) -> Result<TrainReport> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let kind = options.kind;
    let name = ModelName::new(options.name.as_deref().unwrap_or(kind.as_str()))?;
    if (options.publish || options.promote) && options.registry.is_none() {
        return Err(Error::usage(
            "--publish and --promote need --registry (or NURTURE_REGISTRY)",
        ));
    }

    progress.set_message(format!("{kind}: loading"));
    let full = dataset::load(kind, &options.data)?;
    let data = match &options.features {
        Some(features) => {
            ManifestDraft {
                features: Some(features.clone()),
                ..Default::default()
            }
            .check(kind)?;
            full.select_features(features)?
        }
        None => full.clone(),
    };
    let (train, holdout) = data.split();
    let (_, full_holdout) = full.split();
    let splits = Splits {
        data,
        train,
        holdout,
    };
    splits.check(&options.data)?;
    let data_bytes =
        std::fs::read(&options.data).map_err(|error| Error::io(&options.data, error))?;
    timings.load = started.elapsed().as_secs_f64();

    let built = build(
        options,
        environment,
        &splits,
        &options.data.display().to_string(),
        sha256_hex(&data_bytes),
        progress,
        &mut timings,
    )?;
    let published = built.published();
    if let Some(dir) = &options.out_dir {
        write_artifacts(dir, kind, &published.onnx, &built.draft)?;
    }

    // Quality gate, then publish and promote.
    let mut report = built.report(&splits, generate::read_bayes(&options.data, kind), timings);
    if let Some(url) = options
        .registry
        .as_deref()
        .filter(|_| options.publish || options.promote)
    {
        progress.set_message(format!("{kind}: publishing"));
        let registry = Registry::open(url)?;
        let gate = if options.promote {
            quality_gate(
                &registry,
                &name,
                &full_holdout,
                &built.measured.served,
                options,
                environment,
            )
            .await?
        } else {
            None
        };
        let manifest = built
            .publish(&registry, environment, &name, &options.actor)
            .await?;
        report.published_version = Some(manifest.version);
        report.gate = gate.clone();
        if options.promote {
            if let Some(gate) = gate.as_ref().filter(|g| !g.passed) {
                report.timings.total = started.elapsed().as_secs_f64();
                return Err(Error::Gate(format!(
                    "version {} of {name} was published but not promoted: its {} is {:.4}, the live version {} scores {:.4} \
                     on the same holdout (allowed drop {}); use --force to promote anyway",
                    manifest.version,
                    gate.metric,
                    gate.candidate,
                    gate.live_version,
                    gate.live,
                    options.max_regression
                )));
            }
            report.promoted = registry
                .promote(&name, manifest.version, false, &options.actor, None)
                .await?
                .is_some();
        }
    }
    report.timings.total = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    Ok(report)
}

/// Scores the live version on the same holdout and compares primary metrics.
async fn quality_gate(
    registry: &Registry,
    name: &ModelName,
    full_holdout: &Dataset,
    candidate: &[Vec<f64>],
    options: &TrainOptions,
    environment: &Environment,
) -> Result<Option<GateReport>> {
    let state = registry.state(name).await?;
    let Some(live) = state.live else {
        return Ok(None);
    };
    let classes = options.kind.labels().len();
    let metric = metrics::primary(classes);
    let fetched = registry.fetch(name, live).await?;
    let live_data = if fetched.manifest.features.is_empty() {
        full_holdout.clone()
    } else {
        full_holdout.select_features(&fetched.manifest.features).map_err(|_| {
            Error::Gate(format!(
                "the live version {live} uses features this dataset lacks ({}); use --force to promote without comparing",
                fetched.manifest.features.join(", ")
            ))
        })?
    };
    let mut session = runtime::session(environment, &fetched.onnx, 1)?;
    let live_scores = score_onnx(&mut session, &live_data)?;
    let live_score = metrics::evaluate(&live_scores, &live_data.labels, classes)[metric];
    let candidate_score = metrics::evaluate(candidate, &live_data.labels, classes)[metric];
    let better_enough = candidate_score >= live_score - options.max_regression;
    Ok(Some(GateReport {
        metric: metric.to_owned(),
        live_version: live,
        live: live_score,
        candidate: candidate_score,
        passed: better_enough || options.force,
        forced: !better_enough && options.force,
    }))
}

pub(crate) fn write_artifacts(
    dir: &Path,
    kind: ModelKind,
    onnx: &[u8],
    draft: &ManifestDraft,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|error| Error::io(dir, error))?;
    let model = dir.join(format!("{kind}.onnx"));
    std::fs::write(&model, onnx).map_err(|error| Error::io(&model, error))?;
    let manifest = dir.join(format!("{kind}.manifest.json"));
    let json = serde_json::to_vec_pretty(draft).expect("drafts serialise");
    std::fs::write(&manifest, json).map_err(|error| Error::io(&manifest, error))?;
    Ok(())
}
