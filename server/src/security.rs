//! Transport security and authorisation.
//!
//! * TLS (rustls) from PEM certificate and key files, optional client
//!   certificate verification (mTLS) against a CA bundle. The files are
//!   re-read when they change, so rotated certificates take effect without
//!   a restart; a bad new file is logged and the previous configuration kept.
//! * Bearer tokens from a file (one per line, `#` comments), compared in
//!   constant time, also re-read on change. Health and reflection stay open
//!   so probes and discovery work without a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tonic::{Request, Status};

/// How often certificate and token files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// TLS settings.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }

    /// Builds a rustls configuration from the files, for gRPC (HTTP/2).
    pub fn load(&self) -> anyhow::Result<ServerConfig> {
        self.load_with(GRPC_ALPN)
    }

    /// The same, offering the application protocols `alpn`.
    pub fn load_with(&self, alpn: &[&[u8]]) -> anyhow::Result<ServerConfig> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|error| anyhow::anyhow!("--tls-cert {}: {error}", self.cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|error| anyhow::anyhow!("--tls-cert {}: {error}", self.cert.display()))?;
        if certs.is_empty() {
            anyhow::bail!("--tls-cert {}: no certificate found", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|error| anyhow::anyhow!("--tls-key {}: {error}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|error| anyhow::anyhow!("--tls-client-ca {}: {error}", ca.display()))?
                {
                    roots.add(cert.map_err(|error| {
                        anyhow::anyhow!("--tls-client-ca {}: {error}", ca.display())
                    })?)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Keeps `current` fresh until `shutdown`: every [`RELOAD_CHECK`], when the
/// modification times of `paths` changed, `load` runs and its value replaces
/// the current one; a failed load is logged and the previous value kept.
/// Each attempt counts in `metric` by result; `what` names the files in logs.
fn keep_fresh<T: Send + Sync + 'static>(
    paths: Vec<PathBuf>,
    what: &'static str,
    metric: &'static str,
    current: Arc<ArcSwap<T>>,
    load: impl Fn() -> anyhow::Result<T> + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut seen = modified(&paths);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_CHECK) => {}
                _ = shutdown.changed() => return,
            }
            let now = modified(&paths);
            if now == seen {
                continue;
            }
            seen = now;
            match load() {
                Ok(value) => {
                    current.store(Arc::new(value));
                    metrics::counter!(metric, "result" => "ok").increment(1);
                    tracing::info!("{what} reloaded");
                }
                Err(error) => {
                    metrics::counter!(metric, "result" => "error").increment(1);
                    tracing::error!(%error, "{what} changed but cannot be loaded; keeping the previous ones");
                }
            }
        }
    });
}

/// Application protocols offered on the gRPC port.
pub const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// Application protocols offered on the Open Inference Protocol's HTTP port.
pub const HTTP_ALPN: &[&[u8]] = &[b"http/1.1"];

/// Accepts TCP connections, completes TLS handshakes with the current
/// configuration (offering `alpn`), and hands the streams to the server.
pub fn tls_incoming(
    listener: TcpListener,
    files: TlsFiles,
    alpn: &'static [&'static [u8]],
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<
    tokio_stream::wrappers::ReceiverStream<
        std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    >,
> {
    let initial = files.load_with(alpn)?;
    let acceptor = Arc::new(ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(initial))));
    keep_fresh(
        files.paths(),
        "TLS certificates",
        "nurture_tls_reloads_total",
        acceptor.clone(),
        move || Ok(TlsAcceptor::from(Arc::new(files.load_with(alpn)?))),
        shutdown.clone(),
    );
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.load_full();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// TLS streams from [`tls_incoming`] as an axum listener (the Open
/// Inference Protocol's HTTP port).
pub struct TlsListener {
    /// Completed handshakes.
    pub incoming: tokio_stream::wrappers::ReceiverStream<
        std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    >,
    /// The bound address.
    pub local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // Shut down: nothing more will come.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The authorisation check of every protected service: open when no token
/// file is configured.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Accepted tokens, if authorisation is on.
    pub tokens: Option<Tokens>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &self.tokens {
            None => Ok(request),
            Some(tokens) => (tokens.interceptor())(request),
        }
    }
}

/// Accepted bearer tokens, re-read when their file changes.
#[derive(Clone)]
pub struct Tokens {
    current: Arc<ArcSwap<Vec<Vec<u8>>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens.
        f.debug_struct("Tokens")
            .field("count", &self.current.load().len())
            .finish()
    }
}

fn read_tokens(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("--auth-tokens-file {}: {error}", path.display()))?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        anyhow::bail!(
            "--auth-tokens-file {}: no token in the file",
            path.display()
        );
    }
    Ok(tokens)
}

impl Tokens {
    /// Reads the token file and keeps it fresh until `shutdown`.
    pub fn watch(path: PathBuf, shutdown: watch::Receiver<bool>) -> anyhow::Result<Tokens> {
        let tokens = Tokens {
            current: Arc::new(ArcSwap::from_pointee(read_tokens(&path)?)),
        };
        keep_fresh(
            vec![path.clone()],
            "auth tokens",
            "nurture_auth_token_reloads_total",
            tokens.current.clone(),
            move || read_tokens(&path),
            shutdown,
        );
        Ok(tokens)
    }

    /// Tokens fixed in memory (tests).
    pub fn fixed(tokens: Vec<String>) -> Tokens {
        Tokens {
            current: Arc::new(ArcSwap::from_pointee(
                tokens.into_iter().map(String::into_bytes).collect(),
            )),
        }
    }

    /// Whether `presented` equals one of the tokens. Every token is compared
    /// in constant time, and all of them are compared, so timing reveals
    /// neither a token nor which one matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let tokens = self.current.load();
        let mut matched = subtle::Choice::from(0u8);
        for token in tokens.iter() {
            matched |= token.as_slice().ct_eq(presented);
        }
        bool::from(matched)
    }

    /// A tonic interceptor requiring `authorization: Bearer <token>`.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let tokens = self.clone();
        move |request: Request<()>| {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "));
            match presented {
                Some(token) if tokens.accepts(token.as_bytes()) => Ok(request),
                Some(_) => {
                    metrics::counter!("nurture_auth_failures_total", "reason" => "wrong_token")
                        .increment(1);
                    Err(Status::unauthenticated("the bearer token is not valid"))
                }
                None => {
                    metrics::counter!("nurture_auth_failures_total", "reason" => "missing_token")
                        .increment(1);
                    Err(Status::unauthenticated(
                        "missing authorization: Bearer <token> metadata",
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let tokens = Tokens::fixed(vec!["alpha-123".into(), "beta-456".into()]);
        assert!(tokens.accepts(b"alpha-123"));
        assert!(tokens.accepts(b"beta-456"));
        assert!(!tokens.accepts(b"alpha-12"));
        assert!(!tokens.accepts(b"alpha-1234"));
        assert!(!tokens.accepts(b""));
    }

    #[test]
    fn the_interceptor_wants_a_bearer_token() {
        let tokens = Tokens::fixed(vec!["s3cret".into()]);
        let mut check = tokens.interceptor();
        assert_eq!(
            check(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            check(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut right = Request::new(());
        right
            .metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(check(right).is_ok());
        assert!(!format!("{tokens:?}").contains("s3cret"));
    }
}
