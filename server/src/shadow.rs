//! Shadow traffic: a copy of a share of the live version's requests goes to
//! the shadow version (`nurturectl shadow MODEL N --percent P`), off the
//! response path. Its answers are never returned: they get their own
//! prediction ids (arm `shadow`) in the prediction log, and are scored on the
//! outcomes reported for the live answers they mirror.
//!
//! Nothing of the shadow delays an answer: the request path only decides
//! (share, room) and hands a copy of the rows to a bounded queue; a
//! collector task submits them to the shadow's own instance, whose workers
//! run at the lowest scheduling priority, so the shadow gets a core only when
//! live traffic leaves one free. When it falls behind, mirrors are shed
//! (counted) before they cost anything more.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use nurture_models::feedback::{Arm, Prediction, ScoredOutcome, outcome_key};
use nurture_models::input::LeadValues;
use tokio::sync::{mpsc, watch};

use crate::batcher::Rows;
use crate::deployment::Deployment;
use crate::feedback::{Inputs, Served};
use crate::model::LoadedVersion;

/// Mirrored requests waiting for the collector; past this they are shed.
const QUEUE: usize = 1024;
/// Rows the shadow's own queue may hold; past this mirrors are shed (its
/// workers run only on idle cores, so a full queue means a busy machine).
const SHADOW_QUEUE_ROWS: usize = 256;

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
    sender: mpsc::Sender<Mirror>,
    requests: AtomicU64,
}

/// Mirrors handed over and not yet taken by the collector.
#[derive(Debug)]
pub struct MirrorQueue(mpsc::Receiver<Mirror>);

impl Shadows {
    /// The handle, and the queue its collector takes mirrors from.
    pub fn new() -> (Self, MirrorQueue) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        (
            Shadows {
                sender,
                requests: AtomicU64::new(0),
            },
            MirrorQueue(receiver),
        )
    }

    /// The shadow to mirror a request answered on `arm` to: only live
    /// answers, the shadow's share of them (every `100 / percent`-th, evenly),
    /// and only with room for it; a mirror without room is shed and counted
    /// here, before anything is built for it.
    pub fn wants(&self, deployment: &Deployment, arm: Arm) -> Option<Arc<LoadedVersion>> {
        let (shadow, percent) = deployment.shadow.as_ref()?;
        if arm != Arm::Live {
            return None;
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        // Request n is mirrored when the running share crosses a whole one.
        let share = |n: u64| n * u64::from(*percent) / 100;
        if share(n + 1) == share(n) {
            return None;
        }
        if self.sender.capacity() == 0 || shadow.batcher.queued_rows() >= SHADOW_QUEUE_ROWS {
            count(&shadow.name, "shed");
            return None;
        }
        Some(shadow.clone())
    }

    /// Hands a mirror over (shed and counted if the queue just filled).
    pub fn offer(&self, mirror: Mirror) {
        if let Err(error) = self.sender.try_send(mirror) {
            let mirror = match error {
                mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
            };
            count(&mirror.shadow.name, "shed");
        }
    }

    /// Counts a request that could not be mirrored because the shadow
    /// takes other inputs than the live version (another feature layout).
    pub fn incompatible(&self, shadow: &LoadedVersion) {
        count(&shadow.name, "incompatible");
    }
}

fn count(model: &str, result: &'static str) {
    metrics::counter!("nurture_shadow_requests_total", "model" => model.to_owned(), "result" => result)
        .increment(1);
}

/// Submits mirrors to the shadow and, as answers come back, mints their
/// ids, logs them and remembers them for scoring.
#[derive(Debug)]
pub struct Collector {
    receiver: mpsc::Receiver<Mirror>,
    served: Arc<Served>,
    fleet: Arc<crate::feedback::Fleet>,
}

impl Collector {
    /// The collector of `queue`'s mirrors: their ids are minted and logged
    /// through `served`, and remembered for scoring in `fleet`.
    pub fn new(
        queue: MirrorQueue,
        served: Arc<Served>,
        fleet: Arc<crate::feedback::Fleet>,
    ) -> Self {
        Collector {
            receiver: queue.0,
            served,
            fleet,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut running = FuturesUnordered::new();
        loop {
            tokio::select! {
                mirror = self.receiver.recv() => {
                    let Some(mirror) = mirror else { return };
                    // Checked again: the queue may have filled meanwhile.
                    if mirror.shadow.batcher.queued_rows() >= SHADOW_QUEUE_ROWS {
                        count(&mirror.shadow.name, "shed");
                        continue;
                    }
                    let Some(rows) = mirror.rows() else {
                        count(&mirror.shadow.name, "incompatible");
                        continue;
                    };
                    match mirror.shadow.batcher.submit(rows, None) {
                        Ok(answer) => running.push(async move { (mirror, answer.await) }),
                        Err(_) => count(&mirror.shadow.name, "shed"),
                    }
                }
                Some((mirror, answer)) = running.next(), if !running.is_empty() => {
                    match answer {
                        Ok(Ok(scored)) => self.answered(&mirror, &scored.probabilities),
                        _ => count(&mirror.shadow.name, "failed"),
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    fn answered(&self, mirror: &Mirror, probabilities: &[f32]) {
        let shadow = &mirror.shadow;
        let classes = shadow.manifest.labels.len().max(1);
        let rows = probabilities.len() / classes;
        if rows != mirror.live_ids.len() {
            count(&shadow.name, "failed");
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
            let id = self.served.answer(
                shadow,
                Arm::Shadow,
                inputs,
                prediction.clone(),
                row_probabilities,
            );
            self.fleet
                .remember_mirror(live_id, &id, shadow.version, prediction);
        }
        count(&shadow.name, "mirrored");
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
