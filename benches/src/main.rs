//! `nurture-load`: drives Nurture's RPCs over real gRPC and reports
//! throughput, latency percentiles (HdrHistogram) and errors by status code.
//!
//! * closed loop (`--concurrency N`): N streams, each sending its next
//!   request when the previous answer arrives;
//! * open loop (`--rate R`): requests start on a fixed schedule whatever the
//!   answers do, and latency counts from the scheduled start, so queueing
//!   shows (no coordinated omission);
//! * `inprocess`: the same models run straight through `ort` with the same
//!   batch sizes, the physical limit the server is compared with;
//! * `replay`: a labelled churn table played as production would, each
//!   prediction followed by its true outcome (for rehearsing rollouts).

mod replay;

/// The generator shares the cores with the server it measures: mimalloc
/// spends less of them on its per-request allocations than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use nurture_models::{ModelName, Registry, runtime};
use nurture_proto::inference as kserve;
use nurture_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nurture_proto::v1;
use nurture_proto::v1::channel_timing_service_client::ChannelTimingServiceClient;
use nurture_proto::v1::churn_service_client::ChurnServiceClient;
use nurture_proto::v1::emotion_service_client::EmotionServiceClient;
use prost::Message as _;
use serde::Serialize;
use std::sync::Mutex;
use tonic::transport::Channel;

