//! The batching decisions, free of threads and clocks so tests can drive
//! them: which waiting requests join a batch, and which are dropped.

use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
