//! The guard's decision: an anytime-valid sequential comparison of a
//! canary with the live version on their outcomes.
//!
//! Each arm contributes the per-outcome loss of its predictions (0/1 errors,
//! or log-loss) as a count, a sum and a sum of squares, which merge across
//! replicas. The effect is θ = mean loss of the canary − mean loss of live;
//! its estimate θ̂ has variance V = σ²(1/n_c + 1/n_l), σ² the pooled variance
//! of both arms' losses (p(1 − p) for errors), which is the variance when
//! the arms do not differ, the case whose false alarms the test bounds.
//!
//! **Rollback** is a mixture sequential probability ratio test (mSPRT;
//! Robbins 1970, Johari et al. 2017) of θ ≤ 0 against θ > 0 with a
//! half-normal mixing density of scale τ over the harmful side:
//!
//! ```text
//! Λ = 2 · sqrt(V / (V + τ²)) · exp(θ̂² τ² / (2 V (V + τ²))) · Φ(θ̂ τ / sqrt(V (V + τ²)))
//! ```
//!
//! A share `w` of the mixing weight sits on τ itself: that component is the
//! sequential probability ratio test of θ = τ against θ = 0,
//! `exp((τ θ̂ − τ²/2) / V)`, and the rollback statistic is
//! `w · SPRT + (1 − w) · Λ`. The point component is the sharpest test of the
//! regression the policy names (its boundary near the sample size where τ is
//! about three standard errors is ~10% lower in z than the half-normal's);
//! the half-normal component keeps the test consistent against regressions
//! smaller than τ/2, which the point component alone would never flag.
//!
//! Under θ ≤ 0, each component is (asymptotically) a non-negative
//! supermartingale with mean at most 1, hence so is their average, and by
//! Ville's inequality P(ever ≥ 1/α) ≤ α however often the guard looks. τ is
//! the size of regression the test is tuned to find; the figures in
//! docs/rollouts.md are measured by simulation through this code
//! (`benches/rollout`).
//!
//! **Promotion** uses the matching (1 − α) confidence sequence for θ (the
//! two-sided normal mixture): the canary is promoted once the sequence's
//! upper end is below the policy's margin, i.e. the canary is shown to be
//! at most that much worse than live.
//!
//! Too little data is neither: below the minimum outcomes per arm the
//! verdict is to wait.

use serde::{Deserialize, Serialize};
use statrs::function::erf::erfc;

/// One arm's outcomes: the count, sum and sum of squares of the
/// per-outcome loss. Mergeable: add the fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmLoss {
    /// Outcomes scored.
    pub n: u64,
    /// Sum of their losses.
    pub sum: f64,
    /// Sum of the squared losses.
    pub sum_sq: f64,
}

impl ArmLoss {
    /// `n` outcomes of which `errors` were wrong (0/1 losses).
    pub fn errors(n: u64, errors: u64) -> ArmLoss {
        ArmLoss {
            n,
            sum: errors as f64,
            sum_sq: errors as f64,
        }
    }

    /// Adds one outcome's loss.
    pub fn push(&mut self, loss: f64) {
        self.n += 1;
        self.sum += loss;
        self.sum_sq += loss * loss;
    }

    /// Both arms' outcomes together.
    pub fn merge(&self, other: &ArmLoss) -> ArmLoss {
        ArmLoss {
            n: self.n + other.n,
            sum: self.sum + other.sum,
            sum_sq: self.sum_sq + other.sum_sq,
        }
    }

    /// Mean loss (0 with no outcomes).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// Sample variance of the loss (0 below two outcomes).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }
}

/// What is compared between the arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of wrong answers (the most probable class was not the outcome).
    ErrorRate,
    /// Mean log-loss of the predicted probabilities.
    LogLoss,
}

impl Metric {
    /// Name for logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::LogLoss => "log_loss",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "error_rate" => Ok(Metric::ErrorRate),
            "log_loss" => Ok(Metric::LogLoss),
            other => Err(format!("{other:?}; use error_rate or log_loss")),
        }
    }
}

