//! The real S3-compatible server for tests (moto_server on 127.0.0.1).
//!
//! `scripts/with-s3.sh` starts it on a free port, creates the test bucket,
//! exports `NURTURE_TEST_S3_ENDPOINT` and `NURTURE_TEST_S3_BUCKET`, runs the
//! test command and stops the server. Tests that need S3 fail with a clear
//! message when run outside it; they never skip silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;

/// Credentials the test server accepts (moto accepts any).
pub const ACCESS_KEY: &str = "nurture-test";
/// Secret for [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "nurture-test-secret";
/// Region used against the test server.
pub const REGION: &str = "us-east-1";

/// Where the test server listens and which bucket to use.
#[derive(Debug, Clone)]
pub struct TestS3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// An existing bucket.
    pub bucket: String,
}

impl TestS3 {
    /// Reads the server's address from the environment `scripts/with-s3.sh`
    /// sets, or panics saying how to run the test.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("NURTURE_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "NURTURE_TEST_S3_ENDPOINT is not set: S3 tests need the S3-compatible test server; \
                 run them through `make test` or `scripts/with-s3.sh cargo test`"
            )
        });
        let bucket =
            std::env::var("NURTURE_TEST_S3_BUCKET").unwrap_or_else(|_| "nurture-test".to_owned());
        TestS3 { endpoint, bucket }
    }

    /// A prefix no other test uses.
    pub fn unique_prefix(label: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// An object store on the test bucket.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_bucket_name(&self.bucket)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_region(REGION)
                .build()
                .expect("the test S3 configuration is valid"),
        )
    }

    /// A fresh, empty prefix inside the bucket.
    pub fn fresh_prefix(&self, label: &str) -> Path {
        Path::from(Self::unique_prefix(label))
    }

    /// `s3://BUCKET/PREFIX` for processes, with the environment they need.
    pub fn url_and_env(&self, prefix: &str) -> (String, Vec<(&'static str, String)>) {
        (
            format!("s3://{}/{prefix}", self.bucket),
            vec![
                ("AWS_ENDPOINT", self.endpoint.clone()),
                ("AWS_ALLOW_HTTP", "true".to_owned()),
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
                ("AWS_REGION", REGION.to_owned()),
            ],
        )
    }
}
