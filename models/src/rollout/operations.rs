//! The operational guards of a rollout: is the canary failing requests, or
//! slow, compared with live, on the same replicas over the same minutes?
//! Quality needs outcomes, which may take days; these need only requests,
//! so a canary that breaks serving is rolled back within seconds of enough
//! traffic.
//!
//! Each replica counts, per version and per minute, the scoring calls it
//! made, the ones that failed on the server's side, and their latency in a
//! log-spaced histogram ([`Operations`]); it carries the last minutes in its
//! replica report. Counts and histograms add up across replicas and
//! minutes, so the guard judges the fleet's window since the step began.

use serde::{Deserialize, Serialize};

use super::policy::RolloutPolicy;

/// Histogram buckets per doubling of latency: neighbouring buckets differ
/// by 19%.
pub const BUCKETS_PER_OCTAVE: f64 = 4.0;
/// Upper bound of bucket 0 (faster calls land there too).
pub const SMALLEST_SECS: f64 = 10e-6;
/// Buckets: the last ends at 10 µs · 2^24 ≈ 168 s and takes anything slower.
pub const LATENCY_BUCKETS: usize = 96;

/// The error guard judges only a canary with at least this many calls.
pub const MIN_CALLS_FOR_ERRORS: u64 = 100;
/// The latency guard judges only when each arm has at least this many
/// calls (the p99 of 500 calls is about its 5th slowest).
pub const MIN_CALLS_FOR_LATENCY: u64 = 500;
/// The canary's failure share must exceed `max_error_ratio` × live's plus
/// this, by more than [`ERROR_Z`] standard errors.
pub const ERROR_ALLOWANCE: f64 = 0.01;
/// Standard errors by which the canary's failure share must clear its
/// allowance (one-sided 0.05%).
pub const ERROR_Z: f64 = 3.29;
/// A p99 ratio over `max_p99_ratio` counts only when the canary's p99 is
/// also at least this much slower than live's: a 60 µs → 150 µs p99 is no
/// reason to roll back.
pub const MIN_P99_GAP_SECS: f64 = 0.002;

/// Scoring calls of one version: how many, how many failed on the
/// server's side, and how long they took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Operations {
    /// Calls.
    pub calls: u64,
    /// Calls that failed on the server's side (inference errors, shed,
    /// unavailable, past their deadline, abandoned).
    pub failures: u64,
    /// Latency histogram, sparse: (bucket, calls), ascending buckets.
    pub latency: Vec<(u16, u64)>,
}

impl Operations {
    /// The histogram bucket of a call that took `seconds`.
    pub fn bucket_of(seconds: f64) -> usize {
        // NaN and anything at or below the smallest bound go to bucket 0.
        if seconds.is_nan() || seconds <= SMALLEST_SECS {
            return 0;
        }
        let bucket = ((seconds / SMALLEST_SECS).log2() * BUCKETS_PER_OCTAVE).ceil();
        (bucket as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The upper bound of `bucket`, in seconds.
    pub fn bucket_upper(bucket: usize) -> f64 {
        SMALLEST_SECS * (bucket as f64 / BUCKETS_PER_OCTAVE).exp2()
    }

    /// Adds `other`'s calls.
    pub fn merge(&mut self, other: &Operations) {
        self.calls += other.calls;
        self.failures += other.failures;
        let mut merged = Vec::with_capacity(self.latency.len() + other.latency.len());
        let (mut a, mut b) = (
            self.latency.iter().peekable(),
            other.latency.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    let sum = (x.0, x.1 + y.1);
                    a.next();
                    b.next();
                    sum
                }
                (Some(x), Some(y)) if x.0 < y.0 => *a.next().expect("peeked"),
                (Some(_), Some(_)) | (None, Some(_)) => *b.next().expect("peeked"),
                (Some(_), None) => *a.next().expect("peeked"),
                (None, None) => break,
            };
            merged.push(next);
        }
        self.latency = merged;
    }

    /// Share of calls that failed (0 with no calls).
    pub fn failure_share(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }

