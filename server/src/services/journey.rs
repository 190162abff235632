//! `JourneyService`: the lead's stage with every stage's probability.

use std::sync::Arc;

use nurture_proto::v1::{self, journey_service_server::JourneyService};
use tonic::{Request, Response, Status};

use super::{Limits, instrumented, score_items};
use crate::batcher::Rows;
use crate::deployment::Slot;
use crate::edge;
use crate::feedback::{Inputs, Served};

/// The journey service.
#[derive(Debug, Clone)]
pub struct Journey {
    /// The journey model's slot.
    pub slot: Arc<Slot>,
    /// Limits.
    pub limits: Limits,
    /// Prediction ids and the prediction log.
    pub served: Arc<Served>,
}

#[tonic::async_trait]
impl JourneyService for Journey {
    async fn classify_stage(
        &self,
        request: Request<v1::ClassifyStageRequest>,
    ) -> Result<Response<v1::ClassifyStageResponse>, Status> {
        let deadline = edge::deadline(&request);
        let v1::ClassifyStageRequest { leads, version } = request.into_inner();
        instrumented("ClassifyStage", &self.slot.name, deadline, async move {
            let values = edge::leads(&leads, self.limits.max_items)?;
            let ids: Vec<&str> = values.iter().map(|v| v.id.as_str()).collect();
            let scores = score_items(&self.slot, &ids, version, deadline, |loaded, item| {
                let layout = loaded.layout.as_ref().expect("journey models are tabular");
                let mut row = Vec::with_capacity(layout.width());
                layout.push_row(&values[item], &[], &format!("leads[{item}]"), &mut row)?;
                Ok(Rows::Features {
                    width: layout.width(),
                    values: row,
                })
            })
            .await?;
            let versions = scores.iter().map(|s| (s.version.version, s.arm)).collect();
            let predictions = scores
                .iter()
                .zip(&values)
                .map(|(score, lead)| {
                    let row = score.row(0);
                    let stage = row
                        .iter()
                        .enumerate()
                        .fold(0, |best, (i, p)| if *p > row[best] { i } else { best });
                    v1::StagePrediction {
                        model: Some(score.model_ref()),
                        lead_id: lead.id.clone(),
                        stage: stage as i32 + 1,
                        probabilities: row
                            .iter()
                            .enumerate()
                            .map(|(s, p)| v1::StageProbability {
                                stage: s as i32 + 1,
                                probability: f64::from(*p),
                            })
                            .collect(),
                        prediction_id: score.answer(
                            &self.served,
                            Inputs {
                                lead: Some(lead),
                                ..Inputs::default()
                            },
                            row,
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
            Ok((v1::ClassifyStageResponse { predictions }, versions))
        })
        .await
    }
}
