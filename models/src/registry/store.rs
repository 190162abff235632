//! Opening an object store from a registry URL.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

use crate::error::{Error, Result};

/// Retries of remote stores: a few quick ones. Readers poll again anyway,
/// and an operator's command should fail in seconds, not minutes, when the
/// store is down.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(10),
        ..RetryConfig::default()
    }
}

/// The registry URL used when none is given.
pub const DEFAULT_REGISTRY: &str = "file://./var/registry";

/// A registry URL as written, or a local folder named without a scheme
/// (`./var/registry`, `/srv/models`), which is taken as `file://` of it.
/// Anything else with a colon but no `://` is a mistyped URL.
pub fn normalize(url: &str) -> Result<String> {
    if url.contains("://") || url == "memory:" {
        return Ok(url.to_owned());
    }
    if url.is_empty() || url.contains(':') {
        return Err(Error::invalid(
            "registry",
            format!(
                "{url:?} is not a registry URL; use file://PATH for a folder, or s3://, gs://, az://, memory://"
            ),
        ));
    }
    Ok(format!("file://{url}"))
}

/// The folder of a `file://` registry URL (after [`normalize`]), if it is one.
pub fn local_folder(url: &str) -> Option<std::path::PathBuf> {
    normalize(url)
        .ok()?
        .strip_prefix("file://")
        .filter(|folder| !folder.is_empty())
        .map(std::path::PathBuf::from)
}

/// Opens the store a registry URL names, and the path prefix inside it.
///
/// * `PATH` without a scheme: the same as `file://PATH`.
/// * `file://PATH`: a local folder (relative paths allowed, e.g.
///   `file://./var/registry`); created when missing.
/// * `memory://`: an in-process store, empty at start (tests).
/// * `s3://BUCKET[/PREFIX]`: Amazon S3 or a compatible server; region,
///   endpoint and credentials from the usual `AWS_*` variables
///   (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
///   `AWS_REGION`, `AWS_ALLOW_HTTP`, ...).
/// * `gs://BUCKET[/PREFIX]`: Google Cloud Storage (`GOOGLE_*` variables).
/// * `az://CONTAINER[/PREFIX]` and the other Azure schemes `object_store`
///   knows: Azure Blob Storage (`AZURE_*` variables).
pub fn open_store(url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let url = &normalize(url)?;
    let invalid = |reason: String| Error::invalid("registry", format!("{url:?}: {reason}"));
    if let Some(folder) = url.strip_prefix("file://") {
        if folder.is_empty() {
            return Err(invalid(
                "file:// needs a folder, e.g. file://./var/registry".into(),
            ));
        }
        std::fs::create_dir_all(folder)
            .map_err(|error| invalid(format!("cannot create the folder: {error}")))?;
        let store =
            LocalFileSystem::new_with_prefix(folder).map_err(|error| invalid(error.to_string()))?;
        return Ok((Arc::new(store), Path::default()));
    }
    if url == "memory://" || url == "memory:///" {
        return Ok((Arc::new(InMemory::new()), Path::default()));
    }
    let parsed = url::Url::parse(url).map_err(|error| invalid(error.to_string()))?;
    let prefix = Path::from_url_path(parsed.path()).map_err(|error| invalid(error.to_string()))?;
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .map_err(|error| invalid(error.to_string()))?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(|error| invalid(error.to_string()))?,
        ),
        "az" | "adl" | "azure" | "abfs" | "abfss" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_retry(retry())
                .with_url(url)
                .build()
                .map_err(|error| invalid(error.to_string()))?,
        ),
        other => {
            return Err(invalid(format!(
                "unsupported scheme {other:?}; use file://, memory://, s3://, gs:// or az://"
            )));
        }
    };
    Ok((store, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_schemes_are_named() {
        let error = open_store("ftp://host/x").unwrap_err().to_string();
        assert!(
            error.contains("invalid registry") && error.contains("\"ftp\""),
            "{error}"
        );
        assert!(open_store("file://").is_err());
    }

    #[test]
    fn a_bare_path_is_a_folder_and_a_mistyped_url_is_named() {
        assert_eq!(
            normalize("./var/registry").unwrap(),
            "file://./var/registry"
        );
        assert_eq!(normalize("/srv/models").unwrap(), "file:///srv/models");
        assert_eq!(normalize("s3://b/p").unwrap(), "s3://b/p");
        let error = normalize("s3:/bucket").unwrap_err().to_string();
        assert!(error.contains("use file://PATH"), "{error}");
        assert_eq!(
            local_folder("var/registry"),
            Some(std::path::PathBuf::from("var/registry"))
        );
        assert_eq!(local_folder("s3://b/p"), None);
    }

    #[test]
    fn s3_urls_keep_their_prefix() {
        let (_, prefix) = open_store("s3://bucket/team/models").unwrap();
        assert_eq!(prefix.as_ref(), "team/models");
    }
}