/// The test's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    /// Bound on the chance of rolling back a canary no worse than live,
    /// however often the guard looks (and on the chance that a promotion's
    /// interval misses the true effect).
    pub alpha: f64,
    /// Scale of the regression the test is tuned to find, in the metric's
    /// units (e.g. 0.01 = one percentage point of error rate).
    pub tau: f64,
    /// Promotion margin, relative to live's mean: a canary is promoted once
    /// it is shown to be at most this share worse than live.
    pub margin: f64,
    /// Fewest outcomes per arm before any verdict.
    pub min_outcomes: u64,
    /// Share of the rollback test's weight on the regression τ itself (a
    /// sequential probability ratio test of θ = τ); the rest is the
    /// half-normal mixture. Policies written before it existed judged with
    /// the mixture alone, and keep doing so (0 when absent).
    #[serde(default)]
    pub point_weight: f64,
}

impl Default for SequentialTest {
    fn default() -> Self {
        SequentialTest {
            alpha: 0.01,
            tau: 0.01,
            margin: 0.1,
            min_outcomes: 100,
            point_weight: 0.8,
        }
    }
}

/// What the test saw, as a decision's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The metric compared.
    pub metric: Metric,
    /// Canary's mean minus live's.
    pub effect: f64,
    /// The (1 − α) confidence sequence for the effect at this look.
    pub interval: (f64, f64),
    /// log Λ of the rollback test.
    pub log_likelihood_ratio: f64,
    /// ln(1/α): the rollback threshold for `log_likelihood_ratio`.
    pub threshold: f64,
    /// Live's outcomes and mean.
    pub live: (u64, f64),
    /// The canary's outcomes and mean.
    pub canary: (u64, f64),
}

/// The test's answer at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Too few outcomes on an arm to judge.
    Wait {
        /// Which arm and how many it has.
        reason: String,
    },
    /// Neither worse nor shown good enough yet.
    Continue(Evidence),
    /// The canary is worse than live.
    Rollback(Evidence),
    /// The canary is at most the margin worse than live.
    Promote(Evidence),
}

impl SequentialTest {
    /// Judges `canary` against `live` on `metric`.
    pub fn judge(&self, metric: Metric, live: &ArmLoss, canary: &ArmLoss) -> Verdict {
        for (name, arm) in [("live", live), ("canary", canary)] {
            if arm.n < self.min_outcomes.max(2) {
                return Verdict::Wait {
                    reason: format!(
                        "{name} has {} outcomes, the test needs {}",
                        arm.n,
                        self.min_outcomes.max(2)
                    ),
                };
            }
        }
        let (nl, nc) = (live.n as f64, canary.n as f64);
        let effect = canary.mean() - live.mean();
        let both = live.merge(canary);
        let spread = match metric {
            Metric::ErrorRate => both.mean() * (1.0 - both.mean()),
            Metric::LogLoss => both.variance(),
        };
        let variance = (spread * (1.0 / nl + 1.0 / nc))
            // No spread at all (e.g. no errors on either arm yet): nothing to
            // tell the arms apart; a floor keeps the formulas finite.
            .max(1e-18);
        let evidence = self.evidence(metric, effect, variance, live, canary);
        if evidence.log_likelihood_ratio >= evidence.threshold {
            Verdict::Rollback(evidence)
        } else if evidence.interval.1 < self.margin * live.mean() {
            Verdict::Promote(evidence)
        } else {
            Verdict::Continue(evidence)
        }
    }

