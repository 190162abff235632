//! `ChurnService`: churn probability, risk level, contributing factors by
//! occlusion, and recommended interventions.
//!
//! Factors: for each lead feature the serving version uses, the lead's row
//! is scored again with that feature set to its training mean (from the
//! manifest); effect = p(lead) − p(lead with the mean). All these rows go in
//! the same batch as the lead's own row.

use std::sync::Arc;

use nurture_models::input::LeadValues;
use nurture_proto::v1::{self, churn_service_server::ChurnService};
use tonic::{Request, Response, Status};

use super::{Limits, instrumented, score_items};
use crate::batcher::Rows;
use crate::deployment::Slot;
use crate::edge;
use crate::error::ServeError;
use crate::feedback::{Inputs, Served};
use crate::model::LoadedVersion;

/// Factors returned when the request asks for none.
pub const DEFAULT_FACTORS: usize = 3;
/// Most factors a request may ask for.
pub const MAX_FACTORS: usize = 10;

/// The churn service.
#[derive(Debug, Clone)]
pub struct Churn {
    /// The churn model's slot.
    pub slot: Arc<Slot>,
    /// Limits.
    pub limits: Limits,
    /// Prediction ids and the prediction log.
    pub served: Arc<Served>,
}

/// Risk level (1 very_low .. 5 critical) of a probability under ascending
/// thresholds.
pub fn risk_level(probability: f64, thresholds: &[f64; 4]) -> v1::RiskLevel {
    let band = thresholds.iter().filter(|t| probability >= **t).count();
    match band {
        0 => v1::RiskLevel::VeryLow,
        1 => v1::RiskLevel::Low,
        2 => v1::RiskLevel::Medium,
        3 => v1::RiskLevel::High,
        _ => v1::RiskLevel::Critical,
    }
}

fn intervention(code: &str, description: &str, channel: v1::Channel) -> v1::Intervention {
    v1::Intervention {
        code: code.to_owned(),
        description: description.to_owned(),
        channel: channel as i32,
    }
}

/// The intervention table (docs/api.md): keyed by risk level and by the
/// factors that raise this lead's risk, most important first.
pub fn interventions(
    level: v1::RiskLevel,
    factors: &[v1::ContributingFactor],
) -> Vec<v1::Intervention> {
    use v1::Channel;
    if matches!(level, v1::RiskLevel::VeryLow | v1::RiskLevel::Low) {
        return vec![intervention(
            "keep_cadence",
            "Keep the regular nurture cadence.",
            Channel::Email,
        )];
    }
    let mut out = Vec::new();
    if level == v1::RiskLevel::Critical {
        out.push(intervention(
            "manager_review",
            "Flag the lead for a manager's review today.",
            Channel::Unspecified,
        ));
    }
    for factor in factors.iter().filter(|f| f.effect > 0.0) {
        let next = match factor.feature.as_str() {
            "days_since_last_reply" | "days_since_last_contact" => intervention(
                "call_within_24h",
                "Call the lead within 24 hours; they have gone quiet.",
                Channel::Call,
            ),
            "sentiment_score" => intervention(
                "empathetic_check_in",
                "Acknowledge their concerns in a personal call.",
                Channel::Call,
            ),
            "complaints_90d" => intervention(
                "escalate_to_senior_agent",
                "Hand the lead to a senior agent.",
                Channel::Call,
            ),
            "showings_attended"
            | "listings_viewed_30d"
            | "saved_searches"
            | "website_visits_30d" => intervention(
                "offer_showing",
                "Offer a showing of homes matching their searches.",
                Channel::Sms,
            ),
            "pre_approved" | "mortgage_calculator_uses_30d" | "budget_k_usd" => intervention(
                "connect_with_lender",
                "Introduce a lender to get them pre-approved.",
                Channel::Email,
            ),
            "email_open_rate" | "email_click_rate" => intervention(
                "switch_to_sms",
                "Emails go unread; move the conversation to text messages.",
                Channel::Sms,
            ),
            "sms_reply_rate" | "call_answer_rate" | "video_join_rate" => intervention(
                "switch_to_email",
                "Try email, the channel they still read.",
                Channel::Email,
            ),
            _ => intervention(
                "personal_follow_up",
                "Send a personal follow-up.",
                Channel::Email,
            ),
        };
        if !out.iter().any(|i: &v1::Intervention| i.code == next.code) {
            out.push(next);
        }
    }
    if out.is_empty() {
        out.push(intervention(
            "personal_follow_up",
            "Send a personal follow-up.",
            v1::Channel::Email,
        ));
    }
    out
}

/// Occluded columns of a version: (column, lead feature index, mean).
fn occlusions(version: &LoadedVersion) -> Vec<(usize, usize, f64)> {
    let layout = version.layout.as_ref().expect("churn models are tabular");
    layout
        .lead_columns()
        .filter_map(|(column, lead)| {
            let name = &layout.names()[column];
            Some((column, lead?, *version.manifest.feature_means.get(name)?))
        })
        .collect()
}

