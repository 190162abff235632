//! Three replicas share one registry on the real S3-compatible server:
//! promote, canary and rollback reach all of them; while the store is
//! unreachable they keep serving (a replica restarted meanwhile serves from
//! its cache); when it returns they converge again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nurture_proto::v1;
use nurture_proto::v1::churn_service_client::ChurnServiceClient;
use nurture_proto::v1::status_service_client::StatusServiceClient;
use nurture_tests::proxy::CuttableProxy;
use nurture_tests::s3::TestS3;
use nurture_tests::server::{ServerProcess, churn_version_of};
use nurture_tests::{eventually, run_tool};
use tempfile::TempDir;
use tonic::Code;

struct Cluster {
    dir: TempDir,
    url: String,
    direct_env: Vec<(&'static str, String)>,
    proxy: CuttableProxy,
}

impl Cluster {
    fn new() -> Cluster {
        let s3 = TestS3::from_env();
        let (url, direct_env) = s3.url_and_env(&TestS3::unique_prefix("cluster"));
        let target = s3.endpoint.trim_start_matches("http://").parse().unwrap();
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            url,
            direct_env,
            proxy: CuttableProxy::start(target),
        }
    }

    /// Runs a tool against the store directly (operators' path).
    fn run(&self, binary: &str, args: &[&str]) {
        let mut env = vec![("NURTURE_ACTOR", "sre")];
        env.extend(self.direct_env.iter().map(|(k, v)| (*k, v.as_str())));
        run_tool(binary, &self.url, args, &env);
    }

    /// Generated churn data of `rows` rows; version 1 trained and live,
    /// version 2 (another seed, fewer iterations) published.
    fn train_two_churn_versions(&self, rows: usize) {
        let data = self.dir.path().join("data");
        let data = data.to_str().unwrap();
        let rows = rows.to_string();
        self.run(
            "nurture-trainer",
            &["generate", "--out", data, "--rows", &rows],
        );
        let csv = format!("{data}/churn.csv");
        self.run(
            "nurture-trainer",
            &["train", "churn", "--data", &csv, "--promote"],
        );
        self.run(
            "nurture-trainer",
            &[
                "train",
                "churn",
                "--data",
                &csv,
                "--publish",
                "--seed",
                "9",
                "--refit",
                "never",
                "--iterations",
                "30",
            ],
        );
    }

    fn cache(&self, replica: usize) -> PathBuf {
        self.dir.path().join(format!("cache-{replica}"))
    }

    /// A replica reaching the store through the cuttable proxy.
    fn replica(&self, index: usize) -> ServerProcess {
        let endpoint = format!("http://{}", self.proxy.address);
        let env: Vec<(&str, &str)> = self
            .direct_env
            .iter()
            .map(|(k, v)| {
                if *k == "AWS_ENDPOINT" {
                    (*k, endpoint.as_str())
                } else {
                    (*k, v.as_str())
                }
            })
            .collect();
        let replica_id = format!("replica-{index}");
        ServerProcess::start_with_env(
            &self.url,
            &self.cache(index),
            &[
                "--models",
                "churn",
                "--poll-interval",
                "200ms",
                "--replica-id",
                &replica_id,
            ],
            &env,
        )
    }
}

fn lead(id: &str) -> v1::LeadProfile {
    nurture_tests::fixtures::lead_profile(id)
}

