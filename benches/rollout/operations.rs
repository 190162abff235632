//! The operational guards (`nurture_models::rollout::operations::check`,
//! the code the server runs) on simulated calls: false rollbacks when the
//! canary fails and answers like live, and how often a canary that fails
//! more, or is slower, is caught.
//!
//! A look adds one interval of calls: `per` to the canary and 9× as many
//! to live (a 10% canary). Failures are binomial; latencies are log-normal
//! (median 2 ms, σ = 0.5 in log space: p99 about 6.4 ms), drawn straight
//! into the guard's histogram buckets (a multinomial, one binomial per
//! bucket), so 20,000 calls per interval cost no more than 50.

use nurture_models::rollout::operations::{LATENCY_BUCKETS, Operations, check};
use nurture_models::rollout::policy::RolloutPolicy;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use statrs::distribution::{ContinuousCDF, LogNormal};

/// How one arm's calls behave.
#[derive(Clone, Copy)]
pub struct Calls {
    /// Share of calls that fail.
    pub failing: f64,
    /// Median latency, seconds.
    pub median: f64,
}

/// Live's calls in every scenario.
pub const LIVE: Calls = Calls {
    failing: 0.01,
    median: 0.002,
};

const SIGMA: f64 = 0.5;

/// The probability of each histogram bucket under a log-normal latency.
fn bucket_probabilities(median: f64) -> Vec<f64> {
    let law = LogNormal::new(median.ln(), SIGMA).expect("valid log-normal");
    let mut below = 0.0;
    (0..LATENCY_BUCKETS)
        .map(|bucket| {
            let upper = if bucket + 1 == LATENCY_BUCKETS {
                1.0
            } else {
                law.cdf(Operations::bucket_upper(bucket))
            };
            let p = (upper - below).max(0.0);
            below = upper;
            p
        })
        .collect()
}

/// `n` calls drawn into the guard's counts.
fn draw(rng: &mut ChaCha8Rng, n: u64, calls: Calls, buckets: &[f64]) -> Operations {
    let failures = Binomial::new(n, calls.failing).expect("valid").sample(rng);
    let mut latency = Vec::new();
    let (mut left, mut mass) = (n, 1.0);
    for (bucket, p) in buckets.iter().enumerate() {
        if left == 0 || mass <= 0.0 {
            break;
        }
        let k = Binomial::new(left, (p / mass).clamp(0.0, 1.0))
            .expect("valid")
            .sample(rng);
        if k > 0 {
            latency.push((bucket as u16, k));
        }
        left -= k;
        mass -= p;
    }
    if left > 0 {
        latency.push(((LATENCY_BUCKETS - 1) as u16, left));
    }
    Operations {
        calls: n,
        failures,
        latency,
    }
}

/// Share of `runs` rollouts with `canary` calls rolled back within `looks`.
pub fn rollback_rate(
    rng: &mut ChaCha8Rng,
    policy: &RolloutPolicy,
    per: u64,
    looks: usize,
    runs: usize,
    canary: Calls,
) -> f64 {
    let live_buckets = bucket_probabilities(LIVE.median);
    let canary_buckets = bucket_probabilities(canary.median);
    let mut rolled_back = 0;
    for _ in 0..runs {
        let (mut live, mut judged) = (Operations::default(), Operations::default());
        for _ in 0..looks {
            live.merge(&draw(rng, per * 9, LIVE, &live_buckets));
            judged.merge(&draw(rng, per, canary, &canary_buckets));
            if check(policy, &live, &judged).is_some() {
                rolled_back += 1;
                break;
            }
        }
    }
    rolled_back as f64 / runs as f64
}
