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

#[cfg(test)]
mod tests {
    use super::*;

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
