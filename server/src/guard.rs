//! The rollout guard: on every replica, every `--guard-every`, each model
//! with a guarded rollout under way (release-log state) has its canary
//! judged against live: first by the operational guards
//! (`nurture_models::rollout::operations`: failed calls and p99 latency,
//! summed over every replica's reports since the current step began), then
//! by the rollout's sequential test (`nurture_models::rollout::sequential`)
//! on the fleet's outcomes of predictions both arms served since then. A verdict is
//! appended to the release log at exactly the sequence number after the
//! state it was judged on, so when several replicas decide at once one
//! decision is written and the others see a conflict and follow the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nurture_models::feedback::Arm;
use nurture_models::registry::{Event, ReplicaReport};
use nurture_models::rollout::operations;
use nurture_models::rollout::policy::Decision;
use nurture_models::rollout::sequential::{Evidence, Verdict};
use nurture_models::{Error, LogFollower, ModelName, ModelState, Registry};
use tokio::sync::watch;

use crate::feedback::Fleet;

/// How the guard's pauses for replicas that refused the canary begin (it
/// resumes only those).
const LOAD_PAUSE: &str = "load failure";

/// The guard of one replica.
#[derive(Debug)]
pub struct Guard {
    /// The release log.
    pub registry: Registry,
    /// The fleet's outcomes.
    pub fleet: Arc<Fleet>,
    /// Models this replica serves.
    pub models: Vec<String>,
    /// Who decisions are written as (`guard@REPLICA`).
    pub actor: String,
    /// Time between looks.
    pub every: Duration,
    /// Wakes this replica's watcher after a decision, so its traffic
    /// follows at once.
    pub wake: Arc<tokio::sync::Notify>,
    /// Every replica's reports, as this replica's watcher last read them.
    pub replicas: crate::watcher::ReplicaView,
    /// Each model's release log as read so far (a look fetches only the
    /// events written since the last one).
    pub followers: tokio::sync::Mutex<HashMap<String, LogFollower>>,
}

