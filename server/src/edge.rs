//! The edge: protocol messages to domain values, validated once, with errors
//! that name the field. Exhaustive destructuring makes a new proto field a
//! compile error here until someone decides what it means.

use std::time::{Duration, Instant};

use nurture_models::input::LeadValues;
use nurture_proto::v1;

use crate::error::ServeError;

/// Longest lead id, in bytes.
pub const MAX_LEAD_ID_BYTES: usize = 128;

fn invalid(field: String, reason: impl std::fmt::Display) -> ServeError {
    ServeError::InvalidArgument(format!("invalid {field}: {reason}"))
}

/// Converts and validates a `LeadProfile`; `field` names it in errors
/// (e.g. `leads[2]`).
pub fn lead(profile: &v1::LeadProfile, field: &str) -> Result<LeadValues, ServeError> {
    let v1::LeadProfile {
        lead_id,
        days_since_first_contact,
        days_since_last_contact,
        days_since_last_reply,
        email_open_rate,
        email_click_rate,
        sms_reply_rate,
        call_answer_rate,
        video_join_rate,
        messages_sent_30d,
        messages_received_30d,
        avg_response_hours,
        sentiment_score,
        complaints_90d,
        website_visits_30d,
        listings_viewed_30d,
        saved_searches,
        showings_attended,
        pre_approved,
        mortgage_calculator_uses_30d,
        budget_k_usd,
        time_zone: _,
    } = profile;
    check_lead_id(lead_id, &format!("{field}.lead_id"))?;
    let count = |v: &Option<i32>| v.map(f64::from);
    let flag = |v: &Option<bool>| v.map(|b| f64::from(u8::from(b)));
    let values = LeadValues {
        id: lead_id.clone(),
        values: [
            *days_since_first_contact,
            *days_since_last_contact,
            *days_since_last_reply,
            *email_open_rate,
            *email_click_rate,
            *sms_reply_rate,
            *call_answer_rate,
            *video_join_rate,
            count(messages_sent_30d),
            count(messages_received_30d),
            *avg_response_hours,
            *sentiment_score,
            count(complaints_90d),
            count(website_visits_30d),
            count(listings_viewed_30d),
            count(saved_searches),
            count(showings_attended),
            flag(pre_approved),
            count(mortgage_calculator_uses_30d),
            *budget_k_usd,
        ],
    };
    values.validate(field)?;
    Ok(values)
}

/// Checks a batch of leads (1 to `max`) and converts each, naming
/// `leads[i]` in errors.
pub fn leads(profiles: &[v1::LeadProfile], max: usize) -> Result<Vec<LeadValues>, ServeError> {
    check_batch(profiles.len(), max, "leads")?;
    profiles
        .iter()
        .enumerate()
        .map(|(index, profile)| lead(profile, &format!("leads[{index}]")))
        .collect()
}

/// Checks a lead id's length.
pub fn check_lead_id(id: &str, field: &str) -> Result<(), ServeError> {
    if id.len() > MAX_LEAD_ID_BYTES {
        return Err(invalid(
            field.to_owned(),
            format!("is {} bytes, at most {MAX_LEAD_ID_BYTES}", id.len()),
        ));
    }
    Ok(())
}

/// Checks a batch's size: 1 to `max` items.
pub fn check_batch(len: usize, max: usize, field: &str) -> Result<(), ServeError> {
    if len == 0 {
        return Err(invalid(field.to_owned(), "must hold at least one item"));
    }
    if len > max {
        return Err(invalid(
            field.to_owned(),
            format!("holds {len} items, at most {max} per request"),
        ));
    }
    Ok(())
}

