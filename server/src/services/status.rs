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
    /// Where replicas' reports are read (none: not shown).
    pub registry: Option<nurture_models::Registry>,
}

/// Longest the status RPC waits for the replicas' reports.
const REPORTS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
                    replicas: Vec::new(),
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
        let mut response = self.snapshot();
        if let Some(registry) = &self.registry {
            for model in &mut response.models {
                let Ok(name) = nurture_models::ModelName::new(&model.name) else {
                    continue;
                };
                let reports = tokio::time::timeout(
                    REPORTS_WAIT,
                    registry.replica_reports(&name, crate::watcher::REPORT_FRESH),
                )
                .await;
                match reports {
                    Ok(Ok(reports)) => {
                        model.replicas = reports
                            .into_iter()
                            .map(|r| v1::ReplicaStatus {
                                replica: r.replica,
                                live_version: r.live.unwrap_or(0),
                                canary_version: r.canary.unwrap_or(0),
                                desired_canary_version: r.desired_canary.unwrap_or(0),
                                canary_error: r.canary_error.unwrap_or_default(),
                                reported_at: r.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                            })
                            .collect();
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(model = %model.name, %error, "cannot read the replicas' reports");
                    }
                    Err(_) => {
                        tracing::warn!(model = %model.name, "the replicas' reports did not come in time");
                    }
                }
            }
        }
        Ok(Response::new(response))
    }
}
