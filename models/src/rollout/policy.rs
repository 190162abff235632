//! A guarded rollout as the release log records it: the policy a person
//! starts it with, the guard's decisions, and the rollout's state folded
//! from them (so a restarted replica resumes it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::sequential::{Evidence, Metric, SequentialTest};
use crate::{Error, Result};

/// Consecutive automatic rollbacks of a model after which the guard starts
/// no rollout until a person says so (`--force`).
pub const MAX_AUTOMATIC_ROLLBACKS: u32 = 3;

/// How a canary is judged and what success does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// What is compared between canary and live on outcomes.
    pub metric: Metric,
    /// The sequential test and its minimum outcomes per arm.
    pub test: SequentialTest,
    /// The canary's share at each step, ascending; success at a step moves
    /// to the next, success at the last promotes.
    pub steps: Vec<u8>,
    /// Longest a rollout may run; past it without a decision it expires
    /// (the canary stays where it is and a person decides).
    pub max_duration_secs: u64,
    /// Operational guard: the canary's share of failed requests may be at
    /// most this many times live's (plus one point), else it is rolled back.
    pub max_error_ratio: f64,
    /// Operational guard: the canary's p99 latency may be at most this many
    /// times live's, else it is rolled back.
    pub max_p99_ratio: f64,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            metric: Metric::ErrorRate,
            test: SequentialTest::default(),
            steps: vec![10],
            max_duration_secs: 24 * 3600,
            max_error_ratio: 2.0,
            max_p99_ratio: 2.0,
        }
    }
}

impl RolloutPolicy {
    /// Checks every field, naming the first that is wrong.
    pub fn check(&self) -> Result<()> {
        if self.steps.is_empty() {
            return Err(Error::invalid("steps", "name at least one canary percent"));
        }
        for (index, window) in self.steps.windows(2).enumerate() {
            if window[1] <= window[0] {
                return Err(Error::invalid(
                    format!("steps[{}]", index + 1),
                    format!("{} does not follow {} upwards", window[1], window[0]),
                ));
            }
        }
        if let Some((index, step)) = self
            .steps
            .iter()
            .enumerate()
            .find(|(_, s)| !(1..=100).contains(*s))
        {
            return Err(Error::invalid(
                format!("steps[{index}]"),
                format!("must be 1 to 100, got {step}"),
            ));
        }
        let test = &self.test;
        if !(test.alpha > 0.0 && test.alpha < 1.0) {
            return Err(Error::invalid(
                "alpha",
                format!("must be in (0, 1), got {}", test.alpha),
            ));
        }
        if !(test.tau > 0.0 && test.tau.is_finite()) {
            return Err(Error::invalid(
                "tau",
                format!("must be positive, got {}", test.tau),
            ));
        }
        if !(test.margin >= 0.0 && test.margin.is_finite()) {
            return Err(Error::invalid(
                "margin",
                format!("must be 0 or more, got {}", test.margin),
            ));
        }
        if !(0.0..=1.0).contains(&test.point_weight) {
            return Err(Error::invalid(
                "point_weight",
                format!("must be 0 to 1, got {}", test.point_weight),
            ));
        }
        if test.min_outcomes == 0 {
            return Err(Error::invalid("min_outcomes", "must be at least 1"));
        }
        if self.max_duration_secs == 0 {
            return Err(Error::invalid("max_duration", "must be positive"));
        }
        for (field, ratio) in [
            ("max_error_ratio", self.max_error_ratio),
            ("max_p99_ratio", self.max_p99_ratio),
        ] {
            if !(ratio >= 1.0 && ratio.is_finite()) {
                return Err(Error::invalid(
                    field,
                    format!("must be 1 or more, got {ratio}"),
                ));
            }
        }
        Ok(())
    }
}

/// What the guard (or a person) decided about a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The step succeeded: the canary moves to the next step's share.
    SteppedUp {
        /// The new share.
        percent: u8,
    },
    /// The last step succeeded: the canary is live.
    Promoted,
    /// The canary is worse: it is revoked and leaves traffic.
    RolledBack,
    /// The rollout waits (e.g. replicas failed to load the canary).
    Paused,
    /// It goes on after a pause.
    Resumed,
    /// A person ended it; the canary stays where it is.
    Stopped,
    /// It ran out of time without a decision; the canary stays.
    Expired,
}

