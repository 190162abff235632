//! `nurture-rollout-sim`: the guard's sequential test
//! (`nurture_models::rollout::sequential`, the code the server runs) on
//! simulated canaries: false rollbacks of identical canaries (A/A), power
//! and looks to a decision for a regression, and the smallest regression
//! found with 80 % power, at several traffic levels. Prints the markdown of
//! docs/rollout-test.md.
//!
//! ```text
//! nurture-rollout-sim [--runs 10000] [--looks 12] [--canary-share 0.1] [--seed 1]
//! ```
//!
//! A look adds one interval's outcomes: `per` canary outcomes and
//! `per × (1 − share) / share` live ones. A run stops at the first rollback
//! or promotion, or after the last look.

mod operations;

use clap::Parser;
use nurture_models::rollout::sequential::{ArmLoss, Metric, SequentialTest, Verdict};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};

#[derive(Debug, Parser)]
#[command(name = "nurture-rollout-sim")]
struct Cli {
    /// Simulated rollouts per figure.
    #[arg(long, default_value_t = 10_000)]
    runs: usize,
    /// Looks (guard checks) per rollout at most.
    #[arg(long, default_value_t = 12)]
    looks: usize,
    /// Canary's share of traffic.
    #[arg(long, default_value_t = 0.1)]
    canary_share: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Canary outcomes per interval.
const TRAFFIC: [u64; 4] = [50, 200, 1_000, 20_000];

/// How one batch of simulated rollouts ended.
#[derive(Debug, Default, Clone)]
struct Tally {
    runs: usize,
    rollbacks: usize,
    promotions: usize,
    /// Look of each rollback (1-based).
    rollback_looks: Vec<usize>,
}

impl Tally {
    fn rollback_rate(&self) -> f64 {
        self.rollbacks as f64 / self.runs as f64
    }

    fn promotion_rate(&self) -> f64 {
        self.promotions as f64 / self.runs as f64
    }

    fn median_looks(&self) -> Option<usize> {
        let mut looks = self.rollback_looks.clone();
        looks.sort_unstable();
        looks.get(looks.len().saturating_sub(1) / 2).copied()
    }
}

/// Where each arm's per-outcome losses come from.
trait Source {
    /// Losses of `n` outcomes of the live arm, then of the canary.
    fn draw(&self, rng: &mut ChaCha8Rng, live: u64, canary: u64) -> (ArmLoss, ArmLoss);
}

/// 0/1 errors at fixed rates.
struct Errors {
    live: f64,
    canary: f64,
}

impl Source for Errors {
    fn draw(&self, rng: &mut ChaCha8Rng, live: u64, canary: u64) -> (ArmLoss, ArmLoss) {
        let count = |rng: &mut ChaCha8Rng, n: u64, p: f64| {
            ArmLoss::errors(n, Binomial::new(n, p).expect("a rate").sample(rng))
        };
        (count(rng, live, self.live), count(rng, canary, self.canary))
    }
}

/// Log-loss of a binary model: each outcome's true probability is drawn
/// from Beta-like scores; live predicts it exactly (calibrated), the canary
/// predicts it with noise of scale `noise` on the logit.
struct LogLosses {
    noise: f64,
}

impl LogLosses {
    fn loss(rng: &mut ChaCha8Rng, noise: f64) -> f64 {
        // True probability: logistic of a normal (mean −1.5, sd 1.5), so
        // around one in four outcomes is positive.
        let z = -1.5 + 1.5 * normal(rng);
        let truth = 1.0 / (1.0 + (-z).exp());
        let predicted = 1.0 / (1.0 + (-(z + noise * normal(rng))).exp());
        let positive = rng.random_bool(truth);
        -(if positive { predicted } else { 1.0 - predicted })
            .max(1e-12)
            .ln()
    }
}

impl Source for LogLosses {
    fn draw(&self, rng: &mut ChaCha8Rng, live: u64, canary: u64) -> (ArmLoss, ArmLoss) {
        let mut arms = (ArmLoss::default(), ArmLoss::default());
        for _ in 0..live {
            arms.0.push(Self::loss(rng, 0.0));
        }
        for _ in 0..canary {
            arms.1.push(Self::loss(rng, self.noise));
        }
        arms
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rand_distr::StandardNormal.sample(rng)
}

struct Sim {
    looks: usize,
    share: f64,
    runs: usize,
}

impl Sim {
    fn live_per(&self, per: u64) -> u64 {
        (per as f64 * (1.0 - self.share) / self.share).round() as u64
    }

