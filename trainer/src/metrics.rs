//! Holdout metrics.

use std::collections::BTreeMap;

/// Clamp for log loss, as scikit-learn does.
const EPSILON: f64 = 1e-15;

/// Area under the ROC curve of scores for the positive class (ties count
/// half), by the rank-sum formula.
pub fn auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && scores[order[end + 1]] == scores[order[start]] {
            end += 1;
        }
        let rank = (start + end) as f64 / 2.0 + 1.0;
        for index in &order[start..=end] {
            ranks[*index] = rank;
        }
        start = end + 1;
    }
    let positives = positive.iter().filter(|p| **p).count() as f64;
    let negatives = positive.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Mean negative log-likelihood of the true classes.
pub fn log_loss(probabilities: &[Vec<f64>], labels: &[usize]) -> f64 {
    let total: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(row, label)| -row[*label].clamp(EPSILON, 1.0 - EPSILON).ln())
        .sum();
    total / labels.len() as f64
}

/// Index of the largest value (first on ties).
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (index, value) in row.iter().enumerate() {
        if *value > row[best] {
            best = index;
        }
    }
    best
}

/// Share of correct predictions.
pub fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
}

/// Unweighted mean of per-class F1 over the classes present in the labels
/// or the predictions.
pub fn macro_f1(predicted: &[usize], labels: &[usize], classes: usize) -> f64 {
    let mut f1s = Vec::new();
    for class in 0..classes {
        let tp = predicted
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == class && **l == class)
            .count() as f64;
        let fp = predicted
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == class && **l != class)
            .count() as f64;
        let fn_ = predicted
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p != class && **l == class)
            .count() as f64;
        if tp + fp + fn_ == 0.0 {
            continue;
        }
        f1s.push(2.0 * tp / (2.0 * tp + fp + fn_));
    }
    f1s.iter().sum::<f64>() / f1s.len().max(1) as f64
}

/// The metrics that fit a kind: binary kinds get AUC, log loss, accuracy
/// and Brier score; multi-class kinds accuracy, macro-F1 and log loss.
pub fn evaluate(
    probabilities: &[Vec<f64>],
    labels: &[usize],
    classes: usize,
) -> BTreeMap<String, f64> {
    let predicted: Vec<usize> = probabilities.iter().map(|row| argmax(row)).collect();
    let mut metrics = BTreeMap::new();
    metrics.insert("log_loss".to_owned(), log_loss(probabilities, labels));
    metrics.insert("accuracy".to_owned(), accuracy(&predicted, labels));
    if classes == 2 {
        let scores: Vec<f64> = probabilities.iter().map(|row| row[1]).collect();
        let positive: Vec<bool> = labels.iter().map(|l| *l == 1).collect();
        metrics.insert("auc".to_owned(), auc(&scores, &positive));
        let brier = scores
            .iter()
            .zip(&positive)
            .map(|(s, p)| (s - f64::from(u8::from(*p))).powi(2))
            .sum::<f64>()
            / scores.len() as f64;
        metrics.insert("brier".to_owned(), brier);
    } else {
        metrics.insert("macro_f1".to_owned(), macro_f1(&predicted, labels, classes));
    }
    metrics
}

/// The metric a kind is judged by (higher is better): AUC for binary kinds,
/// macro-F1 for multi-class ones.
pub fn primary(classes: usize) -> &'static str {
    if classes == 2 { "auc" } else { "macro_f1" }
}

/// The primary metric ([`primary`]) of `probabilities` against `labels`.
pub fn primary_score(probabilities: &[Vec<f64>], labels: &[usize], classes: usize) -> f64 {
    if classes == 2 {
        let scores: Vec<f64> = probabilities.iter().map(|row| row[1]).collect();
        let positive: Vec<bool> = labels.iter().map(|l| *l == 1).collect();
        auc(&scores, &positive)
    } else {
        let predicted: Vec<usize> = probabilities.iter().map(|row| argmax(row)).collect();
        macro_f1(&predicted, labels, classes)
    }
}

