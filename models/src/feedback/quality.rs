//! Live quality of one model version on one arm, as a state that merges.
//!
//! Replicas never share raw lists of predictions: each keeps counts and sums
//! (scores bucketed by label, a reliability table, a confusion matrix, sums
//! of per-outcome losses and values), and two states add up to the state of
//! the union of their outcomes. So every replica that folds the same outcome
//! batches reports the same figure, and a fleet needs no central service.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use super::{Label, Prediction};

/// Reliability (calibration) bins of equal width on [0, 1].
pub const RELIABILITY_BINS: usize = 10;
/// Score resolution of the AUC histogram: scores are bucketed to 1/100,000.
const SCORE_BUCKETS: f64 = 100_000.0;
/// Probabilities are clipped to [EPS, 1 − EPS] in log-loss, as scikit-learn
/// does for float64.
const EPS: f64 = 1e-15;
/// Two-sided 95 % normal quantile.
const Z95: f64 = 1.959_963_984_540_054;
/// Bootstrap resamples behind the macro-F1 interval.
const BOOTSTRAP: usize = 200;

/// A point estimate with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Point estimate.
    pub value: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Estimate {
    fn normal(value: f64, standard_error: f64, low: f64, high: f64) -> Estimate {
        Estimate {
            value,
            low: (value - Z95 * standard_error).max(low),
            high: (value + Z95 * standard_error).min(high),
        }
    }
}

/// One reliability bin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Outcomes whose predicted probability fell in the bin.
    pub count: u64,
    /// Sum of their predicted probabilities.
    pub predicted: f64,
    /// How many of them were positive.
    pub positives: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Binary {
    /// Score bucket → [negatives, positives].
    by_score: BTreeMap<u32, [u64; 2]>,
    brier_sum: f64,
    brier_sq: f64,
    reliability: [ReliabilityBin; RELIABILITY_BINS],
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Classes {
    classes: usize,
    /// `true × classes + predicted` → count.
    confusion: Vec<u64>,
}

/// The mergeable quality state of one version on one arm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Outcomes scored.
    pub outcomes: u64,
    value_sum: f64,
    value_sq: f64,
    log_loss_sum: f64,
    log_loss_sq: f64,
    binary: Option<Binary>,
    classes: Option<Classes>,
}

/// Why an outcome could not be scored against its prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch(pub String);

/// Figures of one version on one arm; a metric is `None` below the minimum
/// count (or when it needs both labels and one is missing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Outcomes scored.
    pub outcomes: u64,
    /// Positive outcomes (binary kinds).
    pub positives: Option<u64>,
    /// Area under the ROC curve (binary).
    pub auc: Option<Estimate>,
    /// Mean log-loss.
    pub log_loss: Option<Estimate>,
    /// Brier score (binary).
    pub brier: Option<Estimate>,
    /// Expected calibration error over [`RELIABILITY_BINS`] bins (binary).
    pub ece: Option<Estimate>,
    /// The reliability table behind the ECE (binary).
    pub reliability: Vec<ReliabilityBin>,
    /// Accuracy (multiclass).
    pub accuracy: Option<Estimate>,
    /// Macro-averaged F1 (multiclass).
    pub macro_f1: Option<Estimate>,
    /// Value (e.g. revenue) per scored prediction; outcomes without a value
    /// count as 0.
    pub value_per_prediction: Option<Estimate>,
}

/// Whether `label` can score `prediction`: the same kind of answer, and a
/// class the prediction has.
pub fn fits(prediction: &Prediction, label: Label) -> Result<(), Mismatch> {
    match (prediction, label) {
        (Prediction::Binary(_), Label::Binary(_)) => Ok(()),
        (Prediction::Classes(ps), Label::Class(truth)) if (truth as usize) < ps.len() => Ok(()),
        (Prediction::Classes(ps), Label::Class(truth)) => Err(Mismatch(format!(
            "class {truth} is outside the {} classes of the prediction",
            ps.len()
        ))),
        (Prediction::Binary(_), Label::Class(_)) => {
            Err(Mismatch("a class label for a binary prediction".to_owned()))
        }
        (Prediction::Classes(_), Label::Binary(_)) => Err(Mismatch(
            "a yes/no label for a multiclass prediction".to_owned(),
        )),
    }
}

