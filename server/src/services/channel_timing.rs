//! `ChannelTimingService`: for each lead, every allowed (channel, weekday,
//! hour) slot is scored in one batch and the best `top_k` are returned.
//! Slots are in the lead's local time, as the model's slot features are;
//! each returned slot also carries the instant it next starts, resolved in
//! the lead's IANA time zone.

use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use nurture_models::input::LeadValues;
use nurture_proto::v1::{self, channel_timing_service_server::ChannelTimingService};
use tonic::{Request, Response, Status};

use super::{Limits, instrumented, score_items};
use crate::batcher::Rows;
use crate::deployment::Slot;
use crate::edge;
use crate::error::ServeError;
use crate::feedback::{Inputs, Served};

/// Slots returned when the request asks for none.
pub const DEFAULT_TOP_K: usize = 5;
/// Every slot of a week on every channel.
pub const ALL_SLOTS: usize = 4 * 7 * 24;

/// The channel-timing service.
#[derive(Debug, Clone)]
pub struct ChannelTiming {
    /// The channel-timing model's slot.
    pub slot: Arc<Slot>,
    /// Limits.
    pub limits: Limits,
    /// Prediction ids and the prediction log.
    pub served: Arc<Served>,
}

/// A candidate slot: channel 0..4 (email, sms, call, video), weekday 0..7
/// (Monday first), hour 0..24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Channel index.
    pub channel: usize,
    /// Weekday index.
    pub weekday: usize,
    /// Hour.
    pub hour: usize,
}

impl Candidate {
    /// Values of the slot features in `SLOT_FEATURES` order.
    pub fn features(&self) -> [f64; 6] {
        let mut values = [0.0; 6];
        values[self.channel] = 1.0;
        values[4] = self.weekday as f64;
        values[5] = self.hour as f64;
        values
    }
}

struct Plan {
    lead: LeadValues,
    zone: Tz,
    candidates: Vec<Candidate>,
    top_k: usize,
}

/// The earliest moment at or after `as_of` inside the local slot (`weekday`
/// Monday = 0, `hour`) in `zone`: `as_of` while the slot is under way, else
/// its next start. A local hour skipped by a clock change is taken a week
/// later; a repeated one at its first occurrence.
pub fn starts_at(
    zone: Tz,
    weekday: usize,
    hour: usize,
    as_of: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let today = as_of.with_timezone(&zone).date_naive();
    // Today and the next two weeks: two occurrences of every weekday, so a
    // skipped hour still leaves the next.
    (0..=14).find_map(|offset| {
        let date = today.checked_add_signed(TimeDelta::days(offset))?;
        if date.weekday().num_days_from_monday() as usize != weekday {
            return None;
        }
        let local = date.and_hms_opt(u32::try_from(hour).ok()?, 0, 0)?;
        let start = zone
            .from_local_datetime(&local)
            .earliest()?
            .with_timezone(&Utc);
        (start + TimeDelta::hours(1) > as_of).then(|| start.max(as_of))
    })
}

