//! Gradient-boosted decision trees, written for this project.
//!
//! NOTE: we use our own booster rather than a crate because the export needs
//! three things together that no well-kept Rust crate offered: binary *and*
//! softmax multi-class objectives, thresholds that are exact f32 training
//! values (so ONNX Runtime routes every row as the trainer does), and a
//! plain tree structure to write as `ai.onnx.ml` `TreeEnsembleRegressor`.
//! The algorithm follows the usual histogram method (scikit-learn's
//! `HistGradientBoostingClassifier`, LightGBM): at most 255 bins per feature,
//! leaf-wise growth, Newton leaf values, early stopping on a validation share.

pub mod binning;
pub mod tree;

use indicatif::ProgressBar;

use binning::{BinnedMatrix, FeatureBins};
use tree::{Grower, Tree, TreeParams};

/// Training settings; the defaults are scikit-learn's for
/// `HistGradientBoostingClassifier`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Most boosting iterations.
    pub iterations: usize,
    /// Shrinkage.
    pub learning_rate: f64,
    /// Most leaves per tree.
    pub max_leaves: usize,
    /// Fewest rows per leaf.
    pub min_samples_leaf: usize,
    /// L2 penalty on leaf values.
    pub l2: f64,
    /// Most bins per feature (at most 255).
    pub max_bins: usize,
    /// Early stopping: used when the training set has more rows than this.
    pub early_stopping_above: usize,
    /// Share of training rows held out for early stopping.
    pub validation_fraction: f64,
    /// Stop after this many iterations without improvement.
    pub patience: usize,
    /// Seeds the early-stopping split.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            iterations: 100,
            learning_rate: 0.1,
            max_leaves: 31,
            min_samples_leaf: 20,
            l2: 0.0,
            max_bins: 255,
            early_stopping_above: 10_000,
            validation_fraction: 0.1,
            patience: 10,
            seed: 0,
        }
    }
}

