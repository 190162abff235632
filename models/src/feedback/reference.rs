//! Label-free drift: the distribution of each input feature and of the
//! predictions, as the trainer saw them (the reference, kept in the
//! manifest), against what a version serves, by the population stability
//! index (PSI).
//!
//! The reference cuts each feature at its training deciles (fewer bins when
//! values repeat, as counts do) and records the share of training rows in
//! each bin. A window of served values is counted into the same bins and
//!
//! ```text
//! PSI = Σ (served_b − expected_b) · ln(served_b / expected_b)
//! ```
//!
//! with both shares floored at 1e-4 so an empty bin stays finite. Under no
//! change PSI is about (bins − 1) / n (a χ² over n): 0.02 for 10 bins and 500
//! values; the customary alarm level is 0.25.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bins of one variable and the training share of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bins {
    /// Interior cut points, ascending: bin `i` holds values in
    /// `[edges[i-1], edges[i])`, the first everything below `edges[0]`, the
    /// last everything from the last edge on.
    pub edges: Vec<f64>,
    /// Share of training values in each bin (`edges.len() + 1` of them).
    pub expected: Vec<f64>,
}

/// Floor of a share in PSI.
const FLOOR: f64 = 1e-4;

impl Bins {
    /// Decile bins of `values` (at most `bins` bins; fewer when values
    /// repeat). `None` when there are no finite values.
    pub fn from_sample(values: &[f64], bins: usize) -> Option<Bins> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = (1..bins.max(2))
            .map(|i| sorted[i * sorted.len() / bins.max(2)])
            .collect();
        edges.dedup();
        // An edge equal to the minimum would leave the first bin empty.
        edges.retain(|edge| *edge > sorted[0]);
        let mut bins = Bins {
            expected: vec![0.0; edges.len() + 1],
            edges,
        };
        for value in &sorted {
            let bin = bins.bin(*value);
            bins.expected[bin] += 1.0;
        }
        let n = sorted.len() as f64;
        for share in &mut bins.expected {
            *share /= n;
        }
        Some(bins)
    }

    /// The bin of `value`.
    pub fn bin(&self, value: f64) -> usize {
        self.edges.partition_point(|edge| *edge <= value)
    }

    /// PSI of `counts` (values counted into these bins) against the
    /// training shares.
    pub fn psi(&self, counts: &[u64]) -> f64 {
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return 0.0;
        }
        self.expected
            .iter()
            .zip(counts)
            .map(|(expected, count)| {
                let served = (*count as f64 / n as f64).max(FLOOR);
                let expected = expected.max(FLOOR);
                (served - expected) * (served / expected).ln()
            })
            .sum()
    }
}

/// What the trainer saw: bins of every input feature and of the score.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// By feature name.
    #[serde(default)]
    pub features: BTreeMap<String, Bins>,
    /// Of the score (the positive class's probability of a binary kind,
    /// else the top class's), on the holdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Bins>,
}

/// The name PSI results use for the score.
pub const SCORE: &str = "prediction_score";

/// Served values of one version counted into its reference's bins, window
/// by window.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// Variables with a reference: name, bins, counts in this window.
    variables: Vec<(String, Bins, Vec<u64>)>,
    /// For each input position callers feed, the variable it counts into.
    slots: Vec<Option<usize>>,
    /// The score's variable.
    score: Option<usize>,
    /// Values counted in the current window.
    pub window: u64,
    /// Predictions offered in the current window (counted or not).
    offered: u64,
    /// Batches owed a count (see [`Monitor::sample`]).
    credit: f64,
}

/// About how many predictions a window counts: past this, batches are
/// thinned evenly. A PSI over ten bins on 50,000 values moves by about
/// 10⁻⁴ from sampling alone, and counting costs about 3 ns a value, which
/// at full rate is the largest share of the log's cost per answer.
pub const WINDOW_TARGET: u64 = 50_000;

impl Monitor {
    /// An empty window over `reference`, fed values in the order of
    /// `inputs` (names; those without a reference are ignored).
    pub fn new(reference: &Reference, inputs: &[&str]) -> Monitor {
        let mut variables = Vec::new();
        let slots = inputs
            .iter()
            .map(|name| {
                let bins = reference.features.get(*name)?;
                variables.push((
                    (*name).to_owned(),
                    bins.clone(),
                    vec![0; bins.expected.len()],
                ));
                Some(variables.len() - 1)
            })
            .collect();
        let score = reference.score.as_ref().map(|bins| {
            variables.push((SCORE.to_owned(), bins.clone(), vec![0; bins.expected.len()]));
            variables.len() - 1
        });
        Monitor {
            variables,
            slots,
            score,
            window: 0,
            offered: 0,
            credit: 1.0,
        }
    }