fn mean_and_se(sum: f64, sq: f64, n: u64) -> (f64, f64) {
    let n = n as f64;
    let mean = sum / n;
    let variance = if n > 1.0 {
        ((sq - sum * sum / n) / (n - 1.0)).max(0.0)
    } else {
        0.0
    };
    (mean, (variance / n).sqrt())
}

/// The log-loss of one prediction given its outcome (`None` when the label
/// does not fit the prediction).
pub fn log_loss(prediction: &Prediction, label: Label) -> Option<f64> {
    let q = match (prediction, label) {
        (Prediction::Binary(p), Label::Binary(positive)) => {
            let p = f64::from(*p).clamp(0.0, 1.0);
            if positive { p } else { 1.0 - p }
        }
        (Prediction::Classes(ps), Label::Class(truth)) => {
            // Quantized probabilities need not sum to one exactly.
            let total: f64 = ps.iter().map(|p| f64::from(*p)).sum();
            f64::from(*ps.get(truth as usize)?) / total.max(EPS)
        }
        _ => return None,
    };
    Some(-q.clamp(EPS, 1.0 - EPS).ln())
}

impl Quality {
    /// Adds one outcome scored against its prediction.
    pub fn add(
        &mut self,
        prediction: &Prediction,
        label: Label,
        value: Option<f64>,
    ) -> Result<(), Mismatch> {
        fits(prediction, label)?;
        match (prediction, label) {
            (Prediction::Binary(p), Label::Binary(positive)) => {
                let p = f64::from(*p).clamp(0.0, 1.0);
                let y = f64::from(u8::from(positive));
                let binary = self.binary.get_or_insert_with(Binary::default);
                let bucket = (p * SCORE_BUCKETS).round() as u32;
                binary.by_score.entry(bucket).or_default()[usize::from(positive)] += 1;
                let brier = (p - y).powi(2);
                binary.brier_sum += brier;
                binary.brier_sq += brier * brier;
                let bin = ((p * RELIABILITY_BINS as f64) as usize).min(RELIABILITY_BINS - 1);
                let cell = &mut binary.reliability[bin];
                cell.count += 1;
                cell.predicted += p;
                cell.positives += u64::from(positive);
                self.add_loss(log_loss(prediction, label).unwrap_or(0.0));
            }
            (Prediction::Classes(ps), Label::Class(truth)) => {
                let k = ps.len();
                let truth = truth as usize;
                let classes = self.classes.get_or_insert_with(|| Classes {
                    classes: k,
                    confusion: vec![0; k * k],
                });
                if classes.classes != k {
                    return Err(Mismatch(format!(
                        "a {k}-class prediction among {}-class ones",
                        classes.classes
                    )));
                }
                let predicted = ps
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, p)| if *p > ps[best] { i } else { best });
                classes.confusion[truth * k + predicted] += 1;
                self.add_loss(log_loss(prediction, label).unwrap_or(0.0));
            }
            // Refused by `fits` above.
            (Prediction::Binary(_), Label::Class(_))
            | (Prediction::Classes(_), Label::Binary(_)) => {
                return fits(prediction, label);
            }
        }
        let value = value.unwrap_or(0.0);
        self.value_sum += value;
        self.value_sq += value * value;
        self.outcomes += 1;
        Ok(())
    }

    fn add_loss(&mut self, loss: f64) {
        self.log_loss_sum += loss;
        self.log_loss_sq += loss * loss;
    }

    /// Adds another state: the result is the state of both sets of outcomes.
    pub fn merge(&mut self, other: &Quality) {
        self.outcomes += other.outcomes;
        self.value_sum += other.value_sum;
        self.value_sq += other.value_sq;
        self.log_loss_sum += other.log_loss_sum;
        self.log_loss_sq += other.log_loss_sq;
        if let Some(theirs) = &other.binary {
            let ours = self.binary.get_or_insert_with(Binary::default);
            for (bucket, counts) in &theirs.by_score {
                let cell = ours.by_score.entry(*bucket).or_default();
                cell[0] += counts[0];
                cell[1] += counts[1];
            }
            ours.brier_sum += theirs.brier_sum;
            ours.brier_sq += theirs.brier_sq;
            for (mine, other) in ours.reliability.iter_mut().zip(&theirs.reliability) {
                mine.count += other.count;
                mine.predicted += other.predicted;
                mine.positives += other.positives;
            }
        }
        if let Some(theirs) = &other.classes {
            match &mut self.classes {
                Some(ours) if ours.classes == theirs.classes => {
                    for (mine, other) in ours.confusion.iter_mut().zip(&theirs.confusion) {
                        *mine += other;
                    }
                }
                Some(_) => {}
                None => self.classes = Some(theirs.clone()),
            }
        }
    }

    /// The figures, each with its 95 % interval; nothing below
    /// `min_outcomes`.
    pub fn report(&self, min_outcomes: u64) -> Report {
        let n = self.outcomes;
        let shown = n >= min_outcomes.max(1);
        let mut report = Report {
            outcomes: n,
            positives: None,
            auc: None,
            log_loss: None,
            brier: None,
            ece: None,
            reliability: Vec::new(),
            accuracy: None,
            macro_f1: None,
            value_per_prediction: None,
        };
        if let Some(binary) = &self.binary {
            report.positives = Some(binary.by_score.values().map(|c| c[1]).sum());
            report.reliability = binary.reliability.to_vec();
        }
        if !shown {
            return report;
        }
        let (loss, loss_se) = mean_and_se(self.log_loss_sum, self.log_loss_sq, n);
        report.log_loss = Some(Estimate::normal(loss, loss_se, 0.0, f64::INFINITY));
        let (value, value_se) = mean_and_se(self.value_sum, self.value_sq, n);
        report.value_per_prediction = Some(Estimate::normal(
            value,
            value_se,
            f64::NEG_INFINITY,
            f64::INFINITY,
        ));
        if let Some(binary) = &self.binary {
            let (brier, brier_se) = mean_and_se(binary.brier_sum, binary.brier_sq, n);
            report.brier = Some(Estimate::normal(brier, brier_se, 0.0, 1.0));
            report.auc = auc(&binary.by_score);
            report.ece = Some(ece(&binary.reliability, n));
        }
        if let Some(classes) = &self.classes {
            report.accuracy = Some(accuracy(classes));
            report.macro_f1 = Some(macro_f1_with_interval(classes));
        }
        report
    }
}

