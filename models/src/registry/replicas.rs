//! What each replica has loaded of a model, as it last reported it: the
//! desired canary may be refused by some replicas (a bad artifact, a
//! missing runtime feature), and the release log alone cannot show that.
//! Each replica overwrites its own report under
//! `replicas/MODEL/REPLICA.json`; readers keep the fresh ones.

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use super::{ModelName, Registry};
use crate::Result;

/// A replica rewrites its report at least this often (if only to say it
/// is there).
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Reports older than this are from replicas that are gone.
pub const REPORT_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// One replica's view of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The replica.
    pub replica: String,
    /// When it reported.
    pub at: DateTime<Utc>,
    /// Live version it serves.
    pub live: Option<u64>,
    /// Canary version it serves.
    pub canary: Option<u64>,
    /// Canary the release log asks for.
    pub desired_canary: Option<u64>,
    /// Why the desired canary is not served here (it was refused).
    pub canary_error: Option<String>,
    /// The scoring calls of its live and canary versions over the last
    /// minutes, for the rollout's operational guards (absent from reports
    /// of older servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<crate::rollout::operations::OperationsMinute>,
}

impl ReplicaReport {
    /// Whether the replica refused the desired canary `version`.
    pub fn refused(&self, version: u64) -> bool {
        self.desired_canary == Some(version) && self.canary_error.is_some()
    }
}

impl Registry {
    fn replicas_dir(&self, name: &ModelName) -> object_store::path::Path {
        self.prefix.clone().join("replicas").join(name.as_str())
    }

    /// Writes (overwrites) `report` as this replica's view of `name`.
    pub async fn write_replica_report(
        &self,
        name: &ModelName,
        report: &ReplicaReport,
    ) -> Result<()> {
        let body = serde_json::to_vec(report).expect("reports always serialise; this is a bug");
        self.store
            .put(
                &self
                    .replicas_dir(name)
                    .join(format!("{}.json", report.replica)),
                PutPayload::from(body),
            )
            .await?;
        Ok(())
    }

    /// Every replica's report on `name` written within `fresh` of now,
    /// by replica name. Unreadable reports are skipped.
    pub async fn replica_reports(
        &self,
        name: &ModelName,
        fresh: std::time::Duration,
    ) -> Result<Vec<ReplicaReport>> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.replicas_dir(name)))
            .try_collect()
            .await?;
        let oldest =
            Utc::now() - chrono::Duration::from_std(fresh).unwrap_or(chrono::Duration::MAX);
        let mut reports: Vec<ReplicaReport> = futures::stream::iter(listed)
            .map(|meta| async move {
                let bytes = self
                    .store
                    .get(&meta.location)
                    .await
                    .ok()?
                    .bytes()
                    .await
                    .ok()?;
                serde_json::from_slice::<ReplicaReport>(&bytes).ok()
            })
            .buffer_unordered(8)
            .filter_map(|report| async move { report })
            .filter(|report| std::future::ready(report.at >= oldest))
            .collect()
            .await;
        reports.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(reports)
    }
}