fn timestamp(at: DateTime<Utc>) -> nurture_proto::prost_types::Timestamp {
    nurture_proto::prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// The request's `as_of`, or now.
fn as_of(
    value: Option<&nurture_proto::prost_types::Timestamp>,
) -> Result<DateTime<Utc>, ServeError> {
    let Some(value) = value else {
        return Ok(Utc::now());
    };
    u32::try_from(value.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        .ok_or_else(|| {
            ServeError::InvalidArgument(format!(
                "invalid as_of: {}s {}ns is not a valid timestamp",
                value.seconds, value.nanos
            ))
        })
}

fn quiet(hour: usize, quiet: Option<&v1::QuietHours>) -> bool {
    let Some(q) = quiet else { return false };
    let (start, end) = (q.start_hour as usize, q.end_hour as usize);
    if start == end {
        false
    } else if start < end {
        (start..end).contains(&hour)
    } else {
        hour >= start || hour < end
    }
}

fn plan(input: &v1::TimingInput, index: usize) -> Result<Plan, ServeError> {
    let v1::TimingInput {
        lead,
        top_k,
        do_not_contact,
        quiet_hours,
    } = input;
    let field = format!("inputs[{index}]");
    let lead = lead
        .as_ref()
        .ok_or_else(|| ServeError::InvalidArgument(format!("invalid {field}.lead: is required")))?;
    let zone = match lead.time_zone.as_str() {
        "" => Tz::UTC,
        name => name.parse::<Tz>().map_err(|_| {
            ServeError::InvalidArgument(format!(
                "invalid {field}.lead.time_zone: {name:?} is not an IANA time zone (e.g. America/Chicago)"
            ))
        })?,
    };
    let lead = edge::lead(lead, &format!("{field}.lead"))?;
    let mut blocked = [false; 4];
    for (position, channel) in do_not_contact.iter().enumerate() {
        match v1::Channel::try_from(*channel) {
            Ok(channel) if channel != v1::Channel::Unspecified => {
                blocked[channel as usize - 1] = true
            }
            _ => {
                return Err(ServeError::InvalidArgument(format!(
                    "invalid {field}.do_not_contact[{position}]: {channel} is not a channel"
                )));
            }
        }
    }
    if let Some(q) = quiet_hours
        && (q.start_hour > 23 || q.end_hour > 23)
    {
        return Err(ServeError::InvalidArgument(format!(
            "invalid {field}.quiet_hours: hours must be 0 to 23"
        )));
    }
    let top_k = match *top_k as usize {
        0 => DEFAULT_TOP_K,
        k if k > ALL_SLOTS => {
            return Err(ServeError::InvalidArgument(format!(
                "invalid {field}.top_k: at most {ALL_SLOTS}, got {k}"
            )));
        }
        k => k,
    };
    let mut candidates = Vec::with_capacity(ALL_SLOTS);
    for channel in (0..4).filter(|c| !blocked[*c]) {
        for weekday in 0..7 {
            for hour in (0..24).filter(|h| !quiet(*h, quiet_hours.as_ref())) {
                candidates.push(Candidate {
                    channel,
                    weekday,
                    hour,
                });
            }
        }
    }
    if candidates.is_empty() {
        return Err(ServeError::InvalidArgument(format!(
            "invalid {field}: do_not_contact and quiet_hours leave no slot to recommend"
        )));
    }
    Ok(Plan {
        lead,
        zone,
        candidates,
        top_k,
    })
}

#[tonic::async_trait]
impl ChannelTimingService for ChannelTiming {
    async fn recommend_timing(
        &self,
        request: Request<v1::RecommendTimingRequest>,
    ) -> Result<Response<v1::RecommendTimingResponse>, Status> {
        let deadline = edge::deadline(&request);
        let v1::RecommendTimingRequest {
            inputs,
            version,
            as_of,
        } = request.into_inner();
        instrumented("RecommendTiming", &self.slot.name, deadline, async move {
            edge::check_batch(inputs.len(), self.limits.max_timing_leads, "inputs")?;
            let as_of = self::as_of(as_of.as_ref())?;
            let plans = inputs
                .iter()
                .enumerate()
                .map(|(i, input)| plan(input, i))
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<&str> = plans.iter().map(|p| p.lead.id.as_str()).collect();
            let scores = score_items(&self.slot, &ids, version, deadline, |loaded, item| {
                let layout = loaded
                    .layout
                    .as_ref()
                    .expect("channel-timing models are tabular");
                let plan = &plans[item];
                let mut values = Vec::with_capacity(layout.width() * plan.candidates.len());
                for candidate in &plan.candidates {
                    layout.push_row(
                        &plan.lead,
                        &candidate.features(),
                        &format!("inputs[{item}].lead"),
                        &mut values,
                    )?;
                }
                Ok(Rows::Features {
                    width: layout.width(),
                    values,
                })
            })
            .await?;
            let versions = scores.iter().map(|s| (s.version.version, s.arm)).collect();
            let recommendations = scores
                .iter()
                .zip(&plans)
                .map(|(score, plan)| {
                    let mut ranked: Vec<(f64, Candidate, usize)> = plan
                        .candidates
                        .iter()
                        .enumerate()
                        .map(|(row, candidate)| (f64::from(score.row(row)[1]), *candidate, row))
                        .collect();
                    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
                    ranked.truncate(plan.top_k);
                    v1::TimingRecommendation {
                        model: Some(score.model_ref()),
                        lead_id: plan.lead.id.clone(),
                        slots: ranked
                            .into_iter()
                            .map(|(probability, c, row)| v1::TimeSlot {
                                channel: c.channel as i32 + 1,
                                weekday: c.weekday as i32 + 1,
                                hour: c.hour as u32,
                                response_probability: probability,
                                starts_at: starts_at(plan.zone, c.weekday, c.hour, as_of)
                                    .map(timestamp),
                                prediction_id: score.answer(
                                    &self.served,
                                    Inputs {
                                        lead: Some(&plan.lead),
                                        extra: &c.features(),
                                        ..Inputs::default()
                                    },
                                    score.row(row),
                                ),
                            })
                            .collect(),
                    }
                })
                .collect();
            Ok((v1::RecommendTimingResponse { recommendations }, versions))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn slots_start_in_the_leads_time_zone() {
        let chicago: Tz = "America/Chicago".parse().unwrap();
        // Wednesday 10:30 in Chicago (UTC-5 in June).
        let as_of = utc("2026-06-10T15:30:00Z");
        let (wednesday, sunday) = (2, 6);
        // Under way: now.
        assert_eq!(starts_at(chicago, wednesday, 10, as_of), Some(as_of));
        // Later today.
        assert_eq!(
            starts_at(chicago, wednesday, 14, as_of),
            Some(utc("2026-06-10T19:00:00Z"))
        );
        // Over for this week: next Wednesday.
        assert_eq!(
            starts_at(chicago, wednesday, 9, as_of),
            Some(utc("2026-06-17T14:00:00Z"))
        );
        // 2 a.m. does not exist on 2026-03-08 in Chicago (clocks spring
        // forward): the slot is taken a week later, 3 a.m. that day is CDT.
        let before_spring = utc("2026-03-07T12:00:00Z");
        assert_eq!(
            starts_at(chicago, sunday, 2, before_spring),
            Some(utc("2026-03-15T07:00:00Z"))
        );
        assert_eq!(
            starts_at(chicago, sunday, 3, before_spring),
            Some(utc("2026-03-08T08:00:00Z"))
        );
        // 1 a.m. happens twice on 2026-11-01 (clocks fall back): the first.
        assert_eq!(
            starts_at(chicago, sunday, 1, utc("2026-10-31T12:00:00Z")),
            Some(utc("2026-11-01T06:00:00Z"))
        );
        // Half-hour offsets: 06:00 in Kolkata is 00:30 UTC.
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        assert_eq!(
            starts_at(kolkata, wednesday, 6, utc("2026-06-10T00:00:00Z")),
            Some(utc("2026-06-10T00:30:00Z"))
        );
    }

    #[test]
    fn unknown_time_zones_and_bad_timestamps_are_named() {
        let input = v1::TimingInput {
            lead: Some(v1::LeadProfile {
                time_zone: "Europe/Atlantis".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = plan(&input, 3).err().unwrap().to_string();
        assert!(error.contains("inputs[3].lead.time_zone"), "{error}");
        let bad = nurture_proto::prost_types::Timestamp {
            seconds: 1,
            nanos: 2_000_000_000,
        };
        assert!(as_of(Some(&bad)).unwrap_err().to_string().contains("as_of"));
    }

    #[test]
    fn quiet_hours_wrap_past_midnight() {
        let night = v1::QuietHours {
            start_hour: 21,
            end_hour: 8,
        };
        assert!(
            quiet(22, Some(&night))
                && quiet(3, Some(&night))
                && !quiet(8, Some(&night))
                && !quiet(12, Some(&night))
        );
        let lunch = v1::QuietHours {
            start_hour: 12,
            end_hour: 13,
        };
        assert!(quiet(12, Some(&lunch)) && !quiet(13, Some(&lunch)));
        assert!(!quiet(
            5,
            Some(&v1::QuietHours {
                start_hour: 4,
                end_hour: 4
            })
        ));
    }

    #[test]
    fn plans_honour_do_not_contact_and_quiet_hours() {
        let input = v1::TimingInput {
            lead: Some(v1::LeadProfile::default()),
            top_k: 0,
            do_not_contact: vec![v1::Channel::Call as i32, v1::Channel::Video as i32],
            quiet_hours: Some(v1::QuietHours {
                start_hour: 20,
                end_hour: 8,
            }),
        };
        let plan = plan(&input, 0).unwrap();
        assert_eq!(plan.candidates.len(), 2 * 7 * 12);
        assert!(
            plan.candidates
                .iter()
                .all(|c| c.channel < 2 && (8..20).contains(&c.hour))
        );
        assert_eq!(plan.top_k, DEFAULT_TOP_K);
        let bad = v1::TimingInput {
            do_not_contact: vec![9],
            ..input
        };
        assert!(
            super::plan(&bad, 2)
                .err()
                .unwrap()
                .to_string()
                .contains("inputs[2].do_not_contact[0]")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn time_zone() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just("America/Chicago".to_owned()),
                Just("Asia/Kolkata".to_owned()),
                ".{0,40}",
            ]
        }

        fn input() -> impl Strategy<Value = v1::TimingInput> {
            (
                proptest::option::of(time_zone()),
                any::<u32>(),
                proptest::collection::vec(-2i32..7, 0..6),
                proptest::option::of((0u32..30, 0u32..30)),
            )
                .prop_map(|(zone, top_k, do_not_contact, quiet)| v1::TimingInput {
                    lead: zone.map(|time_zone| v1::LeadProfile {
                        time_zone,
                        ..Default::default()
                    }),
                    top_k: top_k % 1000,
                    do_not_contact,
                    quiet_hours: quiet.map(|(start_hour, end_hour)| v1::QuietHours {
                        start_hour,
                        end_hour,
                    }),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any timing input is planned (with at least one slot, at most
            /// every slot) or refused as invalid naming its field.
            #[test]
            fn any_timing_input_is_planned_or_named(input in input(), index in 0usize..16) {
                match plan(&input, index) {
                    Ok(plan) => {
                        prop_assert!(!plan.candidates.is_empty());
                        prop_assert!((1..=ALL_SLOTS).contains(&plan.top_k));
                    }
                    Err(error) => {
                        prop_assert_eq!(error.error_type(), "invalid_argument");
                        let message = error.to_string();
                        let field = format!("inputs[{index}]");
                        prop_assert!(message.contains(&field), "{}", message);
                    }
                }
            }

            /// Any `as_of` is a moment or refused naming `as_of`.
            #[test]
            fn any_as_of_is_a_moment_or_named(seconds in any::<i64>(), nanos in any::<i32>()) {
                let value = nurture_proto::prost_types::Timestamp { seconds, nanos };
                if let Err(error) = as_of(Some(&value)) {
                    prop_assert_eq!(error.error_type(), "invalid_argument");
                    prop_assert!(error.to_string().contains("as_of"));
                }
            }
        }
    }
}