/// AUC from the score histogram (ties count one half), with the
/// Hanley–McNeil (1982) standard error.
fn auc(by_score: &BTreeMap<u32, [u64; 2]>) -> Option<Estimate> {
    let negatives: u64 = by_score.values().map(|c| c[0]).sum();
    let positives: u64 = by_score.values().map(|c| c[1]).sum();
    if negatives == 0 || positives == 0 {
        return None;
    }
    let mut below = 0u64;
    let mut pairs = 0.0;
    for [neg, pos] in by_score.values() {
        pairs += *pos as f64 * below as f64 + 0.5 * (*pos as f64) * (*neg as f64);
        below += neg;
    }
    let (p, q) = (positives as f64, negatives as f64);
    let a = pairs / (p * q);
    let q1 = a / (2.0 - a);
    let q2 = 2.0 * a * a / (1.0 + a);
    let variance = (a * (1.0 - a) + (p - 1.0) * (q1 - a * a) + (q - 1.0) * (q2 - a * a)) / (p * q);
    Some(Estimate::normal(a, variance.max(0.0).sqrt(), 0.0, 1.0))
}

/// Expected calibration error: the count-weighted gap between each bin's
/// mean prediction and its observed rate. Its interval propagates each
/// bin's binomial standard error (a normal approximation; at small counts
/// the ECE is biased upwards, which the interval does not remove).
fn ece(bins: &[ReliabilityBin], n: u64) -> Estimate {
    let n = n as f64;
    let mut value = 0.0;
    let mut variance = 0.0;
    for bin in bins.iter().filter(|b| b.count > 0) {
        let count = bin.count as f64;
        let rate = bin.positives as f64 / count;
        let weight = count / n;
        value += weight * (bin.predicted / count - rate).abs();
        variance += weight * weight * rate * (1.0 - rate) / count;
    }
    Estimate::normal(value, variance.sqrt(), 0.0, 1.0)
}