    /// The `q` quantile of latency, as the upper bound of its bucket
    /// (`None` with no calls).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, n) in &self.latency {
            seen += n;
            if seen >= rank {
                return Some(Self::bucket_upper(usize::from(*bucket)));
            }
        }
        None
    }
}

/// One minute of one version's calls on one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationsMinute {
    /// The version.
    pub version: u64,
    /// Minutes since the Unix epoch.
    pub minute: i64,
    /// Its calls.
    #[serde(flatten)]
    pub operations: Operations,
}

/// Why an operational guard rolls a canary back.
#[derive(Debug, Clone, PartialEq)]
pub enum Breach {
    /// The canary fails too many calls.
    Errors {
        /// Canary (failures, calls).
        canary: (u64, u64),
        /// Live (failures, calls).
        live: (u64, u64),
        /// The largest share allowed.
        allowed: f64,
    },
    /// The canary is too slow.
    Latency {
        /// Canary p99, seconds, and calls.
        canary: (f64, u64),
        /// Live p99, seconds, and calls.
        live: (f64, u64),
        /// The largest ratio allowed.
        allowed: f64,
    },
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::Errors {
                canary,
                live,
                allowed,
            } => write!(
                f,
                "operational guard: the canary failed {} of {} calls ({:.2}%), live {} of {} \
                 ({:.2}%); at most {:.2}% allowed",
                canary.0,
                canary.1,
                100.0 * canary.0 as f64 / canary.1.max(1) as f64,
                live.0,
                live.1,
                100.0 * live.0 as f64 / live.1.max(1) as f64,
                100.0 * allowed
            ),
            Breach::Latency {
                canary,
                live,
                allowed,
            } => write!(
                f,
                "operational guard: the canary's p99 is {:.1} ms over {} calls, live's {:.1} ms \
                 over {}; at most {allowed}x allowed",
                canary.0 * 1e3,
                canary.1,
                live.0 * 1e3,
                live.1
            ),
        }
    }
}

/// Checks the canary's calls against live's under `policy`'s operational
/// guards; `None` while they hold or there are too few calls to tell.
pub fn check(policy: &RolloutPolicy, live: &Operations, canary: &Operations) -> Option<Breach> {
    if canary.calls >= MIN_CALLS_FOR_ERRORS {
        let share = canary.failure_share();
        let allowed = policy.max_error_ratio * live.failure_share() + ERROR_ALLOWANCE;
        let error = (share * (1.0 - share) / canary.calls as f64).sqrt();
        if share - ERROR_Z * error > allowed {
            return Some(Breach::Errors {
                canary: (canary.failures, canary.calls),
                live: (live.failures, live.calls),
                allowed,
            });
        }
    }
    if canary.calls >= MIN_CALLS_FOR_LATENCY && live.calls >= MIN_CALLS_FOR_LATENCY {
        let (Some(canary_p99), Some(live_p99)) = (canary.quantile(0.99), live.quantile(0.99))
        else {
            return None;
        };
        if canary_p99 > policy.max_p99_ratio * live_p99 && canary_p99 - live_p99 >= MIN_P99_GAP_SECS
        {
            return Some(Breach::Latency {
                canary: (canary_p99, canary.calls),
                live: (live_p99, live.calls),
                allowed: policy.max_p99_ratio,
            });
        }
    }
    None
}

