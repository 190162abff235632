//! `OptimizationService`: experiments over message variants, the
//! contextual bandit's choices, outcomes and statistics.

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use nurture_models::experiments::{ExperimentSpec, OutcomeRecord, VariantSpec};
use nurture_proto::v1::{self, optimization_service_server::OptimizationService};
use tonic::{Request, Response, Status};

use super::{Limits, instrumented, score_items};
use crate::batcher::Rows;
use crate::deployment::Slot;
use crate::edge;
use crate::error::ServeError;
use crate::experiments::{Experiments, Known};
use crate::feedback::{Inputs, Served};

/// Longest outcome id, in bytes.
pub const MAX_OUTCOME_ID_BYTES: usize = 128;

/// The optimization service.
#[derive(Debug, Clone)]
pub struct Optimization {
    /// The optimization model's slot.
    pub slot: Arc<Slot>,
    /// Experiments.
    pub experiments: Arc<Experiments>,
    /// Limits.
    pub limits: Limits,
    /// Prediction ids and the prediction log.
    pub served: Arc<Served>,
    /// Outcomes that name a prediction id also go to the feedback store.
    pub feedback: Option<crate::feedback::FeedbackRpc>,
}

fn invalid(field: String, reason: impl std::fmt::Display) -> ServeError {
    ServeError::InvalidArgument(format!("invalid {field}: {reason}"))
}