/// The 95% paired-bootstrap percentile interval of the difference
/// `primary(b) − primary(a)` on the same rows: each of `resamples` draws
/// the rows with replacement (seeded by `seed`) and scores both models on
/// that draw, so what the rows have in common cancels. Draws where the
/// metric is undefined (one class only, for AUC) are skipped.
pub fn paired_bootstrap(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    labels: &[usize],
    classes: usize,
    resamples: usize,
    seed: u64,
) -> [f64; 2] {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = labels.len();
    // What the metric reads of each row, once: the positive class's
    // probability (AUC) or the predicted class (macro-F1).
    let reduce = |rows: &[Vec<f64>]| -> Vec<f64> {
        rows.iter()
            .map(|row| {
                if classes == 2 {
                    row[1]
                } else {
                    argmax(row) as f64
                }
            })
            .collect()
    };
    let (a, b) = (reduce(a), reduce(b));
    let score = |values: &[f64], labels: &[usize]| {
        if classes == 2 {
            let positive: Vec<bool> = labels.iter().map(|l| *l == 1).collect();
            auc(values, &positive)
        } else {
            let predicted: Vec<usize> = values.iter().map(|v| *v as usize).collect();
            macro_f1(&predicted, labels, classes)
        }
    };
    let mut differences = Vec::with_capacity(resamples);
    let (mut draw_a, mut draw_b, mut draw_labels) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for _ in 0..resamples {
        draw_a.clear();
        draw_b.clear();
        draw_labels.clear();
        for _ in 0..n {
            let row = rng.random_range(0..n);
            draw_a.push(a[row]);
            draw_b.push(b[row]);
            draw_labels.push(labels[row]);
        }
        let difference = score(&draw_b, &draw_labels) - score(&draw_a, &draw_labels);
        if difference.is_finite() {
            differences.push(difference);
        }
    }
    if differences.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    differences.sort_by(f64::total_cmp);
    let at = |q: f64| differences[((differences.len() - 1) as f64 * q).round() as usize];
    [at(0.025), at(0.975)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paired_bootstrap_sees_a_better_model_and_no_difference_between_equals() {
        // 400 rows: model b ranks every row right, model a only by chance.
        let labels: Vec<usize> = (0..400).map(|i| (i * 7 % 3 == 0) as usize).collect();
        let noise = |i: usize| ((i * 2_654_435_761) % 1000) as f64 / 1000.0;
        let a: Vec<Vec<f64>> = (0..400).map(|i| vec![1.0 - noise(i), noise(i)]).collect();
        let b: Vec<Vec<f64>> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let p = if *l == 1 {
                    0.6 + 0.3 * noise(i)
                } else {
                    0.1 + 0.3 * noise(i)
                };
                vec![1.0 - p, p]
            })
            .collect();
        let observed = primary_score(&b, &labels, 2) - primary_score(&a, &labels, 2);
        let [low, high] = paired_bootstrap(&a, &b, &labels, 2, 500, 7);
        assert!(
            low > 0.3 && low <= observed && observed <= high,
            "{low} {observed} {high}"
        );
        assert_eq!(paired_bootstrap(&a, &a, &labels, 2, 200, 7), [0.0, 0.0]);
        assert_eq!(
            paired_bootstrap(&a, &b, &labels, 2, 200, 7),
            paired_bootstrap(&a, &b, &labels, 2, 200, 7),
            "seeded"
        );
    }

    #[test]
    fn auc_matches_hand_computed_values() {
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            0.75
        );
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert_eq!(auc(&[0.1, 0.9], &[false, true]), 1.0);
    }

    #[test]
    fn macro_f1_and_accuracy() {
        let labels = [0, 0, 1, 1, 2];
        let predicted = [0, 1, 1, 1, 0];
        assert_eq!(accuracy(&predicted, &labels), 0.6);
        // class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fn1 -> 0
        assert!((macro_f1(&predicted, &labels, 3) - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn log_loss_of_certain_right_answers_is_near_zero() {
        assert!(log_loss(&[vec![0.0, 1.0]], &[1]) < 1e-12);
        assert!((log_loss(&[vec![0.5, 0.5]], &[0]) - 2f64.ln()).abs() < 1e-12);
    }
}