/// Load generator for nurture-server.
#[derive(Debug, Parser)]
#[command(name = "nurture-load", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads of the generator's async runtime. One spends less CPU per
    /// request, CPU the server beside it gets (an open loop at 14,000
    /// requests a second: 43 µs against 53 µs with two, by `/usr/bin/time`);
    /// two keep up with a closed loop at saturation.
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rpc {
    /// ChurnService/PredictChurn (max_factors 1: one occlusion row per used feature is added; see --no-factors).
    Churn,
    /// EmotionService/AnalyzeEmotion.
    Emotion,
    /// ChannelTimingService/RecommendTiming (one lead: 672 slots).
    Timing,
    /// inference.GRPCInferenceService/ModelInfer on the churn model.
    InferChurn,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a running server.
    Run(RunArgs),
    /// Score the live version of a model in process, straight through ONNX Runtime.
    Inprocess(InprocessArgs),
    /// Predict each lead of a labelled churn table and report its true
    /// outcome, as production would (rehearses a guarded rollout).
    Replay(replay::ReplayArgs),
    /// Write one gRPC-framed ModelInferRequest for the churn model to stdout,
    /// for independent HTTP/2 load tools (h2load --data).
    Encode {
        /// Rows in the request.
        #[arg(long, default_value_t = 1)]
        rows: usize,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// RPC to drive.
    #[arg(long, value_enum)]
    rpc: Rpc,
    /// Items (leads or texts) per request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Concurrent streams (closed loop).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Requests per second (open loop); overrides --concurrency.
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured duration, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured warm-up, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many measured requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also write the measured latencies of every request (answered or
    /// not) to this file as `MICROSECONDS COUNT` lines, one per recorded
    /// histogram bucket (3 significant digits), so runs can be pooled.
    #[arg(long)]
    latency_out: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct InprocessArgs {
    /// Registry URL.
    #[arg(
        long,
        env = "NURTURE_REGISTRY",
        default_value = "file://./var/registry"
    )]
    registry: String,
    /// Model name (churn or emotion).
    #[arg(long, default_value = "churn")]
    model: String,
    /// Rows per ONNX Runtime call.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Duration, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Results of a load run.
#[derive(Debug, Serialize)]
struct Report {
    rpc: String,
    mode: String,
    rows_per_request: usize,
    concurrency: usize,
    rate: Option<f64>,
    seconds: f64,
    requests: u64,
    /// Requests sent over the whole run, warm-up included: the divisor for
    /// resources measured from outside over the whole run (server CPU).
    total_requests: u64,
    requests_per_second: f64,
    rows_per_second: f64,
    latency_ms: BTreeMap<String, f64>,
    /// Answered requests per second.
    ok_requests_per_second: f64,
    /// Latency of answered requests only.
    latency_ms_ok: BTreeMap<String, f64>,
    /// Latency of refused or failed requests only.
    latency_ms_failed: BTreeMap<String, f64>,
    /// Open loop: how late each request's task began after its scheduled
    /// start (the generator's own delay, timer and cores; part of every
    /// latency above). Empty in closed loop.
    start_lateness_ms: BTreeMap<String, f64>,
    errors: BTreeMap<String, u64>,
}

fn lead(i: u64) -> v1::LeadProfile {
    let f = (i % 97) as f64 / 97.0;
    v1::LeadProfile {
        lead_id: format!("lead-{i}"),
        days_since_first_contact: Some(10.0 + 200.0 * f),
        days_since_last_contact: Some(5.0 * f),
        days_since_last_reply: Some(30.0 * f),
        email_open_rate: Some(f),
        email_click_rate: Some(f / 3.0),
        sms_reply_rate: Some(1.0 - f),
        call_answer_rate: Some(0.3),
        video_join_rate: Some(0.1),
        messages_sent_30d: Some(6),
        messages_received_30d: Some((i % 5) as i32),
        avg_response_hours: Some(12.0),
        sentiment_score: Some(2.0 * f - 1.0),
        complaints_90d: Some((i % 3) as i32),
        website_visits_30d: Some(4),
        listings_viewed_30d: Some((i % 12) as i32),
        saved_searches: Some(1),
        showings_attended: Some((i % 4) as i32),
        pre_approved: Some(i.is_multiple_of(2)),
        mortgage_calculator_uses_30d: Some(1),
        budget_k_usd: Some(300.0 + 400.0 * f),
        time_zone: String::new(),
    }
}

const TEXTS: [&str; 4] = [
    "I'm so excited about the condo downtown!",
    "not happy with the inspection, honestly",
    "can you explain what the appraisal means for our offer",
    "fingers crossed for the house on maple street",
];

#[derive(Clone)]
struct Clients {
    channels: Vec<Channel>,
}

/// One request of each kind, as its RPC's path and message.
enum Message {
    Churn(v1::PredictChurnRequest),
    Emotion(v1::AnalyzeEmotionRequest),
    Timing(v1::RecommendTimingRequest),
    InferChurn(kserve::ModelInferRequest),
}

impl Message {
    /// Request `i` of `rpc` with `rows` rows.
    fn new(rpc: Rpc, rows: usize, i: u64) -> Message {
        match rpc {
            Rpc::Churn => Message::Churn(v1::PredictChurnRequest {
                leads: (0..rows as u64).map(|r| lead(i * 1000 + r)).collect(),
                version: 0,
                max_factors: 1,
            }),
            Rpc::Emotion => Message::Emotion(v1::AnalyzeEmotionRequest {
                inputs: (0..rows)
                    .map(|r| v1::EmotionInput {
                        text: TEXTS[(i as usize + r) % TEXTS.len()].to_owned(),
                        lead_id: format!("lead-{i}"),
                    })
                    .collect(),
                version: 0,
            }),
            Rpc::Timing => Message::Timing(v1::RecommendTimingRequest {
                inputs: (0..rows as u64)
                    .map(|r| v1::TimingInput {
                        lead: Some(lead(i * 1000 + r)),
                        top_k: 5,
                        do_not_contact: vec![],
                        quiet_hours: None,
                    })
                    .collect(),
                version: 0,
                as_of: None,
            }),
            Rpc::InferChurn => {
                let width = 20;
                // Raw little-endian contents, as tritonclient and perf_analyzer send.
                let raw: Vec<u8> = (0..rows * width)
                    .flat_map(|k| (((k as u64 + i) % 13) as f32 / 13.0).to_le_bytes())
                    .collect();
                let input = kserve::model_infer_request::InferInputTensor {
                    name: "features".into(),
                    datatype: "FP32".into(),
                    shape: vec![rows as i64, width as i64],
                    ..Default::default()
                };
                Message::InferChurn(kserve::ModelInferRequest {
                    model_name: "churn".into(),
                    inputs: vec![input],
                    raw_input_contents: vec![raw],
                    ..Default::default()
                })
            }
        }
    }

    /// The message's RPC path and its protobuf bytes.
    fn encode(&self) -> Encoded {
        let (path, body) = match self {
            Message::Churn(m) => ("/nurture.v1.ChurnService/PredictChurn", m.encode_to_vec()),
            Message::Emotion(m) => (
                "/nurture.v1.EmotionService/AnalyzeEmotion",
                m.encode_to_vec(),
            ),
            Message::Timing(m) => (
                "/nurture.v1.ChannelTimingService/RecommendTiming",
                m.encode_to_vec(),
            ),
            Message::InferChurn(m) => (
                "/inference.GRPCInferenceService/ModelInfer",
                m.encode_to_vec(),
            ),
        };
        Encoded {
            path,
            body: body.into(),
        }
    }
}

/// A request encoded before the clock starts: the open loop sends these, so
/// keeping its schedule costs the generator no building or encoding (nor
/// decoding: the answer's bytes are skipped, only its status is read).
#[derive(Clone)]
struct Encoded {
    path: &'static str,
    body: bytes::Bytes,
}

/// Sends [`Encoded`] bytes as they are and skips the answer's.
#[derive(Clone, Copy, Default)]
struct Passthrough;

impl tonic::codec::Codec for Passthrough {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = Passthrough;
    type Decoder = Passthrough;

    fn encoder(&mut self) -> Passthrough {
        Passthrough
    }

    fn decoder(&mut self) -> Passthrough {
        Passthrough
    }
}

impl tonic::codec::Encoder for Passthrough {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Passthrough {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        bytes::Buf::advance(src, bytes::Buf::remaining(src));
        Ok(Some(()))
    }
}

impl Clients {
    fn channel(&self, i: u64) -> Channel {
        self.channels[(i as usize) % self.channels.len()].clone()
    }

    /// Builds request `i` and calls it through the typed client.
    async fn call(&self, rpc: Rpc, rows: usize, i: u64) -> Result<(), tonic::Code> {
        let channel = self.channel(i);
        let result = match Message::new(rpc, rows, i) {
            Message::Churn(m) => ChurnServiceClient::new(channel)
                .predict_churn(m)
                .await
                .map(|_| ()),
            Message::Emotion(m) => EmotionServiceClient::new(channel)
                .analyze_emotion(m)
                .await
                .map(|_| ()),
            Message::Timing(m) => ChannelTimingServiceClient::new(channel)
                .recommend_timing(m)
                .await
                .map(|_| ()),
            Message::InferChurn(m) => GrpcInferenceServiceClient::new(channel)
                .model_infer(m)
                .await
                .map(|_| ()),
        };
        result.map_err(|status| status.code())
    }

    /// Sends an encoded request on connection `i`.
    async fn send(&self, request: Encoded, i: u64) -> Result<(), tonic::Code> {
        let mut grpc = tonic::client::Grpc::new(self.channel(i));
        grpc.ready().await.map_err(|_| tonic::Code::Unavailable)?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(request.path);
        grpc.unary(tonic::Request::new(request.body), path, Passthrough)
            .await
            .map(|_| ())
            .map_err(|status| status.code())
    }
}

struct Tally {
    histogram: Histogram<u64>,
    /// Answered requests only.
    ok: Histogram<u64>,
    /// Refused or failed requests only (under overload: the rejections).
    failed: Histogram<u64>,
    /// Open loop: scheduled start to the request task's first poll.
    lateness: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    requests: u64,
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// p50 … max of a histogram of microseconds, in milliseconds.
fn percentiles(histogram: &Histogram<u64>) -> BTreeMap<String, f64> {
    if histogram.is_empty() {
        return BTreeMap::new();
    }
    let quantile = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    BTreeMap::from([
        ("p50".to_owned(), quantile(0.50)),
        ("p90".to_owned(), quantile(0.90)),
        ("p99".to_owned(), quantile(0.99)),
        ("p99.9".to_owned(), quantile(0.999)),
        ("max".to_owned(), histogram.max() as f64 / 1000.0),
    ])
}

/// The tally, held for one record at a time (never across an await).
fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A histogram's recorded buckets as `MICROSECONDS COUNT` lines.
fn write_buckets(histogram: &Histogram<u64>, path: &std::path::Path) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for bucket in histogram.iter_recorded() {
        let _ = writeln!(
            text,
            "{} {}",
            histogram.highest_equivalent(bucket.value_iterated_to()),
            bucket.count_at_value()
        );
    }
    std::fs::write(path, text)
}

impl Tally {
    fn new() -> Self {
        Tally {
            histogram: latency_histogram(),
            ok: latency_histogram(),
            failed: latency_histogram(),
            lateness: latency_histogram(),
            errors: BTreeMap::new(),
            requests: 0,
        }
    }

    fn record(&mut self, latency: Duration, result: Result<(), tonic::Code>) {
        self.requests += 1;
        let micros = latency.as_micros().clamp(1, 60_000_000) as u64;
        self.histogram.record(micros).expect("within bounds");
        match result {
            Ok(()) => self.ok.record(micros).expect("within bounds"),
            Err(code) => {
                self.failed.record(micros).expect("within bounds");
                *self.errors.entry(format!("{code:?}")).or_default() += 1;
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(args.target.clone())?
                .connect()
                .await
                .context("cannot connect")?,
        );
    }
    let clients = Clients { channels };
    let tally = Arc::new(Mutex::new(Tally::new()));
    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warmup_end + Duration::from_secs_f64(args.duration);
    let limit = args.requests.unwrap_or(u64::MAX);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mode;
    match args.rate {
        None => {
            mode = "closed".to_owned();
            let mut tasks = Vec::new();
            for stream in 0..args.concurrency.max(1) {
                let (clients, tally, counter) = (clients.clone(), tally.clone(), counter.clone());
                let sent = sent.clone();
                let (rpc, rows) = (args.rpc, args.rows);
                tasks.push(tokio::spawn(async move {
                    let mut i = stream as u64 * 1_000_000;
                    loop {
                        let started = Instant::now();
                        if started >= end
                            || counter.load(std::sync::atomic::Ordering::Relaxed) >= limit
                        {
                            break;
                        }
                        let result = clients.call(rpc, rows, i).await;
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        i += 1;
                        if started >= warmup_end {
                            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            lock(&tally).record(started.elapsed(), result);
                        }
                    }
                }));
            }
            for task in tasks {
                task.await?;
            }
        }
        Some(rate) => {
            mode = "open".to_owned();
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            // A paced OS thread starts the requests: nanosleep wakes within
            // tens of microseconds, where the runtime's timer wheel ticks
            // every millisecond and would make every start up to a tick late.
            // It sleeps at least PACER_NAP, handing the runtime all requests
            // then due as one task (one wake-up): at tens of thousands of
            // requests a second a wake-up per request cost the generator
            // half as much CPU again, taken from the server beside it.
            const PACER_NAP: Duration = Duration::from_micros(250);
            let runtime = tokio::runtime::Handle::current();
            let (clients, tally, counter, sent) = (
                clients.clone(),
                tally.clone(),
                counter.clone(),
                sent.clone(),
            );
            const RING: u64 = 64;
            let ring: Arc<Vec<Encoded>> = Arc::new(
                (0..RING)
                    .map(|i| Message::new(args.rpc, args.rows, i).encode())
                    .collect(),
            );
            let pacer = std::thread::spawn(move || {
                let mut scheduled = Instant::now();
                let mut tasks = Vec::new();
                let mut i = 0u64;
                while scheduled < end && counter.load(std::sync::atomic::Ordering::Relaxed) < limit
                {
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep((scheduled - now).max(PACER_NAP));
                    }
                    // Every request due by now.
                    let now = Instant::now();
                    let mut due = Vec::new();
                    while scheduled <= now && scheduled < end {
                        due.push((i, scheduled, ring[(i % RING) as usize].clone()));
                        i += 1;
                        scheduled += interval;
                    }
                    let (clients, tally, counter) =
                        (clients.clone(), tally.clone(), counter.clone());
                    let sent = sent.clone();
                    tasks.push(runtime.spawn(async move {
                        let started: Vec<_> = due
                            .into_iter()
                            .map(|(i, at, request)| {
                                let (clients, tally, counter, sent) = (
                                    clients.clone(),
                                    tally.clone(),
                                    counter.clone(),
                                    sent.clone(),
                                );
                                tokio::spawn(async move {
                                    let late = at.elapsed();
                                    let result = clients.send(request, i).await;
                                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    if at >= warmup_end {
                                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                        // Latency from the scheduled start: queueing shows.
                                        let mut tally = lock(&tally);
                                        tally.record(at.elapsed(), result);
                                        let micros = late.as_micros().clamp(1, 60_000_000) as u64;
                                        tally.lateness.record(micros).expect("within bounds");
                                    }
                                })
                            })
                            .collect();
                        for request in started {
                            let _ = request.await;
                        }
                    }));
                    // Bound the tasks kept around.
                    if tasks.len() > 100_000 {
                        tasks.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                    }
                }
                tasks
            });
            let tasks = tokio::task::spawn_blocking(move || pacer.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
            for task in tasks {
                task.await?;
            }
        }
    }
    let measured = (Instant::now().min(end) - warmup_end)
        .as_secs_f64()
        .max(1e-9);
    let tally = lock(&tally);
    if let Some(path) = &args.latency_out {
        write_buckets(&tally.histogram, path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let latency_ms = percentiles(&tally.histogram);
    Ok(Report {
        rpc: format!("{:?}", args.rpc).to_lowercase(),
        mode,
        rows_per_request: args.rows,
        concurrency: args.concurrency,
        rate: args.rate,
        seconds: measured,
        requests: tally.requests,
        total_requests: sent.load(std::sync::atomic::Ordering::Relaxed),
        requests_per_second: tally.requests as f64 / measured,
        rows_per_second: (tally.requests * args.rows as u64) as f64 / measured,
        latency_ms,
        ok_requests_per_second: tally.ok.len() as f64 / measured,
        latency_ms_ok: percentiles(&tally.ok),
        latency_ms_failed: percentiles(&tally.failed),
        start_lateness_ms: percentiles(&tally.lateness),
        errors: tally.errors.clone(),
    })
}

/// In-process throughput of a model straight through ONNX Runtime.
#[derive(Debug, Serialize)]
struct InprocessReport {
    model: String,
    version: u64,
    rows_per_call: usize,
    calls_per_second: f64,
    rows_per_second: f64,
    microseconds_per_row: f64,
}

async fn inprocess(args: InprocessArgs) -> anyhow::Result<InprocessReport> {
    let registry = Registry::open(&args.registry)?;
    let name = ModelName::new(&args.model)?;
    let version = registry
        .state(&name)
        .await?
        .live
        .context("no live version")?;
    let fetched = registry.fetch(&name, version).await?;
    let environment = runtime::environment(None)?;
    let mut session = runtime::session(environment, &fetched.onnx, 1)?;
    let width = fetched.manifest.features.len();
    // Inputs are made before the clock starts; each call copies one into
    // its tensor, as the batcher copies rows into its batch.
    const VARIANTS: usize = 13;
    let features: Vec<Vec<f32>> = (0..VARIANTS)
        .map(|variant| {
            (0..args.rows * width)
                .map(|k| ((k + variant) % 13) as f32 / 13.0)
                .collect()
        })
        .collect();
    let texts: Vec<Vec<String>> = (0..VARIANTS)
        .map(|variant| {
            (0..args.rows)
                .map(|r| TEXTS[(r + variant) % TEXTS.len()].to_owned())
                .collect()
        })
        .collect();
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut calls = 0u64;
    let started = Instant::now();
    while Instant::now() < end {
        let variant = calls as usize % VARIANTS;
        if width > 0 {
            let values = features[variant].clone();
            let tensor = ort::value::Tensor::from_array(([args.rows, width], values))?;
            let outputs = session.run(ort::inputs!["features" => tensor])?;
            std::hint::black_box(outputs["probabilities"].try_extract_tensor::<f32>()?);
        } else {
            let texts = &texts[variant];
            let tensor = ort::value::Tensor::from_string_array(([args.rows], texts.as_slice()))?;
            let outputs = session.run(ort::inputs!["text" => tensor])?;
            std::hint::black_box(outputs["probabilities"].try_extract_tensor::<f32>()?);
        }
        calls += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows = calls as f64 * args.rows as f64;
    Ok(InprocessReport {
        model: args.model,
        version,
        rows_per_call: args.rows,
        calls_per_second: calls as f64 / seconds,
        rows_per_second: rows / seconds,
        microseconds_per_row: seconds * 1e6 / rows,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.threads))
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => {
            let json = args.json;
            let report = runtime.block_on(run(args))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} {} rows={} c={} rate={:?}: {:.0} req/s, {:.0} rows/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, errors {:?}",
                    report.rpc,
                    report.mode,
                    report.rows_per_request,
                    report.concurrency,
                    report.rate,
                    report.requests_per_second,
                    report.rows_per_second,
                    report.latency_ms["p50"],
                    report.latency_ms["p99"],
                    report.latency_ms["p99.9"],
                    report.errors
                );
            }
        }
        Command::Replay(args) => runtime.block_on(replay::replay(args))?,
        Command::Encode { rows } => {
            use std::io::Write;
            let width = 20;
            let raw: Vec<u8> = (0..rows * width)
                .flat_map(|k| ((k % 13) as f32 / 13.0).to_le_bytes())
                .collect();
            let request = kserve::ModelInferRequest {
                model_name: "churn".into(),
                inputs: vec![kserve::model_infer_request::InferInputTensor {
                    name: "features".into(),
                    datatype: "FP32".into(),
                    shape: vec![rows as i64, width as i64],
                    ..Default::default()
                }],
                raw_input_contents: vec![raw],
                ..Default::default()
            };
            let body = prost::Message::encode_to_vec(&request);
            // gRPC message framing: not compressed, 4-byte big-endian length.
            let mut framed = vec![0u8];
            framed.extend((body.len() as u32).to_be_bytes());
            framed.extend(body);
            std::io::stdout().write_all(&framed)?;
        }
        Command::Inprocess(args) => {
            let json = args.json;
            let report = runtime.block_on(inprocess(args))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} v{} in process, {} rows/call: {:.0} calls/s, {:.0} rows/s, {:.2} us/row",
                    report.model,
                    report.version,
                    report.rows_per_call,
                    report.calls_per_second,
                    report.rows_per_second,
                    report.microseconds_per_row
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket file keeps every request and each bucket's upper edge, so
    /// a quantile read from it (as benches/shadow/pool.py reads one: the
    /// first bucket whose running count reaches q × total, rounded) is the
    /// histogram's own.
    #[test]
    fn bucket_files_give_back_the_histograms_quantiles() {
        let mut histogram = latency_histogram();
        for micros in 1..=5_000u64 {
            histogram.record(micros * 7 % 4_999 + 1).unwrap();
        }
        histogram.record_n(250_000, 40).unwrap();
        let path =
            std::env::temp_dir().join(format!("nurture-load-buckets-{}", std::process::id()));
        write_buckets(&histogram, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let buckets: Vec<(u64, u64)> = text
            .lines()
            .map(|line| {
                let (value, count) = line.split_once(' ').unwrap();
                (value.parse().unwrap(), count.parse().unwrap())
            })
            .collect();
        let total: u64 = buckets.iter().map(|(_, count)| count).sum();
        assert_eq!(total, histogram.len());
        for q in [0.5, 0.9, 0.99, 0.999] {
            let target = ((q * total as f64 + 0.5) as u64).max(1);
            let mut seen = 0;
            let value = buckets
                .iter()
                .find(|(_, count)| {
                    seen += count;
                    seen >= target
                })
                .unwrap()
                .0;
            assert_eq!(value, histogram.value_at_quantile(q), "q = {q}");
        }
    }
}
