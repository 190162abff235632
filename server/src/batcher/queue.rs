//! The batching decisions, free of threads and clocks so tests can drive
//! them: which waiting requests join a batch, and which are dropped.

use std::time::{Duration, Instant};

/// Something with a number of rows and a deadline.
pub trait Batchable {
    /// Rows it adds to a batch.
    fn rows(&self) -> usize;
    /// When its caller stops waiting.
    fn deadline(&self) -> Option<Instant>;
    /// Whether its caller has gone away.
    fn abandoned(&self) -> bool;
    /// Requests share a batch only when their keys are equal; `None` means
    /// the request must run alone.
    fn batch_key(&self) -> Option<u64> {
        Some(0)
    }
}

/// Why a request is dropped before inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its deadline passed.
    Expired,
    /// Its caller cancelled.
    Cancelled,
}

impl Dropped {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Expired => "expired",
            Dropped::Cancelled => "cancelled",
        }
    }
}

/// Whether a request should still be run at `now`.
pub fn admit<T: Batchable>(item: &T, now: Instant) -> Result<(), Dropped> {
    if item.abandoned() {
        return Err(Dropped::Cancelled);
    }
    if item.deadline().is_some_and(|deadline| deadline <= now) {
        return Err(Dropped::Expired);
    }
    Ok(())
}

/// A batch being assembled, bounded by rows (not requests).
#[derive(Debug)]
pub struct Batch<T> {
    max_rows: usize,
    rows: usize,
    items: Vec<T>,
}

impl<T: Batchable> Batch<T> {
    /// An empty batch of at most `max_rows` rows. A single request larger
    /// than that still runs, alone.
    pub fn new(max_rows: usize) -> Self {
        Batch {
            max_rows: max_rows.max(1),
            rows: 0,
            items: Vec::new(),
        }
    }

    /// Adds `item` if it fits; otherwise hands it back for the next batch.
    pub fn offer(&mut self, item: T) -> Option<T> {
        if let Some(first) = self.items.first() {
            let compatible = first.batch_key().is_some() && first.batch_key() == item.batch_key();
            if !compatible || self.rows + item.rows() > self.max_rows {
                return Some(item);
            }
        }
        self.rows += item.rows();
        self.items.push(item);
        None
    }

    /// Whether no further row fits (or the batch holds a request that must
    /// run alone).
    pub fn is_full(&self) -> bool {
        self.rows >= self.max_rows
            || self
                .items
                .first()
                .is_some_and(|first| first.batch_key().is_none())
    }

    /// Rows so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Removes the requests that should not run at `now`, returning them
    /// with the reason.
    pub fn drop_inadmissible(&mut self, now: Instant) -> Vec<(T, Dropped)> {
        let mut dropped = Vec::new();
        let mut kept = Vec::with_capacity(self.items.len());
        for item in self.items.drain(..) {
            match admit(&item, now) {
                Ok(()) => kept.push(item),
                Err(reason) => dropped.push((item, reason)),
            }
        }
        self.items = kept;
        self.rows = self.items.iter().map(Batchable::rows).sum();
        dropped
    }

    /// The requests, in arrival order.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// How a batcher decides, at submit time, whether a request may queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    /// Most rows waiting or running per version. A request larger than this
    /// is still taken when nothing else waits, and runs alone.
    pub capacity_rows: usize,
    /// Longest estimated wait in the queue before a request is refused
    /// (`None`: no bound beyond the capacity and the caller's deadline).
    pub max_queue_delay: Option<Duration>,
    /// Worker threads sharing the queue.
    pub workers: usize,
}

/// Why a request was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// The rows already queued plus this request's exceed the capacity.
    Full {
        /// Rows queued or running.
        queued: usize,
        /// The capacity in rows.
        capacity: usize,
    },
    /// The estimated wait passes `--max-queue-delay`.
    QueueDelay {
        /// Estimated wait before this request runs.
        wait: Duration,
        /// The bound.
        limit: Duration,
    },
    /// The request would finish after its deadline.
    Deadline {
        /// Estimated time until its answer.
        finish: Duration,
        /// Time left until its deadline.
        left: Duration,
    },
}