    fn evidence(
        &self,
        metric: Metric,
        effect: f64,
        variance: f64,
        live: &ArmLoss,
        canary: &ArmLoss,
    ) -> Evidence {
        let tau2 = self.tau * self.tau;
        let spread = variance + tau2;
        let threshold = (1.0 / self.alpha).ln();
        let mixture = std::f64::consts::LN_2
            + 0.5 * (variance / spread).ln()
            + effect * effect * tau2 / (2.0 * variance * spread)
            + log_normal_cdf(effect * self.tau / (variance * spread).sqrt());
        let point = (self.tau * effect - tau2 / 2.0) / variance;
        let w = self.point_weight.clamp(0.0, 1.0);
        let log_likelihood_ratio = log_sum_exp(w.ln() + point, (1.0 - w).ln() + mixture);
        let radius =
            (variance * spread / tau2 * ((spread / variance).ln() + 2.0 * threshold)).sqrt();
        Evidence {
            metric,
            effect,
            interval: (effect - radius, effect + radius),
            log_likelihood_ratio,
            threshold,
            live: (live.n, live.mean()),
            canary: (canary.n, canary.mean()),
        }
    }
}

/// ln(eᵃ + eᵇ) without overflow; −∞ terms (a weight of 0) drop out.
fn log_sum_exp(a: f64, b: f64) -> f64 {
    let high = a.max(b);
    if high == f64::NEG_INFINITY {
        return high;
    }
    high + ((a - high).exp() + (b - high).exp()).ln()
}

