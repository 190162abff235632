//! Every knob of `nurture-server`: a flag with a `NURTURE_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nurture_models::registry::DEFAULT_REGISTRY;

/// Serves Nurture's models over gRPC, following the registry's release logs.
#[derive(Debug, Clone, Parser)]
#[command(name = "nurture-server", version)]
pub struct Config {
    /// Registry URL: file://PATH, s3://BUCKET[/PREFIX] (AWS_* variables), gs://, az://.
    #[arg(long, env = "NURTURE_REGISTRY", default_value = DEFAULT_REGISTRY)]
    pub registry: String,

    /// gRPC listen address (port 0 picks a free port; the bound address is logged).
    #[arg(long, env = "NURTURE_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Prometheus /metrics listen address.
    #[arg(long, env = "NURTURE_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// Open Inference Protocol over HTTP/JSON (KServe v2 REST, as Triton's
    /// port 8000) listen address; off unless set. Same TLS and bearer tokens
    /// as gRPC; /v2/health/* stays open.
    #[arg(long, env = "NURTURE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Optional plaintext address serving only grpc.health.v1, for probes
    /// that cannot speak TLS (Kubernetes' native gRPC probes).
    #[arg(long, env = "NURTURE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// How often each model's release log is read.
    #[arg(long, env = "NURTURE_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Local copy of fetched versions and the last known release state, so a
    /// restart while the store is unreachable still serves.
    #[arg(long, env = "NURTURE_CACHE_DIR", default_value = "./var/cache")]
    pub cache_dir: PathBuf,