/// A trained ensemble: `outputs` raw scores per row (1 for binary, one per
/// class otherwise), each `base[k] + Σ trees[i][k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Booster {
    /// Number of classes.
    pub classes: usize,
    /// Initial raw score per output.
    pub base: Vec<f32>,
    /// Trees per iteration, one per output.
    pub trees: Vec<Vec<Tree>>,
    /// Total split gain per feature.
    pub gains: Vec<f64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softmax(raw: &[f64]) -> Vec<f64> {
    let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = raw.iter().map(|r| (r - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

impl Booster {
    /// Number of raw outputs.
    pub fn outputs(&self) -> usize {
        self.base.len()
    }

    /// Raw scores of a row.
    pub fn raw(&self, row: &[f32]) -> Vec<f64> {
        let mut raw: Vec<f64> = self.base.iter().map(|b| f64::from(*b)).collect();
        for iteration in &self.trees {
            for (output, tree) in iteration.iter().enumerate() {
                raw[output] += f64::from(tree.predict(row));
            }
        }
        raw
    }

    /// Class probabilities of a row.
    pub fn predict(&self, row: &[f32]) -> Vec<f64> {
        let raw = self.raw(row);
        if self.classes == 2 {
            let p = sigmoid(raw[0]);
            vec![1.0 - p, p]
        } else {
            softmax(&raw)
        }
    }

    /// Mean log-loss on `labels` (weighted by `weights` when given) after
    /// each iteration: element `i` scores the first `i + 1` iterations.
    pub fn staged_log_loss(
        &self,
        values: &[f32],
        width: usize,
        labels: &[usize],
        weights: Option<&[f64]>,
    ) -> Vec<f64> {
        let outputs = self.outputs();
        let rows: Vec<u32> = (0..labels.len() as u32).collect();
        let mut raw: Vec<f64> = (0..labels.len())
            .flat_map(|_| self.base.iter().map(|b| f64::from(*b)))
            .collect();
        self.trees
            .iter()
            .map(|iteration| {
                for row in 0..labels.len() {
                    let features = &values[row * width..(row + 1) * width];
                    for (output, tree) in iteration.iter().enumerate() {
                        raw[row * outputs + output] += f64::from(tree.predict(features));
                    }
                }
                validation_loss(&raw, &rows, labels, weights, self.classes, outputs)
            })
            .collect()
    }

    /// Trains on a row-major matrix with class labels.
    pub fn fit(
        values: &[f32],
        width: usize,
        labels: &[usize],
        classes: usize,
        params: Params,
        progress: &ProgressBar,
    ) -> Booster {
        Booster::fit_weighted(values, width, labels, None, classes, params, progress)
    }

    /// Trains with a weight per row (`None`: every row 1): a row of weight
    /// `w` counts as `w` rows in the class priors and in every gradient and
    /// Hessian sum, as scikit-learn's `sample_weight` does; `min_samples_leaf`
    /// still counts rows.
    pub fn fit_weighted(
        values: &[f32],
        width: usize,
        labels: &[usize],
        weights: Option<&[f64]>,
        classes: usize,
        params: Params,
        progress: &ProgressBar,
    ) -> Booster {
        let rows = labels.len();
        let weight = |row: usize| weights.map_or(1.0, |w| w[row]);
        let bins: Vec<FeatureBins> = (0..width)
            .map(|feature| {
                let column: Vec<f32> = (0..rows).map(|row| values[row * width + feature]).collect();
                FeatureBins::fit(&column, params.max_bins.min(255))
            })
            .collect();
        let matrix = BinnedMatrix::new(values, width, &bins);
        let outputs = if classes == 2 { 1 } else { classes };

        // Early-stopping split, by a hash of the row index and the seed.
        let validate = |row: usize| -> bool {
            let x = mix((row as u64) ^ params.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            (x % 10_000) as f64 / 10_000.0 < params.validation_fraction
        };
        let early = rows > params.early_stopping_above;
        let (train_rows, valid_rows): (Vec<u32>, Vec<u32>) =
            (0..rows as u32).partition(|row| !(early && validate(*row as usize)));

        // Initial scores from the class priors of the training rows.
        let mut counts = vec![0.0_f64; classes];
        for row in &train_rows {
            counts[labels[*row as usize]] += weight(*row as usize);
        }
        let total: f64 = counts.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let base: Vec<f32> = if classes == 2 {
            let p = (counts[1] / total).clamp(1e-6, 1.0 - 1e-6);
            vec![(p / (1.0 - p)).ln() as f32]
        } else {
            counts
                .iter()
                .map(|c| ((c / total).max(1e-12)).ln() as f32)
                .collect()
        };

        let mut raw: Vec<f64> = (0..rows)
            .flat_map(|_| base.iter().map(|b| f64::from(*b)))
            .collect();
        let mut gains = vec![0.0; width];
        let mut trees: Vec<Vec<Tree>> = Vec::new();
        let tree_params = TreeParams {
            max_leaves: params.max_leaves,
            min_samples_leaf: params.min_samples_leaf,
            l2: params.l2,
            learning_rate: params.learning_rate,
        };
        let grower = Grower::new(&matrix, &bins, tree_params);
        let mut best_loss = f64::INFINITY;
        let mut best_iterations = 0;
        let mut since_best = 0;
        let mut g = vec![0.0; rows];
        let mut h = vec![0.0; rows];
        progress.set_length(params.iterations as u64);
        for _ in 0..params.iterations {
            let probabilities: Vec<Vec<f64>> = (0..rows)
                .map(|row| {
                    let r = &raw[row * outputs..(row + 1) * outputs];
                    if classes == 2 {
                        vec![sigmoid(r[0])]
                    } else {
                        softmax(r)
                    }
                })
                .collect();
            let iteration: Vec<Tree> = (0..outputs)
                .map(|output| {
                    for row in &train_rows {
                        let row = *row as usize;
                        let p = probabilities[row][output];
                        let target = if classes == 2 {
                            labels[row] == 1
                        } else {
                            labels[row] == output
                        };
                        let w = weight(row);
                        g[row] = w * (p - f64::from(u8::from(target)));
                        h[row] = w * (p * (1.0 - p)).max(1e-16);
                    }
                    grower.grow(train_rows.clone(), &g, &h, &mut gains)
                })
                .collect();
            for row in 0..rows {
                let features = &values[row * width..(row + 1) * width];
                for (output, tree) in iteration.iter().enumerate() {
                    raw[row * outputs + output] += f64::from(tree.predict(features));
                }
            }
            trees.push(iteration);
            progress.inc(1);
            if early {
                let loss = validation_loss(&raw, &valid_rows, labels, weights, classes, outputs);
                if loss < best_loss - 1e-7 {
                    best_loss = loss;
                    best_iterations = trees.len();
                    since_best = 0;
                } else {
                    since_best += 1;
                    if since_best >= params.patience {
                        break;
                    }
                }
            }
        }
        if early && best_iterations > 0 {
            trees.truncate(best_iterations);
        }
        progress.set_position(params.iterations as u64);
        Booster {
            classes,
            base,
            trees,
            gains,
        }
    }
}

/// Iterations chosen by cross-validation, and their mean held-out log-loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CvChoice {
    /// Boosting iterations with the lowest held-out log-loss.
    pub iterations: usize,
    /// That mean log-loss over every row, each scored by the fold that held it out.
    pub log_loss: f64,
}

/// Chooses the number of boosting iterations by `folds`-fold cross-validation:
/// rows are dealt to folds class by class in an order set by `params.seed`
/// (so every fold has each class's share), each fold is scored by a booster
/// fit on the others with `params.iterations` and no early stopping, and the
/// count with the lowest log-loss summed over all rows wins (the fewest on a
/// tie). Small data keeps every row for the final fit this way.
pub fn choose_iterations(
    values: &[f32],
    width: usize,
    labels: &[usize],
    weights: Option<&[f64]>,
    classes: usize,
    params: Params,
    folds: usize,
) -> CvChoice {
    let rows = labels.len();
    let folds = folds.clamp(2, rows.max(2));
    let mut fold_of = vec![0_usize; rows];
    for class in 0..classes {
        let mut members: Vec<usize> = (0..rows).filter(|row| labels[*row] == class).collect();
        members
            .sort_by_key(|row| mix(*row as u64 ^ params.seed.wrapping_mul(0x2545_f491_4f6c_dd1d)));
        for (position, row) in members.into_iter().enumerate() {
            fold_of[row] = position % folds;
        }
    }
    let fixed = Params {
        early_stopping_above: usize::MAX,
        ..params
    };
    let mut total = vec![0.0_f64; params.iterations];
    for fold in 0..folds {
        let (fit_rows, held): (Vec<usize>, Vec<usize>) =
            (0..rows).partition(|row| fold_of[*row] != fold);
        if held.is_empty() || fit_rows.is_empty() {
            continue;
        }
        let gather = |subset: &[usize]| -> (Vec<f32>, Vec<usize>, Vec<f64>) {
            let mut x = Vec::with_capacity(subset.len() * width);
            for row in subset {
                x.extend_from_slice(&values[row * width..(row + 1) * width]);
            }
            let y = subset.iter().map(|row| labels[*row]).collect();
            let w = subset
                .iter()
                .map(|row| weights.map_or(1.0, |w| w[*row]))
                .collect();
            (x, y, w)
        };
        let (fit_values, fit_labels, fit_weights) = gather(&fit_rows);
        let (held_values, held_labels, held_weights) = gather(&held);
        let booster = Booster::fit_weighted(
            &fit_values,
            width,
            &fit_labels,
            weights.map(|_| fit_weights.as_slice()),
            classes,
            fixed,
            &ProgressBar::hidden(),
        );
        let held_weight: f64 = held_weights.iter().sum();
        let staged = booster.staged_log_loss(
            &held_values,
            width,
            &held_labels,
            weights.map(|_| held_weights.as_slice()),
        );
        for (slot, loss) in total.iter_mut().zip(&staged) {
            *slot += loss * held_weight;
        }
    }
    let (best, loss) =
        total
            .iter()
            .enumerate()
            .fold((0, f64::INFINITY), |(best, low), (index, loss)| {
                if *loss < low - 1e-9 {
                    (index, *loss)
                } else {
                    (best, low)
                }
            });
    let weight: f64 = (0..rows).map(|row| weights.map_or(1.0, |w| w[row])).sum();
    CvChoice {
        iterations: best + 1,
        log_loss: loss / weight.max(f64::MIN_POSITIVE),
    }
}

/// splitmix64's finaliser: a well-mixed hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Mean log-loss of `rows` (weighted by `weights` when given).
fn validation_loss(
    raw: &[f64],
    rows: &[u32],
    labels: &[usize],
    weights: Option<&[f64]>,
    classes: usize,
    outputs: usize,
) -> f64 {
    let mut total = 0.0;
    let mut weight = 0.0;
    for row in rows {
        let row = *row as usize;
        let r = &raw[row * outputs..(row + 1) * outputs];
        let p = if classes == 2 {
            let p1 = sigmoid(r[0]);
            if labels[row] == 1 { p1 } else { 1.0 - p1 }
        } else {
            softmax(r)[labels[row]]
        };
        let w = weights.map_or(1.0, |w| w[row]);
        total -= w * p.clamp(1e-15, 1.0).ln();
        weight += w;
    }
    total / weight.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit_default(values: &[f32], width: usize, labels: &[usize], classes: usize) -> Booster {
        Booster::fit(
            values,
            width,
            labels,
            classes,
            Params::default(),
            &ProgressBar::hidden(),
        )
    }

    fn xor_data(rows: usize) -> (Vec<f32>, Vec<usize>) {
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for i in 0..rows {
            let a = (i % 7) as f32 / 6.0;
            let b = ((i / 7) % 5) as f32 / 4.0;
            values.extend([a, b, (i % 3) as f32]);
            labels.push(usize::from((a > 0.5) != (b > 0.5)));
        }
        (values, labels)
    }

    #[test]
    fn learns_an_interaction_no_linear_model_can() {
        let (values, labels) = xor_data(2_000);
        let booster = fit_default(&values, 3, &labels, 2);
        let correct = (0..labels.len())
            .filter(|row| {
                (booster.predict(&values[row * 3..row * 3 + 3])[1] > 0.5) == (labels[*row] == 1)
            })
            .count();
        assert_eq!(correct, labels.len());
        assert!(
            booster.gains[2] < booster.gains[0] * 1e-3,
            "the noise column is not used: {:?}",
            booster.gains
        );
    }

    #[test]
    fn multiclass_probabilities_sum_to_one_and_fit() {
        let values: Vec<f32> = (0..900).map(|i| (i % 90) as f32).collect();
        let labels: Vec<usize> = (0..900).map(|i| (i % 90) / 30).collect();
        let booster = fit_default(&values, 1, &labels, 3);
        assert_eq!(booster.outputs(), 3);
        for (row, label) in labels.iter().enumerate() {
            let p = booster.predict(&values[row..row + 1]);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert_eq!(crate::metrics::argmax(&p), *label);
        }
    }

    /// Labels from a hash of the row: nothing in the features predicts them.
    fn noise_data(rows: usize) -> (Vec<f32>, Vec<usize>) {
        let values = (0..rows * 3)
            .map(|i| (mix(i as u64) % 1000) as f32)
            .collect();
        let labels = (0..rows)
            .map(|row| (mix(row as u64 + 7) % 2) as usize)
            .collect();
        (values, labels)
    }

    #[test]
    fn cross_validation_stops_early_on_noise_and_late_on_signal() {
        let (values, labels) = noise_data(400);
        let noise = choose_iterations(&values, 3, &labels, None, 2, Params::default(), 5);
        assert!(noise.iterations <= 10, "noise: {noise:?}");
        let (values, labels) = xor_data(400);
        let signal = choose_iterations(&values, 3, &labels, None, 2, Params::default(), 5);
        assert!(signal.iterations >= 50, "signal: {signal:?}");
        assert!(
            signal.log_loss < 0.1 && noise.log_loss > 0.6,
            "{signal:?} {noise:?}"
        );
        assert_eq!(
            signal,
            choose_iterations(&values, 3, &labels, None, 2, Params::default(), 5)
        );
    }

    #[test]
    fn the_staged_loss_ends_at_the_full_models_loss() {
        let (values, labels) = xor_data(300);
        let booster = fit_default(&values, 3, &labels, 2);
        let staged = booster.staged_log_loss(&values, 3, &labels, None);
        assert_eq!(staged.len(), booster.trees.len());
        let full = (0..labels.len())
            .map(|row| -booster.predict(&values[row * 3..row * 3 + 3])[labels[row]].ln())
            .sum::<f64>()
            / labels.len() as f64;
        assert!((staged[staged.len() - 1] - full).abs() < 1e-9);
        assert!(staged[0] > staged[staged.len() - 1]);
    }

    #[test]
    fn a_weight_of_two_is_a_row_given_twice() {
        // Few distinct values (every one its own bin) and leaves of one row,
        // so repeating rows changes nothing but the sums the weights scale.
        let params = Params {
            min_samples_leaf: 1,
            iterations: 20,
            ..Params::default()
        };
        let values: Vec<f32> = (0..60).map(|i| (i % 12) as f32).collect();
        let labels: Vec<usize> = (0..60)
            .map(|i| usize::from((i * 7) % 5 < 2 || i % 12 < 3))
            .collect();
        let weights: Vec<f64> = (0..60)
            .map(|i| if i % 5 == 0 { 2.0 } else { 1.0 })
            .collect();
        let hidden = ProgressBar::hidden();
        let weighted =
            Booster::fit_weighted(&values, 1, &labels, Some(&weights), 2, params, &hidden);
        let (mut twice_values, mut twice_labels) = (values.clone(), labels.clone());
        for i in (0..60).filter(|i| i % 5 == 0) {
            twice_values.push(values[i]);
            twice_labels.push(labels[i]);
        }
        let twice = Booster::fit(&twice_values, 1, &twice_labels, 2, params, &hidden);
        let plain = Booster::fit(&values, 1, &labels, 2, params, &hidden);
        let gap = |a: &Booster, b: &Booster| {
            (0..12)
                .map(|v| (a.predict(&[v as f32])[1] - b.predict(&[v as f32])[1]).abs())
                .fold(0.0, f64::max)
        };
        assert!(gap(&weighted, &twice) < 1e-6, "{}", gap(&weighted, &twice));
        assert!(gap(&weighted, &plain) > 1e-2, "the weights matter");
    }

    #[test]
    fn training_is_deterministic() {
        let (values, labels) = xor_data(500);
        let a = fit_default(&values, 3, &labels, 2);
        let b = fit_default(&values, 3, &labels, 2);
        assert_eq!(a, b);
    }
}