fn rows_for(version: &LoadedVersion, lead: &LeadValues, field: &str) -> Result<Rows, ServeError> {
    let layout = version.layout.as_ref().expect("churn models are tabular");
    let mut values = Vec::with_capacity(layout.width() * (1 + layout.width()));
    layout.push_row(lead, &[], field, &mut values)?;
    let base: Vec<f32> = values.clone();
    for (column, _, mean) in occlusions(version) {
        let mut row = base.clone();
        row[column] = mean as f32;
        values.extend(row);
    }
    Ok(Rows::Features {
        width: layout.width(),
        values,
    })
}

#[tonic::async_trait]
impl ChurnService for Churn {
    async fn predict_churn(
        &self,
        request: Request<v1::PredictChurnRequest>,
    ) -> Result<Response<v1::PredictChurnResponse>, Status> {
        let deadline = edge::deadline(&request);
        let v1::PredictChurnRequest {
            leads,
            version,
            max_factors,
        } = request.into_inner();
        instrumented("PredictChurn", &self.slot.name, deadline, async move {
            let wanted = match max_factors as usize {
                0 => DEFAULT_FACTORS,
                n if n > MAX_FACTORS => {
                    return Err(ServeError::InvalidArgument(format!(
                        "invalid max_factors: at most {MAX_FACTORS}, got {n}"
                    )));
                }
                n => n,
            };
            let values = edge::leads(&leads, self.limits.max_items)?;
            let ids: Vec<&str> = values.iter().map(|v| v.id.as_str()).collect();
            let scores = score_items(&self.slot, &ids, version, deadline, |loaded, item| {
                rows_for(loaded, &values[item], &format!("leads[{item}]"))
            })
            .await?;
            let versions = scores.iter().map(|s| (s.version.version, s.arm)).collect();
            let predictions = scores
                .iter()
                .zip(&values)
                .map(|(score, lead)| {
                    let probability = f64::from(score.row(0)[1]);
                    let layout = score
                        .version
                        .layout
                        .as_ref()
                        .expect("churn models are tabular");
                    let mut factors: Vec<v1::ContributingFactor> = occlusions(&score.version)
                        .into_iter()
                        .enumerate()
                        .map(
                            |(index, (column, lead_index, mean))| v1::ContributingFactor {
                                feature: layout.names()[column].clone(),
                                value: lead.values[lead_index].unwrap_or(mean),
                                baseline: mean,
                                effect: probability - f64::from(score.row(index + 1)[1]),
                            },
                        )
                        .collect();
                    factors.sort_by(|a, b| {
                        b.effect
                            .abs()
                            .total_cmp(&a.effect.abs())
                            .then_with(|| a.feature.cmp(&b.feature))
                    });
                    factors.truncate(wanted);
                    let thresholds = score
                        .version
                        .manifest
                        .risk_thresholds
                        .unwrap_or(nurture_models::manifest::DEFAULT_RISK_THRESHOLDS);
                    let level = risk_level(probability, &thresholds);
                    v1::ChurnPrediction {
                        model: Some(score.model_ref()),
                        lead_id: lead.id.clone(),
                        churn_probability: probability,
                        risk_level: level as i32,
                        interventions: interventions(level, &factors),
                        factors,
                        prediction_id: score.answer(
                            &self.served,
                            Inputs {
                                lead: Some(lead),
                                ..Inputs::default()
                            },
                            score.row(0),
                        ),
                    }
                })
                .collect::<Vec<_>>();
            super::mirror_leads(
                &self.served,
                &self.slot,
                &scores,
                &values,
                predictions.iter().map(|p| p.prediction_id.clone()),
            );
            Ok((v1::PredictChurnResponse { predictions }, versions))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_levels_follow_the_thresholds() {
        let t = [0.1, 0.25, 0.5, 0.75];
        assert_eq!(risk_level(0.05, &t), v1::RiskLevel::VeryLow);
        assert_eq!(risk_level(0.1, &t), v1::RiskLevel::Low);
        assert_eq!(risk_level(0.6, &t), v1::RiskLevel::High);
        assert_eq!(risk_level(0.99, &t), v1::RiskLevel::Critical);
    }

    #[test]
    fn interventions_follow_risk_and_factors() {
        let quiet = v1::ContributingFactor {
            feature: "days_since_last_reply".into(),
            value: 40.0,
            baseline: 6.0,
            effect: 0.3,
        };
        let helps = v1::ContributingFactor {
            feature: "pre_approved".into(),
            value: 1.0,
            baseline: 0.3,
            effect: -0.1,
        };
        let codes =
            |list: Vec<v1::Intervention>| list.into_iter().map(|i| i.code).collect::<Vec<_>>();
        assert_eq!(
            codes(interventions(
                v1::RiskLevel::Low,
                std::slice::from_ref(&quiet)
            )),
            ["keep_cadence"]
        );
        assert_eq!(
            codes(interventions(
                v1::RiskLevel::High,
                &[quiet.clone(), helps.clone()]
            )),
            ["call_within_24h"]
        );
        assert_eq!(
            codes(interventions(v1::RiskLevel::Critical, &[quiet])),
            ["manager_review", "call_within_24h"]
        );
        assert_eq!(
            codes(interventions(v1::RiskLevel::Medium, &[helps])),
            ["personal_follow_up"]
        );
    }
}