    /// Models to serve, as NAME or NAME=KIND; a bare NAME must be a kind.
    #[arg(
        long,
        env = "NURTURE_MODELS",
        value_delimiter = ',',
        default_value = "emotion,churn,journey,channel_timing,optimization"
    )]
    pub models: Vec<String>,

    /// Most rows one inference call takes.
    #[arg(long, env = "NURTURE_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,

    /// Longest a request waits for others to join its batch. 0 (the
    /// default): a batch is what queued while the worker was busy, which
    /// suits CPU models whose per-call cost is small; raise it (e.g. 2ms)
    /// for models where one call of many rows is much cheaper than many calls.
    #[arg(long, env = "NURTURE_MAX_DELAY", default_value = "0ms", value_parser = parse_duration)]
    pub max_delay: Duration,

    /// Inference threads per loaded version, each with its own session.
    #[arg(long, env = "NURTURE_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Rows (not requests) waiting or running per loaded version before new
    /// requests get RESOURCE_EXHAUSTED. A request larger than this is still
    /// taken when nothing else waits. The default holds six of the largest
    /// channel-timing requests (16 leads × 672 slots); latency is bounded by
    /// --max-queue-delay, this bounds memory.
    #[arg(long, env = "NURTURE_QUEUE_CAPACITY", default_value_t = 65536)]
    pub queue_capacity: usize,

    /// Longest estimated queue wait (from the measured cost per row) before
    /// a request is refused at once with RESOURCE_EXHAUSTED and
    /// `retry-after`; 0 turns the bound off. Requests whose estimated answer
    /// time passes their own gRPC deadline are refused the same way.
    #[arg(long, env = "NURTURE_MAX_QUEUE_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub max_queue_delay: Duration,

    /// Threads of the async runtime that run gRPC, HTTP/2 and protobuf work
    /// (default: half the CPUs this process may use, rounded up, leaving the
    /// rest to the inference workers).
    #[arg(long, env = "NURTURE_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub io_threads: Option<u16>,

    /// Requests (HTTP/2 streams) one client connection may have open at
    /// once; past it the client waits for one to finish before sending more
    /// (HTTP/2's own backpressure). The connection's flow-control window is
    /// sized from it (see [`Config::connection_window`]) so that open small
    /// requests can never use up the HTTP/2 library's allowance for small
    /// DATA frames, which closes the whole connection and fails every
    /// request on it with UNKNOWN.
    #[arg(
        long,
        env = "NURTURE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=MAX_STREAMS_PER_CONNECTION)
    )]
    pub max_streams_per_connection: u32,

    /// ONNX Runtime intra-op threads per session.
    #[arg(long, env = "NURTURE_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,

    /// Versions per model a replica loads on demand for requests that pin a
    /// version it does not serve (replay, debugging); the least recently
    /// used is dropped first. 0: pins reach only live, canary and previous.
    #[arg(long, env = "NURTURE_MAX_PINNED_VERSIONS", default_value_t = 2)]
    pub max_pinned_versions: usize,

    /// Most items (leads or texts) in one request.
    #[arg(long, env = "NURTURE_MAX_ITEMS", default_value_t = 256)]
    pub max_items: usize,

    /// Most leads in one channel-timing request (each expands to up to 672 rows).
    #[arg(long, env = "NURTURE_MAX_TIMING_LEADS", default_value_t = 16)]
    pub max_timing_leads: usize,

    /// Longest text accepted, in bytes.
    #[arg(long, env = "NURTURE_MAX_TEXT_BYTES", default_value_t = 4096)]
    pub max_text_bytes: usize,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "NURTURE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// This replica's name in outcome records ([a-z0-9-]); default: derived
    /// from the process id and start time.
    #[arg(long, env = "NURTURE_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Seed of the bandit's random draws (reproducible choices in tests);
    /// default: from the clock.
    #[arg(long, env = "NURTURE_BANDIT_SEED")]
    pub bandit_seed: Option<u64>,

    /// How stale this replica's view of an experiment may get before it
    /// re-reads the store (outcomes written by other replicas).
    #[arg(long, env = "NURTURE_EXPERIMENT_REFRESH", default_value = "1s", value_parser = parse_duration)]
    pub experiment_refresh: Duration,

    /// File holding the fleet's prediction-id key (hex, at least 16 bytes),
    /// managed by the operator. Default: the key in the store at
    /// `feedback/key`, created by the first replica and cached on disk.
    #[arg(long, env = "NURTURE_PREDICTION_KEY_FILE")]
    pub prediction_key_file: Option<PathBuf>,

    /// Outcomes observed longer than this after their prediction are
    /// counted as late and not scored (e.g. 180d, 12h).
    #[arg(long, env = "NURTURE_OUTCOME_HORIZON", default_value = "180d", value_parser = parse_duration)]
    pub outcome_horizon: Duration,

    /// An outcome whose first writer died between its idempotency record
    /// and its batch is adopted by a replay once the record is this old;
    /// younger, the replay gets UNAVAILABLE (retry later). Must exceed the
    /// longest a write can take (the store client retries for up to 3m).
    #[arg(long, env = "NURTURE_OUTCOME_ADOPT_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub outcome_adopt_after: Duration,

    /// Quality figures (AUC, log-loss, ...) of a version and arm are shown
    /// only from this many outcomes on.
    #[arg(long, env = "NURTURE_QUALITY_MIN_OUTCOMES", default_value_t = 30)]
    pub quality_min_outcomes: u64,

    /// Confidence of concept-drift detection (ADWIN) on each version's error
    /// stream: smaller means fewer false alarms and later detection
    /// (docs/feedback.md has measured rates).
    #[arg(long, env = "NURTURE_DRIFT_DELTA", default_value_t = nurture_models::feedback::drift::SERVER.delta)]
    pub drift_delta: f64,

    /// How often each replica's rollout guard judges the canary of every
    /// guarded rollout (docs/rollouts.md); 0 turns the guard off here.
    #[arg(long, env = "NURTURE_GUARD_EVERY", default_value = "1s", value_parser = parse_duration)]
    pub guard_every: Duration,

    /// Share of answers written to the prediction log (Parquet in the
    /// store, docs/feedback.md), in [0, 1]; 0 turns the log off.
    #[arg(long, env = "NURTURE_PREDICTION_LOG_SAMPLE", default_value_t = 1.0)]
    pub prediction_log_sample: f64,

    /// Answers the prediction log buffers per answering thread (about 300
    /// bytes each, drained every 50 ms) before it drops (and counts) new
    /// ones; answers never wait for the log.
    #[arg(long, env = "NURTURE_PREDICTION_LOG_BUFFER", default_value_t = 8_192)]
    pub prediction_log_buffer: usize,

    /// Longest a logged prediction waits before its file is written.
    #[arg(long, env = "NURTURE_PREDICTION_LOG_FLUSH", default_value = "10s", value_parser = parse_duration)]
    pub prediction_log_flush: Duration,

    /// Most records per prediction-log file (one row group). Records wait
    /// in memory until their file is written (about 300 bytes each), so this
    /// bounds the log's memory.
    #[arg(
        long,
        env = "NURTURE_PREDICTION_LOG_FILE_RECORDS",
        default_value_t = 10_000
    )]
    pub prediction_log_file_records: usize,

    /// Shadow answers remembered for scoring the shadow on the outcomes of
    /// the live answers they mirror (about 150 bytes each; oldest forgotten
    /// first). Outcomes that come back later do not score the shadow here;
    /// the prediction log keeps every shadow answer for an offline join.
    #[arg(long, env = "NURTURE_SHADOW_MEMORY", default_value_t = 100_000)]
    pub shadow_memory: usize,

    /// How often label-free drift is checked: the PSI of each input feature
    /// and of the score of every served version against its manifest's
    /// training reference (from the logged predictions, so it follows
    /// --prediction-log-sample).
    #[arg(long, env = "NURTURE_INPUT_DRIFT_CHECK", default_value = "60s", value_parser = parse_duration)]
    pub input_drift_check: Duration,

    /// Fewest logged predictions a version's window needs before it is
    /// judged; the window grows until then.
    #[arg(long, env = "NURTURE_INPUT_DRIFT_MIN_VALUES", default_value_t = 500)]
    pub input_drift_min_values: u64,

    /// PSI above which a variable's drift is an alarm.
    #[arg(long, env = "NURTURE_INPUT_DRIFT_PSI", default_value_t = 0.25)]
    pub input_drift_psi: f64,

    /// How often this replica reads the outcome batches other replicas
    /// wrote, so its quality figures are the fleet's.
    #[arg(long, env = "NURTURE_FEEDBACK_REFRESH", default_value = "1s", value_parser = parse_duration)]
    pub feedback_refresh: Duration,

    /// PEM certificate chain; with --tls-key, gRPC is served over TLS only.
    /// Re-read when the file changes.
    #[arg(long, env = "NURTURE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "NURTURE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    #[arg(long, env = "NURTURE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// File of accepted bearer tokens, one per line; when set, inference and
    /// status RPCs need `authorization: Bearer <token>` (health stays open).
    #[arg(long, env = "NURTURE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Log lines as `text` for people or `json` (one object per line) for log
    /// shippers; the level filter is `NURTURE_LOG` (e.g. `info,ort=warn`).
    #[arg(long, env = "NURTURE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Path of the ONNX Runtime library; else .ort/ of the project is used.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
}

