//! The dynamic batcher of one loaded version: a bounded queue feeding worker
//! threads, each owning its own ONNX Runtime session.
//!
//! A worker takes the first waiting request, gathers more until `max_batch`
//! rows or until `max_delay` after that request arrived, drops requests whose
//! deadline passed or whose caller left, runs one inference and scatters the
//! rows back. A full queue refuses at once (RESOURCE_EXHAUSTED).

pub mod queue;
pub mod tensor;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use nurture_models::kind::{FEATURES_INPUT, PROBABILITIES_OUTPUT, TEXT_INPUT};
use ort::session::Session;
use ort::value::Tensor;
use tokio::sync::oneshot;

use crate::error::ServeError;
use queue::{Batch, Batchable};

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

struct Job {
    rows: Rows,
    deadline: Option<Instant>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Scored, ServeError>>,
}

impl Batchable for Job {
    fn rows(&self) -> usize {
        self.rows.len()
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn batch_key(&self) -> Option<u64> {
        match &self.rows {
            Rows::Tensors { key, .. } => *key,
            Rows::Features { width, .. } => Some(*width as u64),
            Rows::Texts(_) => Some(0),
        }
    }
}

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// Most rows per inference call.
    pub max_batch: usize,
    /// Longest wait for a batch to fill, from the first request's arrival.
    pub max_delay: Duration,
    /// Waiting requests before refusing.
    pub queue_capacity: usize,
}

/// Labels of the version a batcher serves, for metrics.
#[derive(Debug, Clone)]
pub struct Labels {
    /// Model name.
    pub model: String,
    /// Version number as text.
    pub version: String,
}

/// The batcher of one version. Dropping it closes the queue and joins the
/// workers once they finish what they hold.
pub struct Batcher {
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    labels: Labels,
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
    /// Starts one worker per session. `text_rank` is the rank of a text
    /// model's input (1 for `[batch]`, 2 for `[batch, 1]`).
    pub fn start(
        sessions: Vec<Session>,
        classes: usize,
        text_rank: usize,
        config: BatchConfig,
        labels: Labels,
    ) -> Batcher {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(config.queue_capacity.max(1));
        let workers = sessions
            .into_iter()
            .enumerate()
            .map(|(index, session)| {
                let receiver = receiver.clone();
                let labels = labels.clone();
                std::thread::Builder::new()
                    .name(format!(
                        "infer-{}-v{}-{index}",
                        labels.model, labels.version
                    ))
                    .spawn(move || worker(session, receiver, classes, text_rank, config, labels))
                    .expect("the OS can start a thread")
            })
            .collect();
        Batcher {
            sender: Some(sender),
            workers,
            labels,
        }
    }

