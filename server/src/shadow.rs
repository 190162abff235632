//! Shadow traffic: a copy of a share of the live version's requests goes to
//! the shadow version (`nurturectl shadow MODEL N --percent P`), off the
//! response path. Its answers are never returned: they get their own
//! prediction ids (arm `shadow`) in the prediction log, and are scored on the
//! outcomes reported for the live answers they mirror.
//!
//! Nothing of the shadow delays an answer: the request path only decides
//! (share, room) and hands a copy of the items to a bounded queue, waking
//! nobody. Everything else runs at the lowest scheduling priority, so the
//! shadow gets a core only when live traffic leaves one free: a collector
//! thread takes the queue every 10 ms, builds the shadow's rows,
//! scores them on the shadow's own instance (whose workers run at that
//! priority too), mints the shadow's ids, logs its answers and remembers them
//! for scoring. When it falls behind, the queue fills and mirrors are shed
//! (counted) before anything is built for them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::Duration;

use nurture_models::feedback::{Arm, Prediction, ScoredOutcome, outcome_key};
use nurture_models::input::LeadValues;
use tokio::sync::watch;

use crate::batcher::Rows;
use crate::deployment::Deployment;
use crate::feedback::{Inputs, Served};
use crate::model::LoadedVersion;

/// Mirrored requests waiting for the collector; past this they are shed (it
/// runs only on idle cores, which a busy neighbour can take for tens of
/// milliseconds: 4,096 is 160 ms at 25,000 mirrors a second, a few hundred
/// bytes each).
const QUEUE: usize = 4096;
/// How often the collector takes the queue (the request path never wakes
/// it). Shadow answers are only scored when outcomes come, so they can wait:
/// every 10 ms rather than every 1 ms, the shadow's threads wake a tenth as
/// often and score batches ten times larger, which cut the shadow's CPU per
/// mirrored request from 9.3 to 6.1 µs (benches/shadow, open loop at half
/// the closed-loop rate). The queue holds 40 ms of mirrors even at 100,000
/// a second.
const TAKE_EVERY: Duration = Duration::from_millis(10);
/// Most rows scored in one call to the shadow.
const MOST_ROWS: usize = 256;
/// The async runtime workers' CPU share (see [`crate::load`]) at or above
/// which the replica counts as busy and every mirror is shed ...
const BUSY_FROM: f64 = 0.8;
/// ... until it falls below this (the gap keeps a replica near the line
/// from flapping).
const BUSY_UNTIL: f64 = 0.7;
/// Shortest span the CPU share is measured over.
const LOAD_WINDOW: Duration = Duration::from_millis(250);

/// Whether the replica is busy, given whether it was and the workers' CPU
/// share over the last window. A replica at capacity keeps the workers
/// that decode, route and answer requests running nearly all the time; at
/// half load, about half. The idle gaps a saturated replica leaves are
/// where a `SCHED_IDLE` shadow runs, and running there still cost live
/// throughput (caches, sibling hyperthreads, preemptions: 6% at 76%
/// mirrored, measured): so while busy, the shadow is shed whole.
fn busy(was: bool, share: f64) -> bool {
    share >= BUSY_FROM || (was && share >= BUSY_UNTIL)
}

/// What a mirrored request's items were, for the shadow's log rows.
#[derive(Debug)]
pub enum MirrorInputs {
    /// Model columns, row-major (`width` per row), in the shadow's layout.
    Columns(Vec<f32>),
    /// Leads.
    Leads(Vec<LeadValues>),
    /// Texts.
    Texts(Vec<String>),
}

/// A copy of one live request for the shadow: one row per item.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow version.
    pub shadow: Arc<LoadedVersion>,
    /// The items (the shadow's rows are built from them off the request
    /// path, and they go to the log).
    pub inputs: MirrorInputs,
    /// The live answers' prediction ids, one per item.
    pub live_ids: Vec<String>,
}

