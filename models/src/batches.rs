//! Timestamped batch objects (`{millis:016}-{replica}-{n:010}.json`), as the
//! experiment and feedback stores write them: listed from a relist window
//! before the newest one a reader has seen, fetched, and their keys
//! forgotten once no listing can return them again.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The millisecond timestamp a batch key starts with.
pub fn millis(key: &str) -> Option<i64> {
    key.split('-').next()?.parse().ok()
}

/// The batches under `dir` written since `since` minus `window_ms`, or all
/// of them; keys and locations, oldest first, and the newest timestamp seen.
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    since: Option<i64>,
    window_ms: i64,
) -> Result<(Vec<(String, Path)>, Option<i64>)> {
    let metas: Vec<_> = match since {
        Some(since) => {
            let offset = dir
                .clone()
                .join(format!("{:016}", (since - window_ms).max(0)));
            store
                .list_with_offset(Some(dir), &offset)
                .try_collect()
                .await?
        }
        None => store.list(Some(dir)).try_collect().await?,
    };
    let mut locations: Vec<Path> = metas.into_iter().map(|meta| meta.location).collect();
    locations.sort();
    let newest = locations.last().and_then(|l| l.filename()).and_then(millis);
    let listed = locations
        .into_iter()
        .filter_map(|location| Some((location.filename()?.to_owned(), location)))
        .collect();
    Ok((listed, newest))
}

/// Reads and parses the listed batches, in order (16 at a time).
pub async fn fetch<T: DeserializeOwned>(
    store: &Arc<dyn ObjectStore>,
    listed: Vec<(String, Path)>,
) -> Result<Vec<(String, T)>> {
    futures::stream::iter(listed)
        .map(|(key, location)| async move {
            let bytes = store.get(&location).await?.bytes().await?;
            let batch = serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
                object: location.to_string(),
                reason: error.to_string(),
            })?;
            Ok::<_, Error>((key, batch))
        })
        .buffered(16)
        .try_collect()
        .await
}

/// Forgets the keys a reader that has seen batches up to `newest` can no
/// longer list (written more than `window_ms` before it): what is left
/// bounds its skip set to the window.
pub fn forget_unlistable(applied: &mut HashSet<String>, newest: i64, window_ms: i64) {
    let horizon = newest - window_ms;
    applied.retain(|key| millis(key).is_none_or(|m| m >= horizon));
}
