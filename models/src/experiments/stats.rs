//! Outcome tallies, the bandit's choice, and experiment statistics.

use std::collections::HashSet;

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use statrs::distribution::{ContinuousCDF, Normal};

use super::spec::{ExperimentSpec, OutcomeRecord};

/// Pseudo-observations the optimization model's score is worth in a
/// variant's prior: Beta(m·s, m·(1−s)).
pub const PRIOR_STRENGTH: f64 = 10.0;
/// Outcomes per variant before the bandit leaves the fixed burn-in
/// allocation (`traffic_share`).
pub const BURN_IN_PER_VARIANT: u64 = 10;
/// Top-two Thompson sampling: the probability of playing the sampled best
/// variant; otherwise the challenger (the best of a fresh draw that differs)
/// is played. Plain Thompson sampling starves the runners-up so badly that
/// the winner can never be confirmed; this keeps a quarter of the traffic
/// gathering the evidence an early-stop decision needs (Russo, 2016).
pub const TOP_TWO_BETA: f64 = 0.75;
/// Fresh draws tried when looking for a challenger.
const CHALLENGER_TRIES: usize = 100;
/// Posterior draws for probability to be best and expected loss.
pub const MONTE_CARLO_DRAWS: usize = 20_000;

/// Counts per variant, deduplicated by outcome id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Outcomes recorded per variant (each is one exposure with its result).
    pub exposures: Vec<u64>,
    /// Conversions per variant.
    pub conversions: Vec<u64>,
    /// Sum of conversion values per variant.
    pub value: Vec<f64>,
    seen: HashSet<String>,
}

impl Tally {
    /// An empty tally for `variants` variants.
    pub fn new(variants: usize) -> Self {
        Tally {
            exposures: vec![0; variants],
            conversions: vec![0; variants],
            value: vec![0.0; variants],
            seen: HashSet::new(),
        }
    }

    /// Whether an outcome id was counted already.
    pub fn contains(&self, outcome_id: &str) -> bool {
        self.seen.contains(outcome_id)
    }

    /// Counts an outcome unless its id was counted before (or its variant is
    /// unknown); returns whether it was counted.
    pub fn add(&mut self, spec: &ExperimentSpec, outcome: &OutcomeRecord) -> bool {
        let Some(variant) = spec.variant(&outcome.variant_id) else {
            return false;
        };
        if !self.seen.insert(outcome.outcome_id.clone()) {
            return false;
        }
        self.exposures[variant] += 1;
        if outcome.converted {
            self.conversions[variant] += 1;
            self.value[variant] += outcome.value;
        }
        true
    }

    /// The counts without the set of counted ids: what choosing and
    /// statistics need, cheap to copy however many outcomes were seen.
    pub fn counts(&self) -> Tally {
        Tally {
            exposures: self.exposures.clone(),
            conversions: self.conversions.clone(),
            value: self.value.clone(),
            seen: HashSet::new(),
        }
    }

    /// Distinct outcomes counted.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The bandit's decision for one lead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// Chosen variant.
    pub variant: usize,
    /// Posterior mean conversion of the chosen variant (model prior + outcomes).
    pub posterior_mean: f64,
    /// Whether the choice differs from the variant with the best posterior
    /// mean (exploration).
    pub explored: bool,
}

fn posterior(score: f64, exposures: u64, conversions: u64) -> (f64, f64) {
    let score = score.clamp(1e-3, 1.0 - 1e-3);
    let alpha = PRIOR_STRENGTH * score + conversions as f64;
    let beta = PRIOR_STRENGTH * (1.0 - score) + (exposures - conversions) as f64;
    (alpha, beta)
}

