//! The rollout guard: on every replica, every `--guard-every`, each model
//! with a guarded rollout under way (release-log state) has its canary
//! judged against live by the rollout's sequential test
//! (`nurture_models::rollout::sequential`), on the fleet's outcomes of
//! predictions both arms served since the current step began. A verdict is
//! appended to the release log at exactly the sequence number after the
//! state it was judged on, so when several replicas decide at once one
//! decision is written and the others see a conflict and follow the log.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nurture_models::feedback::Arm;
use nurture_models::registry::Event;
use nurture_models::rollout::policy::Decision;
use nurture_models::rollout::sequential::{Evidence, Verdict};
use nurture_models::{Error, ModelName, Registry};
use tokio::sync::watch;

use crate::feedback::Fleet;

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
        let state = match self.registry.state(&name).await {
            Ok(state) => state,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(error) => return Err(error),
        };
        let (Some(rollout), Some(live)) = (state.rollout.as_ref(), state.live) else {
            return Ok(None);
        };
        if rollout.paused.is_some() {
            return Ok(None);
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
        let version = rollout.version;
        match self
            .registry
            .decide_rollout(
                &name,
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