impl Decision {
    /// Name for logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::SteppedUp { .. } => "stepped_up",
            Decision::Promoted => "promoted",
            Decision::RolledBack => "rolled_back",
            Decision::Paused => "paused",
            Decision::Resumed => "resumed",
            Decision::Stopped => "stopped",
            Decision::Expired => "expired",
        }
    }

    /// Whether the rollout is over after it.
    pub fn ends(self) -> bool {
        matches!(
            self,
            Decision::Promoted | Decision::RolledBack | Decision::Stopped | Decision::Expired
        )
    }
}

/// A rollout under way, folded from the release log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The canary version.
    pub version: u64,
    /// Its policy.
    pub policy: RolloutPolicy,
    /// Index of the current step in `policy.steps`.
    pub step: usize,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Release-log sequence number of its start.
    pub started_seq: u64,
    /// When its current step began: the guard judges the outcomes of
    /// predictions served since then.
    pub step_started_at: DateTime<Utc>,
    /// Why it is paused, if it is.
    pub paused: Option<String>,
    /// The last decision's evidence, if any.
    pub evidence: Option<Evidence>,
}

impl Rollout {
    /// The canary's share now.
    pub fn percent(&self) -> u8 {
        self.policy.steps[self.step.min(self.policy.steps.len() - 1)]
    }

    /// What success at the current step does.
    pub fn on_success(&self) -> Decision {
        match self.policy.steps.get(self.step + 1) {
            Some(percent) => Decision::SteppedUp { percent: *percent },
            None => Decision::Promoted,
        }
    }

    /// Whether it has run past its maximum duration at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        (now - self.started_at).num_seconds() >= self.policy.max_duration_secs as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_policy_names_its_field() {
        let bad = |f: fn(&mut RolloutPolicy)| {
            let mut policy = RolloutPolicy::default();
            f(&mut policy);
            policy.check().unwrap_err().to_string()
        };
        assert!(bad(|p| p.steps.clear()).contains("steps"));
        assert!(bad(|p| p.steps = vec![5, 25, 25]).contains("steps[2]"));
        assert!(bad(|p| p.steps = vec![0, 25]).contains("steps[0]"));
        assert!(bad(|p| p.steps = vec![50, 101]).contains("steps[1]"));
        assert!(bad(|p| p.test.alpha = 1.0).contains("alpha"));
        assert!(bad(|p| p.test.tau = f64::NAN).contains("tau"));
        assert!(bad(|p| p.test.min_outcomes = 0).contains("min_outcomes"));
        assert!(bad(|p| p.test.point_weight = 1.5).contains("point_weight"));
        assert!(bad(|p| p.test.point_weight = f64::NAN).contains("point_weight"));
        assert!(bad(|p| p.max_duration_secs = 0).contains("max_duration"));
        assert!(bad(|p| p.max_p99_ratio = 0.5).contains("max_p99_ratio"));
        RolloutPolicy::default().check().unwrap();
    }

    #[test]
    fn steps_lead_to_promotion() {
        let mut rollout = Rollout {
            version: 2,
            policy: RolloutPolicy {
                steps: vec![5, 25, 50],
                ..RolloutPolicy::default()
            },
            step: 0,
            started_at: Utc::now(),
            started_seq: 3,
            step_started_at: Utc::now(),
            paused: None,
            evidence: None,
        };
        assert_eq!(rollout.percent(), 5);
        assert_eq!(rollout.on_success(), Decision::SteppedUp { percent: 25 });
        rollout.step = 2;
        assert_eq!(rollout.percent(), 50);
        assert_eq!(rollout.on_success(), Decision::Promoted);
        assert!(!rollout.expired(rollout.started_at));
        assert!(rollout.expired(rollout.started_at + chrono::Duration::days(1)));
    }
}