/// Highest `--max-streams-per-connection`: its window (512 bytes a stream)
/// stays well inside HTTP/2's 2^31 - 1.
pub const MAX_STREAMS_PER_CONNECTION: i64 = 1 << 20;

/// Bytes of connection window per allowed stream. The HTTP/2 library lets a
/// connection hold unread small DATA frames worth half its window in
/// framing overhead, and a frame under 256 bytes costs 256 minus its size:
/// at 512 bytes a stream, one pending small frame on every open stream
/// (a unary gRPC request's message) always fits.
const WINDOW_PER_STREAM: u32 = 512;

/// The smallest connection window: hyper's default, 1 MiB.
const MIN_CONNECTION_WINDOW: u32 = 1 << 20;

impl Config {
    /// The HTTP/2 connection flow-control window: 1 MiB, or 512 bytes per
    /// allowed stream if that is more.
    pub fn connection_window(&self) -> u32 {
        self.max_streams_per_connection
            .saturating_mul(WINDOW_PER_STREAM)
            .max(MIN_CONNECTION_WINDOW)
    }

    /// `--io-threads`, or half the available CPUs rounded up.
    pub fn io_threads(&self) -> usize {
        match self.io_threads {
            Some(threads) => usize::from(threads),
            None => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields included.
    Json,
}

pub use nurture_models::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration("180d"),
            Ok(Duration::from_secs(180 * 86_400))
        );
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn the_connection_window_holds_a_small_frame_on_every_allowed_stream() {
        // h2 allows unread small DATA frames worth half the connection window
        // in overhead, each frame costing at most 255 (256 minus its size).
        for streams in [
            1,
            100,
            1024,
            2048,
            2049,
            100_000,
            MAX_STREAMS_PER_CONNECTION as u32,
        ] {
            let config = Config::parse_from([
                "nurture-server",
                "--max-streams-per-connection",
                &streams.to_string(),
            ]);
            let window = config.connection_window();
            assert!(
                window / 2 >= streams * 255,
                "{streams} streams, window {window}"
            );
            assert!(window >= 1 << 20, "never below hyper's default");
            assert!(window < 1 << 31, "HTTP/2 windows are at most 2^31 - 1");
        }
        let default = Config::parse_from(["nurture-server"]);
        assert_eq!(default.max_streams_per_connection, 1024);
        for refused in ["0", "1048577"] {
            let parsed =
                Config::try_parse_from(["nurture-server", "--max-streams-per-connection", refused]);
            assert!(parsed.is_err(), "{refused} streams accepted");
        }
    }
}
