//! The release log: one immutable object per event, and the fold that turns
//! a log into the current serving state of a model.
//!
//! Everything here is pure: no I/O, no clocks. The registry reads events,
//! folds them with [`ModelState::apply`], asks the state whether a change is
//! allowed (`ModelState::plan_*`), and appends the resulting event with
//! create-if-absent at the next sequence number.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::rollout::policy::{Decision, MAX_AUTOMATIC_ROLLBACKS, Rollout, RolloutPolicy};
use crate::rollout::sequential::Evidence;

use crate::error::{Error, Result};
use crate::kind::ModelKind;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A version's bytes and manifest were written.
    Published {
        /// The new version.
        version: u64,
        /// Kind of the model (fixed by its first version).
        kind: ModelKind,
        /// sha256 of the ONNX bytes.
        sha256: String,
        /// The evidence, when the version was retrained from feedback.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retrain: Option<Box<crate::manifest::RetrainEvidence>>,
    },
    /// A version became live.
    Promoted {
        /// The version now live.
        version: u64,
        /// True when the version had been revoked and `--force` was given.
        forced: bool,
    },
    /// A canary version receives `percent` of leads.
    CanarySet {
        /// The canary version.
        version: u64,
        /// Share of leads routed to it, 1..=100.
        percent: u8,
    },
    /// The canary was removed.
    CanaryCleared {},
    /// `percent` of the live version's requests are mirrored to a shadow
    /// version, off the response path; its answers are logged and scored,
    /// never returned.
    ShadowSet {
        /// The shadow version.
        version: u64,
        /// Share of live requests mirrored to it, 1..=100.
        percent: u8,
    },
    /// The shadow was removed.
    ShadowCleared {},
    /// The live version was found bad: it is revoked and `to` is live again.
    /// Any canary is cleared with it.
    RolledBack {
        /// The version that was live and is now revoked.
        from: u64,
        /// The version now live.
        to: u64,
        /// Why, for the audit trail and for anyone who tries to promote
        /// `from` again.
        reason: String,
    },
    /// A version must not be served (without becoming live first).
    Revoked {
        /// The revoked version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// A guarded rollout of `version` began: the canary is set to the
    /// policy's first step.
    RolloutStarted {
        /// The canary version.
        version: u64,
        /// How it is judged.
        policy: RolloutPolicy,
        /// A person overrode the stop after consecutive automatic
        /// rollbacks (resets their count).
        forced: bool,
    },
    /// The guard (or a person) decided about the rollout of `version`.
    RolloutDecided {
        /// The canary version.
        version: u64,
        /// What was decided.
        decision: Decision,
        /// Why, in words.
        reason: String,
        /// The test's figures behind it, when it was the test.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        evidence: Option<Evidence>,
    },
}

impl EventKind {
    /// Short name of the event type, as stored.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Published { .. } => "published",
            EventKind::Promoted { .. } => "promoted",
            EventKind::CanarySet { .. } => "canary_set",
            EventKind::CanaryCleared {} => "canary_cleared",
            EventKind::ShadowSet { .. } => "shadow_set",
            EventKind::ShadowCleared {} => "shadow_cleared",
            EventKind::RolledBack { .. } => "rolled_back",
            EventKind::Revoked { .. } => "revoked",
            EventKind::RolloutStarted { .. } => "rollout_started",
            EventKind::RolloutDecided { .. } => "rollout_decided",
        }
    }
}

/// One stored release-log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it was written (writer's clock).
    pub at: DateTime<Utc>,
    /// Who wrote it (user, CI job, trainer).
    pub actor: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Why and by whom a version was revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    /// Sequence number of the revoking event.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// A published version, as the log knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Version number.
    pub version: u64,
    /// sha256 of the ONNX bytes.
    pub sha256: String,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// Who published it.
    pub published_by: String,
    /// Set once revoked (by rollback or revoke), cleared by a forced promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// A canary and its share of leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The canary version.
    pub version: u64,
    /// Share of leads routed to it, 1..=100.
    pub percent: u8,
}

