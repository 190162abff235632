//! The dynamic batcher of one loaded version: a queue bounded in rows
//! feeding worker threads, each owning its own [`Runner`] (an ONNX Runtime
//! session in the server).
//!
//! Admission happens at the door: a request is refused at once
//! (RESOURCE_EXHAUSTED) when the rows queued plus its own pass the capacity,
//! or when the wait estimated from the measured cost per row passes
//! `--max-queue-delay` or the caller's deadline. A worker takes the first
//! waiting request, gathers more until `max_batch` rows or until `max_delay`
//! after that request arrived, drops requests whose deadline passed or whose
//! caller left, runs one call and scatters the rows back. When a call of
//! several requests fails, it is re-run in halves until the failure is
//! pinned on the requests that cause it: one caller's bad input never fails
//! another's.

pub mod queue;
pub mod runner;
pub mod tensor;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use crate::error::ServeError;
use queue::{Admission, Batch, Batchable};
pub use runner::{OrtRunner, Output, Runner};

/// Longest a worker waits for the next request of a burst before running
/// what it has (see `worker`).
pub const LINGER: Duration = Duration::from_micros(100);

/// Model input rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    /// Row-major float features.
    Features {
        /// Columns per row.
        width: usize,
        /// Values.
        values: Vec<f32>,
    },
    /// One text per row.
    Texts(Vec<String>),
    /// Named tensors of a generic model, batched along their first
    /// dimension with requests of the same `key` (`None`: run alone).
    Tensors {
        /// The inputs, in the model's input order.
        tensors: Vec<tensor::NamedTensor>,
        /// Batch-compatibility key (input names, types and trailing dims).
        key: Option<u64>,
    },
}

impl Rows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Rows::Features { width, values } => values.len() / (*width).max(1),
            Rows::Texts(texts) => texts.len(),
            Rows::Tensors { tensors, .. } => tensors.first().map_or(1, tensor::NamedTensor::rows),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn batch_key(&self) -> Option<u64> {
        match self {
            Rows::Tensors { key, .. } => *key,
            Rows::Features { width, .. } => Some(*width as u64),
            Rows::Texts(_) => Some(0),
        }
    }
}

/// What a request gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Row-major probabilities, `rows × classes`.
    pub probabilities: Vec<f32>,
    /// Time spent waiting in the queue.
    pub queued: Duration,
    /// Time of the inference call (shared by the whole batch).
    pub inference: Duration,
    /// Rows in the batch this request ran in.
    pub batch_rows: usize,
    /// Outputs of a generic model (empty for typed kinds).
    pub tensors: Vec<tensor::NamedTensor>,
}

/// Smallest batch whose cost teaches the per-row estimate.
pub const MIN_ROWS_FOR_COST: usize = 32;

/// State shared by the door (`submit`) and the workers.
#[derive(Debug)]
struct Shared {
    /// Rows admitted and not yet answered (waiting or running).
    queued_rows: AtomicUsize,
    /// Measured inference cost per row, in nanoseconds (0: nothing
    /// measured yet); see `record_cost`.
    cost_per_row_ns: AtomicU64,
    /// Decaying sum of inference time over recent batches (f64 bits, ns).
    decayed_nanos: AtomicU64,
    /// Decaying sum of rows over the same batches (f64 bits).
    decayed_rows: AtomicU64,
    /// `nurture_queue_rows` of this version.
    depth: metrics::Gauge,
}