impl Refusal {
    /// Bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full { .. } => "queue_full",
            Refusal::QueueDelay { .. } => "queue_delay",
            Refusal::Deadline { .. } => "deadline",
        }
    }

    /// How long a client should wait before retrying: the estimated time
    /// for the queue to drain, at least a second (the `retry-after` header
    /// counts whole seconds).
    pub fn retry_after(self) -> Duration {
        let drain = match self {
            Refusal::Full { .. } | Refusal::Deadline { .. } => Duration::ZERO,
            Refusal::QueueDelay { wait, .. } => wait,
        };
        drain.max(Duration::from_secs(1))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full { queued, capacity } => {
                write!(f, "{queued} rows are queued and the capacity is {capacity}")
            }
            Refusal::QueueDelay { wait, limit } => write!(
                f,
                "the estimated wait of {:.1} ms passes the {:.1} ms bound",
                wait.as_secs_f64() * 1e3,
                limit.as_secs_f64() * 1e3
            ),
            Refusal::Deadline { finish, left } => write!(
                f,
                "the answer would take about {:.1} ms and the deadline is in {:.1} ms",
                finish.as_secs_f64() * 1e3,
                left.as_secs_f64() * 1e3
            ),
        }
    }
}

impl Admission {
    /// Whether a request of `rows` may queue behind `queued` rows, given the
    /// measured cost of one row (`None` until the first batch ran) and the
    /// time `left` until the caller's deadline. Waits are estimated as the
    /// queued rows spread over the workers; the answer as that wait plus
    /// this request's own rows.
    pub fn decide(
        &self,
        queued: usize,
        rows: usize,
        cost_per_row: Option<Duration>,
        left: Option<Duration>,
    ) -> Result<(), Refusal> {
        if queued > 0 && queued.saturating_add(rows) > self.capacity_rows {
            return Err(Refusal::Full {
                queued,
                capacity: self.capacity_rows,
            });
        }
        let Some(cost) = cost_per_row else {
            return Ok(());
        };
        let rows_of = |n: usize| cost.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        let wait = rows_of(queued.div_ceil(self.workers.max(1)));
        if let Some(limit) = self.max_queue_delay
            && wait > limit
        {
            return Err(Refusal::QueueDelay { wait, limit });
        }
        let finish = wait.saturating_add(rows_of(rows));
        if let Some(left) = left
            && finish > left
        {
            return Err(Refusal::Deadline { finish, left });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Item {
        rows: usize,
        deadline: Option<Instant>,
        abandoned: bool,
    }

    impl Batchable for Item {
        fn rows(&self) -> usize {
            self.rows
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn abandoned(&self) -> bool {
            self.abandoned
        }
    }

    fn item(rows: usize) -> Item {
        Item {
            rows,
            deadline: None,
            abandoned: false,
        }
    }

    #[test]
    fn batches_count_rows_not_requests() {
        let mut batch = Batch::new(8);
        assert!(batch.offer(item(3)).is_none());
        assert!(batch.offer(item(5)).is_none());
        assert!(batch.is_full());
        let back = batch.offer(item(1)).expect("no room left");
        assert_eq!(back.rows, 1);
        assert_eq!(batch.rows(), 8);
    }

    #[derive(Debug)]
    struct Keyed(Option<u64>);

    impl Batchable for Keyed {
        fn rows(&self) -> usize {
            1
        }
        fn deadline(&self) -> Option<Instant> {
            None
        }
        fn abandoned(&self) -> bool {
            false
        }
        fn batch_key(&self) -> Option<u64> {
            self.0
        }
    }

    #[test]
    fn only_requests_with_equal_keys_share_a_batch() {
        let mut batch = Batch::new(10);
        assert!(batch.offer(Keyed(Some(1))).is_none());
        assert!(batch.offer(Keyed(Some(2))).is_some());
        assert!(batch.offer(Keyed(Some(1))).is_none());
        let mut alone = Batch::new(10);
        assert!(alone.offer(Keyed(None)).is_none());
        assert!(alone.is_full());
        assert!(alone.offer(Keyed(None)).is_some());
    }

    #[test]
    fn an_oversized_request_runs_alone() {
        let mut batch = Batch::new(4);
        assert!(batch.offer(item(10)).is_none());
        assert!(batch.is_full());
        assert!(batch.offer(item(1)).is_some());
    }

    #[test]
    fn expired_and_cancelled_requests_are_dropped_before_inference() {
        let now = Instant::now();
        let mut batch = Batch::new(100);
        batch.offer(Item {
            rows: 1,
            deadline: Some(now - Duration::from_millis(1)),
            abandoned: false,
        });
        batch.offer(Item {
            rows: 2,
            deadline: Some(now + Duration::from_secs(1)),
            abandoned: false,
        });
        batch.offer(Item {
            rows: 4,
            deadline: None,
            abandoned: true,
        });
        let dropped = batch.drop_inadmissible(now);
        let reasons: Vec<Dropped> = dropped.iter().map(|(_, reason)| *reason).collect();
        assert_eq!(reasons, [Dropped::Expired, Dropped::Cancelled]);
        assert_eq!(batch.rows(), 2);
        assert_eq!(batch.into_items().len(), 1);
    }

    fn admission(capacity_rows: usize, max_queue_delay: Option<Duration>) -> Admission {
        Admission {
            capacity_rows,
            max_queue_delay,
            workers: 2,
        }
    }

    #[test]
    fn capacity_counts_rows_and_an_empty_queue_takes_anything() {
        let door = admission(512, None);
        assert_eq!(door.decide(0, 10_000, None, None), Ok(()));
        assert_eq!(door.decide(256, 256, None, None), Ok(()));
        assert_eq!(
            door.decide(257, 256, None, None),
            Err(Refusal::Full {
                queued: 257,
                capacity: 512
            })
        );
        assert_eq!(
            door.decide(1, 512, None, None).unwrap_err().as_str(),
            "queue_full"
        );
    }

    #[test]
    fn the_estimated_wait_is_held_against_the_bound_and_the_deadline() {
        let cost = Some(Duration::from_micros(10));
        // 200 queued rows over 2 workers: 100 rows of 10 µs = 1 ms of wait.
        let door = admission(10_000, Some(Duration::from_micros(999)));
        assert!(matches!(
            door.decide(200, 1, cost, None),
            Err(Refusal::QueueDelay { wait, .. }) if wait == Duration::from_millis(1)
        ));
        let door = admission(10_000, Some(Duration::from_millis(1)));
        assert_eq!(door.decide(200, 1, cost, None), Ok(()));
        // Its own 100 rows add 1 ms: 2 ms to the answer.
        assert!(matches!(
            door.decide(200, 100, cost, Some(Duration::from_micros(1_999))),
            Err(Refusal::Deadline { finish, .. }) if finish == Duration::from_millis(2)
        ));
        assert_eq!(
            door.decide(200, 100, cost, Some(Duration::from_millis(2))),
            Ok(())
        );
        // No measurement yet: only the capacity applies.
        assert_eq!(door.decide(9_000, 1, None, Some(Duration::ZERO)), Ok(()));
    }

    #[test]
    fn retry_after_is_the_drain_time_in_whole_seconds() {
        let long = Refusal::QueueDelay {
            wait: Duration::from_secs(3),
            limit: Duration::from_secs(1),
        };
        assert_eq!(long.retry_after(), Duration::from_secs(3));
        let full = Refusal::Full {
            queued: 1,
            capacity: 1,
        };
        assert_eq!(full.retry_after(), Duration::from_secs(1));
    }
}