    /// Queues rows; the answer arrives on the returned channel.
    pub fn submit(
        &self,
        rows: Rows,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Result<Scored, ServeError>>, ServeError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            rows,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        let sender = self.sender.as_ref().expect("the sender lives until drop");
        match sender.try_send(job) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("nurture_shed_requests_total", "model" => self.labels.model.clone()).increment(1);
                Err(ServeError::Overloaded {
                    model: self.labels.model.clone(),
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(ServeError::Unavailable(format!(
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

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the queue ends each worker's loop after its current batch.
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn worker(
    mut session: Session,
    receiver: Receiver<Job>,
    classes: usize,
    text_rank: usize,
    config: BatchConfig,
    labels: Labels,
) {
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
        let window_end = first.enqueued + config.max_delay;
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
        // and only while they keep coming: each wait is at most LINGER, and
        // all of them end by `max_delay` after the first request arrived.
        // Waiting out the whole `max_delay` idles the worker while every
        // closed-loop client is blocked on it, which halved throughput.
        if last_batch_jobs > 1 && carry.is_none() {
            while !batch.is_full() {
                let wait = window_end
                    .saturating_duration_since(Instant::now())
                    .min(LINGER);
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
            let _ = job.reply.send(Err(ServeError::DeadlineExceeded));
        }
        if batch.is_empty() {
            continue;
        }
        run_batch(
            &mut session,
            batch.into_items(),
            classes,
            text_rank,
            &labels,
        );
    }
}

fn run_batch(
    session: &mut Session,
    mut jobs: Vec<Job>,
    classes: usize,
    text_rank: usize,
    labels: &Labels,
) {
    let counts: Vec<usize> = jobs.iter().map(|job| job.rows.len()).collect();
    let rows: usize = counts.iter().sum();
    metrics::histogram!("nurture_batch_rows", "model" => labels.model.clone()).record(rows as f64);
    let started = Instant::now();
    if matches!(jobs[0].rows, Rows::Tensors { .. }) {
        run_tensor_batch(session, jobs, rows, started, labels);
        return;
    }
    let result = infer(session, &mut jobs, rows, classes, text_rank);
    let inference = started.elapsed();
    metrics::histogram!("nurture_inference_duration_seconds", "model" => labels.model.clone())
        .record(inference.as_secs_f64());
    match result {
        Ok(probabilities) => {
            let mut offset = 0;
            for (job, rows_of_job) in jobs.into_iter().zip(counts) {
                let count = rows_of_job * classes;
                let queued = started.saturating_duration_since(job.enqueued);
                metrics::histogram!("nurture_queue_duration_seconds", "model" => labels.model.clone())
                    .record(queued.as_secs_f64());
                let scored = Scored {
                    probabilities: probabilities[offset..offset + count].to_vec(),
                    queued,
                    inference,
                    batch_rows: rows,
                    tensors: Vec::new(),
                };
                offset += count;
                let _ = job.reply.send(Ok(scored));
            }
        }
        Err(error) => {
            tracing::error!(model = %labels.model, version = %labels.version, %error, "inference failed");
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

fn run_tensor_batch(
    session: &mut Session,
    jobs: Vec<Job>,
    rows: usize,
    started: Instant,
    labels: &Labels,
) {
    let result = (|| {
        let inputs: Vec<&[tensor::NamedTensor]> = jobs
            .iter()
            .map(|job| match &job.rows {
                Rows::Tensors { tensors, .. } => Ok(tensors.as_slice()),
                _ => Err(ServeError::Inference(
                    "mixed row kinds in one batch; this is a bug".to_owned(),
                )),
            })
            .collect::<Result<_, _>>()?;
        let merged = tensor::concat(&inputs)?;
        let outputs = tensor::run(session, merged)?;
        let counts: Vec<usize> = jobs.iter().map(|job| job.rows.len()).collect();
        tensor::split(outputs, &counts)
    })();
    let inference = started.elapsed();
    metrics::histogram!("nurture_inference_duration_seconds", "model" => labels.model.clone())
        .record(inference.as_secs_f64());
    match result {
        Ok(per_job) => {
            for (job, tensors) in jobs.into_iter().zip(per_job) {
                let queued = started.saturating_duration_since(job.enqueued);
                metrics::histogram!("nurture_queue_duration_seconds", "model" => labels.model.clone())
                    .record(queued.as_secs_f64());
                let _ = job.reply.send(Ok(Scored {
                    probabilities: Vec::new(),
                    queued,
                    inference,
                    batch_rows: rows,
                    tensors,
                }));
            }
        }
        Err(error) => {
            tracing::warn!(model = %labels.model, version = %labels.version, %error, "inference failed");
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Runs the rows of `jobs` as one call; a lone job's feature rows are moved
/// into the tensor rather than copied, so they are gone afterwards.
fn infer(
    session: &mut Session,
    jobs: &mut [Job],
    rows: usize,
    classes: usize,
    text_rank: usize,
) -> Result<Vec<f32>, ServeError> {
    let failed = |error: ort::Error| ServeError::Inference(error.to_string());
    let outputs = match &jobs[0].rows {
        Rows::Features { width, .. } => {
            let width = *width;
            let mixed =
                || ServeError::Inference("mixed row shapes in one batch; this is a bug".to_owned());
            let values = if let [job] = jobs {
                match &mut job.rows {
                    Rows::Features { values, .. } => std::mem::take(values),
                    _ => return Err(mixed()),
                }
            } else {
                let mut values = Vec::with_capacity(rows * width);
                for job in jobs.iter() {
                    match &job.rows {
                        Rows::Features {
                            values: v,
                            width: w,
                        } if *w == width => values.extend_from_slice(v),
                        _ => return Err(mixed()),
                    }
                }
                values
            };
            let tensor = Tensor::from_array(([rows, width], values)).map_err(failed)?;
            session
                .run(ort::inputs![FEATURES_INPUT => tensor])
                .map_err(failed)?
        }
        Rows::Texts(_) => {
            let mut texts: Vec<String> = Vec::with_capacity(rows);
            for job in jobs {
                match &job.rows {
                    Rows::Texts(t) => texts.extend(t.iter().cloned()),
                    Rows::Features { .. } | Rows::Tensors { .. } => {
                        return Err(ServeError::Inference(
                            "mixed row kinds in one batch; this is a bug".to_owned(),
                        ));
                    }
                }
            }
            let shape: Vec<usize> = if text_rank == 2 {
                vec![rows, 1]
            } else {
                vec![rows]
            };
            let tensor = Tensor::from_string_array((shape, texts.as_slice())).map_err(failed)?;
            session
                .run(ort::inputs![TEXT_INPUT => tensor])
                .map_err(failed)?
        }
        Rows::Tensors { .. } => {
            return Err(ServeError::Inference(
                "tensor rows on the typed path; this is a bug".to_owned(),
            ));
        }
    };
    let (shape, data) = outputs[PROBABILITIES_OUTPUT]
        .try_extract_tensor::<f32>()
        .map_err(failed)?;
    if shape.len() != 2 || shape[0] as usize != rows || shape[1] as usize != classes {
        return Err(ServeError::Inference(format!(
            "model returned shape {shape:?}, expected [{rows}, {classes}]"
        )));
    }
    Ok(data.to_vec())
}