impl Mirror {
    /// The shadow's rows, one per item.
    fn rows(&self) -> Option<Rows> {
        let items = self.live_ids.len().max(1);
        match &self.inputs {
            MirrorInputs::Columns(values) => Some(Rows::Features {
                width: values.len() / items,
                values: values.clone(),
            }),
            MirrorInputs::Texts(texts) => Some(Rows::Texts(texts.clone())),
            MirrorInputs::Leads(leads) => {
                let layout = self.shadow.layout.as_ref()?;
                let mut values = Vec::new();
                for lead in leads {
                    layout.push_row(lead, &[], "lead", &mut values).ok()?;
                }
                Some(Rows::Features {
                    width: layout.width(),
                    values,
                })
            }
        }
    }
}

/// The request path's side: decides which requests are mirrored and hands
/// them over without waiting.
#[derive(Debug)]
pub struct Shadows {
    sender: crossbeam_channel::Sender<Mirror>,
    requests: AtomicU64,
    /// Set by the collector while the replica is busy (see [`busy`]).
    busy: Arc<AtomicBool>,
}

/// Mirrors handed over and not yet taken by the collector, and the flag it
/// sets while the replica is busy.
#[derive(Debug)]
pub struct MirrorQueue(crossbeam_channel::Receiver<Mirror>, Arc<AtomicBool>);

impl Shadows {
    /// The handle, and the queue its collector takes mirrors from.
    pub fn new() -> (Self, MirrorQueue) {
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE);
        let busy = Arc::new(AtomicBool::new(false));
        (
            Shadows {
                sender,
                requests: AtomicU64::new(0),
                busy: busy.clone(),
            },
            MirrorQueue(receiver, busy),
        )
    }

    /// The shadow to mirror a request answered on `arm` to: only live
    /// answers, the shadow's share of them (every `100 / percent`-th, evenly),
    /// and only while the replica is not busy and the queue has room; a
    /// mirror that is not taken is shed and counted here, before anything is
    /// built for it.
    pub fn wants(&self, deployment: &Deployment, arm: Arm) -> Option<Arc<LoadedVersion>> {
        let (shadow, percent) = deployment.shadow.as_ref()?;
        if arm != Arm::Live {
            return None;
        }
        if *percent < 100 {
            let n = self.requests.fetch_add(1, Ordering::Relaxed);
            // Request n is mirrored when the running share crosses a whole one.
            let share = |n: u64| n * u64::from(*percent) / 100;
            if share(n + 1) == share(n) {
                return None;
            }
        }
        if self.busy.load(Ordering::Relaxed) || self.sender.is_full() {
            shadow.shadow_counts.shed.increment(1);
            return None;
        }
        Some(shadow.clone())
    }

    /// Hands a mirror over (shed and counted if the queue just filled).
    pub fn offer(&self, mirror: Mirror) {
        if let Err(error) = self.sender.try_send(mirror) {
            error.into_inner().shadow.shadow_counts.shed.increment(1);
        }
    }

    /// Counts a request that could not be mirrored because the shadow
    /// takes other inputs than the live version (another feature layout).
    pub fn incompatible(&self, shadow: &LoadedVersion) {
        shadow.shadow_counts.incompatible.increment(1);
    }
}

/// `nurture_shadow_requests_total{model,result}` of one model.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Scored by the shadow, logged, remembered.
    pub mirrored: metrics::Counter,
    /// Dropped: the shadow was behind.
    pub shed: metrics::Counter,
    /// Not mirrored: the shadow takes other inputs.
    pub incompatible: metrics::Counter,
    /// The shadow failed to answer.
    pub failed: metrics::Counter,
}

impl Counts {
    /// The counters of `model`, created at zero.
    pub fn new(model: &str) -> Self {
        let counter = |result: &'static str| {
            let counter = metrics::counter!("nurture_shadow_requests_total", "model" => model.to_owned(), "result" => result);
            counter.increment(0);
            counter
        };
        Counts {
            mirrored: counter("mirrored"),
            shed: counter("shed"),
            incompatible: counter("incompatible"),
            failed: counter("failed"),
        }
    }
}

