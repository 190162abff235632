//! `LeadProfile` fields by their feature names, for clients that read leads
//! from tables (the trainer's CSV columns use the same names).

use crate::v1::LeadProfile;

impl LeadProfile {
    /// Sets the feature `name` to `value` (counts are truncated, booleans
    /// are `value != 0`); `false` when `name` is not a feature of a lead.
    pub fn set_feature(&mut self, name: &str, value: f64) -> bool {
        let count = Some(value as i32);
        match name {
            "days_since_first_contact" => self.days_since_first_contact = Some(value),
            "days_since_last_contact" => self.days_since_last_contact = Some(value),
            "days_since_last_reply" => self.days_since_last_reply = Some(value),
            "email_open_rate" => self.email_open_rate = Some(value),
            "email_click_rate" => self.email_click_rate = Some(value),
            "sms_reply_rate" => self.sms_reply_rate = Some(value),
            "call_answer_rate" => self.call_answer_rate = Some(value),
            "video_join_rate" => self.video_join_rate = Some(value),
            "messages_sent_30d" => self.messages_sent_30d = count,
            "messages_received_30d" => self.messages_received_30d = count,
            "avg_response_hours" => self.avg_response_hours = Some(value),
            "sentiment_score" => self.sentiment_score = Some(value),
            "complaints_90d" => self.complaints_90d = count,
            "website_visits_30d" => self.website_visits_30d = count,
            "listings_viewed_30d" => self.listings_viewed_30d = count,
            "saved_searches" => self.saved_searches = count,
            "showings_attended" => self.showings_attended = count,
            "pre_approved" => self.pre_approved = Some(value != 0.0),
            "mortgage_calculator_uses_30d" => self.mortgage_calculator_uses_30d = count,
            "budget_k_usd" => self.budget_k_usd = Some(value),
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_feature_lands_in_its_own_field() {
        let mut lead = LeadProfile::default();
        assert!(lead.set_feature("budget_k_usd", 380.0));
        assert!(lead.set_feature("pre_approved", 1.0));
        assert!(lead.set_feature("complaints_90d", 2.0));
        assert!(!lead.set_feature("churned", 1.0));
        assert_eq!(lead.budget_k_usd, Some(380.0));
        assert_eq!(lead.pre_approved, Some(true));
        assert_eq!(lead.complaints_90d, Some(2));
        assert_eq!(lead.days_since_first_contact, None);
    }
}