/// (live, canary) of churn on one replica.
async fn served(server: &ServerProcess) -> (u64, u64) {
    let status = StatusServiceClient::new(server.channel().await)
        .get_status(v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let churn = &status.models[0];
    (churn.live_version, churn.canary_version)
}

async fn converge(replicas: &[&ServerProcess], expected: (u64, u64), what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for replica in replicas {
        loop {
            if served(replica).await == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: replica at {} serves {:?}, expected {expected:?}",
                replica.grpc,
                served(replica).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn answer_version(server: &ServerProcess, pin: u64) -> Result<u64, tonic::Status> {
    let mut client = ChurnServiceClient::new(server.channel().await);
    churn_version_of(&mut client, lead("lead-1"), pin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_through_the_store_and_ride_out_its_outage() {
    let cluster = Cluster::new();
    cluster.train_two_churn_versions(1500);

    let a = cluster.replica(0);
    let b = cluster.replica(1);
    let mut c = cluster.replica(2);
    converge(&[&a, &b, &c], (1, 0), "initial").await;

    cluster.run("nurturectl", &["canary", "churn", "2", "--percent", "50"]);
    converge(&[&a, &b, &c], (1, 2), "canary").await;
    cluster.run("nurturectl", &["promote", "churn", "2"]);
    converge(&[&a, &b, &c], (2, 0), "promote").await;
    cluster.run(
        "nurturectl",
        &["rollback", "churn", "--reason", "conversion dropped"],
    );
    converge(&[&a, &b, &c], (1, 0), "rollback").await;
    for replica in [&a, &b, &c] {
        assert_eq!(answer_version(replica, 0).await.unwrap(), 1);
        assert_eq!(
            answer_version(replica, 2).await.unwrap_err().code(),
            Code::FailedPrecondition,
            "no replica serves the revoked version"
        );
    }

    // The store goes away for the replicas.
    cluster.proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in [&a, &b, &c] {
        assert_eq!(
            answer_version(replica, 0).await.unwrap(),
            1,
            "replicas keep serving while the store is down"
        );
    }
    // A replica restarted meanwhile serves from its cache, at once: it does
    // not wait for the store client's retries.
    c.kill();
    let c = cluster.replica(2);
    let listening = Instant::now();
    converge(&[&c], (1, 0), "restart during the outage").await;
    let ready = listening.elapsed();
    println!("restarted during the outage: serving from its cache {ready:?} after listening");
    assert!(ready <= Duration::from_secs(1), "ready after {ready:?}");
    assert_eq!(answer_version(&c, 0).await.unwrap(), 1);

    // Operators move on (directly); when the store returns, all follow.
    cluster.run("nurturectl", &["promote", "churn", "2", "--force"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    converge(&[&a, &b, &c], (1, 0), "still cut off").await;
    cluster.proxy.restore();
    converge(&[&a, &b, &c], (2, 0), "after the outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_stuck_on_the_store_is_abandoned_at_its_deadline_and_counted() {
    let cluster = Cluster::new();
    cluster.train_two_churn_versions(600);
    let mut replica = cluster.replica(0);
    converge(&[&replica], (1, 0), "initial").await;
    // Version 2 is in the log but not loaded: pinning it fetches it from
    // the store, which is now cut off, so the call outlives its deadline.
    cluster.proxy.cut();
    let mut client = ChurnServiceClient::new(replica.channel().await);
    let mut request = tonic::Request::new(v1::PredictChurnRequest {
        leads: vec![lead("hurried")],
        version: 2,
        max_factors: 0,
    });
    // NOTE: the deadline travels as the grpc-timeout header only (no client
    // timer), so the call surely reaches the server, which enforces it.
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let status = client.predict_churn(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let counted = || {
        replica.metrics().lines().any(|line| {
            line.starts_with("nurture_requests_total")
                && line.contains(r#"rpc="PredictChurn""#)
                && line.contains(r#"code="deadline_exceeded""#)
        })
    };
    eventually(
        "the abandoned call is counted",
        Duration::from_secs(10),
        async || counted(),
    )
    .await;
    // With the store still unreachable and nothing in flight, SIGTERM ends
    // the replica at once: no poll or refresh stuck in store retries holds
    // shutdown up.
    let started = Instant::now();
    let exited = replica.terminate(Duration::from_secs(30));
    let took = started.elapsed();
    println!("SIGTERM with the store down: exited in {took:?}");
    assert!(exited.is_some(), "the replica did not exit");
    assert!(took <= Duration::from_secs(2), "shutdown took {took:?}");
    cluster.proxy.restore();
}