/// Scores mirrors on the shadow and, as answers come back, mints their
/// ids, logs them and remembers them for scoring: on a thread of its own at
/// the lowest priority.
#[derive(Debug)]
pub struct Collector {
    receiver: crossbeam_channel::Receiver<Mirror>,
    busy: Arc<AtomicBool>,
    served: Arc<Served>,
    fleet: Arc<crate::feedback::Fleet>,
    log: ShadowLog,
}

/// The shadow's rows of the prediction log, written by the collector itself
/// (so their encoding, too, runs at the lowest priority): a file per model
/// and day every [`SHADOW_FLUSH`] or [`SHADOW_FILE_ROWS`].
#[derive(Debug)]
struct ShadowLog {
    replica: String,
    files: std::collections::BTreeMap<(Arc<str>, i64), nurture_models::feedback::log::LogBatch>,
    rows: usize,
    flushed: std::time::Instant,
}

/// How often the shadow's log rows are written.
const SHADOW_FLUSH: Duration = Duration::from_secs(1);
/// The store's budget for the shadow log's last write, at shutdown.
const FINAL_WRITE: Duration = Duration::from_secs(1);
/// Most shadow rows per file.
const SHADOW_FILE_ROWS: usize = 10_000;

impl ShadowLog {
    fn push(&mut self, shadow: &LoadedVersion, row: &nurture_models::feedback::log::Row<'_>) {
        let day = row.served_at_ms.div_euclid(crate::feedback::DAY_MS);
        self.files
            .entry((shadow.shared_name.clone(), day))
            .or_insert_with(|| nurture_models::feedback::log::LogBatch::new(shadow.kind()))
            .push(row);
        self.rows += 1;
    }

    /// Writes what waits, if it is time (or `now`), blocking on the store
    /// from this thread.
    fn flush(
        &mut self,
        fleet: &crate::feedback::Fleet,
        runtime: &tokio::runtime::Handle,
        now: bool,
    ) {
        if !now && self.rows < SHADOW_FILE_ROWS && self.flushed.elapsed() < SHADOW_FLUSH {
            return;
        }
        self.flushed = std::time::Instant::now();
        self.rows = 0;
        for ((model, day), batch) in std::mem::take(&mut self.files) {
            let count = batch.len() as u64;
            let written = nurture_models::feedback::log::encode(&model, &self.replica, &[batch])
                .and_then(|bytes| {
                    let date = crate::feedback::log_date(day);
                    runtime.block_on(async {
                        let write = fleet.store().write_predictions(&model, &date, bytes);
                        // At shutdown the store gets a short budget: a store
                        // that is down must not hold the exit.
                        if now {
                            tokio::time::timeout(FINAL_WRITE, write)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(nurture_models::Error::Store(format!(
                                        "the shadow log's last write took over {FINAL_WRITE:?}"
                                    )))
                                })
                        } else {
                            write.await
                        }
                    })
                })
                .map(|_| ());
            crate::feedback::count_log_file(&model, count, written);
        }
    }
}

impl Collector {
    /// The collector of `queue`'s mirrors: their ids are minted through
    /// `served` (and logged when its log samples them, as `replica`), and
    /// remembered for scoring in `fleet`.
    pub fn new(
        queue: MirrorQueue,
        served: Arc<Served>,
        fleet: Arc<crate::feedback::Fleet>,
        replica: &str,
    ) -> Self {
        Collector {
            receiver: queue.0,
            busy: queue.1,
            served,
            fleet,
            log: ShadowLog {
                replica: replica.to_owned(),
                files: Default::default(),
                rows: 0,
                flushed: std::time::Instant::now(),
            },
        }
    }

