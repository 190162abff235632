//! `nurture-trainer generate`: synthetic datasets for every kind, from the
//! rules in [`rules`] and [`emotion`], with the best scores those rules allow
//! (the Bayes rate) written beside them in `bayes.json`.

pub mod emotion;
pub mod leads;
pub mod rules;

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;
use nurture_models::ModelKind;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{self, is_holdout};
use crate::error::{Error, Result};
use crate::metrics;
use leads::Lead;
use rules::{Slot, Variant};

/// Candidate slots drawn per lead in the channel-timing dataset.
pub const SLOTS_PER_LEAD: usize = 8;
/// Variants shown per lead in the optimization dataset.
pub const VARIANTS_PER_LEAD: usize = 4;

/// The best holdout scores a kind's generating rules allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BayesReport {
    /// Metrics of the true probabilities on the holdout rows (binary and
    /// journey), or bounds (emotion).
    pub metrics: BTreeMap<String, f64>,
    /// How they were obtained.
    pub note: String,
}

/// Which relationship between a lead's columns and churn the data follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Concept {
    /// [`rules::churn`].
    #[default]
    Base,
    /// [`rules::churn_shifted`]: the same leads, a changed relationship
    /// (concept drift), for retraining demonstrations and tests.
    Shifted,
}

/// Writes `{kind}.csv` for every kind and `bayes.json` into `out`, `rows`
/// rows per file, reproducibly from `seed`; churn follows `concept`.
pub fn generate(
    out: &Path,
    rows: usize,
    seed: u64,
    concept: Concept,
    progress: &ProgressBar,
) -> Result<BTreeMap<ModelKind, BayesReport>> {
    if rows < 100 {
        return Err(Error::usage(format!(
            "--rows must be at least 100, got {rows}"
        )));
    }
    std::fs::create_dir_all(out).map_err(|error| Error::io(out, error))?;
    progress.set_length((rows * ModelKind::ALL.len()) as u64);
    let mut reports = BTreeMap::new();
    for (index, kind) in ModelKind::ALL.into_iter().enumerate() {
        progress.set_message(format!("generating {kind}"));
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(index as u64));
        let path = dataset::default_file(out, kind);
        let report = write_kind(kind, &path, rows, &mut rng, concept, progress)?;
        reports.insert(kind, report);
    }
    let bayes_path = out.join("bayes.json");
    let json = serde_json::to_vec_pretty(&reports).expect("reports serialise");
    std::fs::write(&bayes_path, json).map_err(|error| Error::io(&bayes_path, error))?;
    progress.finish_with_message("datasets written");
    Ok(reports)
}

/// Reads `bayes.json` next to a dataset, if there is one.
pub fn read_bayes(data: &Path, kind: ModelKind) -> Option<BayesReport> {
    let path = data.parent()?.join("bayes.json");
    let bytes = std::fs::read(path).ok()?;
    let mut reports: BTreeMap<ModelKind, BayesReport> = serde_json::from_slice(&bytes).ok()?;
    reports.remove(&kind)
}

