//! Multinomial logistic regression on sparse rows, fitted with L-BFGS from
//! `argmin`. The objective is scikit-learn's: `C · Σ cross-entropy + ½‖W‖²`
//! (the intercepts are not penalised), scaled by `1 / (C · n)`.

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

use super::SparseRow;
use crate::error::{Error, Result};

/// A fitted model: `softmax(x · W + b)`; weights are rounded to f32, as the
/// ONNX graph stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    /// Row-major `width × classes`.
    pub weights: Vec<f32>,
    /// Per class.
    pub bias: Vec<f32>,
    /// Number of classes.
    pub classes: usize,
}

/// Cost and gradient of the last parameters evaluated.
type Evaluation = (Vec<f64>, f64, Vec<f64>);

struct Problem<'a> {
    rows: &'a [SparseRow],
    labels: &'a [usize],
    /// Per-row weights (`None`: every row 1).
    weights: Option<&'a [f64]>,
    width: usize,
    classes: usize,
    c: f64,
    // NOTE: L-BFGS asks for the cost and then the gradient at the same point;
    // both come from one pass over the data, so the pass is cached.
    last: std::cell::RefCell<Option<Evaluation>>,
}

impl Problem<'_> {
    fn logits(&self, params: &[f64], row: &SparseRow) -> Vec<f64> {
        let k = self.classes;
        let bias = &params[self.width * k..];
        let mut logits = bias.to_vec();
        for (column, value) in row {
            let w = &params[column * k..(column + 1) * k];
            for class in 0..k {
                logits[class] += value * w[class];
            }
        }
        logits
    }

    fn evaluate(&self, params: &[f64]) -> (f64, Vec<f64>) {
        if let Some((cached, cost, gradient)) = self.last.borrow().as_ref()
            && cached.as_slice() == params
        {
            return (*cost, gradient.clone());
        }
        let (cost, gradient) = self.cost_and_gradient(params, true);
        *self.last.borrow_mut() = Some((params.to_vec(), cost, gradient.clone()));
        (cost, gradient)
    }

    fn cost_and_gradient(&self, params: &[f64], want_gradient: bool) -> (f64, Vec<f64>) {
        let k = self.classes;
        let n = self.rows.len() as f64;
        let mut gradient = if want_gradient {
            vec![0.0; params.len()]
        } else {
            Vec::new()
        };
        let mut loss = 0.0;
        for (index, (row, label)) in self.rows.iter().zip(self.labels).enumerate() {
            let weight = self.weights.map_or(1.0, |w| w[index]);
            let logits = self.logits(params, row);
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            let log_sum = max + sum.ln();
            loss += weight * (log_sum - logits[*label]);
            if want_gradient {
                for class in 0..k {
                    let p = (logits[class] - log_sum).exp();
                    let residual = weight * (p - f64::from(u8::from(class == *label)));
                    gradient[self.width * k + class] += residual;
                    for (column, value) in row {
                        gradient[column * k + class] += residual * value;
                    }
                }
            }
        }
        // Scale: loss/n + ‖W‖²/(2Cn)
        let penalty_scale = 1.0 / (self.c * n);
        let weights = &params[..self.width * k];
        let penalty: f64 = weights.iter().map(|w| w * w).sum::<f64>() * 0.5 * penalty_scale;
        if want_gradient {
            for g in gradient.iter_mut() {
                *g /= n;
            }
            for (g, w) in gradient.iter_mut().zip(weights) {
                *g += w * penalty_scale;
            }
        }
        (loss / n + penalty, gradient)
    }
}

impl CostFunction for Problem<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, params: &Self::Param) -> Result<f64, argmin::core::Error> {
        Ok(self.evaluate(params).0)
    }
}

impl Gradient for Problem<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, params: &Self::Param) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.evaluate(params).1)
    }
}

impl Logistic {
    /// Fits on sparse rows of `width` columns.
    pub fn fit(
        rows: &[SparseRow],
        labels: &[usize],
        width: usize,
        classes: usize,
        c: f64,
        max_iterations: u64,
    ) -> Result<Logistic> {
        Logistic::fit_weighted(rows, labels, None, width, classes, c, max_iterations)
    }