impl Shared {
    fn cost_per_row(&self) -> Option<Duration> {
        match self.cost_per_row_ns.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    fn record_cost(&self, elapsed: Duration, rows: usize) {
        // NOTE: small calls are mostly per-call overhead (a one-row call of
        // a tree model costs ~3x a row inside a 256-row batch), which would
        // make queued rows look dearer than they are and refuse requests
        // that would have made their deadline. Until a batch this large has
        // run, only the capacity bounds admission.
        if rows < MIN_ROWS_FOR_COST {
            return;
        }
        // NOTE: the cost per row is the ratio of two decaying sums (time
        // and rows over recent batches), so a batch weighs by its rows: the
        // per-call overhead of the one-row warm-up calls fades as soon as
        // real batches run, and one slow call (a page fault, a preempted
        // thread) moves the estimate little. Racing workers may lose a
        // sample; that is fine for an estimate.
        const KEEP: f64 = 15.0 / 16.0;
        let time = f64::from_bits(self.decayed_nanos.load(Ordering::Relaxed)) * KEEP
            + elapsed.as_nanos() as f64;
        let count = f64::from_bits(self.decayed_rows.load(Ordering::Relaxed)) * KEEP + rows as f64;
        self.decayed_nanos.store(time.to_bits(), Ordering::Relaxed);
        self.decayed_rows.store(count.to_bits(), Ordering::Relaxed);
        let cost = (time / count).clamp(1.0, u64::MAX as f64) as u64;
        self.cost_per_row_ns.store(cost, Ordering::Relaxed);
    }
}

/// A request's claim on queue capacity, given back when dropped, whatever
/// path the request takes (answered, dropped, refused by a closed queue).
#[derive(Debug)]
struct Ticket {
    rows: usize,
    shared: Arc<Shared>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let before = self
            .shared
            .queued_rows
            .fetch_sub(self.rows, Ordering::AcqRel);
        self.shared
            .depth
            .set(before.saturating_sub(self.rows) as f64);
    }
}

/// Everything about a queued request except its rows.
#[derive(Debug)]
struct Meta {
    deadline: Option<Instant>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Scored, ServeError>>,
    ticket: Ticket,
}

#[derive(Debug)]
struct Job {
    rows: Rows,
    meta: Meta,
}

impl Batchable for Job {
    fn rows(&self) -> usize {
        self.meta.ticket.rows
    }
    fn deadline(&self) -> Option<Instant> {
        self.meta.deadline
    }
    fn abandoned(&self) -> bool {
        self.meta.reply.is_closed()
    }
    fn batch_key(&self) -> Option<u64> {
        self.rows.batch_key()
    }
}

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// Most rows per inference call.
    pub max_batch: usize,
    /// Longest wait for a batch to fill, from the first request's arrival.
    pub max_delay: Duration,
    /// Longest a worker waits for each further request of a burst (at most
    /// until `max_delay`); [`LINGER`] in the server.
    pub linger: Duration,
    /// Rows waiting or running before new requests are refused.
    pub queue_capacity: usize,
    /// Longest estimated queue wait before a request is refused.
    pub max_queue_delay: Option<Duration>,
    /// Workers run at the lowest scheduling class (Linux `SCHED_IDLE`):
    /// they get a core only when nothing else wants it. For shadows.
    pub background: bool,
}

/// Labels of the version a batcher serves, for metrics.
#[derive(Debug, Clone)]
pub struct Labels {
    /// Model name.
    pub model: String,
    /// Version number as text.
    pub version: String,
}

/// The batcher of one version. Dropping it closes the queue; its workers
/// finish what they hold and are joined on the reaper thread, never on the
/// thread that dropped the last reference (an async runtime thread, or one
/// holding a lock).
pub struct Batcher {
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    labels: Labels,
    shared: Arc<Shared>,
    admission: Admission,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("model", &self.labels.model)
            .field("version", &self.labels.version)
            .finish()
    }
}