/// ln Φ(x), accurate far into the lower tail.
fn log_normal_cdf(x: f64) -> f64 {
    if x > -30.0 {
        (0.5 * erfc(-x / std::f64::consts::SQRT_2)).ln()
    } else {
        // Mills ratio: Φ(x) ≈ φ(x)/|x| for very negative x.
        -0.5 * x * x - (-x).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(n: u64, rate: f64) -> ArmLoss {
        ArmLoss::errors(n, (n as f64 * rate).round() as u64)
    }

    #[test]
    fn too_little_data_waits_and_names_the_arm() {
        let test = SequentialTest::default();
        let verdict = test.judge(Metric::ErrorRate, &errors(10_000, 0.02), &errors(50, 0.5));
        let Verdict::Wait { reason } = verdict else {
            panic!("{verdict:?}")
        };
        assert!(reason.contains("canary has 50"), "{reason}");
        assert!(matches!(
            test.judge(Metric::ErrorRate, &ArmLoss::default(), &ArmLoss::default()),
            Verdict::Wait { .. }
        ));
    }

    #[test]
    fn a_clear_regression_rolls_back_with_its_evidence() {
        let test = SequentialTest::default();
        let Verdict::Rollback(evidence) = test.judge(
            Metric::ErrorRate,
            &errors(30_000, 0.02),
            &errors(3_000, 0.04),
        ) else {
            panic!("2% → 4% over 3,000 canary outcomes is a regression")
        };
        assert!((evidence.effect - 0.02).abs() < 1e-9);
        assert!(evidence.interval.0 > 0.0 && evidence.interval.1 > evidence.effect);
        assert_eq!(evidence.canary.0, 3_000);
        assert!(evidence.log_likelihood_ratio >= evidence.threshold);
    }

    #[test]
    fn a_better_canary_is_never_rolled_back() {
        let test = SequentialTest::default();
        for n in [200, 2_000, 20_000, 200_000] {
            let verdict = test.judge(Metric::ErrorRate, &errors(9 * n, 0.03), &errors(n, 0.02));
            assert!(!matches!(verdict, Verdict::Rollback(_)), "{n}: {verdict:?}");
        }
    }

    #[test]
    fn an_equal_canary_is_promoted_once_the_interval_is_narrow_enough() {
        let test = SequentialTest::default();
        // Little data: the interval is wider than the margin.
        assert!(matches!(
            test.judge(Metric::ErrorRate, &errors(9_000, 0.2), &errors(1_000, 0.2)),
            Verdict::Continue(_)
        ));
        let Verdict::Promote(evidence) = test.judge(
            Metric::ErrorRate,
            &errors(900_000, 0.2),
            &errors(100_000, 0.2),
        ) else {
            panic!("an equal canary with 100,000 outcomes is promoted")
        };
        assert!(evidence.interval.1 < 0.1 * 0.2);
    }

    #[test]
    fn no_errors_on_either_arm_decides_nothing() {
        let test = SequentialTest::default();
        let verdict = test.judge(
            Metric::ErrorRate,
            &ArmLoss::errors(5_000, 0),
            &ArmLoss::errors(500, 0),
        );
        // A zero-variance look is neither a rollback nor a free promotion
        // past the margin of a zero mean.
        assert!(matches!(verdict, Verdict::Continue(_)), "{verdict:?}");
    }

    #[test]
    fn log_loss_is_judged_on_its_spread() {
        let mut live = ArmLoss::default();
        let mut canary = ArmLoss::default();
        for i in 0..20_000 {
            live.push(0.3 + 0.2 * f64::from(i % 5) / 4.0);
        }
        for i in 0..2_000 {
            canary.push(0.45 + 0.2 * f64::from(i % 5) / 4.0);
        }
        assert!((canary.mean() - live.mean() - 0.15).abs() < 1e-9);
        assert!(matches!(
            SequentialTest::default().judge(Metric::LogLoss, &live, &canary),
            Verdict::Rollback(_)
        ));
    }

    #[test]
    fn the_point_share_sharpens_the_test_at_tau_and_the_mixture_keeps_it_consistent() {
        let mixture_only = SequentialTest {
            point_weight: 0.0,
            ..SequentialTest::default()
        };
        let point_only = SequentialTest {
            point_weight: 1.0,
            ..SequentialTest::default()
        };
        let llr = |test: &SequentialTest, live: &ArmLoss, canary: &ArmLoss| match test.judge(
            Metric::ErrorRate,
            live,
            canary,
        ) {
            Verdict::Continue(e) | Verdict::Rollback(e) | Verdict::Promote(e) => {
                e.log_likelihood_ratio
            }
            Verdict::Wait { reason } => panic!("{reason}"),
        };
        // 2% → 3% (a regression of τ) seen at about 3 standard errors:
        // rolled back with the default's point share, not by the mixture alone.
        let (live, canary) = (errors(21_600, 0.02), errors(2_400, 0.0295));
        assert!(matches!(
            SequentialTest::default().judge(Metric::ErrorRate, &live, &canary),
            Verdict::Rollback(_)
        ));
        assert!(matches!(
            mixture_only.judge(Metric::ErrorRate, &live, &canary),
            Verdict::Continue(_)
        ));
        // A regression of τ/4 with plenty of data: the point test alone
        // drifts away from it, the default still catches it.
        let (live, canary) = (errors(9_000_000, 0.02), errors(1_000_000, 0.0225));
        assert!(llr(&point_only, &live, &canary) < 0.0);
        assert!(matches!(
            SequentialTest::default().judge(Metric::ErrorRate, &live, &canary),
            Verdict::Rollback(_)
        ));
        // The weights are a convex mix: never above the larger component.
        let (live, canary) = (errors(21_600, 0.02), errors(2_400, 0.027));
        let mixed = llr(&SequentialTest::default(), &live, &canary);
        let high = llr(&point_only, &live, &canary).max(llr(&mixture_only, &live, &canary));
        assert!(mixed <= high + 1e-12, "{mixed} vs {high}");
    }

    #[test]
    fn a_policy_written_without_the_point_weight_keeps_the_mixture_alone() {
        let old = r#"{"alpha":0.01,"tau":0.01,"margin":0.1,"min_outcomes":100}"#;
        let test: SequentialTest = serde_json::from_str(old).unwrap();
        assert_eq!(test.point_weight, 0.0);
    }

    #[test]
    fn the_lower_tail_of_the_normal_is_continuous() {
        for x in [-29.9, -30.0, -30.1] {
            let exact = (0.5 * erfc(-x / std::f64::consts::SQRT_2)).ln();
            let tail = -0.5 * x * x - (-x).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
            if exact.is_finite() {
                assert!((exact - tail).abs() < 1e-2, "{x}: {exact} vs {tail}");
            }
            assert!(log_normal_cdf(x).is_finite());
        }
        assert!((log_normal_cdf(0.0) - 0.5f64.ln()).abs() < 1e-12);
    }
}