/// Chooses a variant: during burn-in (fewer than [`BURN_IN_PER_VARIANT`]
/// outcomes on some variant) by the fixed traffic shares; afterwards by
/// top-two Thompson sampling from Beta posteriors whose priors are the
/// optimization model's scores for this lead.
pub fn choose(spec: &ExperimentSpec, tally: &Tally, scores: &[f64], rng: &mut impl Rng) -> Choice {
    let params: Vec<(f64, f64)> = (0..spec.variants.len())
        .map(|v| posterior(scores[v], tally.exposures[v], tally.conversions[v]))
        .collect();
    let means: Vec<f64> = params.iter().map(|(a, b)| a / (a + b)).collect();
    let best_mean = argmax(&means);
    let burn_in = tally.exposures.iter().any(|e| *e < BURN_IN_PER_VARIANT);
    let variant = if burn_in {
        let mut u: f64 = rng.random();
        let mut pick = spec.variants.len() - 1;
        for (index, variant) in spec.variants.iter().enumerate() {
            if u < variant.traffic_share {
                pick = index;
                break;
            }
            u -= variant.traffic_share;
        }
        pick
    } else {
        let betas: Vec<Beta<f64>> = params
            .iter()
            .map(|(a, b)| Beta::new(*a, *b).expect("positive parameters"))
            .collect();
        let draws: Vec<f64> = betas.iter().map(|b| b.sample(rng)).collect();
        let leader = argmax(&draws);
        if rng.random_bool(TOP_TWO_BETA) {
            leader
        } else {
            (0..CHALLENGER_TRIES)
                .map(|_| argmax(&betas.iter().map(|b| b.sample(rng)).collect::<Vec<_>>()))
                .find(|candidate| *candidate != leader)
                .unwrap_or_else(|| {
                    // Posteriors this far apart: the runner-up of the first draw.
                    let mut runner_up = if leader == 0 { 1 } else { 0 };
                    for (index, draw) in draws.iter().enumerate() {
                        if index != leader && *draw > draws[runner_up] {
                            runner_up = index;
                        }
                    }
                    runner_up
                })
        }
    };
    Choice {
        variant,
        posterior_mean: means[variant],
        explored: variant != best_mean,
    }
}

fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (index, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = index;
        }
    }
    best
}

/// Statistics of one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantStats {
    /// Outcomes recorded.
    pub exposures: u64,
    /// Conversions.
    pub conversions: u64,
    /// conversions / exposures (0 when none).
    pub rate: f64,
    /// 2.5% quantile of Beta(1 + conversions, 1 + failures).
    pub credible_low: f64,
    /// 97.5% quantile.
    pub credible_high: f64,
    /// Probability that this variant has the highest conversion rate.
    pub probability_best: f64,
    /// Expected conversion rate given up by choosing it.
    pub expected_loss: f64,
    /// Two-sided two-proportion z-test p-value against the control (1 for it).
    pub p_value_vs_control: f64,
}

/// Experiment statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Per variant, in definition order.
    pub variants: Vec<VariantStats>,
    /// Variant to ship, once its probability to be best reaches the target
    /// and every variant has `min_samples` outcomes.
    pub winner: Option<usize>,
}

