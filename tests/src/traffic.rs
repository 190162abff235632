//! Churn traffic with true outcomes, as the feedback-loop tests send it:
//! predictions of labelled leads, and their outcomes reported back.

use nurture_proto::v1::churn_service_client::ChurnServiceClient;
use nurture_proto::v1::feedback_service_client::FeedbackServiceClient;
use nurture_proto::v1::{self, outcome_report::Label};
use std::time::Duration;

use tonic::transport::Channel;

use crate::eventually;

/// Predicts `leads` and reports each true outcome: the versions that
/// answered, in lead order.
pub async fn serve_and_report(channel: &Channel, leads: &[(v1::LeadProfile, String)]) -> Vec<u64> {
    serve_here_report_there(channel, channel, leads).await
}

/// Predicts `leads` on one replica and reports their outcomes to another.
pub async fn serve_here_report_there(
    serve: &Channel,
    report: &Channel,
    leads: &[(v1::LeadProfile, String)],
) -> Vec<u64> {
    let predictions = predict(serve, leads).await;
    report_outcomes(report, &true_outcomes(&predictions, leads)).await;
    predictions
        .iter()
        .map(|p| p.model.as_ref().unwrap().version)
        .collect()
}

/// Churn predictions of `leads`, 100 per request, in lead order.
pub async fn predict(
    channel: &Channel,
    leads: &[(v1::LeadProfile, String)],
) -> Vec<v1::ChurnPrediction> {
    let mut churn = ChurnServiceClient::new(channel.clone());
    let mut predictions = Vec::new();
    for chunk in leads.chunks(100) {
        let response = churn
            .predict_churn(v1::PredictChurnRequest {
                leads: chunk.iter().map(|(lead, _)| lead.clone()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        predictions.extend(response.predictions);
    }
    predictions
}

/// The true outcome of each prediction, from its lead's label.
pub fn true_outcomes(
    predictions: &[v1::ChurnPrediction],
    leads: &[(v1::LeadProfile, String)],
) -> Vec<v1::OutcomeReport> {
    predictions
        .iter()
        .zip(leads)
        .map(|(prediction, (lead, label))| v1::OutcomeReport {
            prediction_id: prediction.prediction_id.clone(),
            // Outcomes are keyed by prediction id and outcome id together.
            outcome_id: format!("observed-{}", lead.lead_id),
            label: Some(Label::Churned(label == "1")),
            ..Default::default()
        })
        .collect()
}

/// Reports `outcomes`, 100 per request.
pub async fn report_outcomes(channel: &Channel, outcomes: &[v1::OutcomeReport]) {
    let mut feedback = FeedbackServiceClient::new(channel.clone());
    for chunk in outcomes.chunks(100) {
        feedback
            .record_outcomes(v1::RecordOutcomesRequest {
                outcomes: chunk.to_vec(),
            })
            .await
            .unwrap();
    }
}

/// Waits until churn answers with prediction ids and `version` answers
/// some of the first 50 leads.
pub async fn serving(channel: &Channel, leads: &[(v1::LeadProfile, String)], version: u64) {
    let mut churn = ChurnServiceClient::new(channel.clone());
    eventually("the version serves", Duration::from_secs(60), async || {
        churn
            .predict_churn(v1::PredictChurnRequest {
                leads: leads
                    .iter()
                    .take(50)
                    .map(|(lead, _)| lead.clone())
                    .collect(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| {
                r.into_inner().predictions.iter().any(|p| {
                    !p.prediction_id.is_empty() && p.model.as_ref().unwrap().version == version
                })
            })
    })
    .await;
}
