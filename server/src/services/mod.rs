//! The gRPC services: typed RPCs per kind and the status RPC.

pub mod channel_timing;
pub mod churn;
pub mod emotion;
pub mod inference;
pub mod inference_http;
pub mod journey;
pub mod optimization;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::Instant;

use nurture_proto::v1;

use nurture_models::feedback::{Arm, Prediction};

/// What a prediction id carries for a row of class probabilities: the
/// positive class's probability of a binary kind, else every class.
pub fn prediction_of(row: &[f32]) -> Prediction {
    match row {
        [_, positive] => Prediction::Binary(*positive),
        _ => Prediction::Classes(row.to_vec()),
    }
}

use crate::batcher::Rows;
use crate::deployment::Slot;
use crate::error::ServeError;
use crate::feedback::{Inputs, Served};
use crate::model::LoadedVersion;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items per request.
    pub max_items: usize,
    /// Most leads per channel-timing request.
    pub max_timing_leads: usize,
    /// Longest text, in bytes.
    pub max_text_bytes: usize,
}

/// What one item got back.
#[derive(Debug)]
pub struct ItemScore {
    /// The version that scored it.
    pub version: Arc<LoadedVersion>,
    /// The arm that version served it on.
    pub arm: Arm,
    /// Its rows' probabilities, row-major.
    pub probabilities: Vec<f32>,
}

impl ItemScore {
    /// `ModelRef` of the version.
    pub fn model_ref(&self) -> v1::ModelRef {
        v1::ModelRef {
            name: self.version.name.clone(),
            version: self.version.version,
        }
    }

    /// The prediction id of an answer made of `row` (this item's class
    /// probabilities, or one of its rows), logging it with `inputs`.
    pub fn answer(&self, served: &Served, inputs: Inputs<'_>, row: &[f32]) -> String {
        served.answer(&self.version, self.arm, inputs, prediction_of(row), row)
    }

    /// Row `row` of the probabilities.
    pub fn row(&self, row: usize) -> &[f32] {
        let classes = self.version.manifest.labels.len();
        &self.probabilities[row * classes..(row + 1) * classes]
    }
}

/// The items of one request that go to one version.
struct Group {
    version: Arc<LoadedVersion>,
    arm: Arm,
    /// (item index, rows it contributed), in request order.
    items: Vec<(usize, usize)>,
    rows: Option<Rows>,
}