fn write_kind(
    kind: ModelKind,
    path: &Path,
    rows: usize,
    rng: &mut ChaCha8Rng,
    concept: Concept,
    progress: &ProgressBar,
) -> Result<BayesReport> {
    let file = std::fs::File::create(path).map_err(|error| Error::io(path, error))?;
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(file));
    let write_error = |error: csv::Error| Error::Io {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    writer
        .write_record(dataset::header(kind))
        .map_err(write_error)?;

    // True class probabilities and labels of holdout rows, for the Bayes rate.
    let mut truth: Vec<Vec<f64>> = Vec::new();
    let mut labels: Vec<usize> = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut written = 0;
    let mut lead_number = 0;
    while written < rows {
        let id = format!("lead-{lead_number}");
        lead_number += 1;
        let holdout = is_holdout(&id);
        let mut emit = |record: &[String], probabilities: Vec<f64>, label: usize| -> Result<()> {
            writer.write_record(record).map_err(write_error)?;
            if holdout {
                truth.push(probabilities);
                labels.push(label);
            }
            Ok(())
        };
        match kind {
            ModelKind::Generic => unreachable!("generate writes the typed kinds only"),
            ModelKind::Emotion => {
                let message = emotion::message(rng);
                record.clear();
                record.extend([
                    id.clone(),
                    message.text.clone(),
                    dataset::label_text(kind, message.label),
                ]);
                emit(&record, one_hot(message.intended, 10), message.label)?;
                written += 1;
            }
            ModelKind::Churn | ModelKind::Journey => {
                let lead = Lead::sample(rng);
                let probabilities = if kind == ModelKind::Churn {
                    let p = match concept {
                        Concept::Base => rules::churn(&lead),
                        Concept::Shifted => rules::churn_shifted(&lead),
                    };
                    vec![1.0 - p, p]
                } else {
                    rules::journey(&lead).to_vec()
                };
                let label = draw(rng, &probabilities);
                record.clear();
                record.push(id.clone());
                record.extend(lead.values().iter().map(|v| v.to_string()));
                record.push(dataset::label_text(kind, label));
                emit(&record, probabilities, label)?;
                written += 1;
            }
            ModelKind::ChannelTiming => {
                let lead = Lead::sample(rng);
                for _ in 0..SLOTS_PER_LEAD.min(rows - written) {
                    let slot = Slot {
                        channel: rng.random_range(0..4),
                        weekday: rng.random_range(0..7),
                        hour: rng.random_range(0..24),
                    };
                    let p = rules::response(&lead, slot);
                    let label = usize::from(rng.random_bool(p));
                    record.clear();
                    record.push(id.clone());
                    record.extend(lead.values().iter().map(|v| v.to_string()));
                    record.extend((0..4).map(|c| u8::from(c == slot.channel).to_string()));
                    record.extend([
                        slot.weekday.to_string(),
                        slot.hour.to_string(),
                        label.to_string(),
                    ]);
                    emit(&record, vec![1.0 - p, p], label)?;
                    written += 1;
                }
            }
            ModelKind::Optimization => {
                let lead = Lead::sample(rng);
                for _ in 0..VARIANTS_PER_LEAD.min(rows - written) {
                    let variant = Variant {
                        tone: rng.random_range(0..4),
                        channel: rng.random_range(0..4),
                        length_words: f64::from(rng.random_range(20..400_u32)),
                        has_incentive: rng.random_bool(0.5),
                        personalized: rng.random_bool(0.5),
                    };
                    let p = rules::conversion(&lead, variant);
                    let label = usize::from(rng.random_bool(p));
                    record.clear();
                    record.push(id.clone());
                    record.extend(lead.values().iter().map(|v| v.to_string()));
                    record.extend((0..4).map(|t| u8::from(t == variant.tone).to_string()));
                    record.extend((0..4).map(|c| u8::from(c == variant.channel).to_string()));
                    record.extend([
                        variant.length_words.to_string(),
                        u8::from(variant.has_incentive).to_string(),
                        u8::from(variant.personalized).to_string(),
                        label.to_string(),
                    ]);
                    emit(&record, vec![1.0 - p, p], label)?;
                    written += 1;
                }
            }
        }
        progress.set_position(progress.position().max(written as u64));
    }
    writer.flush().map_err(|error| Error::io(path, error))?;
    progress.inc(0);
    Ok(bayes_report(kind, &truth, &labels))
}

fn one_hot(index: usize, classes: usize) -> Vec<f64> {
    (0..classes)
        .map(|class| f64::from(u8::from(class == index)))
        .collect()
}

/// Draws a class from a distribution.
fn draw(rng: &mut ChaCha8Rng, probabilities: &[f64]) -> usize {
    let mut u: f64 = rng.random();
    for (class, p) in probabilities.iter().enumerate() {
        if u < *p {
            return class;
        }
        u -= p;
    }
    probabilities.len() - 1
}

fn bayes_report(kind: ModelKind, truth: &[Vec<f64>], labels: &[usize]) -> BayesReport {
    match kind {
        ModelKind::Emotion => {
            let predicted: Vec<usize> = truth.iter().map(|row| metrics::argmax(row)).collect();
            let mut metrics = BTreeMap::new();
            metrics.insert("accuracy".to_owned(), metrics::accuracy(&predicted, labels));
            metrics.insert(
                "macro_f1".to_owned(),
                metrics::macro_f1(&predicted, labels, 10),
            );
            BayesReport {
                metrics,
                note: format!(
                    "upper bound: scores of a model that always recovers the intended state; {:.0}% of labels are \
                     replaced by a random other state, which no model can predict",
                    emotion::LABEL_NOISE * 100.0
                ),
            }
        }
        _ => {
            let classes = kind.labels().len();
            let mut metrics = metrics::evaluate(truth, labels, classes);
            metrics.retain(|name, _| name != "brier");
            BayesReport {
                metrics,
                note: "scores of the generator's own probabilities on the holdout rows: the best any model of these \
                       columns can expect"
                    .to_owned(),
            }
        }
    }
}