/// Accuracy with the Wilson score interval.
fn accuracy(classes: &Classes) -> Estimate {
    let k = classes.classes;
    let n: u64 = classes.confusion.iter().sum();
    let correct: u64 = (0..k).map(|i| classes.confusion[i * k + i]).sum();
    let (n, p) = (n as f64, correct as f64 / n as f64);
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    Estimate {
        value: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    }
}

/// Macro-F1 over the classes that occur (as truth or prediction).
pub fn macro_f1(confusion: &[u64], k: usize) -> f64 {
    let mut sum = 0.0;
    let mut present = 0usize;
    for class in 0..k {
        let tp = confusion[class * k + class] as f64;
        let actual: u64 = (0..k).map(|j| confusion[class * k + j]).sum();
        let predicted: u64 = (0..k).map(|i| confusion[i * k + class]).sum();
        if actual + predicted == 0 {
            continue;
        }
        present += 1;
        sum += 2.0 * tp / (actual + predicted) as f64;
    }
    if present == 0 {
        0.0
    } else {
        sum / present as f64
    }
}

/// Macro-F1 with a percentile interval from a Poisson bootstrap of the
/// confusion matrix (each cell redrawn as Poisson of its count, which
/// resamples outcomes without the raw list). Seeded, so the same state
/// always reports the same interval.
fn macro_f1_with_interval(classes: &Classes) -> Estimate {
    let k = classes.classes;
    let value = macro_f1(&classes.confusion, k);
    let mut rng = ChaCha8Rng::seed_from_u64(0x004e_5552_5455_5245);
    let mut draws: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| {
            let resampled: Vec<u64> = classes
                .confusion
                .iter()
                .map(|&count| {
                    if count == 0 {
                        0
                    } else {
                        Poisson::new(count as f64)
                            .map(|d| d.sample(&mut rng) as u64)
                            .unwrap_or(count)
                    }
                })
                .collect();
            macro_f1(&resampled, k)
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((q * (BOOTSTRAP - 1) as f64).round() as usize).min(BOOTSTRAP - 1)];
    Estimate {
        value,
        low: at(0.025).min(value),
        high: at(0.975).max(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_state(pairs: &[(f32, bool)]) -> Quality {
        let mut state = Quality::default();
        for (p, y) in pairs {
            state
                .add(&Prediction::Binary(*p), Label::Binary(*y), None)
                .unwrap();
        }
        state
    }

    #[test]
    fn binary_figures_match_their_definitions() {
        // Hand-checked: 5 of the 6 positive-negative pairs are in order
        // (0.35 below 0.4 is the one that is not), so the AUC is 5/6.
        let pairs = [
            (0.1, false),
            (0.4, false),
            (0.35, true),
            (0.8, true),
            (0.9, true),
        ];
        let report = binary_state(&pairs).report(1);
        let auc = report.auc.unwrap().value;
        assert!((auc - 5.0 / 6.0).abs() < 1e-12, "{auc}");
        let loss: f64 = pairs
            .iter()
            .map(|(p, y)| {
                let p = f64::from(*p);
                -(if *y { p } else { 1.0 - p }).ln()
            })
            .sum::<f64>()
            / 5.0;
        assert!((report.log_loss.unwrap().value - loss).abs() < 1e-9);
        let brier: f64 = pairs
            .iter()
            .map(|(p, y)| (f64::from(*p) - f64::from(u8::from(*y))).powi(2))
            .sum::<f64>()
            / 5.0;
        assert!((report.brier.unwrap().value - brier).abs() < 1e-9);
        assert_eq!(report.positives, Some(3));
    }

    #[test]
    fn merged_states_equal_the_state_of_all_outcomes() {
        let all: Vec<(f32, bool)> = (0..200)
            .map(|i| ((i % 97) as f32 / 97.0, i % 3 == 0))
            .collect();
        let mut left = binary_state(&all[..77]);
        left.merge(&binary_state(&all[77..]));
        let whole = binary_state(&all);
        let (a, b) = (left.report(1), whole.report(1));
        assert_eq!(a.outcomes, b.outcomes);
        assert_eq!(a.auc, b.auc);
        assert_eq!(a.reliability, b.reliability);
        assert!((a.log_loss.unwrap().value - b.log_loss.unwrap().value).abs() < 1e-12);
        let mut classes = Quality::default();
        let mut parts = [Quality::default(), Quality::default()];
        for i in 0..60u32 {
            let ps = vec![0.2, 0.3, 0.5];
            classes
                .add(
                    &Prediction::Classes(ps.clone()),
                    Label::Class(i % 3),
                    Some(1.0),
                )
                .unwrap();
            parts[(i % 2) as usize]
                .add(&Prediction::Classes(ps), Label::Class(i % 3), Some(1.0))
                .unwrap();
        }
        let [mut first, second] = parts;
        first.merge(&second);
        let (merged, whole) = (first.report(1), classes.report(1));
        assert_eq!(merged.accuracy, whole.accuracy);
        assert_eq!(merged.macro_f1, whole.macro_f1);
        // Sums in another order differ in the last bits only.
        let gap = merged.log_loss.unwrap().value - whole.log_loss.unwrap().value;
        assert!(gap.abs() < 1e-12);
    }

    #[test]
    fn nothing_is_shown_below_the_minimum_and_labels_must_fit() {
        let state = binary_state(&[(0.2, false), (0.7, true)]);
        let report = state.report(30);
        assert_eq!(report.outcomes, 2);
        assert!(report.auc.is_none() && report.log_loss.is_none());
        let mut state = Quality::default();
        assert!(
            state
                .add(&Prediction::Binary(0.5), Label::Class(1), None)
                .is_err()
        );
        assert!(
            state
                .add(&Prediction::Classes(vec![0.5, 0.5]), Label::Class(2), None)
                .is_err()
        );
        assert_eq!(state.outcomes, 0, "a refused outcome changes nothing");
    }

    #[test]
    fn multiclass_accuracy_and_macro_f1_with_intervals() {
        let mut state = Quality::default();
        // 3 classes; predictions argmax = truth for 2 of every 3 outcomes.
        for i in 0..300u32 {
            let truth = i % 3;
            let predicted = if i % 3 == 2 { (truth + 1) % 3 } else { truth };
            let mut ps = vec![0.1_f32; 3];
            ps[predicted as usize] = 0.8;
            state
                .add(&Prediction::Classes(ps), Label::Class(truth), Some(2.0))
                .unwrap();
        }
        let report = state.report(30);
        let accuracy = report.accuracy.unwrap();
        assert!((accuracy.value - 2.0 / 3.0).abs() < 1e-12);
        assert!(accuracy.low < accuracy.value && accuracy.value < accuracy.high);
        let f1 = report.macro_f1.unwrap();
        assert!(
            f1.low <= f1.value && f1.value <= f1.high && f1.high - f1.low < 0.2,
            "{f1:?}"
        );
        let value = report.value_per_prediction.unwrap();
        assert!((value.value - 2.0).abs() < 1e-12 && value.high - value.low < 1e-9);
    }
}
