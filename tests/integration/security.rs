//! TLS, mTLS, certificate reload and bearer tokens on a real server process.

use std::path::Path;
use std::time::{Duration, Instant};

use nurture_proto::v1;
use nurture_proto::v1::status_service_client::StatusServiceClient;
use nurture_tests::server::ServerProcess;
use nurture_tests::tls::TestCa;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

fn start(dir: &Path, extra: &[&str]) -> ServerProcess {
    let registry = format!("file://{}", dir.join("registry").display());
    ServerProcess::start(&registry, &dir.join("cache"), extra)
}

async fn tls_channel(
    server: &ServerProcess,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn status_call(channel: Channel) -> Result<v1::GetStatusResponse, tonic::Status> {
    StatusServiceClient::new(channel)
        .get_status(v1::GetStatusRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_plaintext_serves_trusting_clients_and_reloads_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("nurture test CA");
    let issued = ca.server();
    let cert = write(dir.path(), "server.pem", &issued.cert);
    let key = write(dir.path(), "server.key", &issued.key);
    let server = start(
        dir.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--models",
            "churn",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );

    // The protocol's HTTP port takes the same certificate: curl trusting
    // the CA is answered over HTTPS, and plaintext HTTP is not.
    let http = server.http.expect("http= address").to_string();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let https = curl(&[
        "--cacert",
        &ca_file,
        &format!("https://{http}/v2/health/live"),
    ]);
    assert_eq!(https.0, 200, "{https:?}");
    let plain = curl(&[&format!("http://{http}/v2/health/live")]);
    assert_ne!(plain.0, 200, "{plain:?}");

    // Plaintext is refused.
    let plaintext_refused = async {
        match Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => status_call(channel).await.is_err(),
            Err(_) => true,
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), plaintext_refused)
            .await
            .unwrap_or(true)
    );
    // A client trusting the CA is served.
    let channel = tls_channel(&server, &ca.pem(), None).await.unwrap();
    assert_eq!(status_call(channel).await.unwrap().models.len(), 1);
    // A client trusting another CA is not.
    let stranger = TestCa::new("someone else");
    let refused = match tls_channel(&server, &stranger.pem(), None).await {
        Ok(channel) => status_call(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused);

    // Rotate to a certificate from a new CA: after the reload, only clients
    // trusting the new CA get through.
    let rotated = TestCa::new("rotated CA");
    let issued = rotated.server();
    std::fs::write(&key, &issued.key).unwrap();
    std::fs::write(&cert, &issued.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(channel) = tls_channel(&server, &rotated.pem(), None).await
            && status_call(channel).await.is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not picked up\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("nurture test CA");
    let issued = ca.server();
    let cert = write(dir.path(), "server.pem", &issued.cert);
    let key = write(dir.path(), "server.key", &issued.key);
    let client_ca = write(dir.path(), "clients.pem", &ca.pem());
    let server = start(
        dir.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &client_ca,
            "--models",
            "churn",
        ],
    );

    let anonymous = match tls_channel(&server, &ca.pem(), None).await {
        Ok(channel) => status_call(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate is refused");
    let client = ca.client("scoring-service");
    let channel = tls_channel(&server, &ca.pem(), Some((&client.cert, &client.key)))
        .await
        .unwrap();
    assert!(status_call(channel).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_rpcs_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens",
        "# scoring services\nalpha-7f3c\nbeta-91ad\n",
    );
    let server = start(
        dir.path(),
        &[
            "--auth-tokens-file",
            &tokens,
            "--models",
            "churn",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let channel = server.channel().await;

    // The same tokens on the protocol's HTTP port; its health stays open.
    let http = server.http.expect("http= address").to_string();
    let metadata = format!("http://{http}/v2");
    assert_eq!(curl(&[&metadata]).0, 401);
    assert_eq!(
        curl(&["-H", "Authorization: Bearer alpha-7f3", &metadata]).0,
        401
    );
    assert_eq!(
        curl(&["-H", "Authorization: Bearer beta-91ad", &metadata]).0,
        200
    );
    assert_eq!(curl(&[&format!("http://{http}/v2/health/live")]).0, 200);

    let mut status = StatusServiceClient::new(channel.clone());
    let missing = status
        .get_status(v1::GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(v1::GetStatusRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer alpha-7f3".parse().unwrap());
    assert_eq!(
        status.get_status(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(v1::GetStatusRequest {});
    right
        .metadata_mut()
        .insert("authorization", "Bearer beta-91ad".parse().unwrap());
    assert!(status.get_status(right).await.is_ok());

    let mut health = HealthClient::new(channel);
    let answer = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(answer.is_ok(), "health answers without a token: {answer:?}");
}

/// `curl -s` with `args`: the HTTP status (0 when no answer) and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let output = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