impl Guard {
    /// Looks at every model every `every` until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            for model in &self.models {
                let look = tokio::select! {
                    look = self.check(model) => look,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                if let Err(error) = look {
                    tracing::warn!(model, %error, "the rollout guard could not look");
                }
            }
        }
    }

    /// One look at `model`: the decision written, if any.
    pub async fn check(&self, model: &str) -> Result<Option<Event>, Error> {
        let name = ModelName::new(model)?;
        let state = {
            let mut followers = self.followers.lock().await;
            followers
                .entry(model.to_owned())
                .or_insert_with(|| LogFollower::new(name.clone()))
                .state(&self.registry)
                .await?
        };
        let (Some(rollout), Some(live)) = (state.rollout.as_ref(), state.live) else {
            return Ok(None);
        };
        // Replicas that refused the canary pause the rollout (their share
        // of leads is served by live, so the arms would not compare like
        // with like); when none refuses any more and one serves it, it
        // resumes.
        let reports = self
            .replicas
            .read()
            .expect("replica view lock")
            .get(model)
            .cloned()
            .unwrap_or_default();
        let refused: Vec<&ReplicaReport> = reports
            .iter()
            .filter(|r| r.refused(rollout.version))
            .collect();
        let load_pause = rollout
            .paused
            .as_deref()
            .is_some_and(|reason| reason.starts_with(LOAD_PAUSE));
        if let Some(first) = refused.first()
            && rollout.paused.is_none()
        {
            let reason = format!(
                "{LOAD_PAUSE}: {} of {} replicas refused version {}; {}: {}",
                refused.len(),
                reports.len(),
                rollout.version,
                first.replica,
                first.canary_error.as_deref().unwrap_or_default()
            );
            return self
                .decide(&name, &state, Decision::Paused, reason, None)
                .await;
        }
        if load_pause
            && refused.is_empty()
            && reports.iter().any(|r| r.canary == Some(rollout.version))
        {
            let reason = format!("every replica serves version {} now", rollout.version);
            return self
                .decide(&name, &state, Decision::Resumed, reason, None)
                .await;
        }
        if rollout.paused.is_some() {
            return Ok(None);
        }
        // Operational guards first: they need requests, not outcomes.
        let since_minute = rollout.step_started_at.timestamp().div_euclid(60);
        let minutes: Vec<_> = reports
            .iter()
            .flat_map(|r| r.operations.iter().cloned())
            .collect();
        if let Some(breach) = operations::check(
            &rollout.policy,
            &operations::sum(&minutes, live, since_minute),
            &operations::sum(&minutes, rollout.version, since_minute),
        ) {
            return self
                .decide(
                    &name,
                    &state,
                    Decision::RolledBack,
                    breach.to_string(),
                    None,
                )
                .await;
        }
        let metric = rollout.policy.metric;
        let since = rollout.step_started_at.timestamp_millis();
        let live_losses = self
            .fleet
            .losses_since(model, live, Arm::Live, metric, since);
        let canary_losses =
            self.fleet
                .losses_since(model, rollout.version, Arm::Canary, metric, since);
        let verdict = rollout
            .policy
            .test
            .judge(metric, &live_losses, &canary_losses);
        let (decision, reason, evidence) = match verdict {
            Verdict::Rollback(evidence) => (
                Decision::RolledBack,
                format!(
                    "the canary's {} is worse than live's by {}",
                    metric.as_str(),
                    describe(&evidence)
                ),
                Some(evidence),
            ),
            Verdict::Promote(evidence) => (
                rollout.on_success(),
                format!(
                    "the canary's {} is at most {}% worse than live's: {}",
                    metric.as_str(),
                    rollout.policy.test.margin * 100.0,
                    describe(&evidence)
                ),
                Some(evidence),
            ),
            _ if rollout.expired(Utc::now()) => (
                Decision::Expired,
                format!(
                    "no decision within {} s; a person decides",
                    rollout.policy.max_duration_secs
                ),
                None,
            ),
            Verdict::Wait { .. } | Verdict::Continue(_) => return Ok(None),
        };
        self.decide(&name, &state, decision, reason, evidence).await
    }

    /// Appends `decision` about `state`'s rollout at the log's next
    /// sequence number; `None` when another writer got there first.
    async fn decide(
        &self,
        name: &ModelName,
        state: &ModelState,
        decision: Decision,
        reason: String,
        evidence: Option<Evidence>,
    ) -> Result<Option<Event>, Error> {
        let Some(version) = state.rollout.as_ref().map(|r| r.version) else {
            return Ok(None);
        };
        let model = name.as_str();
        match self
            .registry
            .decide_rollout(
                name,
                version,
                decision,
                &reason,
                evidence,
                &self.actor,
                Some(state.seq),
            )
            .await
        {
            Ok(event) => {
                self.wake.notify_one();
                tracing::info!(
                    event = "rollout decision",
                    model,
                    version,
                    decision = decision.as_str(),
                    reason,
                    "rollout decision"
                );
                metrics::counter!(
                    "nurture_rollout_decisions_total",
                    "model" => model.to_owned(),
                    "decision" => decision.as_str()
                )
                .increment(1);
                Ok(event)
            }
            // Another replica decided first, or the log moved: the next look
            // judges the new state.
            Err(Error::Conflict(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

fn describe(evidence: &Evidence) -> String {
    format!(
        "{:+.4} (canary {:.4} over {} outcomes, live {:.4} over {}; {:.0}% interval [{:+.4}, {:+.4}])",
        evidence.effect,
        evidence.canary.1,
        evidence.canary.0,
        evidence.live.1,
        evidence.live.0,
        100.0 * (1.0 - (-evidence.threshold).exp()),
        evidence.interval.0,
        evidence.interval.1
    )
}