impl Batcher {
    /// Starts one worker thread per runner.
    pub fn start<R: Runner>(runners: Vec<R>, config: BatchConfig, labels: Labels) -> Batcher {
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let shared = Arc::new(Shared {
            queued_rows: AtomicUsize::new(0),
            cost_per_row_ns: AtomicU64::new(0),
            decayed_nanos: AtomicU64::new(0),
            decayed_rows: AtomicU64::new(0),
            depth: metrics::gauge!("nurture_queue_rows", "model" => labels.model.clone(), "version" => labels.version.clone()),
        });
        shared.depth.set(0.0);
        let admission = Admission {
            capacity_rows: config.queue_capacity.max(1),
            max_queue_delay: config.max_queue_delay,
            workers: runners.len().max(1),
        };
        let workers = runners
            .into_iter()
            .enumerate()
            .map(|(index, runner)| {
                let receiver = receiver.clone();
                let labels = labels.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!(
                        "infer-{}-v{}-{index}",
                        labels.model, labels.version
                    ))
                    .spawn(move || worker(runner, receiver, config, labels, shared))
                    .expect("the OS can start a thread")
            })
            .collect();
        Batcher {
            sender: Some(sender),
            workers,
            labels,
            shared,
            admission,
        }
    }

    /// Rows admitted and not yet answered.
    pub fn queued_rows(&self) -> usize {
        self.shared.queued_rows.load(Ordering::Relaxed)
    }

    /// Queues rows, or refuses them at once when they cannot be answered in
    /// time; the answer arrives on the returned channel.
    pub fn submit(
        &self,
        rows: Rows,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Result<Scored, ServeError>>, ServeError> {
        let count = rows.len();
        let enqueued = Instant::now();
        let left = deadline.map(|deadline| deadline.saturating_duration_since(enqueued));
        let cost = self.shared.cost_per_row();
        let mut queued = self.shared.queued_rows.load(Ordering::Acquire);
        loop {
            if let Err(refusal) = self.admission.decide(queued, count, cost, left) {
                metrics::counter!("nurture_shed_requests_total", "model" => self.labels.model.clone(), "reason" => refusal.as_str())
                    .increment(1);
                return Err(ServeError::Overloaded {
                    model: self.labels.model.clone(),
                    refusal,
                });
            }
            match self.shared.queued_rows.compare_exchange_weak(
                queued,
                queued + count,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => queued = actual,
            }
        }
        self.shared.depth.set((queued + count) as f64);
        let ticket = Ticket {
            rows: count,
            shared: self.shared.clone(),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            rows,
            meta: Meta {
                deadline,
                enqueued,
                reply,
                ticket,
            },
        };
        let sender = self.sender.as_ref().expect("the sender lives until drop");
        match sender.send(job) {
            Ok(()) => Ok(answer),
            Err(_) => Err(ServeError::Unavailable(format!(
                "version {} of {} is shutting down",
                self.labels.version, self.labels.model
            ))),
        }
    }

    /// Queues rows and waits for the answer.
    pub async fn score(&self, rows: Rows, deadline: Option<Instant>) -> Result<Scored, ServeError> {
        let answer = self.submit(rows, deadline)?;
        answer
            .await
            .map_err(|_| ServeError::Inference("the inference worker stopped".to_owned()))?
    }
}

/// Moves the calling thread to the lowest scheduling class (Linux
/// `SCHED_IDLE`): it gets a core only when nothing else wants it, and gives
/// it up at once to any other thread that wakes. For shadow work and the
/// prediction log's encoding; `what` names it in the warning when the OS
/// refuses.
pub fn lower_priority(what: &str) {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    if let Err(error) = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    ) {
        tracing::warn!(
            what,
            ?error,
            "cannot lower a background thread's priority; it competes with live requests"
        );
    }
}

/// The thread that joins retired workers (see [`Batcher`]'s drop).
fn reaper() -> Option<&'static Sender<JoinHandle<()>>> {
    static REAPER: OnceLock<Option<Sender<JoinHandle<()>>>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (sender, receiver) = crossbeam_channel::unbounded::<JoinHandle<()>>();
            std::thread::Builder::new()
                .name("batcher-reaper".to_owned())
                .spawn(move || {
                    for worker in receiver {
                        let _ = worker.join();
                    }
                })
                .ok()
                .map(|_| sender)
        })
        .as_ref()
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the queue ends each worker's loop after its current batch.
        self.sender.take();
        let workers = std::mem::take(&mut self.workers);
        match reaper() {
            Some(reaper) => {
                for worker in workers {
                    // NOTE: if the reaper is gone the handle drops, which
                    // detaches the thread: it still ends on its own.
                    let _ = reaper.send(worker);
                }
            }
            None => drop(workers),
        }
        self.shared.depth.set(0.0);
    }
}

