//! The lead features a model may use, by name.
//!
//! [`LEAD_FEATURES`] mirrors the numeric fields of `nurture.v1.LeadProfile`
//! (a test in `nurture-proto` keeps the two in step). Kind-specific inputs
//! (the candidate slot of channel timing, the message variant of optimization)
//! are listed by [`crate::ModelKind::extra_features`].

/// What a feature measures; decides its valid range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureUnit {
    /// Non-negative count of events.
    Count,
    /// Fraction in [0, 1].
    Rate,
    /// Non-negative duration in days.
    Days,
    /// Non-negative duration in hours.
    Hours,
    /// Score in [-1, 1].
    Polarity,
    /// 0 or 1.
    Flag,
    /// Non-negative amount (e.g. thousands of USD).
    Amount,
    /// Integer index within a fixed range (e.g. weekday 0..=6, hour 0..=23).
    Index {
        /// Largest allowed value.
        max: u32,
    },
}

impl FeatureUnit {
    /// Inclusive range of valid values.
    pub fn range(self) -> (f64, f64) {
        match self {
            FeatureUnit::Count | FeatureUnit::Days | FeatureUnit::Hours | FeatureUnit::Amount => {
                (0.0, f64::MAX)
            }
            FeatureUnit::Rate | FeatureUnit::Flag => (0.0, 1.0),
            FeatureUnit::Polarity => (-1.0, 1.0),
            FeatureUnit::Index { max } => (0.0, f64::from(max)),
        }
    }

    /// Whether `value` is finite and inside [`Self::range`].
    pub fn accepts(self, value: f64) -> bool {
        let (low, high) = self.range();
        value.is_finite() && value >= low && value <= high
    }
}

/// A named model input feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Name as used in manifests and (for lead features) `LeadProfile`.
    pub name: &'static str,
    /// What the value measures.
    pub unit: FeatureUnit,
}

const fn f(name: &'static str, unit: FeatureUnit) -> Feature {
    Feature { name, unit }
}

/// Every numeric feature of `nurture.v1.LeadProfile`, in field order.
pub const LEAD_FEATURES: &[Feature] = &[
    f("days_since_first_contact", FeatureUnit::Days),
    f("days_since_last_contact", FeatureUnit::Days),
    f("days_since_last_reply", FeatureUnit::Days),
    f("email_open_rate", FeatureUnit::Rate),
    f("email_click_rate", FeatureUnit::Rate),
    f("sms_reply_rate", FeatureUnit::Rate),
    f("call_answer_rate", FeatureUnit::Rate),
    f("video_join_rate", FeatureUnit::Rate),
    f("messages_sent_30d", FeatureUnit::Count),
    f("messages_received_30d", FeatureUnit::Count),
    f("avg_response_hours", FeatureUnit::Hours),
    f("sentiment_score", FeatureUnit::Polarity),
    f("complaints_90d", FeatureUnit::Count),
    f("website_visits_30d", FeatureUnit::Count),
    f("listings_viewed_30d", FeatureUnit::Count),
    f("saved_searches", FeatureUnit::Count),
    f("showings_attended", FeatureUnit::Count),
    f("pre_approved", FeatureUnit::Flag),
    f("mortgage_calculator_uses_30d", FeatureUnit::Count),
    f("budget_k_usd", FeatureUnit::Amount),
];

/// Features of a candidate contact slot (channel timing). The channel is
/// one-hot encoded; weekday is 0 = Monday .. 6 = Sunday and hour 0..=23, both
/// in the lead's local time.
pub const SLOT_FEATURES: &[Feature] = &[
    f("slot_channel_email", FeatureUnit::Flag),
    f("slot_channel_sms", FeatureUnit::Flag),
    f("slot_channel_call", FeatureUnit::Flag),
    f("slot_channel_video", FeatureUnit::Flag),
    f("slot_weekday", FeatureUnit::Index { max: 6 }),
    f("slot_hour", FeatureUnit::Index { max: 23 }),
];

/// Features of a message variant (optimization). Tone and channel are one-hot
/// encoded.
pub const VARIANT_FEATURES: &[Feature] = &[
    f("variant_tone_conservative", FeatureUnit::Flag),
    f("variant_tone_professional", FeatureUnit::Flag),
    f("variant_tone_friendly", FeatureUnit::Flag),
    f("variant_tone_aggressive", FeatureUnit::Flag),
    f("variant_channel_email", FeatureUnit::Flag),
    f("variant_channel_sms", FeatureUnit::Flag),
    f("variant_channel_call", FeatureUnit::Flag),
    f("variant_channel_video", FeatureUnit::Flag),
    f("variant_length_words", FeatureUnit::Count),
    f("variant_has_incentive", FeatureUnit::Flag),
    f("variant_personalized", FeatureUnit::Flag),
];

/// Looks a lead feature up by name.
pub fn lead_feature(name: &str) -> Option<&'static Feature> {
    LEAD_FEATURES.iter().find(|feature| feature.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn feature_names_are_unique_across_all_tables() {
        let all = LEAD_FEATURES
            .iter()
            .chain(SLOT_FEATURES)
            .chain(VARIANT_FEATURES);
        let mut seen = HashSet::new();
        for feature in all {
            assert!(
                seen.insert(feature.name),
                "duplicate feature {}",
                feature.name
            );
        }
    }

    #[test]
    fn ranges_reject_non_finite_and_out_of_range_values() {
        assert!(FeatureUnit::Rate.accepts(0.5));
        assert!(!FeatureUnit::Rate.accepts(1.5));
        assert!(!FeatureUnit::Count.accepts(-1.0));
        assert!(!FeatureUnit::Days.accepts(f64::NAN));
        assert!(!FeatureUnit::Days.accepts(f64::INFINITY));
        assert!(FeatureUnit::Polarity.accepts(-1.0));
        assert!(!FeatureUnit::Index { max: 23 }.accepts(24.0));
        assert_eq!(
            lead_feature("pre_approved").map(|f| f.unit),
            Some(FeatureUnit::Flag)
        );
        assert!(lead_feature("slot_hour").is_none());
    }
}
