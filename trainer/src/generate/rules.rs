//! The label rules: the true probability of each outcome given the written
//! columns. `docs/data.md` states the same rules for people.

use super::leads::{Lead, sigmoid};

/// Probability that a lead churns.
///
/// Rises with days since the last reply (capped at 60), complaints and a
/// contact gap over 14 days; falls with positive sentiment, showings
/// attended (capped at 6), pre-approval and email opens.
pub fn churn(lead: &Lead) -> f64 {
    let logit = -1.3 + 0.09 * lead.days_since_last_reply.min(60.0)
        - 1.6 * lead.sentiment_score
        - 0.45 * lead.showings_attended.min(6.0)
        - 1.1 * lead.pre_approved
        + 0.5 * lead.complaints_90d.min(4.0)
        - 1.2 * (lead.email_open_rate - 0.4)
        + 0.6 * f64::from(u8::from(lead.days_since_last_contact > 14.0));
    sigmoid(logit)
}

/// Probability that a lead churns after the market shifted (`generate
/// --concept shifted`): pre-approved leads now buy elsewhere and churn,
/// upbeat sentiment and many showings no longer keep a lead, and fresh
/// complaints matter twice as much; replies still do.
pub fn churn_shifted(lead: &Lead) -> f64 {
    let logit = -1.3
        + 0.09 * lead.days_since_last_reply.min(60.0)
        + 1.2 * lead.sentiment_score
        + 0.35 * lead.showings_attended.min(6.0)
        + 1.6 * lead.pre_approved
        + 1.0 * lead.complaints_90d.min(4.0)
        - 1.2 * (lead.email_open_rate - 0.4)
        - 0.6 * f64::from(u8::from(lead.days_since_last_contact > 14.0));
    sigmoid(logit)
}

/// Cut points of the journey stage's ordinal model.
pub const JOURNEY_CUTS: [f64; 4] = [1.6, 2.8, 3.8, 4.8];
/// Scale of the logistic noise around the journey score.
pub const JOURNEY_NOISE: f64 = 0.4;

/// Deterministic part of the journey score: intent signals and engagement.
pub fn journey_score(lead: &Lead) -> f64 {
    0.9 * lead.listings_viewed_30d.ln_1p()
        + 0.9 * lead.showings_attended.ln_1p()
        + 1.2 * lead.pre_approved
        + 0.5 * lead.mortgage_calculator_uses_30d.ln_1p()
        + 0.4 * lead.saved_searches.ln_1p()
        + 1.0 * lead.email_click_rate
        - 0.02 * lead.days_since_last_reply.min(60.0)
}

/// Probability of each journey stage (ordered logit on [`journey_score`]
/// with logistic noise of scale [`JOURNEY_NOISE`]).
pub fn journey(lead: &Lead) -> [f64; 5] {
    let z = journey_score(lead);
    let below: Vec<f64> = JOURNEY_CUTS
        .iter()
        .map(|cut| sigmoid((cut - z) / JOURNEY_NOISE))
        .collect();
    [
        below[0],
        below[1] - below[0],
        below[2] - below[1],
        below[3] - below[2],
        1.0 - below[3],
    ]
}

/// A candidate contact slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// 0 email, 1 sms, 2 call, 3 video.
    pub channel: usize,
    /// 0 Monday .. 6 Sunday.
    pub weekday: usize,
    /// 0..=23, lead's local time.
    pub hour: usize,
}

/// Probability that the lead responds to contact in `slot`: a bonus on the
/// preferred channel, a bump around the lead's active hour, a penalty at
/// night, a weekend bonus for leads newer than 60 days, and general email
/// engagement.
pub fn response(lead: &Lead, slot: Slot) -> f64 {
    let distance = (slot.hour as f64 - lead.active_hour()).abs();
    let distance = distance.min(24.0 - distance);
    let night = slot.hour < 7 || slot.hour >= 22;
    let weekend = slot.weekday >= 5;
    let logit = -2.2
        + 1.6 * f64::from(u8::from(slot.channel == lead.preferred_channel()))
        + 1.3 * (-distance * distance / 8.0).exp()
        - 1.5 * f64::from(u8::from(night))
        + 0.6 * f64::from(u8::from(weekend && lead.days_since_first_contact < 60.0))
        + 1.5 * (lead.email_open_rate - 0.4);
    sigmoid(logit)
}

/// A message variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Variant {
    /// 0 conservative, 1 professional, 2 friendly, 3 aggressive.
    pub tone: usize,
    /// 0 email, 1 sms, 2 call, 3 video.
    pub channel: usize,
    /// Length in words.
    pub length_words: f64,
    /// Offers an incentive.
    pub has_incentive: bool,
    /// Personalised.
    pub personalized: bool,
}

/// Probability that the lead converts after `variant`: a base rate per
/// segment, tone effects that depend on the segment (aggressive works on hot
/// leads and backfires on cold ones), personalisation, incentives for cold
/// leads, long texts hurting on sms, and the preferred channel.
pub fn conversion(lead: &Lead, variant: Variant) -> f64 {
    let segment = lead.segment();
    let base = [-3.2, -2.3, -1.4][segment];
    let tone = match (variant.tone, segment) {
        (3, 2) => 0.8,
        (3, 0) => -1.0,
        (0, 0) => 0.6,
        (0, 2) => -0.4,
        (1, _) => 0.3,
        (2, 1) => 0.5,
        _ => 0.0,
    };
    let length = if variant.channel == 1 && variant.length_words > 60.0 {
        -0.9
    } else if variant.channel == 0 && (80.0..=200.0).contains(&variant.length_words) {
        0.3
    } else {
        0.0
    };
    let logit = base
        + tone
        + 0.5 * f64::from(u8::from(variant.personalized))
        + if variant.has_incentive && segment == 0 {
            0.7
        } else {
            0.0
        }
        + length
        + 0.8 * f64::from(u8::from(variant.channel == lead.preferred_channel()));
    sigmoid(logit)
}