/// The serving state of one model: the fold of its release log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    /// Model name.
    pub name: String,
    /// Kind, known once a version is published.
    pub kind: Option<ModelKind>,
    /// Sequence number of the last event folded (0 for an empty log).
    pub seq: u64,
    /// Published versions by number.
    pub versions: BTreeMap<u64, VersionRecord>,
    /// Version answering requests.
    pub live: Option<u64>,
    /// Canary, if any.
    pub canary: Option<Canary>,
    /// Shadow, if any (its share is of the live version's requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Canary>,
    /// Every version that has been live, in order (a version may repeat).
    pub live_history: Vec<u64>,
    /// The guarded rollout under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Rollouts the guard rolled back in a row (reset by a promotion or a
    /// person's `--force`).
    #[serde(default)]
    pub automatic_rollbacks: u32,
}

impl ModelState {
    /// An empty state for `name`.
    pub fn new(name: &str) -> Self {
        ModelState {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    /// Folds a whole log. Events must come in sequence order from 1.
    pub fn fold(name: &str, events: &[Event]) -> Result<Self> {
        let mut state = ModelState::new(name);
        for event in events {
            state.apply(event)?;
        }
        Ok(state)
    }

    /// Applies one event. Fails (naming the sequence number) when the event
    /// does not follow or contradicts the log, which only a writer bypassing
    /// the registry can cause.
    pub fn apply(&mut self, event: &Event) -> Result<()> {
        let object = format!("release log of {} at seq {}", self.name, event.seq);
        let corrupt = |reason: String| Error::Corrupt {
            object: object.clone(),
            reason,
        };
        if event.seq != self.seq + 1 {
            return Err(corrupt(format!(
                "expected seq {}, found {} (gap or reorder)",
                self.seq + 1,
                event.seq
            )));
        }
        match &event.kind {
            EventKind::Published {
                version,
                kind,
                sha256,
                ..
            } => {
                if let Some(existing) = self.kind
                    && existing != *kind
                {
                    return Err(corrupt(format!(
                        "version {version} is {kind}, the model is {existing}"
                    )));
                }
                if self.versions.contains_key(version) {
                    return Err(corrupt(format!("version {version} published twice")));
                }
                self.kind = Some(*kind);
                self.versions.insert(
                    *version,
                    VersionRecord {
                        version: *version,
                        sha256: sha256.clone(),
                        published_at: event.at,
                        published_by: event.actor.clone(),
                        revoked: None,
                    },
                );
            }
            EventKind::Promoted { version, .. } => {
                let record = self
                    .versions
                    .get_mut(version)
                    .ok_or_else(|| corrupt(format!("version {version} was never published")))?;
                record.revoked = None;
                if self.canary.is_some_and(|canary| canary.version == *version) {
                    self.canary = None;
                }
                self.live = Some(*version);
                self.live_history.push(*version);
            }
            EventKind::CanarySet { version, percent } => {
                if !self.versions.contains_key(version) {
                    return Err(corrupt(format!("version {version} was never published")));
                }
                self.canary = Some(Canary {
                    version: *version,
                    percent: *percent,
                });
                // A person set the canary by hand: they take over from any
                // rollout (its own steps are `rollout_decided` events).
                self.rollout = None;
            }
            EventKind::CanaryCleared {} => self.canary = None,
            EventKind::ShadowSet { version, percent } => {
                if !self.versions.contains_key(version) {
                    return Err(corrupt(format!("version {version} was never published")));
                }
                self.shadow = Some(Canary {
                    version: *version,
                    percent: *percent,
                });
            }
            EventKind::ShadowCleared {} => self.shadow = None,
            EventKind::RolledBack { from, to, reason } => {
                if !self.versions.contains_key(to) {
                    return Err(corrupt(format!("rollback target {to} was never published")));
                }
                self.mark_revoked(*from, event, reason).map_err(corrupt)?;
                self.canary = None;
                self.live = Some(*to);
                self.live_history.push(*to);
            }
            EventKind::Revoked { version, reason } => {
                self.mark_revoked(*version, event, reason)
                    .map_err(corrupt)?;
            }
            EventKind::RolloutStarted {
                version,
                policy,
                forced,
            } => {
                if !self.versions.contains_key(version) {
                    return Err(corrupt(format!("version {version} was never published")));
                }
                if *forced {
                    self.automatic_rollbacks = 0;
                }
                self.rollout = Some(Rollout {
                    version: *version,
                    policy: policy.clone(),
                    step: 0,
                    started_at: event.at,
                    started_seq: event.seq,
                    step_started_at: event.at,
                    paused: None,
                    evidence: None,
                });
                self.canary = Some(Canary {
                    version: *version,
                    percent: policy.steps.first().copied().unwrap_or(1),
                });
            }
            EventKind::RolloutDecided {
                version,
                decision,
                reason,
                evidence,
            } => {
                let Some(rollout) = self.rollout.as_mut().filter(|r| r.version == *version) else {
                    return Err(corrupt(format!(
                        "no rollout of version {version} under way"
                    )));
                };
                rollout.evidence = *evidence;
                match decision {
                    Decision::SteppedUp { percent } => {
                        rollout.step += 1;
                        rollout.step_started_at = event.at;
                        self.canary = Some(Canary {
                            version: *version,
                            percent: *percent,
                        });
                    }
                    Decision::Promoted => {
                        self.automatic_rollbacks = 0;
                        self.canary = None;
                        self.live = Some(*version);
                        self.live_history.push(*version);
                    }
                    Decision::RolledBack => {
                        self.automatic_rollbacks += 1;
                        self.canary = None;
                        self.mark_revoked(*version, event, reason)
                            .map_err(corrupt)?;
                    }
                    Decision::Paused => rollout.paused = Some(reason.clone()),
                    Decision::Resumed => rollout.paused = None,
                    Decision::Stopped | Decision::Expired => {}
                }
                if decision.ends() {
                    self.rollout = None;
                }
            }
        }
        // A shadow lasts only while it is servable and not the live version.
        if let Some(shadow) = self.shadow
            && (self.live == Some(shadow.version) || !self.is_servable(shadow.version))
        {
            self.shadow = None;
        }
        // A rollout lasts only as long as its version is the canary (a
        // person may clear, replace, promote or revoke it by hand).
        if let Some(rollout) = &self.rollout
            && (self.canary.map(|c| c.version) != Some(rollout.version)
                || !self.is_servable(rollout.version))
        {
            self.rollout = None;
        }
        self.seq = event.seq;
        Ok(())
    }

    fn mark_revoked(
        &mut self,
        version: u64,
        event: &Event,
        reason: &str,
    ) -> std::result::Result<(), String> {
        let record = self
            .versions
            .get_mut(&version)
            .ok_or_else(|| format!("version {version} was never published"))?;
        record.revoked = Some(Revocation {
            seq: event.seq,
            at: event.at,
            actor: event.actor.clone(),
            reason: reason.to_owned(),
        });
        Ok(())
    }

    /// Whether `version` is published and not revoked.
    pub fn is_servable(&self, version: u64) -> bool {
        self.versions
            .get(&version)
            .is_some_and(|record| record.revoked.is_none())
    }

    /// The highest published version number.
    pub fn latest_version(&self) -> Option<u64> {
        self.versions.keys().next_back().copied()
    }

    fn record(&self, version: u64) -> Result<&VersionRecord> {
        self.versions
            .get(&version)
            .ok_or_else(|| Error::NotFound(format!("version {version} of model {}", self.name)))
    }

    fn revoked_message(&self, record: &VersionRecord) -> Option<String> {
        record.revoked.as_ref().map(|revocation| {
            format!(
                "version {} of {} was rolled back or revoked by {} at {} (seq {}): {}",
                record.version,
                self.name,
                revocation.actor,
                revocation
                    .at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                revocation.seq,
                revocation.reason
            )
        })
    }

    /// The event that makes `version` live. A revoked version needs `force`.
    /// `Ok(None)` when it is already live and nothing needs writing.
    pub fn plan_promote(&self, version: u64, force: bool) -> Result<Option<EventKind>> {
        let record = self.record(version)?;
        if let Some(message) = self.revoked_message(record) {
            if !force {
                return Err(Error::Refused(format!(
                    "{message}; promote it again only with --force"
                )));
            }
            return Ok(Some(EventKind::Promoted {
                version,
                forced: true,
            }));
        }
        if self.live == Some(version) {
            return Ok(None);
        }
        Ok(Some(EventKind::Promoted {
            version,
            forced: false,
        }))
    }

    /// The event that routes `percent` of leads to `version`.
    pub fn plan_canary(&self, version: u64, percent: u8, force: bool) -> Result<EventKind> {
        if !(1..=100).contains(&percent) {
            return Err(Error::invalid(
                "percent",
                format!("must be 1 to 100, got {percent}"),
            ));
        }
        let record = self.record(version)?;
        if let Some(message) = self.revoked_message(record)
            && !force
        {
            return Err(Error::Refused(format!(
                "{message}; use it as a canary only with --force"
            )));
        }
        let Some(live) = self.live else {
            return Err(Error::Refused(format!(
                "model {} has no live version; promote one before setting a canary",
                self.name
            )));
        };
        if live == version {
            return Err(Error::Refused(format!(
                "version {version} is already live; a canary must differ from it"
            )));
        }
        Ok(EventKind::CanarySet { version, percent })
    }

    /// The event that starts a guarded rollout of `version` under `policy`.
    /// A revoked version, a version already live, a rollout under way, and
    /// (without `force`) a model whose last rollouts the guard rolled back
    /// [`MAX_AUTOMATIC_ROLLBACKS`] times in a row are refused.
    pub fn plan_rollout(
        &self,
        version: u64,
        policy: RolloutPolicy,
        force: bool,
    ) -> Result<EventKind> {
        policy.check()?;
        // The same checks as a canary at the first step.
        self.plan_canary(version, policy.steps[0], false)?;
        if let Some(rollout) = &self.rollout {
            return Err(Error::Refused(format!(
                "a rollout of version {} of {} is under way; stop it first",
                rollout.version, self.name
            )));
        }
        if self.automatic_rollbacks >= MAX_AUTOMATIC_ROLLBACKS && !force {
            return Err(Error::Refused(format!(
                "the guard rolled back the last {} rollouts of {} in a row; a person must look before \
                 another: start it with --force",
                self.automatic_rollbacks, self.name
            )));
        }
        Ok(EventKind::RolloutStarted {
            version,
            policy,
            forced: force && self.automatic_rollbacks >= MAX_AUTOMATIC_ROLLBACKS,
        })
    }

    /// The event recording `decision` about the rollout of `version`;
    /// refused when no such rollout is under way or the decision does not
    /// fit it (a step other than the next, a pause of a paused rollout...).
    pub fn plan_rollout_decision(
        &self,
        version: u64,
        decision: Decision,
        reason: &str,
        evidence: Option<Evidence>,
    ) -> Result<EventKind> {
        if reason.trim().is_empty() {
            return Err(Error::invalid("reason", "a decision must say why"));
        }
        let Some(rollout) = self.rollout.as_ref().filter(|r| r.version == version) else {
            return Err(Error::Refused(format!(
                "no rollout of version {version} of {} is under way",
                self.name
            )));
        };
        let fits = match decision {
            Decision::SteppedUp { .. } | Decision::Promoted => decision == rollout.on_success(),
            Decision::Paused => rollout.paused.is_none(),
            Decision::Resumed => rollout.paused.is_some(),
            Decision::RolledBack | Decision::Stopped | Decision::Expired => true,
        };
        if !fits {
            return Err(Error::Refused(format!(
                "{} does not fit the rollout of version {version} (step {} of {}{})",
                decision.as_str(),
                rollout.step + 1,
                rollout.policy.steps.len(),
                if rollout.paused.is_some() {
                    ", paused"
                } else {
                    ""
                }
            )));
        }
        Ok(EventKind::RolloutDecided {
            version,
            decision,
            reason: reason.to_owned(),
            evidence,
        })
    }

    /// The event that mirrors `percent` of the live version's requests to
    /// `version`. A revoked version is never shadowed.
    pub fn plan_shadow(&self, version: u64, percent: u8) -> Result<EventKind> {
        if !(1..=100).contains(&percent) {
            return Err(Error::invalid(
                "percent",
                format!("must be 1 to 100, got {percent}"),
            ));
        }
        let record = self.record(version)?;
        if let Some(message) = self.revoked_message(record) {
            return Err(Error::Refused(format!("{message}; it is not shadowed")));
        }
        let Some(live) = self.live else {
            return Err(Error::Refused(format!(
                "model {} has no live version to mirror; promote one first",
                self.name
            )));
        };
        if live == version {
            return Err(Error::Refused(format!(
                "version {version} is live; a shadow must differ from it"
            )));
        }
        Ok(EventKind::ShadowSet { version, percent })
    }

    /// The event that removes the shadow; `None` when there is none.
    pub fn plan_shadow_clear(&self) -> Option<EventKind> {
        self.shadow.map(|_| EventKind::ShadowCleared {})
    }

    /// The event that removes the canary; `Ok(None)` when there is none.
    pub fn plan_canary_clear(&self) -> Option<EventKind> {
        self.canary.map(|_| EventKind::CanaryCleared {})
    }

    /// The event that revokes the live version and makes `to` live: by
    /// default the most recent earlier live version that is not revoked.
    pub fn plan_rollback(&self, to: Option<u64>, reason: &str) -> Result<EventKind> {
        if reason.trim().is_empty() {
            return Err(Error::invalid("reason", "a rollback must say why"));
        }
        let Some(from) = self.live else {
            return Err(Error::Refused(format!(
                "model {} has no live version to roll back",
                self.name
            )));
        };
        let to = match to {
            Some(target) => {
                let record = self.record(target)?;
                if target == from {
                    return Err(Error::Refused(format!("version {target} is the live version being rolled back")));
                }
                if let Some(message) = self.revoked_message(record) {
                    return Err(Error::Refused(format!("cannot roll back to it: {message}")));
                }
                target
            }
            None => self
                .live_history
                .iter()
                .rev()
                .copied()
                .find(|version| *version != from && self.is_servable(*version))
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "model {} has no earlier good live version to roll back to; name one with --to N",
                        self.name
                    ))
                })?,
        };
        Ok(EventKind::RolledBack {
            from,
            to,
            reason: reason.to_owned(),
        })
    }

    /// The event that revokes a version that is neither live nor canary.
    pub fn plan_revoke(&self, version: u64, reason: &str) -> Result<EventKind> {
        if reason.trim().is_empty() {
            return Err(Error::invalid("reason", "a revocation must say why"));
        }
        let record = self.record(version)?;
        if let Some(message) = self.revoked_message(record) {
            return Err(Error::Refused(format!("already revoked: {message}")));
        }
        if self.live == Some(version) {
            return Err(Error::Refused(format!(
                "version {version} is live; use rollback to replace and revoke it"
            )));
        }
        if self.canary.is_some_and(|canary| canary.version == version) {
            return Err(Error::Refused(format!(
                "version {version} is the canary; clear the canary first"
            )));
        }
        Ok(EventKind::Revoked {
            version,
            reason: reason.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Log {
        state: ModelState,
    }

    impl Log {
        fn new() -> Self {
            Log {
                state: ModelState::new("churn"),
            }
        }

        fn push(&mut self, kind: EventKind) -> &mut Self {
            let event = Event {
                seq: self.state.seq + 1,
                at: DateTime::UNIX_EPOCH,
                actor: "test".into(),
                kind,
            };
            self.state.apply(&event).unwrap();
            self
        }

        fn publish(&mut self, version: u64) -> &mut Self {
            self.push(EventKind::Published {
                version,
                kind: ModelKind::Churn,
                sha256: format!("{version:064x}"),
                retrain: None,
            })
        }

        fn promote(&mut self, version: u64) -> &mut Self {
            let event = self.state.plan_promote(version, false).unwrap().unwrap();
            self.push(event)
        }
    }

    fn steps(steps: &[u8]) -> RolloutPolicy {
        RolloutPolicy {
            steps: steps.to_vec(),
            ..RolloutPolicy::default()
        }
    }

    impl Log {
        fn start(&mut self, version: u64, policy: RolloutPolicy) -> &mut Self {
            let event = self.state.plan_rollout(version, policy, false).unwrap();
            self.push(event)
        }

        fn decide(&mut self, version: u64, decision: Decision) -> &mut Self {
            let event = self
                .state
                .plan_rollout_decision(version, decision, "the guard said so", None)
                .unwrap();
            self.push(event)
        }
    }

    mod folded {
        use super::*;
        use proptest::prelude::*;

        /// Something a person or a guard may try.
        #[derive(Debug, Clone)]
        enum Op {
            Publish,
            Promote(u64),
            Canary(u64, u8),
            ClearCanary,
            Rollback,
            Revoke(u64),
            Start(u64, Vec<u8>),
            Decide(u64, u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                Just(Op::Publish),
                (1u64..6).prop_map(Op::Promote),
                (1u64..6, 1u8..=100).prop_map(|(v, p)| Op::Canary(v, p)),
                Just(Op::ClearCanary),
                Just(Op::Rollback),
                (1u64..6).prop_map(Op::Revoke),
                (1u64..6, proptest::collection::vec(1u8..=100, 1..4))
                    .prop_map(|(v, steps)| Op::Start(v, steps)),
                (1u64..6, 0u8..7).prop_map(|(v, d)| Op::Decide(v, d)),
            ]
        }

        fn decision(state: &ModelState, pick: u8) -> Decision {
            match pick {
                0 => state
                    .rollout
                    .as_ref()
                    .map_or(Decision::Promoted, Rollout::on_success),
                1 => Decision::RolledBack,
                2 => Decision::Paused,
                3 => Decision::Resumed,
                4 => Decision::Stopped,
                5 => Decision::Expired,
                _ => Decision::SteppedUp { percent: 99 },
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever is accepted, in any order: a rollout under way has
            /// its version as the canary at its step's share, servable and
            /// not live, and folding the log from scratch (a restart)
            /// gives the same state.
            #[test]
            fn accepted_changes_keep_a_rollout_consistent(ops in proptest::collection::vec(op(), 1..40)) {
                let mut log = Log::new();
                let mut events = Vec::new();
                for op in ops {
                    let state = &log.state;
                    let planned = match op {
                        Op::Publish => Ok(EventKind::Published {
                            version: state.latest_version().unwrap_or(0) + 1,
                            kind: ModelKind::Churn,
                            sha256: format!("{:064x}", state.seq),
                            retrain: None,
                        }),
                        Op::Promote(v) => state.plan_promote(v, false).and_then(|e| e.ok_or(Error::Refused("same".into()))),
                        Op::Canary(v, p) => state.plan_canary(v, p, false),
                        Op::ClearCanary => state.plan_canary_clear().ok_or(Error::Refused("none".into())),
                        Op::Rollback => state.plan_rollback(None, "bad"),
                        Op::Revoke(v) => state.plan_revoke(v, "bad"),
                        Op::Start(v, mut steps) => {
                            steps.sort_unstable();
                            steps.dedup();
                            state.plan_rollout(v, RolloutPolicy { steps, ..RolloutPolicy::default() }, false)
                        }
                        Op::Decide(v, pick) => state.plan_rollout_decision(v, decision(state, pick), "why", None),
                    };
                    let Ok(kind) = planned else { continue };
                    log.push(kind.clone());
                    events.push(Event { seq: log.state.seq, at: DateTime::UNIX_EPOCH, actor: "test".into(), kind });
                    let state = &log.state;
                    if let Some(rollout) = &state.rollout {
                        prop_assert_eq!(state.canary, Some(Canary { version: rollout.version, percent: rollout.percent() }));
                        prop_assert!(state.is_servable(rollout.version));
                        prop_assert_ne!(state.live, Some(rollout.version));
                    }
                }
                prop_assert_eq!(&ModelState::fold("churn", &events).unwrap(), &log.state);
            }
        }
    }

    #[test]
    fn a_rollout_steps_up_and_promotes() {
        let mut log = Log::new();
        log.publish(1)
            .publish(2)
            .promote(1)
            .start(2, steps(&[5, 25]));
        assert_eq!(
            log.state.canary,
            Some(Canary {
                version: 2,
                percent: 5
            })
        );
        assert_eq!(log.state.rollout.as_ref().unwrap().step, 0);
        // Only the next step fits; a second rollout is refused.
        assert!(
            log.state
                .plan_rollout_decision(2, Decision::Promoted, "early", None)
                .is_err()
        );
        let busy = log.state.plan_rollout(2, steps(&[5]), false).unwrap_err();
        assert!(busy.to_string().contains("under way"), "{busy}");
        log.decide(2, Decision::SteppedUp { percent: 25 });
        assert_eq!(log.state.canary.unwrap().percent, 25);
        log.decide(2, Decision::Paused);
        assert!(
            log.state
                .plan_rollout_decision(2, Decision::Paused, "again", None)
                .is_err()
        );
        log.decide(2, Decision::Resumed)
            .decide(2, Decision::Promoted);
        assert_eq!(log.state.live, Some(2));
        assert_eq!((log.state.canary, log.state.rollout.as_ref()), (None, None));
    }

    #[test]
    fn three_automatic_rollbacks_in_a_row_need_a_person() {
        let mut log = Log::new();
        log.publish(1).promote(1);
        for version in 2..=4 {
            log.publish(version)
                .start(version, steps(&[10]))
                .decide(version, Decision::RolledBack);
            assert!(log.state.versions[&version].revoked.is_some());
            assert_eq!(log.state.canary, None);
        }
        assert_eq!(log.state.automatic_rollbacks, 3);
        log.publish(5);
        let refused = log.state.plan_rollout(5, steps(&[10]), false).unwrap_err();
        assert!(
            refused.to_string().contains("a person must look")
                && refused.to_string().contains("--force"),
            "{refused}"
        );
        let forced = log.state.plan_rollout(5, steps(&[10]), true).unwrap();
        log.push(forced);
        assert_eq!(log.state.automatic_rollbacks, 0);
        assert_eq!(log.state.rollout.as_ref().unwrap().version, 5);
    }

    #[test]
    fn a_rollout_ends_when_a_person_takes_the_canary_away() {
        let mut log = Log::new();
        log.publish(1)
            .publish(2)
            .promote(1)
            .start(2, steps(&[10, 50]));
        log.push(EventKind::CanaryCleared {});
        assert_eq!(log.state.rollout, None);
        // A revoked version cannot be rolled out; a decision without a
        // rollout is refused.
        assert!(
            log.state
                .plan_rollout_decision(2, Decision::Stopped, "x", None)
                .is_err()
        );
        log.start(2, steps(&[10])).decide(2, Decision::Stopped);
        assert_eq!(log.state.rollout, None);
        assert_eq!(
            log.state.canary.unwrap().version,
            2,
            "stopping keeps the canary"
        );
        assert_eq!(log.state.automatic_rollbacks, 0);
    }

    #[test]
    fn rollback_goes_to_the_previous_good_version_and_revokes_the_bad_one() {
        let mut log = Log::new();
        log.publish(1)
            .publish(2)
            .publish(3)
            .promote(1)
            .promote(2)
            .promote(3);
        let event = log.state.plan_rollback(None, "p99 doubled").unwrap();
        assert_eq!(
            event,
            EventKind::RolledBack {
                from: 3,
                to: 2,
                reason: "p99 doubled".into()
            }
        );
        log.push(event);
        assert_eq!(log.state.live, Some(2));
        assert_eq!(
            log.state.versions[&3].revoked.as_ref().unwrap().reason,
            "p99 doubled"
        );

        // A second rollback skips the revoked 3 and goes to 1.
        let event = log.state.plan_rollback(None, "still bad").unwrap();
        assert_eq!(
            event,
            EventKind::RolledBack {
                from: 2,
                to: 1,
                reason: "still bad".into()
            }
        );
        log.push(event);
        assert!(
            log.state
                .plan_rollback(None, "again")
                .unwrap_err()
                .to_string()
                .contains("--to N")
        );
    }

    #[test]
    fn revoked_versions_are_promoted_only_with_force() {
        let mut log = Log::new();
        log.publish(1).publish(2).promote(1).promote(2);
        let rollback = log.state.plan_rollback(None, "bad calibration").unwrap();
        log.push(rollback);
        let error = log.state.plan_promote(2, false).unwrap_err().to_string();
        assert!(
            error.contains("rolled back")
                && error.contains("bad calibration")
                && error.contains("--force"),
            "{error}"
        );
        let forced = log.state.plan_promote(2, true).unwrap().unwrap();
        assert_eq!(
            forced,
            EventKind::Promoted {
                version: 2,
                forced: true
            }
        );
        log.push(forced);
        assert_eq!(log.state.live, Some(2));
        assert!(log.state.versions[&2].revoked.is_none());
    }

    #[test]
    fn promoting_the_live_version_writes_nothing() {
        let mut log = Log::new();
        log.publish(1).promote(1);
        assert_eq!(log.state.plan_promote(1, false).unwrap(), None);
        assert!(matches!(
            log.state.plan_promote(7, false),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn canary_rules() {
        let mut log = Log::new();
        log.publish(1).publish(2);
        assert!(
            log.state
                .plan_canary(2, 10, false)
                .unwrap_err()
                .to_string()
                .contains("no live version")
        );
        log.promote(1);
        assert!(log.state.plan_canary(1, 10, false).is_err());
        assert!(matches!(
            log.state.plan_canary(2, 0, false),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            log.state.plan_canary(2, 101, false),
            Err(Error::Invalid { .. })
        ));
        let event = log.state.plan_canary(2, 10, false).unwrap();
        log.push(event);
        assert_eq!(
            log.state.canary,
            Some(Canary {
                version: 2,
                percent: 10
            })
        );
        // Promoting the canary makes it live and removes the canary.
        log.promote(2);
        assert_eq!(log.state.canary, None);
        assert_eq!(log.state.plan_canary_clear(), None);
    }

    #[test]
    fn shadow_rules() {
        let mut log = Log::new();
        log.publish(1).publish(2).publish(3);
        let refused = |log: &Log, version, percent| {
            log.state
                .plan_shadow(version, percent)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(&log, 2, 50).contains("no live version"));
        log.promote(1);
        assert!(refused(&log, 1, 50).contains("is live"));
        assert!(refused(&log, 9, 50).contains("version 9"));
        assert!(matches!(
            log.state.plan_shadow(2, 0),
            Err(Error::Invalid { .. })
        ));
        let event = log.state.plan_shadow(2, 100).unwrap();
        log.push(event);
        assert_eq!(
            log.state.shadow,
            Some(Canary {
                version: 2,
                percent: 100
            })
        );
        // A shadow and a canary are independent.
        let canary = log.state.plan_canary(3, 10, false).unwrap();
        log.push(canary);
        assert_eq!(log.state.shadow.map(|s| s.version), Some(2));
        // Promoting the shadow ends it; so does revoking it.
        log.promote(2);
        assert_eq!(log.state.shadow, None);
        assert_eq!(log.state.plan_shadow_clear(), None);
        let event = log.state.plan_shadow(1, 20).unwrap();
        log.push(event);
        let revoke = log.state.plan_revoke(1, "bad").unwrap();
        log.push(revoke);
        assert_eq!(log.state.shadow, None);
        assert!(refused(&log, 1, 20).contains("not shadowed"));
        let event = log.state.plan_shadow(3, 20).unwrap();
        log.push(event);
        let clear = log.state.plan_shadow_clear().unwrap();
        log.push(clear);
        assert_eq!(log.state.shadow, None);
    }

    #[test]
    fn rollback_clears_the_canary() {
        let mut log = Log::new();
        log.publish(1).publish(2).publish(3).promote(1).promote(2);
        let canary = log.state.plan_canary(3, 5, false).unwrap();
        log.push(canary);
        let rollback = log.state.plan_rollback(Some(1), "incident 42").unwrap();
        log.push(rollback);
        assert_eq!(log.state.canary, None);
        assert_eq!(log.state.live, Some(1));
    }

    #[test]
    fn revoke_refuses_live_and_canary_versions() {
        let mut log = Log::new();
        log.publish(1).publish(2).publish(3).promote(1);
        let canary = log.state.plan_canary(2, 50, false).unwrap();
        log.push(canary);
        assert!(
            log.state
                .plan_revoke(1, "x")
                .unwrap_err()
                .to_string()
                .contains("rollback")
        );
        assert!(
            log.state
                .plan_revoke(2, "x")
                .unwrap_err()
                .to_string()
                .contains("canary")
        );
        assert!(matches!(
            log.state.plan_revoke(3, " "),
            Err(Error::Invalid { .. })
        ));
        let revoke = log.state.plan_revoke(3, "leaked test data").unwrap();
        log.push(revoke);
        assert!(!log.state.is_servable(3));
        assert!(log.state.plan_rollback(Some(3), "x").is_err());
    }

    #[test]
    fn fold_refuses_gaps_and_unknown_versions() {
        let at = DateTime::UNIX_EPOCH;
        let published = Event {
            seq: 1,
            at,
            actor: "a".into(),
            kind: EventKind::Published {
                version: 1,
                kind: ModelKind::Churn,
                sha256: "x".into(),
                retrain: None,
            },
        };
        let gap = Event {
            seq: 3,
            at,
            actor: "a".into(),
            kind: EventKind::CanaryCleared {},
        };
        let error = ModelState::fold("churn", &[published.clone(), gap])
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected seq 2"), "{error}");
        let unknown = Event {
            seq: 2,
            at,
            actor: "a".into(),
            kind: EventKind::Promoted {
                version: 9,
                forced: false,
            },
        };
        assert!(ModelState::fold("churn", &[published, unknown]).is_err());
    }

    #[test]
    fn events_serialise_with_a_type_tag() {
        let event = Event {
            seq: 4,
            at: DateTime::UNIX_EPOCH,
            actor: "sre".into(),
            kind: EventKind::RolledBack {
                from: 3,
                to: 2,
                reason: "r".into(),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "rolled_back");
        assert_eq!(json["from"], 3);
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
