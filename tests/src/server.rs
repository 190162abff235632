//! A `nurture-server` process on 127.0.0.1 with ephemeral ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One swap of a model's live version, as the server logged it. Times are
/// microseconds since the Unix epoch on the machine's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSwap {
    /// Live version before (0: none).
    pub from_version: u64,
    /// Live version after (0: none).
    pub to_version: u64,
    /// When the poll pass that read the change began.
    pub pass_started_us: u64,
    /// Just before the pointer swap.
    pub swap_began_us: u64,
    /// Just after the pointer swap.
    pub swap_done_us: u64,
}

/// Microseconds since the Unix epoch, comparable with [`LiveSwap`] times.
pub fn unix_micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// A running server; stopped (SIGTERM, then SIGKILL) on drop.
pub struct ServerProcess {
    child: Child,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// The Open Inference Protocol's HTTP address, when started with
    /// `--http-listen`.
    pub http: Option<SocketAddr>,
    stderr_log: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts the server on `registry` with `cache_dir` and extra flags, and
    /// waits (at most 60 s) until it prints its addresses.
    pub fn start(registry: &str, cache_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with_env(registry, cache_dir, extra, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables.
    pub fn start_with_env(
        registry: &str,
        cache_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let stderr_log = cache_dir.with_extension(format!("server-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_log).expect("log file");
        let mut child = Command::new(crate::binary("nurture-server"))
            .args([
                "--registry",
                registry,
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--cache-dir")
            .arg(cache_dir)
            .args(extra)
            .env_remove("ORT_DYLIB_PATH")
            .env("NURTURE_LOG", "info,ort=warn")
            .envs(env.iter().copied())
            .current_dir(crate::project_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("nurture-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("nurture-server did not start:\n{log}")
            });
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        };
        let http = line
            .split_whitespace()
            .find_map(|part| part.strip_prefix("http="))
            .and_then(|addr| addr.parse().ok());
        ServerProcess {
            grpc: field("grpc"),
            metrics: field("metrics"),
            http,
            child,
            stderr_log,
        }
    }

    /// `http://ADDR` of the gRPC port.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A plaintext channel to the gRPC port, connected.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.endpoint())
            .expect("a valid endpoint")
            .connect()
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", self.grpc))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The `live version swapped` events for `model` in the log, oldest
    /// first; the server must run with `--log-format json`.
    pub fn live_swaps(&self, model: &str) -> Vec<LiveSwap> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == "live version swapped" && event["model"] == model)
            .map(|event| {
                let field = |name: &str| {
                    event[name]
                        .as_u64()
                        .unwrap_or_else(|| panic!("no {name} in {event}"))
                };
                LiveSwap {
                    from_version: field("from_version"),
                    to_version: field("to_version"),
                    pass_started_us: field("pass_started_us"),
                    swap_began_us: field("swap_began_us"),
                    swap_done_us: field("swap_done_us"),
                }
            })
            .collect()
    }

    /// Body of `GET /metrics`.
    pub fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(self.metrics).expect("metrics port answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most `timeout`) for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

/// The version that answered a one-lead `PredictChurn` (`pin` 0: routed).
pub async fn churn_version_of(
    client: &mut nurture_proto::v1::churn_service_client::ChurnServiceClient<
        tonic::transport::Channel,
    >,
    lead: nurture_proto::v1::LeadProfile,
    pin: u64,
) -> Result<u64, tonic::Status> {
    let response = client
        .predict_churn(nurture_proto::v1::PredictChurnRequest {
            leads: vec![lead],
            version: pin,
            max_factors: 0,
        })
        .await?;
    let prediction = response
        .into_inner()
        .predictions
        .into_iter()
        .next()
        .ok_or_else(|| tonic::Status::internal("no prediction for one lead"))?;
    Ok(prediction
        .model
        .ok_or_else(|| tonic::Status::internal("prediction without ModelRef"))?
        .version)
}