fn spec_from_proto(experiment: Option<v1::Experiment>) -> Result<ExperimentSpec, ServeError> {
    let v1::Experiment {
        name,
        variants,
        min_samples,
        target_confidence,
        stopped: _,
        created_at: _,
    } = experiment.ok_or_else(|| invalid("experiment".to_owned(), "is required"))?;
    let variants = variants
        .into_iter()
        .enumerate()
        .map(|(index, variant)| {
            let v1::Variant {
                id,
                tone,
                channel,
                length_words,
                has_incentive,
                personalized,
                traffic_share,
            } = variant;
            let tone = match v1::Tone::try_from(tone) {
                Ok(tone) if tone != v1::Tone::Unspecified => tone as usize - 1,
                _ => {
                    return Err(invalid(
                        format!("experiment.variants[{index}].tone"),
                        "must be set to a known tone",
                    ));
                }
            };
            let channel = match v1::Channel::try_from(channel) {
                Ok(channel) if channel != v1::Channel::Unspecified => channel as usize - 1,
                _ => {
                    return Err(invalid(
                        format!("experiment.variants[{index}].channel"),
                        "must be set to a known channel",
                    ));
                }
            };
            Ok(VariantSpec {
                id,
                tone,
                channel,
                length_words,
                has_incentive,
                personalized,
                traffic_share,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Unset (0) means the default, as proto3 users expect.
    Ok(ExperimentSpec {
        name,
        variants,
        min_samples: match min_samples {
            0 => nurture_models::experiments::spec::DEFAULT_MIN_SAMPLES,
            n => n,
        },
        target_confidence: if target_confidence == 0.0 {
            nurture_models::experiments::spec::DEFAULT_TARGET_CONFIDENCE
        } else {
            target_confidence
        },
        created_at: Utc::now(),
    })
}

fn experiment_to_proto(known: &Known) -> v1::Experiment {
    let spec = &known.spec;
    v1::Experiment {
        name: spec.name.clone(),
        variants: spec
            .variants
            .iter()
            .map(|v| v1::Variant {
                id: v.id.clone(),
                tone: v.tone as i32 + 1,
                channel: v.channel as i32 + 1,
                length_words: v.length_words,
                has_incentive: v.has_incentive,
                personalized: v.personalized,
                traffic_share: v.traffic_share,
            })
            .collect(),
        min_samples: spec.min_samples,
        target_confidence: spec.target_confidence,
        stopped: known.stopped.is_some(),
        created_at: spec.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

#[tonic::async_trait]
impl OptimizationService for Optimization {
    async fn create_experiment(
        &self,
        request: Request<v1::CreateExperimentRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let deadline = edge::deadline(&request);
        let v1::CreateExperimentRequest { experiment } = request.into_inner();
        instrumented("CreateExperiment", &self.slot.name, deadline, async move {
            let spec = self
                .experiments
                .create(spec_from_proto(experiment)?)
                .await?;
            let known = self.experiments.get(&spec.name, true).await?;
            Ok((experiment_to_proto(&known), Vec::new()))
        })
        .await
    }

    async fn get_experiment(
        &self,
        request: Request<v1::GetExperimentRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let deadline = edge::deadline(&request);
        let v1::GetExperimentRequest { name } = request.into_inner();
        instrumented("GetExperiment", &self.slot.name, deadline, async move {
            let known = self.experiments.get(&name, false).await?;
            Ok((experiment_to_proto(&known), Vec::new()))
        })
        .await
    }

    async fn list_experiments(
        &self,
        request: Request<v1::ListExperimentsRequest>,
    ) -> Result<Response<v1::ListExperimentsResponse>, Status> {
        let deadline = edge::deadline(&request);
        instrumented("ListExperiments", &self.slot.name, deadline, async move {
            let experiments = self
                .experiments
                .list()
                .await?
                .iter()
                .map(experiment_to_proto)
                .collect();
            Ok((v1::ListExperimentsResponse { experiments }, Vec::new()))
        })
        .await
    }

    async fn stop_experiment(
        &self,
        request: Request<v1::StopExperimentRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let deadline = edge::deadline(&request);
        let v1::StopExperimentRequest { name, reason } = request.into_inner();
        instrumented("StopExperiment", &self.slot.name, deadline, async move {
            let reason = if reason.trim().is_empty() {
                "stopped".to_owned()
            } else {
                reason
            };
            let known = self.experiments.stop(&name, &reason).await?;
            Ok((experiment_to_proto(&known), Vec::new()))
        })
        .await
    }

    async fn choose_variant(
        &self,
        request: Request<v1::ChooseVariantRequest>,
    ) -> Result<Response<v1::ChooseVariantResponse>, Status> {
        let deadline = edge::deadline(&request);
        let v1::ChooseVariantRequest {
            experiment,
            leads,
            version,
        } = request.into_inner();
        instrumented("ChooseVariant", &self.slot.name, deadline, async move {
            let known = self.experiments.get(&experiment, false).await?;
            if let Some(reason) = &known.stopped {
                return Err(ServeError::FailedPrecondition(format!(
                    "experiment {experiment} is stopped: {reason}"
                )));
            }
            let values = edge::leads(&leads, self.limits.max_items)?;
            let ids: Vec<&str> = values.iter().map(|v| v.id.as_str()).collect();
            let variants = &known.spec.variants;
            let scores = score_items(&self.slot, &ids, version, deadline, |loaded, item| {
                let layout = loaded
                    .layout
                    .as_ref()
                    .expect("optimization models are tabular");
                let mut rows = Vec::with_capacity(layout.width() * variants.len());
                for variant in variants {
                    layout.push_row(
                        &values[item],
                        &variant.features(),
                        &format!("leads[{item}]"),
                        &mut rows,
                    )?;
                }
                Ok(Rows::Features {
                    width: layout.width(),
                    values: rows,
                })
            })
            .await?;
            let versions = scores.iter().map(|s| (s.version.version, s.arm)).collect();
            let choices = scores
                .iter()
                .zip(&values)
                .map(|(score, lead)| {
                    let model_scores: Vec<f64> = (0..variants.len())
                        .map(|v| f64::from(score.row(v)[1]))
                        .collect();
                    let choice = self.experiments.choose(&known, &model_scores);
                    let variant = &variants[choice.variant];
                    metrics::counter!(
                        "nurture_experiment_choices_total",
                        "experiment" => experiment.clone(),
                        "variant" => variant.id.clone(),
                        "explored" => if choice.explored { "true" } else { "false" }
                    )
                    .increment(1);
                    v1::VariantChoice {
                        model: Some(score.model_ref()),
                        lead_id: lead.id.clone(),
                        variant_id: variant.id.clone(),
                        model_score: model_scores[choice.variant],
                        posterior_mean: choice.posterior_mean,
                        explored: choice.explored,
                        prediction_id: score.answer(
                            &self.served,
                            Inputs {
                                lead: Some(lead),
                                extra: &variant.features(),
                                ..Inputs::default()
                            },
                            score.row(choice.variant),
                        ),
                    }
                })
                .collect();
            Ok((v1::ChooseVariantResponse { choices }, versions))
        })
        .await
    }

    async fn record_outcome(
        &self,
        request: Request<v1::RecordOutcomeRequest>,
    ) -> Result<Response<v1::RecordOutcomeResponse>, Status> {
        let deadline = edge::deadline(&request);
        let v1::RecordOutcomeRequest { outcomes } = request.into_inner();
        instrumented("RecordOutcome", &self.slot.name, deadline, async move {
            edge::check_batch(outcomes.len(), self.limits.max_items, "outcomes")?;
            // Validate everything before persisting anything.
            let mut by_experiment: Vec<(String, Vec<OutcomeRecord>)> = Vec::new();
            let mut reports = Vec::new();
            for (index, outcome) in outcomes.into_iter().enumerate() {
                let v1::Outcome {
                    outcome_id,
                    experiment,
                    lead_id,
                    variant_id,
                    converted,
                    value,
                    prediction_id,
                } = outcome;
                let field = |name: &str| format!("outcomes[{index}].{name}");
                if outcome_id.is_empty() || outcome_id.len() > MAX_OUTCOME_ID_BYTES {
                    return Err(invalid(
                        field("outcome_id"),
                        format!("must be 1 to {MAX_OUTCOME_ID_BYTES} bytes"),
                    ));
                }
                edge::check_lead_id(&lead_id, &field("lead_id"))?;
                if !value.is_finite() || value < 0.0 {
                    return Err(invalid(
                        field("value"),
                        format!("must be a finite number >= 0, got {value}"),
                    ));
                }
                let known = self.experiments.get(&experiment, false).await?;
                if known.spec.variant(&variant_id).is_none() {
                    return Err(ServeError::NotFound(format!(
                        "{}: experiment {experiment} has no variant {variant_id:?}",
                        field("variant_id")
                    )));
                }
                if !prediction_id.is_empty() {
                    reports.push(v1::OutcomeReport {
                        prediction_id,
                        // Scoped to the experiment, like the experiment's own ids.
                        outcome_id: format!("{experiment}/{outcome_id}"),
                        label: Some(v1::outcome_report::Label::Converted(converted)),
                        value: Some(value),
                        observed_at: None,
                    });
                }
                let record = OutcomeRecord {
                    outcome_id,
                    lead_id,
                    variant_id,
                    converted,
                    value,
                };
                match by_experiment
                    .iter_mut()
                    .find(|(name, _)| *name == experiment)
                {
                    Some((_, records)) => records.push(record),
                    None => by_experiment.push((experiment, vec![record])),
                }
            }
            // NOTE: both stores are idempotent, so a retry after a failure
            // between the two writes adds nothing twice.
            let feedback = match (&self.feedback, reports.is_empty()) {
                (_, true) => Vec::new(),
                (Some(feedback), false) => feedback.record(&reports).await?.results,
                (None, false) => {
                    return Err(ServeError::Unavailable(
                        "outcome feedback is not set up on this replica".to_owned(),
                    ));
                }
            };
            let (mut recorded, mut duplicates) = (0, 0);
            for (experiment, records) in by_experiment {
                for record in &records {
                    metrics::counter!(
                        "nurture_experiment_outcomes_total",
                        "experiment" => experiment.clone(),
                        "variant" => record.variant_id.clone(),
                        "converted" => if record.converted { "true" } else { "false" }
                    )
                    .increment(1);
                }
                let (new, old) = self.experiments.record(&experiment, records).await?;
                recorded += new;
                duplicates += old;
            }
            Ok((
                v1::RecordOutcomeResponse {
                    recorded,
                    duplicates,
                    feedback,
                },
                Vec::new(),
            ))
        })
        .await
    }

    async fn get_experiment_stats(
        &self,
        request: Request<v1::GetExperimentStatsRequest>,
    ) -> Result<Response<v1::ExperimentStats>, Status> {
        let deadline = edge::deadline(&request);
        let v1::GetExperimentStatsRequest { name } = request.into_inner();
        instrumented("GetExperimentStats", &self.slot.name, deadline, async move {
            let (known, stats) = self.experiments.stats(&name).await?;
            let leader = stats
                .variants
                .iter()
                .enumerate()
                .fold(0, |best, (i, v)| if v.probability_best > stats.variants[best].probability_best { i } else { best });
            for (index, variant) in known.spec.variants.iter().enumerate() {
                metrics::gauge!("nurture_experiment_leader", "experiment" => name.clone(), "variant" => variant.id.clone())
                    .set(if index == leader { 1.0 } else { 0.0 });
            }
            let response = v1::ExperimentStats {
                experiment: name.clone(),
                variants: known
                    .spec
                    .variants
                    .iter()
                    .zip(&stats.variants)
                    .map(|(spec, s)| v1::VariantStats {
                        variant_id: spec.id.clone(),
                        exposures: s.exposures,
                        conversions: s.conversions,
                        conversion_rate: s.rate,
                        credible_low: s.credible_low,
                        credible_high: s.credible_high,
                        probability_best: s.probability_best,
                        expected_loss: s.expected_loss,
                        p_value_vs_control: s.p_value_vs_control,
                    })
                    .collect(),
                recommended_winner: stats.winner.map(|w| known.spec.variants[w].id.clone()).unwrap_or_default(),
                early_stop: stats.winner.is_some(),
            };
            Ok((response, Vec::new()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(min_samples: u64, target_confidence: f64) -> v1::Experiment {
        let variant = |id: &str| v1::Variant {
            id: id.to_owned(),
            tone: v1::Tone::Friendly as i32,
            channel: v1::Channel::Email as i32,
            length_words: 100,
            ..Default::default()
        };
        v1::Experiment {
            name: "spring-offer".to_owned(),
            variants: vec![variant("a"), variant("b")],
            min_samples,
            target_confidence,
            ..Default::default()
        }
    }

    #[test]
    fn unset_numbers_mean_the_defaults_as_proto3_users_expect() {
        let spec = spec_from_proto(Some(experiment(0, 0.0))).unwrap();
        assert_eq!(
            (spec.min_samples, spec.target_confidence),
            (100, 0.95),
            "unset"
        );
        let spec = spec_from_proto(Some(experiment(40, 0.9))).unwrap();
        assert_eq!((spec.min_samples, spec.target_confidence), (40, 0.9), "set");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn variant() -> impl Strategy<Value = v1::Variant> {
            (
                "[a-z0-9_-]{0,8}|.{0,70}",
                -1i32..6,
                -1i32..6,
                any::<u32>(),
                any::<f64>(),
            )
                .prop_map(|(id, tone, channel, length_words, traffic_share)| {
                    v1::Variant {
                        id,
                        tone,
                        channel,
                        length_words,
                        traffic_share,
                        ..Default::default()
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any experiment a client sends is accepted whole or refused as
            /// invalid naming a field of `experiment`.
            #[test]
            fn any_experiment_is_accepted_or_named(
                present in any::<bool>(),
                name in "[a-z0-9_-]{1,8}|.{0,70}",
                variants in proptest::collection::vec(variant(), 0..5),
                min_samples in any::<u64>(),
                target_confidence in any::<f64>(),
            ) {
                let experiment = present.then(|| v1::Experiment {
                    name,
                    variants,
                    min_samples,
                    target_confidence,
                    ..Default::default()
                });
                let checked = spec_from_proto(experiment)
                    .and_then(|spec| spec.validate().map_err(ServeError::from));
                if let Err(error) = checked {
                    prop_assert_eq!(error.error_type(), "invalid_argument");
                    prop_assert!(error.to_string().contains("experiment"), "{}", error);
                }
            }
        }
    }
}
