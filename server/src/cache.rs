//! The local disk cache: fetched versions and the last release state read,
//! so a restart while the object store is unreachable still serves the last
//! known live versions.
//!
//! ```text
//! {cache_dir}/{model}/state.json
//! {cache_dir}/{model}/{version:08}/manifest.json
//! {cache_dir}/{model}/{version:08}/model.onnx
//! ```

use std::path::{Path, PathBuf};

use nurture_models::registry::{FetchedVersion, sha256_hex};
use nurture_models::{Manifest, ModelState};

/// The cache folder.
#[derive(Debug, Clone)]
pub struct DiskCache {
    root: PathBuf,
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let partial = path.with_extension("partial");
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, path).await
}

impl DiskCache {
    /// A cache under `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        DiskCache { root }
    }

    fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.root.join(model).join(format!("{version:08}"))
    }

    /// Remembers the fleet's prediction-id key, so a restart while the store
    /// is unreachable still signs ids every replica accepts.
    pub async fn save_key(&self, key_hex: &str) {
        let path = self.root.join("prediction-id.key");
        if let Err(error) = write_atomically(&path, key_hex.as_bytes()).await {
            tracing::warn!(path = %path.display(), %error, "cannot cache the prediction-id key");
        }
    }

    /// The cached prediction-id key (hex), if any.
    pub async fn load_key(&self) -> Option<String> {
        tokio::fs::read_to_string(self.root.join("prediction-id.key"))
            .await
            .ok()
    }

    /// Remembers the last release state read for a model.
    pub async fn save_state(&self, state: &ModelState) {
        let path = self.root.join(&state.name).join("state.json");
        let bytes = serde_json::to_vec(state).expect("states serialise");
        if let Err(error) = write_atomically(&path, &bytes).await {
            tracing::warn!(path = %path.display(), %error, "cannot write the state cache");
        }
    }

    /// The last release state read for a model, if cached.
    pub async fn load_state(&self, model: &str) -> Option<ModelState> {
        let bytes = tokio::fs::read(self.root.join(model).join("state.json"))
            .await
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// A cached version whose bytes still match the manifest's sha256.
    pub async fn load_version(&self, model: &str, version: u64) -> Option<FetchedVersion> {
        let dir = self.version_dir(model, version);
        let manifest: Manifest =
            serde_json::from_slice(&tokio::fs::read(dir.join("manifest.json")).await.ok()?).ok()?;
        let onnx = tokio::fs::read(dir.join("model.onnx")).await.ok()?;
        if manifest.version != version || sha256_hex(&onnx) != manifest.sha256 {
            tracing::warn!(
                model,
                version,
                "cached version does not match its manifest; ignoring it"
            );
            return None;
        }
        Some(FetchedVersion {
            manifest,
            onnx: onnx.into(),
        })
    }

    /// Stores a fetched version.
    pub async fn save_version(&self, model: &str, fetched: &FetchedVersion) {
        let dir = self.version_dir(model, fetched.manifest.version);
        let manifest = serde_json::to_vec_pretty(&fetched.manifest).expect("manifests serialise");
        for (file, bytes) in [
            ("model.onnx", fetched.onnx.as_ref()),
            ("manifest.json", manifest.as_slice()),
        ] {
            if let Err(error) = write_atomically(&dir.join(file), bytes).await {
                tracing::warn!(dir = %dir.display(), %error, "cannot write the version cache");
                return;
            }
        }
    }
}