fn worker<R: Runner>(
    mut runner: R,
    receiver: Receiver<Job>,
    config: BatchConfig,
    labels: Labels,
    shared: Arc<Shared>,
) {
    if config.background {
        lower_priority(&format!("{} v{}", labels.model, labels.version));
    }
    let mut carry: Option<Job> = None;
    // Requests in the previous batch: more than one means concurrent traffic,
    // worth lingering for; one means a lone caller who would only wait.
    let mut last_batch_jobs = 1usize;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let window_end = first.meta.enqueued + config.max_delay;
        let mut batch = Batch::new(config.max_batch);
        batch.offer(first);
        let mut jobs = 1usize;
        // Everything already waiting joins at once.
        while !batch.is_full() {
            match receiver.try_recv() {
                Ok(job) => {
                    if let Some(back) = batch.offer(job) {
                        carry = Some(back);
                        break;
                    }
                    jobs += 1;
                }
                Err(_) => break,
            }
        }
        // NOTE: then linger for stragglers, but only under concurrent traffic
        // and only while they keep coming: each wait is at most `linger`, and
        // all of them end by `max_delay` after the first request arrived.
        // Waiting out the whole `max_delay` idles the worker while every
        // closed-loop client is blocked on it, which halved throughput.
        if last_batch_jobs > 1 && carry.is_none() {
            while !batch.is_full() {
                let wait = window_end
                    .saturating_duration_since(Instant::now())
                    .min(config.linger);
                if wait.is_zero() {
                    break;
                }
                match receiver.recv_timeout(wait) {
                    Ok(job) => {
                        if let Some(back) = batch.offer(job) {
                            carry = Some(back);
                            break;
                        }
                        jobs += 1;
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        last_batch_jobs = jobs;
        for (job, reason) in batch.drop_inadmissible(Instant::now()) {
            metrics::counter!("nurture_dropped_requests_total", "model" => labels.model.clone(), "reason" => reason.as_str())
                .increment(1);
            let Meta { reply, ticket, .. } = job.meta;
            // The capacity is free before the caller hears back.
            drop(ticket);
            let _ = reply.send(Err(ServeError::DeadlineExceeded));
        }
        if batch.is_empty() {
            continue;
        }
        run_batch(&mut runner, batch.into_items(), &labels, &shared);
    }
}

fn run_batch<R: Runner>(runner: &mut R, jobs: Vec<Job>, labels: &Labels, shared: &Shared) {
    let (mut rows, metas): (Vec<Rows>, Vec<Meta>) =
        jobs.into_iter().map(|job| (job.rows, job.meta)).unzip();
    let total: usize = metas.iter().map(|meta| meta.ticket.rows).sum();
    metrics::histogram!("nurture_batch_rows", "model" => labels.model.clone()).record(total as f64);
    let started = Instant::now();
    let mut splits = 0usize;
    let results = run_isolating(runner, &mut rows, &mut splits);
    let inference = started.elapsed();
    metrics::histogram!("nurture_inference_duration_seconds", "model" => labels.model.clone())
        .record(inference.as_secs_f64());
    if splits == 0 {
        shared.record_cost(inference, total);
    } else {
        let failed = results.iter().filter(|result| result.is_err()).count();
        metrics::counter!("nurture_batch_isolations_total", "model" => labels.model.clone())
            .increment(1);
        tracing::warn!(
            model = %labels.model,
            version = %labels.version,
            requests = metas.len(),
            failed,
            reruns = splits,
            "batch failed; re-ran its requests in parts so only the failing ones fail"
        );
    }
    for (meta, result) in metas.into_iter().zip(results) {
        let Meta {
            enqueued,
            reply,
            ticket,
            ..
        } = meta;
        drop(ticket);
        let queued = started.saturating_duration_since(enqueued);
        metrics::histogram!("nurture_queue_duration_seconds", "model" => labels.model.clone())
            .record(queued.as_secs_f64());
        let answer = result.map(|output| {
            let (probabilities, tensors) = match output {
                Output::Probabilities(probabilities) => (probabilities, Vec::new()),
                Output::Tensors(tensors) => (Vec::new(), tensors),
            };
            Scored {
                probabilities,
                queued,
                inference,
                batch_rows: total,
                tensors,
            }
        });
        if let Err(error) = &answer {
            tracing::warn!(model = %labels.model, version = %labels.version, %error, "inference failed");
        }
        let _ = reply.send(answer);
    }
}

/// Runs `requests` as one call; if a call of several fails, runs each half
/// on its own, recursively, so a failure lands only on the requests that
/// cause it (a lone bad request among `n` costs about `2·log2(n)` extra
/// calls). Counts the re-runs in `splits`.
fn run_isolating<R: Runner>(
    runner: &mut R,
    requests: &mut [Rows],
    splits: &mut usize,
) -> Vec<Result<Output, ServeError>> {
    let error = match runner.run(requests) {
        Ok(outputs) if outputs.len() == requests.len() => {
            return outputs.into_iter().map(Ok).collect();
        }
        Ok(outputs) => ServeError::Inference(format!(
            "the runner returned {} outputs for {} requests; this is a bug",
            outputs.len(),
            requests.len()
        )),
        Err(error) => error,
    };
    if requests.len() == 1 {
        return vec![Err(error)];
    }
    *splits += 1;
    let (left, right) = requests.split_at_mut(requests.len() / 2);
    let mut results = run_isolating(runner, left, splits);
    results.extend(run_isolating(runner, right, splits));
    results
}

#[cfg(test)]
mod tests {
    //! Worker behaviours driven through a fake runner: no model, no timers
    //! in the assertions. The runner reports each call's texts on a channel
    //! and, when gated, waits for a token before answering, so a test knows
    //! what the worker holds while it queues more.

    use super::*;

    /// Texts that make the fake fail, as a NUL byte fails ONNX Runtime.
    const POISON: &str = "poison";

    struct Fake {
        calls: Sender<Vec<String>>,
        gate: Option<Receiver<()>>,
        /// Fail every call (a broken model), not only poisoned ones.
        broken: bool,
        /// Sleep per row, so the measured cost is known to be at least this.
        per_row: Duration,
    }

    impl Runner for Fake {
        fn run(&mut self, requests: &mut [Rows]) -> Result<Vec<Output>, ServeError> {
            let texts: Vec<String> = requests
                .iter()
                .flat_map(|rows| match rows {
                    Rows::Texts(texts) => texts.clone(),
                    _ => vec!["?".to_owned()],
                })
                .collect();
            let _ = self.calls.send(texts.clone());
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            std::thread::sleep(self.per_row * texts.len() as u32);
            if self.broken {
                return Err(ServeError::Inference("the model is broken".to_owned()));
            }
            if texts.iter().any(|text| text == POISON) {
                return Err(ServeError::Inference("nul byte found".to_owned()));
            }
            Ok(requests
                .iter()
                .map(|rows| Output::Probabilities(vec![rows.len() as f32]))
                .collect())
        }
    }

    struct Harness {
        batcher: Batcher,
        calls: Receiver<Vec<String>>,
        open: Sender<()>,
    }

    fn config(max_batch: usize, queue_capacity: usize) -> BatchConfig {
        BatchConfig {
            background: false,
            max_batch,
            max_delay: Duration::ZERO,
            linger: LINGER,
            queue_capacity,
            max_queue_delay: None,
        }
    }

    fn harness(config: BatchConfig, gated: bool, broken: bool, per_row: Duration) -> Harness {
        let (calls_tx, calls) = crossbeam_channel::unbounded();
        let (open, gate) = crossbeam_channel::unbounded();
        let fake = Fake {
            calls: calls_tx,
            gate: gated.then_some(gate),
            broken,
            per_row,
        };
        let batcher = Batcher::start(
            vec![fake],
            config,
            Labels {
                model: "test".into(),
                version: "1".into(),
            },
        );
        Harness {
            batcher,
            calls,
            open,
        }
    }

    fn texts(texts: &[&str]) -> Rows {
        Rows::Texts(texts.iter().map(|t| (*t).to_owned()).collect())
    }

    type Answer = oneshot::Receiver<Result<Scored, ServeError>>;

    fn submit(harness: &Harness, rows: &[&str]) -> Answer {
        harness.batcher.submit(texts(rows), None).expect("admitted")
    }

    /// Blocks the worker inside a call on `first`, so later submissions
    /// queue behind it.
    fn hold_worker(harness: &Harness, first: &[&str]) -> Answer {
        let answer = submit(harness, first);
        assert_eq!(harness.calls.recv().unwrap(), first);
        answer
    }

    fn wait(answer: Answer) -> Result<Scored, ServeError> {
        answer.blocking_recv().expect("every request is answered")
    }

    #[test]
    fn a_failed_batch_fails_only_the_request_that_caused_it() {
        let h = harness(config(64, 4096), true, false, Duration::ZERO);
        let first = hold_worker(&h, &["a"]);
        let answers: Vec<(bool, Answer)> = ["b", POISON, "c", "d", "e"]
            .iter()
            .map(|text| (*text == POISON, submit(&h, &[text])))
            .collect();
        for _ in 0..64 {
            h.open.send(()).unwrap();
        }
        assert!(wait(first).is_ok());
        for (poisoned, answer) in answers {
            let result = wait(answer);
            assert_eq!(result.is_err(), poisoned, "{result:?}");
        }
        // One call of all five, then halves down to the poisoned request.
        let calls: Vec<Vec<String>> = h.calls.try_iter().collect();
        assert_eq!(calls[0], ["b", POISON, "c", "d", "e"]);
        assert!(calls.len() <= 1 + 2 * 3, "{calls:?}");
        assert_eq!(h.batcher.queued_rows(), 0);
    }

    #[test]
    fn rerunning_in_halves_pins_every_failure_on_its_own_request() {
        let (calls, _seen) = crossbeam_channel::unbounded();
        let mut fake = Fake {
            calls,
            gate: None,
            broken: false,
            per_row: Duration::ZERO,
        };
        let mut requests: Vec<Rows> = ["a", POISON, "b", "c", POISON, "d", "e", "f"]
            .iter()
            .map(|t| texts(&[t]))
            .collect();
        let mut splits = 0;
        let results = run_isolating(&mut fake, &mut requests, &mut splits);
        let failed: Vec<usize> = (0..results.len())
            .filter(|i| results[*i].is_err())
            .collect();
        assert_eq!(failed, [1, 4]);
        assert!(splits > 0);
        assert_eq!(
            results[0].as_ref().ok(),
            Some(&Output::Probabilities(vec![1.0]))
        );
    }

    #[test]
    fn a_broken_model_fans_its_error_out_to_every_member() {
        let h = harness(config(64, 4096), true, true, Duration::ZERO);
        let first = hold_worker(&h, &["a"]);
        let answers: Vec<Answer> = ["b", "c", "d"].iter().map(|t| submit(&h, &[t])).collect();
        for _ in 0..64 {
            h.open.send(()).unwrap();
        }
        assert!(wait(first).is_err());
        for answer in answers {
            let error = wait(answer).unwrap_err();
            assert_eq!(error.error_type(), "inference_error", "{error}");
        }
    }

    #[test]
    fn requests_that_do_not_fit_are_carried_to_the_next_batch() {
        let h = harness(config(4, 4096), true, false, Duration::ZERO);
        let first = hold_worker(&h, &["a"]);
        let b = submit(&h, &["b1", "b2", "b3"]);
        let c = submit(&h, &["c1", "c2"]);
        for _ in 0..3 {
            h.open.send(()).unwrap();
        }
        assert_eq!(wait(first).unwrap().batch_rows, 1);
        assert_eq!(wait(b).unwrap().batch_rows, 3);
        assert_eq!(wait(c).unwrap().batch_rows, 2);
        let calls: Vec<Vec<String>> = h.calls.try_iter().collect();
        assert_eq!(calls, [vec!["b1", "b2", "b3"], vec!["c1", "c2"]]);
    }

    #[test]
    fn a_worker_lingers_for_stragglers_only_under_concurrent_traffic() {
        let mut lingering = config(64, 4096);
        lingering.linger = Duration::from_secs(1);
        lingering.max_delay = Duration::from_secs(1);
        let h = harness(lingering, true, false, Duration::ZERO);
        // A lone caller: its batch runs at once, without lingering.
        let lone = hold_worker(&h, &["lone"]);
        h.open.send(()).unwrap();
        wait(lone).unwrap();
        // Two queued together: the worker has seen concurrent traffic.
        let first = hold_worker(&h, &["a"]);
        let pair = [submit(&h, &["b"]), submit(&h, &["c"])];
        h.open.send(()).unwrap();
        wait(first).unwrap();
        assert_eq!(h.calls.recv().unwrap(), ["b", "c"]);
        h.open.send(()).unwrap();
        for answer in pair {
            wait(answer).unwrap();
        }
        // Now a request arrives and the worker waits for the next one
        // (the lingering window is 1 s), so both run in one call.
        let d = submit(&h, &["d"]);
        std::thread::sleep(Duration::from_millis(50));
        let e = submit(&h, &["e"]);
        assert_eq!(h.calls.recv().unwrap(), ["d", "e"]);
        h.open.send(()).unwrap();
        wait(d).unwrap();
        wait(e).unwrap();
    }

    #[test]
    fn the_door_counts_rows_and_sheds_at_once() {
        let h = harness(config(64, 4), true, false, Duration::ZERO);
        let first = hold_worker(&h, &["a"]);
        let b = submit(&h, &["b1", "b2", "b3"]);
        assert_eq!(h.batcher.queued_rows(), 4);
        let refused = h.batcher.submit(texts(&["c"]), None).unwrap_err();
        assert!(
            matches!(
                refused,
                ServeError::Overloaded {
                    refusal: queue::Refusal::Full {
                        queued: 4,
                        capacity: 4
                    },
                    ..
                }
            ),
            "{refused}"
        );
        for _ in 0..2 {
            h.open.send(()).unwrap();
        }
        wait(first).unwrap();
        wait(b).unwrap();
        assert_eq!(h.batcher.queued_rows(), 0);
        // Once drained, the door opens again.
        let c = submit(&h, &["c"]);
        h.open.send(()).unwrap();
        wait(c).unwrap();
    }

    #[test]
    fn a_request_that_cannot_finish_before_its_deadline_is_refused_at_the_door() {
        let h = harness(config(64, 4096), false, false, Duration::from_millis(1));
        // One measured batch of 32 rows: at least 1 ms per row.
        wait(submit(&h, &["a"; MIN_ROWS_FOR_COST])).unwrap();
        let soon = Instant::now() + Duration::from_micros(500);
        let refused = h.batcher.submit(texts(&["c"]), Some(soon)).unwrap_err();
        assert!(
            matches!(
                refused,
                ServeError::Overloaded {
                    refusal: queue::Refusal::Deadline { .. },
                    ..
                }
            ),
            "{refused}"
        );
        assert_eq!(h.batcher.queued_rows(), 0);
        let later = Instant::now() + Duration::from_secs(30);
        assert!(wait(h.batcher.submit(texts(&["c"]), Some(later)).unwrap()).is_ok());
    }

    #[test]
    fn requests_whose_deadline_passed_in_the_queue_are_dropped_before_inference() {
        let h = harness(config(64, 4096), true, false, Duration::ZERO);
        let first = hold_worker(&h, &["a"]);
        let deadline = Instant::now() + Duration::from_millis(20);
        let late = h.batcher.submit(texts(&["late"]), Some(deadline)).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        h.open.send(()).unwrap();
        wait(first).unwrap();
        assert!(matches!(wait(late), Err(ServeError::DeadlineExceeded)));
        assert_eq!(h.calls.try_iter().count(), 0, "the late request never ran");
        assert_eq!(h.batcher.queued_rows(), 0);
    }

    #[test]
    fn the_cost_per_row_weighs_batches_by_their_rows() {
        let shared = Shared {
            queued_rows: AtomicUsize::new(0),
            cost_per_row_ns: AtomicU64::new(0),
            decayed_nanos: AtomicU64::new(0),
            decayed_rows: AtomicU64::new(0),
            depth: metrics::gauge!("test"),
        };
        assert_eq!(shared.cost_per_row(), None);
        // Warm-up: one-row calls, mostly per-call overhead, teach nothing.
        for _ in 0..4 {
            shared.record_cost(Duration::from_micros(20), 1);
        }
        assert_eq!(shared.cost_per_row(), None);
        shared.record_cost(Duration::from_micros(400), 40);
        assert_eq!(shared.cost_per_row(), Some(Duration::from_micros(10)));
        // A batch of 1,000 rows at 3 µs a row outweighs the one of 40.
        shared.record_cost(Duration::from_micros(3_000), 1_000);
        let cost = shared.cost_per_row().unwrap();
        assert!(
            cost > Duration::from_micros(3) && cost < Duration::from_nanos(3_400),
            "{cost:?}"
        );
    }
}