    /// Fits with a weight per row (`None`: every row 1): each row's
    /// cross-entropy is multiplied by its weight, as scikit-learn's
    /// `sample_weight` does; the penalty is unchanged.
    pub fn fit_weighted(
        rows: &[SparseRow],
        labels: &[usize],
        weights: Option<&[f64]>,
        width: usize,
        classes: usize,
        c: f64,
        max_iterations: u64,
    ) -> Result<Logistic> {
        let problem = Problem {
            rows,
            labels,
            weights,
            width,
            classes,
            c,
            last: std::cell::RefCell::new(None),
        };
        let initial = vec![0.0; (width + 1) * classes];
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
            .with_tolerance_grad(1e-6)
            .map_err(|error| Error::Training(error.to_string()))?;
        let result = Executor::new(problem, solver)
            .configure(|state| state.param(initial).max_iters(max_iterations))
            .run()
            .map_err(|error| Error::Training(format!("logistic regression: {error}")))?;
        let params = result.state().get_best_param().ok_or_else(|| {
            Error::Training("logistic regression produced no parameters".to_owned())
        })?;
        Ok(Logistic {
            weights: params[..width * classes]
                .iter()
                .map(|w| *w as f32)
                .collect(),
            bias: params[width * classes..]
                .iter()
                .map(|b| *b as f32)
                .collect(),
            classes,
        })
    }

    /// Class probabilities of a row.
    pub fn predict(&self, row: &SparseRow) -> Vec<f64> {
        let k = self.classes;
        let mut logits: Vec<f64> = self.bias.iter().map(|b| f64::from(*b)).collect();
        for (column, value) in row {
            let weights = &self.weights[column * k..(column + 1) * k];
            for (logit, weight) in logits.iter_mut().zip(weights) {
                *logit += value * f64::from(*weight);
            }
        }
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|e| e / sum).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_classes_by_their_columns() {
        let rows: Vec<SparseRow> = (0..60).map(|i| vec![(i % 3, 1.0)]).collect();
        let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let model = Logistic::fit(&rows, &labels, 3, 3, 1.0, 100).unwrap();
        for (row, label) in rows.iter().zip(&labels) {
            let p = model.predict(row);
            assert_eq!(crate::metrics::argmax(&p), *label);
        }
    }

    #[test]
    fn a_weight_of_two_is_a_row_given_twice() {
        // Noisy labels, so the fit is a compromise the weights move.
        let rows: Vec<SparseRow> = (0..40)
            .map(|i| vec![(i % 4, 1.0), (4, (i % 7) as f64)])
            .collect();
        let labels: Vec<usize> = (0..40).map(|i| (i * 7 / 3) % 3).collect();
        let weights: Vec<f64> = (0..40)
            .map(|i| if i % 5 == 0 { 2.0 } else { 1.0 })
            .collect();
        let weighted =
            Logistic::fit_weighted(&rows, &labels, Some(&weights), 5, 3, 1.0, 300).unwrap();
        let (mut twice_rows, mut twice_labels) = (rows.clone(), labels.clone());
        for i in (0..40).filter(|i| i % 5 == 0) {
            twice_rows.push(rows[i].clone());
            twice_labels.push(labels[i]);
        }
        let twice = Logistic::fit(&twice_rows, &twice_labels, 5, 3, 1.0, 300).unwrap();
        let plain = Logistic::fit(&rows, &labels, 5, 3, 1.0, 300).unwrap();
        let gap = |a: &Logistic, b: &Logistic| {
            rows.iter()
                .flat_map(|row| a.predict(row).into_iter().zip(b.predict(row)))
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
        };
        assert!(gap(&weighted, &twice) < 1e-4, "{}", gap(&weighted, &twice));
        assert!(gap(&weighted, &plain) > 1e-2, "the weights matter");
    }
}