/// Appends `rows` to `into` (rows of one shape: features of one width, or
/// texts).
pub(crate) fn append(into: &mut Option<Rows>, rows: Rows) -> Result<(), ServeError> {
    match (into.as_mut(), rows) {
        (None, rows) => *into = Some(rows),
        (
            Some(Rows::Features { values, width }),
            Rows::Features {
                values: more,
                width: w,
            },
        ) if *width == w => {
            values.extend(more);
        }
        (Some(Rows::Texts(texts)), Rows::Texts(more)) => texts.extend(more),
        _ => {
            return Err(ServeError::Inference(
                "rows of different shapes for one version; this is a bug".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Routes every item (canary by lead id, or the pinned version), builds its
/// rows with the chosen version's layout, scores each version's rows as one
/// batch submission, and hands each item its rows back, in request order.
pub async fn score_items(
    slot: &Slot,
    lead_ids: &[&str],
    pin: u64,
    deadline: Option<Instant>,
    build: impl Fn(&LoadedVersion, usize) -> Result<Rows, ServeError>,
) -> Result<Vec<ItemScore>, ServeError> {
    slot.prepare_pin(pin).await?;
    // One load of the slot for the whole request. NOTE: the guard is
    // dropped before any `.await` (arc-swap's guards are not meant to be
    // held across one); each group holds its version's `Arc` instead.
    let mut groups: BTreeMap<u64, Group> = BTreeMap::new();
    {
        let deployment = slot.deployment.load();
        for (item, lead_id) in lead_ids.iter().enumerate() {
            let (version, arm) = slot.route(&deployment, lead_id, pin)?;
            let rows = build(&version, item)?;
            let count = rows.len();
            let group = groups.entry(version.version).or_insert_with(|| Group {
                version: version.clone(),
                arm,
                items: Vec::new(),
                rows: None,
            });
            group.items.push((item, count));
            append(&mut group.rows, rows)?;
        }
    }
    let mut pending = Vec::new();
    for Group {
        version,
        arm,
        items,
        rows,
    } in groups.into_values()
    {
        let rows = rows.expect("every group has rows");
        pending.push(async move {
            let scored = version.score(rows, deadline).await?;
            Ok::<_, ServeError>((version, arm, items, scored.probabilities))
        });
    }
    let mut results: Vec<Option<ItemScore>> = (0..lead_ids.len()).map(|_| None).collect();
    for outcome in futures::future::join_all(pending).await {
        let (version, arm, items, probabilities) = outcome?;
        let classes = version.manifest.labels.len();
        let mut offset = 0;
        for (item, count) in items {
            let end = offset + count * classes;
            results[item] = Some(ItemScore {
                version: version.clone(),
                arm,
                probabilities: probabilities[offset..end].to_vec(),
            });
            offset = end;
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every item was scored"))
        .collect())
}

/// Mirrors the items of a typed request that the live version answered
/// (one row per lead, built with the shadow's layout off the request path)
/// to the model's shadow, if any and if this request is in its share.
pub fn mirror_leads(
    served: &Served,
    slot: &Slot,
    scores: &[ItemScore],
    leads: &[nurture_models::input::LeadValues],
    prediction_ids: impl Iterator<Item = String>,
) {
    if !scores.iter().any(|score| score.arm == Arm::Live) {
        return;
    }
    let Some(shadow) = served.shadows.wants(&slot.deployment.load(), Arm::Live) else {
        return;
    };
    let (leads, live_ids): (Vec<_>, Vec<_>) = scores
        .iter()
        .zip(leads)
        .zip(prediction_ids)
        .filter(|((score, _), _)| score.arm == Arm::Live)
        .map(|((_, lead), id)| (lead.clone(), id))
        .unzip();
    served.shadows.offer(crate::shadow::Mirror {
        shadow,
        inputs: crate::shadow::MirrorInputs::Leads(leads),
        live_ids,
    });
}

/// Records a finished RPC in the metrics: once per (version, arm) that
/// answered some of its items, with the number of items each answered, so a
/// request split between live and canary counts under both versions. A
/// request that failed (or answered nothing) counts under version `none`.
pub fn observe(
    rpc: &'static str,
    model: &str,
    answered: &[(u64, Arm)],
    started: Instant,
    error: Option<&ServeError>,
) {
    let code = error.map_or("ok", ServeError::error_type);
    let mut groups: Vec<((u64, Arm), u64)> = Vec::new();
    for key in answered {
        match groups.iter_mut().find(|(k, _)| k == key) {
            Some((_, items)) => *items += 1,
            None => groups.push((*key, 1)),
        }
    }
    if groups.is_empty() {
        record(rpc, model, None, "none", code, started, 0);
    }
    for ((version, arm), items) in groups {
        record(
            rpc,
            model,
            Some(version),
            arm.as_str(),
            code,
            started,
            items,
        );
    }
}

/// One series of the request metrics: what `nurture_requests_total`,
/// `nurture_request_items_total` and `nurture_request_duration_seconds`
/// are labelled by (the version is `None` for a request no version
/// answered; only `nurture_requests_total` also carries the code).
type SeriesKey = (&'static str, Option<u64>, &'static str, &'static str);

/// The handles of one series, registered once.
struct RequestSeries {
    requests: metrics::Counter,
    /// Only answered requests have items, and only they get the series.
    items: Option<metrics::Counter>,
    duration: metrics::Histogram,
}

impl RequestSeries {
    fn register(model: &str, (rpc, version, arm, code): SeriesKey) -> Self {
        let answered = version.is_some();
        let version = version.map_or_else(|| "none".to_owned(), |version| version.to_string());
        let labels = [
            ("model", model.to_owned()),
            ("version", version),
            ("arm", arm.to_owned()),
            ("rpc", rpc.to_owned()),
        ];
        let mut coded = labels.to_vec();
        coded.push(("code", code.to_owned()));
        RequestSeries {
            requests: metrics::counter!("nurture_requests_total", &coded),
            items: answered.then(|| metrics::counter!("nurture_request_items_total", &labels)),
            duration: metrics::histogram!("nurture_request_duration_seconds", &labels),
        }
    }
}

/// The request series registered so far, by model. Looking a handle up
/// here costs a read lock and a hash of a few words; building the labels
/// and finding each series in the recorder, per request, cost nine
/// strings and three lookups: callgrind counted 12,800 instructions a
/// ModelInfer request in `observe` that way, 1,600 with the handles (the
/// whole handler: 42,900 before, 31,900 after this change alone).
static SERIES: LazyLock<RwLock<HashMap<String, HashMap<SeriesKey, RequestSeries>>>> =
    LazyLock::new(Default::default);

fn record(
    rpc: &'static str,
    model: &str,
    version: Option<u64>,
    arm: &'static str,
    code: &'static str,
    started: Instant,
    items: u64,
) {
    let key = (rpc, version, arm, code);
    let count = |series: &RequestSeries| {
        series.requests.increment(1);
        if let Some(counter) = series.items.as_ref().filter(|_| items > 0) {
            counter.increment(items);
        }
        series.duration.record(started.elapsed().as_secs_f64());
    };
    {
        let all = SERIES.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = all.get(model).and_then(|series| series.get(&key)) {
            count(series);
            return;
        }
    }
    let mut all = SERIES.write().unwrap_or_else(PoisonError::into_inner);
    let series = all
        .entry(model.to_owned())
        .or_default()
        .entry(key)
        .or_insert_with(|| RequestSeries::register(model, key));
    count(series);
}

/// An RPC under way. If its future is dropped before it finishes (tonic
/// enforces `grpc-timeout` by dropping it; a client that resets the stream
/// drops it too), the drop records it as `deadline_exceeded` or `cancelled`,
/// so calls that never answer still show in `nurture_requests_total`.
struct InFlight<'a> {
    rpc: &'static str,
    model: &'a str,
    started: Instant,
    deadline: Option<Instant>,
    finished: bool,
}

/// How close to its deadline an abandoned call counts as timed out rather
/// than cancelled by its client.
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // NOTE: tonic starts the call's timer when the request reaches it;
        // `deadline` is reckoned a little later, when the handler starts
        // (tens of milliseconds later on busy cores), so a call abandoned
        // within DEADLINE_SLACK of it is one tonic timed out.
        let code = match self.deadline {
            Some(deadline) if Instant::now() + DEADLINE_SLACK >= deadline => "deadline_exceeded",
            _ => "cancelled",
        };
        record(self.rpc, self.model, None, "none", code, self.started, 0);
    }
}

/// Runs an RPC body and records it, including when the call is abandoned
/// (deadline passed or client gone) before the body finishes.
pub async fn instrumented<T>(
    rpc: &'static str,
    model: &str,
    deadline: Option<Instant>,
    body: impl Future<Output = Result<(T, Vec<(u64, Arm)>), ServeError>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let mut call = InFlight {
        rpc,
        model,
        started: Instant::now(),
        deadline,
        finished: false,
    };
    let result = body.await;
    call.finished = true;
    match result {
        Ok((response, versions)) => {
            observe(rpc, model, &versions, call.started, None);
            Ok(tonic::Response::new(response))
        }
        Err(error) => {
            observe(rpc, model, &[], call.started, Some(&error));
            Err(error.into())
        }
    }
}