/// Sums the minutes of `version` from minute `since` on.
pub fn sum(minutes: &[OperationsMinute], version: u64, since: i64) -> Operations {
    let mut total = Operations::default();
    for minute in minutes
        .iter()
        .filter(|m| m.version == version && m.minute >= since)
    {
        total.merge(&minute.operations);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(latencies: &[(f64, u64)], failures: u64) -> Operations {
        let mut ops = Operations::default();
        for (seconds, n) in latencies {
            ops.merge(&Operations {
                calls: *n,
                failures: 0,
                latency: vec![(Operations::bucket_of(*seconds) as u16, *n)],
            });
        }
        ops.failures = failures;
        ops
    }

    #[test]
    fn buckets_cover_every_latency_and_bound_it_within_a_fifth() {
        for seconds in [20e-6, 1e-4, 3.3e-3, 0.25, 9.0] {
            let bucket = Operations::bucket_of(seconds);
            let upper = Operations::bucket_upper(bucket);
            assert!(
                upper >= seconds && upper < seconds * 1.19,
                "{seconds}: {upper}"
            );
        }
        assert_eq!(Operations::bucket_of(0.0), 0);
        assert_eq!(Operations::bucket_of(f64::NAN), 0);
        assert_eq!(Operations::bucket_of(1e9), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn merging_adds_calls_bucket_by_bucket() {
        let mut a = calls(&[(1e-3, 5), (1e-2, 1)], 1);
        a.merge(&calls(&[(1e-3, 2), (1e-4, 3)], 2));
        assert_eq!(a.calls, 11);
        assert_eq!(a.failures, 3);
        let buckets: Vec<u16> = a.latency.iter().map(|(b, _)| *b).collect();
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        assert_eq!(a.latency.iter().map(|(_, n)| n).sum::<u64>(), 11);
        assert_eq!(
            a.quantile(0.5),
            Some(Operations::bucket_upper(Operations::bucket_of(1e-3)))
        );
    }

    #[test]
    fn the_error_guard_rolls_back_a_failing_canary_and_nothing_else() {
        let policy = RolloutPolicy::default();
        let live = calls(&[(1e-3, 10_000)], 100);
        // 1% like live: holds.
        assert_eq!(check(&policy, &live, &calls(&[(1e-3, 1000)], 10)), None);
        // 2% is within 2x + 1 point.
        assert_eq!(check(&policy, &live, &calls(&[(1e-3, 1000)], 20)), None);
        // 10% is not.
        let breach = check(&policy, &live, &calls(&[(1e-3, 1000)], 100)).expect("breach");
        assert!(matches!(
            breach,
            Breach::Errors {
                canary: (100, 1000),
                ..
            }
        ));
        assert!(
            breach.to_string().contains("failed 100 of 1000 calls"),
            "{breach}"
        );
        // Too few calls to tell, however bad.
        assert_eq!(check(&policy, &live, &calls(&[(1e-3, 99)], 99)), None);
    }

    #[test]
    fn the_latency_guard_needs_both_a_ratio_and_a_gap() {
        let policy = RolloutPolicy::default();
        let live = calls(&[(1e-3, 990), (4e-3, 10)], 0);
        // p99 8 ms vs 4 ms: within 2x.
        assert_eq!(
            check(&policy, &live, &calls(&[(1e-3, 990), (8e-3, 10)], 0)),
            None
        );
        // p99 20 ms: 5x and 16 ms slower.
        let breach = check(&policy, &live, &calls(&[(1e-3, 980), (20e-3, 20)], 0)).expect("breach");
        assert!(matches!(breach, Breach::Latency { .. }), "{breach:?}");
        assert!(breach.to_string().contains("p99"), "{breach}");
        // 5x but only microseconds apart: no.
        let fast = calls(&[(20e-6, 1000)], 0);
        assert_eq!(check(&policy, &fast, &calls(&[(100e-6, 1000)], 0)), None);
        // Not enough live calls to know its p99.
        let few = calls(&[(1e-3, 400)], 0);
        assert_eq!(check(&policy, &few, &calls(&[(50e-3, 1000)], 0)), None);
    }

    #[test]
    fn minutes_sum_per_version_from_a_minute_on() {
        let minute = |version, minute, n| OperationsMinute {
            version,
            minute,
            operations: calls(&[(1e-3, n)], 0),
        };
        let minutes = [
            minute(2, 10, 5),
            minute(2, 11, 7),
            minute(3, 11, 100),
            minute(2, 9, 50),
        ];
        assert_eq!(sum(&minutes, 2, 10).calls, 12);
        assert_eq!(sum(&minutes, 3, 0).calls, 100);
        let json = serde_json::to_string(&minutes[0]).unwrap();
        let back: OperationsMinute = serde_json::from_str(&json).unwrap();
        assert_eq!(back, minutes[0]);
    }
}
