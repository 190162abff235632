//! `StatusService`: which versions this replica serves, and why not others.

use std::sync::Arc;

use chrono::SecondsFormat;
use nurture_proto::v1::{self, status_service_server::StatusService};
use tonic::{Request, Response, Status};

use crate::deployment::Slot;

/// The status service.
#[derive(Debug, Clone)]
pub struct StatusRpc {
    /// The typed models' slots.
    pub slots: Vec<Arc<Slot>>,
    /// Generic models found in the registry.
    pub generic: super::inference::GenericSlots,
    /// Live quality and concept drift from outcomes.
    pub fleet: Option<Arc<crate::feedback::Fleet>>,
    /// Label-free drift of served versions.
    pub input_drift: crate::feedback::InputDriftView,
    /// Every replica's reports, as the watcher last read them.
    pub replicas: crate::watcher::ReplicaView,
}

impl StatusRpc {
    /// The status of every model.
    pub fn snapshot(&self) -> v1::GetStatusResponse {
        let models = super::inference::all_slots(&self.slots, &self.generic)
            .iter()
            .map(|slot| {
                let deployment = slot.deployment.load();
                let status = slot.status.lock().expect("status lock").clone();
                v1::ModelStatus {
                    name: slot.name.clone(),
                    kind: slot.kind.to_string(),
                    live_version: deployment.live.as_ref().map_or(0, |v| v.version),
                    canary_version: deployment.canary.as_ref().map_or(0, |(v, _)| v.version),
                    canary_percent: deployment.canary.as_ref().map_or(0, |(_, p)| u32::from(*p)),
                    loaded_versions: {
                        let mut loaded: Vec<u64> =
                            deployment.loaded().iter().map(|v| v.version).collect();
                        for pinned in slot.pinned_versions() {
                            if !loaded.contains(&pinned) {
                                loaded.push(pinned);
                            }
                        }
                        loaded
                    },
                    desired_version: status.desired_live.unwrap_or(0),
                    desired_canary_version: status.desired_canary.map_or(0, |(v, _)| v),
                    desired_canary_percent: status.desired_canary.map_or(0, |(_, p)| u32::from(p)),
                    shadow_version: deployment.shadow.as_ref().map_or(0, |(v, _)| v.version),
                    shadow_percent: deployment.shadow.as_ref().map_or(0, |(_, p)| u32::from(*p)),
                    desired_shadow_version: status.desired_shadow.map_or(0, |(v, _)| v),
                    replicas: self
                        .replicas
                        .read()
                        .expect("replica view lock")
                        .get(&slot.name)
                        .map(|reports| reports.iter().map(replica_status).collect())
                        .unwrap_or_default(),
                    load_errors: status
                        .load_errors
                        .iter()
                        .map(|e| v1::LoadError {
                            version: e.version,
                            error_type: e.error_type.to_owned(),
                            message: e.message.clone(),
                            at: e.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                        })
                        .collect(),
                    last_poll_at: status
                        .last_poll_at
                        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    quality: self
                        .fleet
                        .as_ref()
                        .map(|fleet| crate::feedback::quality_of(fleet, &slot.name))
                        .unwrap_or_default(),
                    input_drift: self
                        .input_drift
                        .read()
                        .expect("input drift lock")
                        .range((slot.name.clone(), 0)..=(slot.name.clone(), u64::MAX))
                        .flat_map(|((_, version), variables)| {
                            variables.iter().map(|(variable, drift)| v1::InputDrift {
                                version: *version,
                                variable: variable.clone(),
                                psi: drift.psi,
                                alarms: drift.alarms,
                                checked_at: drift
                                    .checked_at
                                    .to_rfc3339_opts(SecondsFormat::Secs, true),
                                last_alarm_at: drift
                                    .last_alarm_at
                                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                                    .unwrap_or_default(),
                            })
                        })
                        .collect(),
                }
            })
            .collect();
        v1::GetStatusResponse {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            models,
        }
    }
}

#[tonic::async_trait]
impl StatusService for StatusRpc {
    async fn get_status(
        &self,
        _request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        Ok(Response::new(self.snapshot()))
    }
}

fn replica_status(report: &nurture_models::registry::ReplicaReport) -> v1::ReplicaStatus {
    v1::ReplicaStatus {
        replica: report.replica.clone(),
        live_version: report.live.unwrap_or(0),
        canary_version: report.canary.unwrap_or(0),
        desired_canary_version: report.desired_canary.unwrap_or(0),
        canary_error: report.canary_error.clone().unwrap_or_default(),
        reported_at: report.at.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}