    /// Starts its thread (call it on the async runtime, whose handle it
    /// keeps for store writes), which stops at `shutdown`.
    pub fn start(mut self, shutdown: watch::Receiver<bool>) -> std::thread::JoinHandle<()> {
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("shadow-collector".to_owned())
            .spawn(move || {
                crate::batcher::lower_priority("shadow collector");
                let mut load = crate::load::IoLoad::default();
                while !*shutdown.borrow() {
                    if let Some(share) = load.sample(LOAD_WINDOW) {
                        let was = self.busy.load(Ordering::Relaxed);
                        self.busy.store(busy(was, share), Ordering::Relaxed);
                    }
                    if self.busy.load(Ordering::Relaxed) {
                        self.shed_waiting();
                    } else {
                        self.take();
                    }
                    self.log.flush(&self.fleet, &runtime, false);
                    std::thread::sleep(TAKE_EVERY);
                }
                self.log.flush(&self.fleet, &runtime, true);
            })
            .expect("the OS can start a thread")
    }

    /// Sheds (and counts) what the queue holds, unscored.
    fn shed_waiting(&self) {
        for mirror in self.receiver.try_iter() {
            mirror.shadow.shadow_counts.shed.increment(1);
        }
    }

    /// Scores what the queue holds, a few mirrors of one shadow per call.
    fn take(&mut self) {
        let mut group: Vec<Mirror> = Vec::new();
        let mut rows = 0;
        let waiting: Vec<Mirror> = self.receiver.try_iter().collect();
        for mirror in waiting {
            let same = group.first().is_none_or(|first| {
                Arc::ptr_eq(&first.shadow, &mirror.shadow)
                    && std::mem::discriminant(&first.inputs)
                        == std::mem::discriminant(&mirror.inputs)
            });
            if !same || rows + mirror.live_ids.len() > MOST_ROWS {
                self.score(std::mem::take(&mut group));
                rows = 0;
            }
            rows += mirror.live_ids.len();
            group.push(mirror);
        }
        self.score(group);
    }

    /// Scores mirrors of one shadow (inputs of one sort) in one call.
    fn score(&mut self, group: Vec<Mirror>) {
        let Some(first) = group.first() else {
            return;
        };
        let shadow = first.shadow.clone();
        let mut all: Option<Rows> = None;
        let mut scored: Vec<&Mirror> = Vec::new();
        for mirror in &group {
            let Some(rows) = mirror.rows() else {
                shadow.shadow_counts.incompatible.increment(1);
                continue;
            };
            if crate::services::append(&mut all, rows).is_err() {
                shadow.shadow_counts.incompatible.increment(1);
                continue;
            }
            scored.push(mirror);
        }
        let Some(rows) = all else {
            return;
        };
        let answer = shadow
            .batcher
            .submit(rows, None)
            .ok()
            .and_then(|answer| answer.blocking_recv().ok())
            .and_then(Result::ok);
        let Some(answer) = answer else {
            for mirror in &scored {
                mirror.shadow.shadow_counts.failed.increment(1);
            }
            return;
        };
        let classes = shadow.manifest.labels.len().max(1);
        let mut offset = 0;
        for mirror in scored {
            let end = offset + mirror.live_ids.len() * classes;
            match answer.probabilities.get(offset..end) {
                Some(probabilities) => self.answered(mirror, probabilities),
                None => mirror.shadow.shadow_counts.failed.increment(1),
            }
            offset = end;
        }
    }

