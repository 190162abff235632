//! Experiment definitions and outcome records.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Tones a message variant can take, in `variant_tone_*` feature order.
pub const TONES: [&str; 4] = ["conservative", "professional", "friendly", "aggressive"];
/// Channels, in `variant_channel_*` feature order.
pub const CHANNELS: [&str; 4] = ["email", "sms", "call", "video"];

/// Longest experiment or variant id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Most variants per experiment.
pub const MAX_VARIANTS: usize = 16;

/// One message variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantSpec {
    /// Unique within the experiment.
    pub id: String,
    /// Index into [`TONES`].
    pub tone: usize,
    /// Index into [`CHANNELS`].
    pub channel: usize,
    /// Length in words.
    pub length_words: u32,
    /// Offers an incentive.
    pub has_incentive: bool,
    /// Personalised.
    pub personalized: bool,
    /// Share of burn-in traffic, in (0, 1]; normalised over the variants.
    pub traffic_share: f64,
}

impl VariantSpec {
    /// Values of `VARIANT_FEATURES`, in order.
    pub fn features(&self) -> [f64; 11] {
        let mut values = [0.0; 11];
        values[self.tone] = 1.0;
        values[4 + self.channel] = 1.0;
        values[8] = f64::from(self.length_words);
        values[9] = f64::from(u8::from(self.has_incentive));
        values[10] = f64::from(u8::from(self.personalized));
        values
    }
}

/// Exposures per variant before an early stop is recommended, when a
/// request leaves it unset (0, as proto3 sends an unset field).
pub const DEFAULT_MIN_SAMPLES: u64 = 100;
/// Probability to be best at which an early stop is recommended, when a
/// request leaves it unset (0).
pub const DEFAULT_TARGET_CONFIDENCE: f64 = 0.95;

/// An experiment: variants (the first is the control) and stopping rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSpec {
    /// Unique name.
    pub name: String,
    /// At least two variants.
    pub variants: Vec<VariantSpec>,
    /// Outcomes each variant needs before an early stop is recommended.
    pub min_samples: u64,
    /// Probability to be best at which an early stop is recommended.
    pub target_confidence: f64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Checks an id: 1 to [`MAX_ID_LEN`] bytes of `[a-z0-9_-]`.
pub fn check_id(value: &str, field: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_ID_LEN} bytes, got {}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(Error::invalid(
            field,
            format!("{value:?}: character {bad:?} is not allowed (use a-z, 0-9, _, -)"),
        ));
    }
    Ok(())
}

impl ExperimentSpec {
    /// Checks the definition, naming the offending field
    /// (`experiment.variants[2].traffic_share`); fills equal shares when all
    /// are zero.
    pub fn validate(mut self) -> Result<Self> {
        check_id(&self.name, "experiment.name")?;
        if self.variants.len() < 2 || self.variants.len() > MAX_VARIANTS {
            return Err(Error::invalid(
                "experiment.variants",
                format!(
                    "needs 2 to {MAX_VARIANTS} variants, got {}",
                    self.variants.len()
                ),
            ));
        }
        for (index, variant) in self.variants.iter().enumerate() {
            let field = |name: &str| format!("experiment.variants[{index}].{name}");
            check_id(&variant.id, &field("id"))?;
            if self.variants[..index].iter().any(|v| v.id == variant.id) {
                return Err(Error::invalid(
                    field("id"),
                    format!("duplicate variant {:?}", variant.id),
                ));
            }
            if variant.tone >= TONES.len() {
                return Err(Error::invalid(
                    field("tone"),
                    "must be one of conservative, professional, friendly, aggressive",
                ));
            }
            if variant.channel >= CHANNELS.len() {
                return Err(Error::invalid(
                    field("channel"),
                    "must be one of email, sms, call, video",
                ));
            }
            if !(1..=2000).contains(&variant.length_words) {
                return Err(Error::invalid(
                    field("length_words"),
                    format!("must be 1 to 2000, got {}", variant.length_words),
                ));
            }
            if !variant.traffic_share.is_finite() || !(0.0..=1.0).contains(&variant.traffic_share) {
                return Err(Error::invalid(
                    field("traffic_share"),
                    format!("must be in [0, 1], got {}", variant.traffic_share),
                ));
            }
        }
        let total: f64 = self.variants.iter().map(|v| v.traffic_share).sum();
        if total == 0.0 {
            let equal = 1.0 / self.variants.len() as f64;
            for variant in &mut self.variants {
                variant.traffic_share = equal;
            }
        } else if (total - 1.0).abs() > 1e-6 {
            return Err(Error::invalid(
                "experiment.variants",
                format!("traffic shares must sum to 1 (or all be 0), got {total}"),
            ));
        } else if let Some(index) = self.variants.iter().position(|v| v.traffic_share == 0.0) {
            return Err(Error::invalid(
                format!("experiment.variants[{index}].traffic_share"),
                "must be above 0 when others are set",
            ));
        }
        if self.min_samples == 0 || self.min_samples > 10_000_000 {
            return Err(Error::invalid(
                "experiment.min_samples",
                "must be 1 to 10,000,000",
            ));
        }
        if !(self.target_confidence > 0.5 && self.target_confidence < 1.0) {
            return Err(Error::invalid(
                "experiment.target_confidence",
                format!("must be in (0.5, 1), got {}", self.target_confidence),
            ));
        }
        Ok(self)
    }

    /// Index of a variant by id.
    pub fn variant(&self, id: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.id == id)
    }
}

/// One recorded outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// Client-chosen id; the first record of an id counts, later ones do not.
    pub outcome_id: String,
    /// Lead.
    pub lead_id: String,
    /// Variant shown.
    pub variant_id: String,
    /// Whether the lead converted.
    pub converted: bool,
    /// Value of the conversion.
    pub value: f64,
}

/// What the experiment log holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExperimentEvent {
    /// The experiment was defined.
    Created {
        /// The definition.
        spec: ExperimentSpec,
    },
    /// The experiment stopped taking exposures.
    Stopped {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn variant(id: &str) -> VariantSpec {
        VariantSpec {
            id: id.into(),
            tone: 1,
            channel: 0,
            length_words: 120,
            has_incentive: false,
            personalized: true,
            traffic_share: 0.0,
        }
    }

    fn spec(variants: Vec<VariantSpec>) -> ExperimentSpec {
        ExperimentSpec {
            name: "spring-offer".into(),
            variants,
            min_samples: 100,
            target_confidence: 0.95,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn validation_names_fields_and_fills_equal_shares() {
        let ok = spec(vec![variant("a"), variant("b")]).validate().unwrap();
        assert_eq!(ok.variants[0].traffic_share, 0.5);
        let error = spec(vec![variant("a"), variant("a")])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("experiment.variants[1].id"), "{error}");
        let mut long = variant("b");
        long.length_words = 0;
        let error = spec(vec![variant("a"), long])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("experiment.variants[1].length_words"),
            "{error}"
        );
        assert!(spec(vec![variant("a")]).validate().is_err());
        let error = spec(vec![variant("a"), variant("B")])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("variants[1].id"), "{error}");
    }

    #[test]
    fn features_follow_the_variant_feature_table() {
        let mut v = variant("a");
        v.tone = 3;
        v.channel = 1;
        v.has_incentive = true;
        let f = v.features();
        assert_eq!(f[3], 1.0);
        assert_eq!(f[5], 1.0);
        assert_eq!(f[8], 120.0);
        assert_eq!((f[9], f[10]), (1.0, 1.0));
        assert_eq!(f.iter().take(8).sum::<f64>(), 2.0);
    }
}