    /// `runs` rollouts judged by `decide` at every look.
    fn run(
        &self,
        rng: &mut ChaCha8Rng,
        per: u64,
        runs: usize,
        source: &dyn Source,
        decide: &dyn Fn(&ArmLoss, &ArmLoss, usize) -> Decision,
    ) -> Tally {
        let mut tally = Tally {
            runs,
            ..Tally::default()
        };
        for _ in 0..runs {
            let (mut live, mut canary) = (ArmLoss::default(), ArmLoss::default());
            for look in 1..=self.looks {
                let (l, c) = source.draw(rng, self.live_per(per), per);
                live = live.merge(&l);
                canary = canary.merge(&c);
                match decide(&live, &canary, look) {
                    Decision::Rollback => {
                        tally.rollbacks += 1;
                        tally.rollback_looks.push(look);
                        break;
                    }
                    Decision::Promote => {
                        tally.promotions += 1;
                        break;
                    }
                    Decision::Continue => {}
                }
            }
        }
        tally
    }
}

enum Decision {
    Rollback,
    Promote,
    Continue,
}

fn guard(test: SequentialTest, metric: Metric) -> impl Fn(&ArmLoss, &ArmLoss, usize) -> Decision {
    move |live, canary, _| match test.judge(metric, live, canary) {
        Verdict::Rollback(_) => Decision::Rollback,
        Verdict::Promote(_) => Decision::Promote,
        Verdict::Continue(_) | Verdict::Wait { .. } => Decision::Continue,
    }
}

/// The reference the issue names: a two-sided z-test of the error rates at
/// every look, α = 0.05 split evenly over the looks (Bonferroni), rolling
/// back on the harmful side. Valid only for that many looks, and not a rule
/// Nurture runs.
fn bonferroni(looks: usize) -> impl Fn(&ArmLoss, &ArmLoss, usize) -> Decision {
    let z = inverse_normal(1.0 - 0.05 / (2.0 * looks as f64));
    move |live, canary, _| {
        let pooled = live.merge(canary).mean();
        let se = (pooled * (1.0 - pooled) * (1.0 / live.n as f64 + 1.0 / canary.n as f64)).sqrt();
        if se > 0.0 && (canary.mean() - live.mean()) / se > z {
            Decision::Rollback
        } else {
            Decision::Continue
        }
    }
}

fn inverse_normal(p: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().inverse_cdf(p)
}

fn main() {
    let cli = Cli::parse();
    let mut rng = ChaCha8Rng::seed_from_u64(cli.seed);
    let sim = Sim {
        looks: cli.looks,
        share: cli.canary_share,
        runs: cli.runs,
    };
    let test = SequentialTest::default();
    let errors_guard = guard(test, Metric::ErrorRate);
    let reference = bonferroni(cli.looks);
    let mut out = Vec::new();
    out.push("# The guard's sequential test: measured\n".to_owned());
    out.push(format!(
        "Generated by `benches/rollout/run.sh` (do not edit by hand): `nurture-rollout-sim --runs {} --looks {} --canary-share {} --seed {}`.",
        cli.runs, cli.looks, cli.canary_share, cli.seed
    ));
    out.push(format!(
        "Every figure runs the server's decision code (`nurture_models::rollout::sequential`) with its defaults: α = {}, τ = {} with {} of the rollback test's weight on τ itself, promotion margin {} of live's error rate, at least {} outcomes per arm. A rollout has at most {} looks; each look adds one interval of outcomes, the canary taking {}% of traffic (traffic below is canary outcomes per interval; live gets {}× as many). A rollout stops at its first rollback or promotion.\n",
        test.alpha,
        test.tau,
        test.point_weight,
        test.margin,
        test.min_outcomes,
        cli.looks,
        cli.canary_share * 100.0,
        sim.live_per(1_000) as f64 / 1_000.0
    ));

    out.push("## Identical canaries (A/A), error rate 2%\n".to_owned());
    out.push("| canary outcomes per interval | runs | rolled back | promoted | Bonferroni z-test rolled back |".to_owned());
    out.push("|---|---|---|---|---|".to_owned());
    for per in TRAFFIC {
        let same = Errors {
            live: 0.02,
            canary: 0.02,
        };
        let ours = sim.run(&mut rng, per, sim.runs, &same, &errors_guard);
        let theirs = sim.run(&mut rng, per, sim.runs, &same, &reference);
        out.push(format!(
            "| {per} | {} | {:.2}% | {:.1}% | {:.2}% |",
            ours.runs,
            ours.rollback_rate() * 100.0,
            ours.promotion_rate() * 100.0,
            theirs.rollback_rate() * 100.0
        ));
    }

    out.push("\n## A regression: error rate 2% → 3%\n".to_owned());
    out.push("| canary outcomes per interval | runs | power (rolled back) | median looks | Bonferroni power | Bonferroni median looks |".to_owned());
    out.push("|---|---|---|---|---|---|".to_owned());
    for per in TRAFFIC {
        let worse = Errors {
            live: 0.02,
            canary: 0.03,
        };
        let ours = sim.run(&mut rng, per, sim.runs, &worse, &errors_guard);
        let theirs = sim.run(&mut rng, per, sim.runs, &worse, &reference);
        out.push(format!(
            "| {per} | {} | {:.3} | {} | {:.3} | {} |",
            ours.runs,
            ours.rollback_rate(),
            looks(&ours),
            theirs.rollback_rate(),
            looks(&theirs)
        ));
    }

    out.push("\n## Smallest regression found with 80% power (live error rate 2%)\n".to_owned());
    out.push("Found by bisection on the canary's error rate, 2,000 runs per step.\n".to_owned());
    out.push(
        "| canary outcomes per interval | canary error rate | absolute | relative |".to_owned(),
    );
    out.push("|---|---|---|---|".to_owned());
    for per in TRAFFIC {
        let (mut low, mut high) = (0.02, 0.5);
        for _ in 0..14 {
            let mid = (low + high) / 2.0;
            let power = sim
                .run(
                    &mut rng,
                    per,
                    2_000,
                    &Errors {
                        live: 0.02,
                        canary: mid,
                    },
                    &errors_guard,
                )
                .rollback_rate();
            if power >= 0.8 {
                high = mid;
            } else {
                low = mid;
            }
        }
        out.push(format!(
            "| {per} | {:.4} | +{:.4} | +{:.0}% |",
            high,
            high - 0.02,
            (high / 0.02 - 1.0) * 100.0
        ));
    }

    // Log-loss: the canary's probabilities carry logit noise chosen so its
    // regression is as hard to see as 2% → 3% errors: the same effect per
    // standard error, with both arms' spreads and the same traffic split.
    let live_per_canary = (1.0 - cli.canary_share) / cli.canary_share;
    let target = 0.01 / (0.03 * 0.97 + 0.02 * 0.98 / live_per_canary).sqrt();
    // The same draws at every step (common random numbers), so the
    // bisection sees a smooth function of the noise.
    let moments = |noise: f64| {
        let mut rng = ChaCha8Rng::seed_from_u64(cli.seed.wrapping_add(1));
        let (live, canary) = LogLosses { noise }.draw(&mut rng, 400_000, 400_000);
        (
            (canary.mean() - live.mean())
                / (canary.variance() + live.variance() / live_per_canary).sqrt(),
            live,
            canary,
        )
    };
    let (mut low, mut high) = (0.0, 2.0);
    for _ in 0..16 {
        let mid = (low + high) / 2.0;
        if moments(mid).0 >= target {
            high = mid;
        } else {
            low = mid;
        }
    }
    let (effect, live, canary) = moments(high);
    let loss_test = SequentialTest {
        tau: canary.mean() - live.mean(),
        ..test
    };
    let loss_guard = guard(loss_test, Metric::LogLoss);
    out.push("\n## A log-loss regression of the same size\n".to_owned());
    out.push(format!(
        "Live predicts calibrated probabilities (mean log-loss {:.4}, sd {:.4} per outcome); the canary adds noise of sd {:.3} to the logit (mean log-loss {:.4}, sd {:.4}): +{:.4} nats, {:.4} standard errors per √(canary outcome), as for 2% → 3% errors ({target:.4}). The test runs with τ = {:.4} (the regression's size in nats); {} runs per row (each outcome is drawn, so fewer than above).\n",
        live.mean(),
        live.variance().sqrt(),
        high,
        canary.mean(),
        canary.variance().sqrt(),
        canary.mean() - live.mean(),
        effect,
        loss_test.tau,
        sim.runs / 2
    ));
    out.push(
        "| canary outcomes per interval | A/A rolled back | power | median looks |".to_owned(),
    );
    out.push("|---|---|---|---|".to_owned());
    for per in [50, 200, 1_000] {
        let same = sim.run(
            &mut rng,
            per,
            sim.runs / 2,
            &LogLosses { noise: 0.0 },
            &loss_guard,
        );
        let worse = sim.run(
            &mut rng,
            per,
            sim.runs / 2,
            &LogLosses { noise: high },
            &loss_guard,
        );
        out.push(format!(
            "| {per} | {:.2}% | {:.3} | {} |",
            same.rollback_rate() * 100.0,
            worse.rollback_rate(),
            looks(&worse)
        ));
    }
    operational_guards(&mut out, &mut rng, &sim);
    println!("{}", out.join("\n"));
}

/// The operational guards' section: A/A and power, per traffic level.
fn operational_guards(out: &mut Vec<String>, rng: &mut ChaCha8Rng, sim: &Sim) {
    use nurture_models::rollout::operations as guard;
    use operations::{Calls, LIVE};
    let policy = nurture_models::rollout::policy::RolloutPolicy::default();
    out.push("\n## Operational guards: failed calls and p99 latency\n".to_owned());
    out.push(format!(
        "The guards the server runs before the test above (`nurture_models::rollout::operations::check`), with the default policy: roll back when the canary's failure share exceeds {}× live's + {} point by more than {} standard errors (from {} canary calls), or when its p99 exceeds {}× live's and is at least {} ms slower (from {} calls on each arm). Here a look adds one interval of calls, the canary taking 10% (live 9× as many); live fails {}% of calls and answers in a log-normal time (median {} ms, σ = 0.5: p99 about 6.4 ms); latencies are drawn into the guard's own histogram buckets. {} runs per cell, ≤ {} looks. The guards need requests only, so they act before any outcome comes back; they are thresholds with wide margins rather than anytime-valid tests; the A/A column is their false-alarm rate.\n",
        policy.max_error_ratio,
        guard::ERROR_ALLOWANCE * 100.0,
        guard::ERROR_Z,
        guard::MIN_CALLS_FOR_ERRORS,
        policy.max_p99_ratio,
        guard::MIN_P99_GAP_SECS * 1e3,
        guard::MIN_CALLS_FOR_LATENCY,
        LIVE.failing * 100.0,
        LIVE.median * 1e3,
        sim.runs,
        sim.looks,
    ));
    let scenarios = [
        ("identical (A/A)", LIVE),
        (
            "fails 4% of calls",
            Calls {
                failing: 0.04,
                ..LIVE
            },
        ),
        (
            "fails 10% of calls",
            Calls {
                failing: 0.10,
                ..LIVE
            },
        ),
        (
            "1.5× slower (within the ratio)",
            Calls {
                median: LIVE.median * 1.5,
                ..LIVE
            },
        ),
        (
            "3× slower (p99 about 19 ms)",
            Calls {
                median: LIVE.median * 3.0,
                ..LIVE
            },
        ),
    ];
    out.push(format!(
        "| canary calls per interval | {} |",
        scenarios.map(|(name, _)| name).join(" | ")
    ));
    out.push(format!("|---|{}", "---|".repeat(scenarios.len())));
    for per in TRAFFIC {
        let cells: Vec<String> = scenarios
            .iter()
            .map(|(_, canary)| {
                let rate =
                    operations::rollback_rate(rng, &policy, per, sim.looks, sim.runs, *canary);
                format!("{:.2}%", rate * 100.0)
            })
            .collect();
        out.push(format!("| {per} | {} |", cells.join(" | ")));
    }
}

fn looks(tally: &Tally) -> String {
    tally
        .median_looks()
        .map_or_else(|| "-".to_owned(), |l| l.to_string())
}