    fn answered(&mut self, mirror: &Mirror, probabilities: &[f32]) {
        let shadow = &mirror.shadow;
        let classes = shadow.manifest.labels.len().max(1);
        let rows = probabilities.len() / classes;
        if rows != mirror.live_ids.len() {
            shadow.shadow_counts.failed.increment(1);
            return;
        }
        let width = match &mirror.inputs {
            MirrorInputs::Columns(values) => values.len() / rows.max(1),
            _ => 0,
        };
        for (row, (live_id, row_probabilities)) in mirror
            .live_ids
            .iter()
            .zip(probabilities.chunks(classes))
            .enumerate()
        {
            let mut inputs = Inputs {
                mirror_of: Some(live_id),
                ..Inputs::default()
            };
            match &mirror.inputs {
                MirrorInputs::Columns(values) => {
                    inputs.columns = shadow
                        .layout
                        .as_ref()
                        .map(|layout| (layout, &values[row * width..(row + 1) * width]));
                }
                MirrorInputs::Leads(leads) => inputs.lead = leads.get(row),
                MirrorInputs::Texts(texts) => inputs.text = texts.get(row).map(String::as_str),
            }
            let prediction = crate::services::prediction_of(row_probabilities);
            let log = &mut self.log;
            let id = self.served.answer_into(
                shadow,
                Arm::Shadow,
                inputs,
                prediction.clone(),
                row_probabilities,
                |row| log.push(shadow, row),
            );
            self.fleet
                .remember_mirror(live_id, &id, shadow.version, prediction);
        }
        shadow.shadow_counts.mirrored.increment(1);
    }
}

/// Recently mirrored live answers: live id → the shadow's answer, so an
/// outcome of the live answer also scores the shadow. Bounded (oldest
/// forgotten first): the shadow is scored on outcomes that come back while
/// their mirror is remembered (docs/rollouts.md, "Shadow").
#[derive(Debug)]
pub struct MirrorMemory {
    by_live: HashMap<String, Remembered>,
    order: VecDeque<String>,
    capacity: usize,
}

/// The shadow's answer to a mirrored request item.
#[derive(Debug, Clone, PartialEq)]
pub struct Remembered {
    /// The shadow's own prediction id.
    pub id: String,
    /// The shadow version.
    pub version: u64,
    /// Its prediction.
    pub prediction: Prediction,
}

impl MirrorMemory {
    /// Remembers at most `capacity` mirrors.
    pub fn new(capacity: usize) -> Self {
        MirrorMemory {
            by_live: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Remembers the shadow's answer to the item answered as `live_id`.
    pub fn remember(&mut self, live_id: &str, remembered: Remembered) {
        if self.capacity == 0 {
            return;
        }
        if self
            .by_live
            .insert(live_id.to_owned(), remembered)
            .is_none()
        {
            self.order.push_back(live_id.to_owned());
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.by_live.remove(&oldest);
            }
        }
    }

    /// The shadow's outcome for a live answer's outcome, if that answer was
    /// mirrored: same label, value and times; the shadow's version, arm,
    /// prediction and id; an idempotency key of its own, so a replayed
    /// outcome scores the shadow once.
    pub fn shadow_outcome(&self, model: &str, outcome: &ScoredOutcome) -> Option<ScoredOutcome> {
        if outcome.arm == Arm::Shadow {
            return None;
        }
        let remembered = self.by_live.get(&outcome.prediction_id)?;
        Some(ScoredOutcome {
            key: outcome_key(model, &remembered.id, &outcome.key),
            prediction_id: remembered.id.clone(),
            version: remembered.version,
            arm: Arm::Shadow,
            prediction: remembered.prediction.clone(),
            ..outcome.clone()
        })
    }

    /// Mirrors remembered.
    pub fn len(&self) -> usize {
        self.by_live.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_busy_from_the_upper_share_until_below_the_lower() {
        assert!(!busy(false, 0.5));
        assert!(!busy(false, BUSY_FROM - 0.01));
        assert!(busy(false, BUSY_FROM));
        // Once busy, a dip between the two lines keeps it busy ...
        assert!(busy(true, (BUSY_FROM + BUSY_UNTIL) / 2.0));
        // ... and only a fall below the lower one ends it.
        assert!(!busy(true, BUSY_UNTIL - 0.01));
        assert!(!busy(false, (BUSY_FROM + BUSY_UNTIL) / 2.0));
    }
}