/// Computes statistics with uniform Beta(1, 1) priors (the model's scores
/// steer exploration, not the evidence). Monte Carlo draws are seeded, so
/// the same tally gives the same numbers.
pub fn stats(spec: &ExperimentSpec, tally: &Tally) -> Stats {
    let k = spec.variants.len();
    let betas: Vec<Beta<f64>> = (0..k)
        .map(|v| {
            Beta::new(
                1.0 + tally.conversions[v] as f64,
                1.0 + (tally.exposures[v] - tally.conversions[v]) as f64,
            )
            .expect("positive parameters")
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let mut wins = vec![0usize; k];
    let mut loss = vec![0.0; k];
    for _ in 0..MONTE_CARLO_DRAWS {
        let draws: Vec<f64> = betas.iter().map(|b| b.sample(&mut rng)).collect();
        let best = argmax(&draws);
        wins[best] += 1;
        for v in 0..k {
            loss[v] += draws[best] - draws[v];
        }
    }
    let control = 0;
    let variants: Vec<VariantStats> = (0..k)
        .map(|v| {
            let (n, c) = (tally.exposures[v], tally.conversions[v]);
            let quantile = statrs::distribution::Beta::new(1.0 + c as f64, 1.0 + (n - c) as f64)
                .expect("positive parameters");
            VariantStats {
                exposures: n,
                conversions: c,
                rate: if n == 0 { 0.0 } else { c as f64 / n as f64 },
                credible_low: quantile.inverse_cdf(0.025),
                credible_high: quantile.inverse_cdf(0.975),
                probability_best: wins[v] as f64 / MONTE_CARLO_DRAWS as f64,
                expected_loss: loss[v] / MONTE_CARLO_DRAWS as f64,
                p_value_vs_control: if v == control {
                    1.0
                } else {
                    z_test(tally.conversions[control], tally.exposures[control], c, n)
                },
            }
        })
        .collect();
    let leader = argmax(
        &variants
            .iter()
            .map(|v| v.probability_best)
            .collect::<Vec<_>>(),
    );
    let enough = variants.iter().all(|v| v.exposures >= spec.min_samples);
    let winner =
        (enough && variants[leader].probability_best >= spec.target_confidence).then_some(leader);
    Stats { variants, winner }
}

/// Two-sided p-value of the pooled two-proportion z-test.
pub fn z_test(c0: u64, n0: u64, c1: u64, n1: u64) -> f64 {
    if n0 == 0 || n1 == 0 {
        return 1.0;
    }
    let (p0, p1) = (c0 as f64 / n0 as f64, c1 as f64 / n1 as f64);
    let pooled = (c0 + c1) as f64 / (n0 + n1) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n0 as f64 + 1.0 / n1 as f64)).sqrt();
    if se == 0.0 {
        return 1.0;
    }
    let z = (p1 - p0) / se;
    let normal = Normal::standard();
    2.0 * (1.0 - normal.cdf(z.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::spec::VariantSpec;
    use chrono::Utc;

    fn spec() -> ExperimentSpec {
        let variant = |id: &str| VariantSpec {
            id: id.into(),
            tone: 1,
            channel: 0,
            length_words: 100,
            has_incentive: false,
            personalized: false,
            traffic_share: 0.5,
        };
        ExperimentSpec {
            name: "e".into(),
            variants: vec![variant("a"), variant("b")],
            min_samples: 100,
            target_confidence: 0.95,
            created_at: Utc::now(),
        }
    }

    fn outcome(id: usize, variant: &str, converted: bool) -> OutcomeRecord {
        OutcomeRecord {
            outcome_id: format!("o{id}"),
            lead_id: "l".into(),
            variant_id: variant.into(),
            converted,
            value: 1.0,
        }
    }

    #[test]
    fn duplicates_are_not_counted_twice() {
        let spec = spec();
        let mut tally = Tally::new(2);
        assert!(tally.add(&spec, &outcome(1, "a", true)));
        assert!(!tally.add(&spec, &outcome(1, "a", true)));
        assert!(!tally.add(&spec, &outcome(2, "zzz", true)));
        assert_eq!(
            (tally.exposures[0], tally.conversions[0], tally.len()),
            (1, 1, 1)
        );
    }

    #[test]
    fn stats_match_known_values() {
        let spec = spec();
        let mut tally = Tally::new(2);
        tally.exposures = vec![1000, 1000];
        tally.conversions = vec![50, 80];
        let stats = stats(&spec, &tally);
        // Beta(51, 951): mean ~0.051, 95% interval roughly [0.038, 0.066].
        assert!(
            (stats.variants[0].credible_low - 0.0385).abs() < 0.003,
            "{:?}",
            stats.variants[0]
        );
        assert!(
            (stats.variants[0].credible_high - 0.0659).abs() < 0.003,
            "{:?}",
            stats.variants[0]
        );
        // z = 2.74 -> p ~ 0.006
        assert!(
            (stats.variants[1].p_value_vs_control - 0.0061).abs() < 0.001,
            "{:?}",
            stats.variants[1]
        );
        assert!(stats.variants[1].probability_best > 0.99);
        assert_eq!(stats.winner, Some(1));
        assert!(stats.variants[1].expected_loss < stats.variants[0].expected_loss);
    }

    #[test]
    fn no_winner_before_min_samples() {
        let spec = spec();
        let mut tally = Tally::new(2);
        tally.exposures = vec![50, 50];
        tally.conversions = vec![1, 20];
        assert_eq!(stats(&spec, &tally).winner, None);
    }

    #[test]
    fn thompson_sampling_prefers_the_better_variant_after_burn_in() {
        let spec = spec();
        let mut tally = Tally::new(2);
        tally.exposures = vec![200, 200];
        tally.conversions = vec![10, 40];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let picks = (0..1000)
            .filter(|_| choose(&spec, &tally, &[0.1, 0.1], &mut rng).variant == 1)
            .count();
        // The clear leader gets its top-two share; the challenger the rest.
        assert!((700..800).contains(&picks), "{picks}");
        // During burn-in the traffic shares decide.
        let empty = Tally::new(2);
        let picks = (0..1000)
            .filter(|_| choose(&spec, &empty, &[0.9, 0.1], &mut rng).variant == 1)
            .count();
        assert!((400..600).contains(&picks), "{picks}");
    }
}