    /// The variables watched (features with a reference, then the score).
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|(name, _, _)| name.as_str())
    }

    /// Whether to count the next batch of `rows` predictions, offered when
    /// `elapsed` of the window's time has gone (0 to 1): every batch while
    /// the window is on course to offer at most [`WINDOW_TARGET`]
    /// predictions at the rate so far, else a share of the batches that
    /// keeps it near that, spread evenly through the window.
    pub fn sample(&mut self, rows: u64, elapsed: f64) -> bool {
        self.offered += rows;
        let projected = self.offered as f64 / elapsed.clamp(1e-4, 1.0);
        self.credit += (WINDOW_TARGET as f64 / projected).min(1.0);
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            return true;
        }
        false
    }

    /// Counts served values of the input at `position` (in the order given
    /// to [`Monitor::new`]), a column at a time; NaN is absent.
    pub fn observe_column(&mut self, position: usize, values: &[f64]) {
        let Some(Some(index)) = self.slots.get(position) else {
            return;
        };
        let (_, bins, counts) = &mut self.variables[*index];
        for value in values.iter().filter(|v| !v.is_nan()) {
            counts[bins.bin(*value)] += 1;
        }
    }

    /// Counts served scores, one per served prediction (the window grows
    /// by their number).
    pub fn observe_scores(&mut self, scores: impl Iterator<Item = f64>) {
        let mut served = 0;
        match self.score {
            Some(index) => {
                let (_, bins, counts) = &mut self.variables[index];
                for score in scores {
                    counts[bins.bin(score)] += 1;
                    served += 1;
                }
            }
            None => served = scores.count() as u64,
        }
        self.window += served;
    }

    /// Once the window holds at least `min_values`: the PSI of every
    /// variable, and a fresh window. Before that: `None` (the window keeps
    /// growing, so quiet traffic is judged on enough values).
    pub fn check(&mut self, min_values: u64) -> Option<Vec<(String, f64)>> {
        if self.window < min_values.max(1) {
            return None;
        }
        let psi = self
            .variables
            .iter_mut()
            .map(|(name, bins, counts)| {
                let value = bins.psi(counts);
                counts.iter_mut().for_each(|c| *c = 0);
                (name.clone(), value)
            })
            .collect();
        self.window = 0;
        self.offered = 0;
        self.credit = 1.0;
        Some(psi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal, Poisson};
    use std::sync::Arc;

    #[test]
    fn bins_follow_the_deciles_and_merge_repeated_values() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let bins = Bins::from_sample(&values, 10).unwrap();
        assert_eq!(bins.edges.len(), 9);
        assert!(bins.expected.iter().all(|s| (s - 0.1).abs() < 1e-9));
        assert_eq!(bins.bin(-5.0), 0);
        assert_eq!(bins.bin(100.0), 1);
        assert_eq!(bins.bin(5_000.0), 9);
        // A count that is mostly 0: few bins, shares still add to 1.
        let counts: Vec<f64> = (0..1000)
            .map(|i| if i < 700 { 0.0 } else { f64::from(i % 3) })
            .collect();
        let bins = Bins::from_sample(&counts, 10).unwrap();
        assert!(bins.edges.len() < 9);
        assert!((bins.expected.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(Bins::from_sample(&[f64::NAN], 10).is_none());
    }

    #[test]
    fn psi_is_zero_on_the_reference_and_large_on_a_shift() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let bins = Bins::from_sample(&values, 10).unwrap();
        assert!(bins.psi(&[100; 10]) < 1e-12);
        let mut shifted = [0u64; 10];
        shifted[9] = 1000;
        assert!(bins.psi(&shifted) > 2.0);
    }

    /// A synthetic lead: a normal feature, a Poisson count and a rate.
    struct Synthetic {
        normal: Normal<f64>,
        poisson: Poisson<f64>,
    }

    impl Synthetic {
        fn draw(&self, rng: &mut ChaCha8Rng) -> [f64; 3] {
            [
                self.normal.sample(rng),
                self.poisson.sample(rng),
                rng.random::<f64>(),
            ]
        }
    }

    /// The reference of 20,000 synthetic training rows, and the generator.
    fn reference(rng: &mut ChaCha8Rng) -> (Arc<Reference>, Synthetic) {
        let synthetic = Synthetic {
            normal: Normal::new(40.0, 12.0).unwrap(),
            poisson: Poisson::new(2.0).unwrap(),
        };
        let training: Vec<[f64; 3]> = (0..20_000).map(|_| synthetic.draw(rng)).collect();
        let column = |i: usize| training.iter().map(|row| row[i]).collect::<Vec<_>>();
        let reference = Reference {
            features: [("days", 0), ("visits", 1), ("open_rate", 2)]
                .into_iter()
                .map(|(name, i)| (name.to_owned(), Bins::from_sample(&column(i), 10).unwrap()))
                .collect(),
            score: Bins::from_sample(&column(2), 10),
        };
        (Arc::new(reference), synthetic)
    }

    /// Counts one row, a column at a time, as the log's writer does.
    fn feed(monitor: &mut Monitor, row: [f64; 3]) {
        for (position, value) in row.iter().enumerate() {
            monitor.observe_column(position, &[*value]);
        }
        monitor.observe_scores(std::iter::once(row[2]));
    }

    /// Seven simulated days of stationary traffic, checked every minute
    /// (10,080 checks of 500 served predictions each): no PSI reaches the
    /// alarm level; the worst stays near the χ² noise.
    #[test]
    fn a_stationary_week_raises_no_alarm() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (reference, synthetic) = reference(&mut rng);
        let mut monitor = Monitor::new(&reference, &["days", "visits", "open_rate"]);
        let mut worst: f64 = 0.0;
        for _minute in 0..7 * 24 * 60 {
            for _ in 0..500 {
                let row = synthetic.draw(&mut rng);
                feed(&mut monitor, row);
            }
            for (_, psi) in monitor.check(500).expect("a full window") {
                worst = worst.max(psi);
            }
        }
        assert!(worst < 0.25 / 2.0, "worst PSI in a week: {worst}");
    }

    #[test]
    fn a_shifted_feature_is_flagged_at_the_first_full_window() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (reference, synthetic) = reference(&mut rng);
        let mut monitor = Monitor::new(&reference, &["days", "visits", "open_rate"]);
        for _ in 0..300 {
            let row = synthetic.draw(&mut rng);
            feed(&mut monitor, row);
        }
        assert!(monitor.check(500).is_none(), "not enough values yet");
        for _ in 0..300 {
            let mut row = synthetic.draw(&mut rng);
            row[0] += 15.0; // days since first contact: +1.25 sd
            feed(&mut monitor, row);
        }
        let psi: BTreeMap<String, f64> = monitor.check(500).unwrap().into_iter().collect();
        assert!(psi["days"] > 0.25, "{psi:?}");
        assert!(psi["visits"] < 0.1 && psi["open_rate"] < 0.1, "{psi:?}");
    }

    /// A busy window is thinned to about [`WINDOW_TARGET`] values from its
    /// first second on, evenly: its PSI is that of the whole window (a
    /// shift in its second half weighs half, as unthinned); a quiet window
    /// is counted whole.
    #[test]
    fn a_busy_window_is_thinned_evenly() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (reference, synthetic) = reference(&mut rng);
        let names = ["days", "visits", "open_rate"];
        let (mut thinned, mut whole) = (
            Monitor::new(&reference, &names),
            Monitor::new(&reference, &names),
        );
        // `batches` of 1,000 spread over the window, the second half with
        // days since first contact +1.25 sd when `shift`.
        let mut offer =
            |thinned: &mut Monitor, whole: &mut Monitor, batches: usize, shift: bool| {
                for batch in 0..batches {
                    let counted = thinned.sample(1_000, (batch + 1) as f64 / batches as f64);
                    for _ in 0..1_000 {
                        let mut row = synthetic.draw(&mut rng);
                        if shift && batch >= batches / 2 {
                            row[0] += 15.0;
                        }
                        feed(whole, row);
                        if counted {
                            feed(thinned, row);
                        }
                    }
                }
            };
        let psi = |monitor: &mut Monitor| -> BTreeMap<String, f64> {
            monitor.check(500).unwrap().into_iter().collect()
        };
        // Quiet: 20 batches of 1,000, all counted.
        offer(&mut thinned, &mut whole, 20, false);
        assert_eq!(thinned.window, 20_000);
        assert_eq!(psi(&mut thinned), psi(&mut whole));
        // Busy from the start: 2,000 batches (2 million predictions).
        offer(&mut thinned, &mut whole, 2_000, true);
        assert!(
            (45_000..=56_000).contains(&thinned.window),
            "{}",
            thinned.window
        );
        let (ours, all) = (psi(&mut thinned), psi(&mut whole));
        assert!(all["days"] > 0.1, "{all:?}");
        assert!(
            (ours["days"] / all["days"] - 1.0).abs() < 0.1,
            "thinned {ours:?} whole {all:?}"
        );
        assert!(ours["visits"] < 0.01, "{ours:?}");
    }
}