/// The request's deadline from its `grpc-timeout` header, if any.
pub fn deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let header = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = header.split_at(header.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let duration = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_profiles_are_validated_with_field_names() {
        let profile = v1::LeadProfile {
            lead_id: "l1".into(),
            email_open_rate: Some(1.5),
            ..Default::default()
        };
        let error = lead(&profile, "leads[4]").unwrap_err().to_string();
        assert!(error.contains("leads[4].email_open_rate"), "{error}");
        let profile = v1::LeadProfile {
            showings_attended: Some(-2),
            ..Default::default()
        };
        assert!(
            lead(&profile, "leads[0]")
                .unwrap_err()
                .to_string()
                .contains("leads[0].showings_attended")
        );
        let profile = v1::LeadProfile {
            pre_approved: Some(true),
            ..Default::default()
        };
        assert_eq!(lead(&profile, "x").unwrap().values[17], Some(1.0));
        let long = v1::LeadProfile {
            lead_id: "x".repeat(200),
            ..Default::default()
        };
        assert!(
            lead(&long, "leads[1]")
                .unwrap_err()
                .to_string()
                .contains("leads[1].lead_id")
        );
    }

    #[test]
    fn batch_limits() {
        assert!(
            check_batch(0, 10, "leads")
                .unwrap_err()
                .to_string()
                .contains("invalid leads")
        );
        assert!(
            check_batch(11, 10, "leads")
                .unwrap_err()
                .to_string()
                .contains("at most 10")
        );
        assert!(check_batch(3, 10, "leads").is_ok());
    }

    /// Every `LeadProfile` field lands at the index of its own name in
    /// `LEAD_FEATURES`. Each field gets a different value, so swapping any
    /// two in the mapping fails here.
    #[test]
    fn each_lead_profile_field_lands_at_its_named_index() {
        let profile = v1::LeadProfile {
            lead_id: "lead".into(),
            days_since_first_contact: Some(101.0),
            days_since_last_contact: Some(102.0),
            days_since_last_reply: Some(103.0),
            email_open_rate: Some(0.04),
            email_click_rate: Some(0.05),
            sms_reply_rate: Some(0.06),
            call_answer_rate: Some(0.07),
            video_join_rate: Some(0.08),
            messages_sent_30d: Some(9),
            messages_received_30d: Some(10),
            avg_response_hours: Some(11.5),
            sentiment_score: Some(-0.12),
            complaints_90d: Some(13),
            website_visits_30d: Some(14),
            listings_viewed_30d: Some(15),
            saved_searches: Some(16),
            showings_attended: Some(17),
            pre_approved: Some(true),
            mortgage_calculator_uses_30d: Some(19),
            budget_k_usd: Some(420.0),
            time_zone: String::new(),
        };
        let by_name = |name: &str| -> f64 {
            match name {
                "days_since_first_contact" => 101.0,
                "days_since_last_contact" => 102.0,
                "days_since_last_reply" => 103.0,
                "email_open_rate" => 0.04,
                "email_click_rate" => 0.05,
                "sms_reply_rate" => 0.06,
                "call_answer_rate" => 0.07,
                "video_join_rate" => 0.08,
                "messages_sent_30d" => 9.0,
                "messages_received_30d" => 10.0,
                "avg_response_hours" => 11.5,
                "sentiment_score" => -0.12,
                "complaints_90d" => 13.0,
                "website_visits_30d" => 14.0,
                "listings_viewed_30d" => 15.0,
                "saved_searches" => 16.0,
                "showings_attended" => 17.0,
                "pre_approved" => 1.0,
                "mortgage_calculator_uses_30d" => 19.0,
                "budget_k_usd" => 420.0,
                other => panic!("a LeadProfile feature without a test value: {other}"),
            }
        };
        let values = lead(&profile, "leads[0]").unwrap();
        for (index, feature) in nurture_models::features::LEAD_FEATURES.iter().enumerate() {
            assert_eq!(
                values.values[index],
                Some(by_name(feature.name)),
                "index {index} should hold {}",
                feature.name
            );
        }
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary lead profiles never panic the edge, and every refusal is
    //! INVALID_ARGUMENT naming a `leads[i]` field.

    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..200).prop_map(String::from_iter)
    }

    fn real() -> impl Strategy<Value = Option<f64>> {
        proptest::option::of(prop_oneof![
            any::<f64>(),
            -2.0..1000.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
        ])
    }

    fn count() -> impl Strategy<Value = Option<i32>> {
        proptest::option::of(any::<i32>())
    }

    prop_compose! {
        fn profile()(
            lead_id in text(),
            reals in proptest::collection::vec(real(), 10),
            counts in proptest::collection::vec(count(), 9),
            pre_approved in proptest::option::of(any::<bool>()),
            time_zone in text(),
        ) -> v1::LeadProfile {
            v1::LeadProfile {
                lead_id,
                days_since_first_contact: reals[0],
                days_since_last_contact: reals[1],
                days_since_last_reply: reals[2],
                email_open_rate: reals[3],
                email_click_rate: reals[4],
                sms_reply_rate: reals[5],
                call_answer_rate: reals[6],
                video_join_rate: reals[7],
                messages_sent_30d: counts[0],
                messages_received_30d: counts[1],
                avg_response_hours: reals[8],
                sentiment_score: reals[9],
                complaints_90d: counts[2],
                website_visits_30d: counts[3],
                listings_viewed_30d: counts[4],
                saved_searches: counts[5],
                showings_attended: counts[6],
                pre_approved,
                mortgage_calculator_uses_30d: counts[7],
                budget_k_usd: reals[0].map(|v| v * 3.0),
                time_zone,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_leads_are_converted_or_named(profiles in proptest::collection::vec(profile(), 0..12)) {
            match leads(&profiles, 8) {
                Ok(values) => {
                    prop_assert_eq!(values.len(), profiles.len());
                    for value in &values {
                        prop_assert!(value.values.iter().flatten().all(|v| v.is_finite()));
                    }
                }
                Err(error) => {
                    prop_assert_eq!(error.error_type(), "invalid_argument");
                    let message = error.to_string();
                    prop_assert!(message.contains("leads"), "{}", message);
                }
            }
        }
    }
}
