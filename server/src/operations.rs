//! Per-version counts of scoring calls for the rollout's operational guards
//! (`nurture_models::rollout::operations`): calls, server-side failures and
//! a latency histogram, per minute, for the last [`MINUTES`] minutes.
//!
//! Recording is a few relaxed atomic additions. A minute's slot is reset by
//! the first call that finds an older minute in it; calls racing with that
//! reset may be lost or land in the old minute, which a guard judging
//! hundreds of calls does not notice.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nurture_models::rollout::operations::{LATENCY_BUCKETS, Operations as Calls, OperationsMinute};

use crate::error::ServeError;

/// Minutes kept: a step's window is judged over at most this many.
pub const MINUTES: usize = 15;

#[derive(Debug)]
struct Minute {
    minute: AtomicI64,
    calls: AtomicU64,
    failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for Minute {
    fn default() -> Self {
        Minute {
            minute: AtomicI64::new(i64::MIN),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One version's calls over the last minutes, and since it was loaded.
#[derive(Debug)]
pub struct Operations {
    minutes: Box<[Minute; MINUTES]>,
    calls: AtomicU64,
    failures: AtomicU64,
    success_nanos: AtomicU64,
    failure_nanos: AtomicU64,
    last_unix_ms: AtomicU64,
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            minutes: Box::new(std::array::from_fn(|_| Minute::default())),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            success_nanos: AtomicU64::new(0),
            failure_nanos: AtomicU64::new(0),
            last_unix_ms: AtomicU64::new(0),
        }
    }
}

/// A version's calls since it was loaded (the protocol's statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Calls.
    pub calls: u64,
    /// Calls that failed on the server's side.
    pub failures: u64,
    /// Time spent in calls that succeeded.
    pub success_nanos: u64,
    /// Time spent in calls that failed.
    pub failure_nanos: u64,
    /// When the last call ended (0: never).
    pub last_unix_ms: u64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether a failed call is the server's failure rather than the client's
/// (a bad argument, an unknown version).
pub fn server_side(error: &ServeError) -> bool {
    matches!(
        error,
        ServeError::Inference(_)
            | ServeError::Overloaded { .. }
            | ServeError::Unavailable(_)
            | ServeError::DeadlineExceeded
    )
}

impl Operations {
    /// Counts one call that took `elapsed`, failed or not.
    pub fn record(&self, elapsed: Duration, failed: bool) {
        self.record_at(now_ms(), elapsed, failed);
    }

    /// Calls since the version was loaded.
    pub fn totals(&self) -> Totals {
        Totals {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            success_nanos: self.success_nanos.load(Ordering::Relaxed),
            failure_nanos: self.failure_nanos.load(Ordering::Relaxed),
            last_unix_ms: self.last_unix_ms.load(Ordering::Relaxed),
        }
    }

    fn record_at(&self, unix_ms: i64, elapsed: Duration, failed: bool) {
        let minute = unix_ms.div_euclid(60_000);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.failure_nanos.fetch_add(nanos, Ordering::Relaxed);
        } else {
            self.success_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        self.last_unix_ms
            .store(u64::try_from(unix_ms).unwrap_or(0), Ordering::Relaxed);
        let slot = &self.minutes[minute.rem_euclid(MINUTES as i64) as usize];
        let seen = slot.minute.load(Ordering::Relaxed);
        if seen != minute
            && slot
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            slot.calls.store(0, Ordering::Relaxed);
            slot.failures.store(0, Ordering::Relaxed);
            for bucket in &slot.latency {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[Calls::bucket_of(elapsed.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
    }

    /// Starts timing a call; the returned guard counts it when finished,
    /// or as a failure if it is dropped unfinished (the call was abandoned:
    /// its deadline passed or its client left).
    pub fn start(&self) -> Timing<'_> {
        Timing {
            operations: self,
            started: Instant::now(),
            finished: false,
        }
    }

    /// The minutes of the last [`MINUTES`] that saw calls, as `version`'s.
    pub fn snapshot(&self, version: u64) -> Vec<OperationsMinute> {
        self.snapshot_at(version, now_ms().div_euclid(60_000))
    }

    fn snapshot_at(&self, version: u64, now: i64) -> Vec<OperationsMinute> {
        let mut out: Vec<OperationsMinute> = self
            .minutes
            .iter()
            .filter_map(|slot| {
                let minute = slot.minute.load(Ordering::Acquire);
                let calls = slot.calls.load(Ordering::Relaxed);
                if calls == 0 || minute > now || minute <= now - MINUTES as i64 {
                    return None;
                }
                let latency = slot
                    .latency
                    .iter()
                    .enumerate()
                    .filter_map(|(bucket, n)| {
                        let n = n.load(Ordering::Relaxed);
                        (n > 0).then_some((bucket as u16, n))
                    })
                    .collect();
                Some(OperationsMinute {
                    version,
                    minute,
                    operations: Calls {
                        calls,
                        failures: slot.failures.load(Ordering::Relaxed),
                        latency,
                    },
                })
            })
            .collect();
        out.sort_by_key(|m| m.minute);
        out
    }
}

/// A call being timed ([`Operations::start`]).
#[derive(Debug)]
pub struct Timing<'a> {
    operations: &'a Operations,
    started: Instant,
    finished: bool,
}

impl Timing<'_> {
    /// Counts the call with its result.
    pub fn finish(mut self, failed: bool) {
        self.finished = true;
        self.operations.record(self.started.elapsed(), failed);
    }
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.operations.record(self.started.elapsed(), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_per_minute_and_old_minutes_are_forgotten() {
        let ops = Operations::default();
        ops.record_at(100 * 60_000, Duration::from_millis(1), false);
        ops.record_at(100 * 60_000, Duration::from_millis(1), true);
        ops.record_at(101 * 60_000, Duration::from_millis(30), false);
        let minutes = ops.snapshot_at(7, 101);
        assert_eq!(minutes.len(), 2);
        assert_eq!((minutes[0].minute, minutes[0].operations.calls), (100, 2));
        assert_eq!(minutes[0].operations.failures, 1);
        assert_eq!(
            minutes[1].operations.quantile(0.5).map(|s| s > 0.03),
            Some(true)
        );
        assert!(minutes.iter().all(|m| m.version == 7));
        // Minute 115 reuses minute 100's slot: its counts start afresh.
        ops.record_at(115 * 60_000, Duration::from_millis(1), false);
        let minutes = ops.snapshot_at(7, 115);
        assert_eq!(
            minutes
                .iter()
                .map(|m| (m.minute, m.operations.calls))
                .collect::<Vec<_>>(),
            vec![(101, 1), (115, 1)]
        );
        // Fifteen minutes later only the newest is left.
        assert_eq!(ops.snapshot_at(7, 115 + 14).len(), 1);
    }

    #[test]
    fn an_abandoned_call_counts_as_failed() {
        let ops = Operations::default();
        ops.start().finish(false);
        drop(ops.start());
        let minutes = ops.snapshot(1);
        let total: (u64, u64) = minutes
            .iter()
            .map(|m| (m.operations.calls, m.operations.failures))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert_eq!(total, (2, 1));
        let totals = ops.totals();
        assert_eq!((totals.calls, totals.failures), (2, 1));
        assert!(totals.last_unix_ms > 0);
    }

    #[test]
    fn only_the_servers_own_failures_count() {
        assert!(server_side(&ServeError::Inference("boom".into())));
        assert!(server_side(&ServeError::DeadlineExceeded));
        assert!(!server_side(&ServeError::InvalidArgument("x".into())));
        assert!(!server_side(&ServeError::NotFound("v".into())));
    }
}
