//! `EmotionService`: distribution over the ten states, dominant state and
//! sentiment.

use std::sync::Arc;

use nurture_proto::v1::{self, emotion_service_server::EmotionService};
use tonic::{Request, Response, Status};

use super::{Limits, instrumented, score_items};
use crate::batcher::Rows;
use crate::deployment::Slot;
use crate::edge;
use crate::error::ServeError;
use crate::feedback::{Inputs, Served};

/// States counted as positive in the sentiment score.
const POSITIVE: [usize; 4] = [0, 3, 4, 7]; // excited, confident, hopeful, satisfied
/// States counted as negative.
const NEGATIVE: [usize; 5] = [1, 2, 5, 6, 8]; // anxious, frustrated, confused, disappointed, overwhelmed

/// The emotion service.
#[derive(Debug, Clone)]
pub struct Emotion {
    /// The emotion model's slot.
    pub slot: Arc<Slot>,
    /// Limits.
    pub limits: Limits,
    /// Prediction ids and the prediction log.
    pub served: Arc<Served>,
}

/// Sentiment in [-1, 1]: positive mass minus negative mass.
pub fn sentiment(probabilities: &[f32]) -> f64 {
    let sum = |states: &[usize]| {
        states
            .iter()
            .map(|s| f64::from(probabilities[*s]))
            .sum::<f64>()
    };
    (sum(&POSITIVE) - sum(&NEGATIVE)).clamp(-1.0, 1.0)
}

#[tonic::async_trait]
impl EmotionService for Emotion {
    async fn analyze_emotion(
        &self,
        request: Request<v1::AnalyzeEmotionRequest>,
    ) -> Result<Response<v1::AnalyzeEmotionResponse>, Status> {
        let deadline = edge::deadline(&request);
        let v1::AnalyzeEmotionRequest { inputs, version } = request.into_inner();
        instrumented("AnalyzeEmotion", &self.slot.name, deadline, async move {
            edge::check_batch(inputs.len(), self.limits.max_items, "inputs")?;
            for (index, input) in inputs.iter().enumerate() {
                let v1::EmotionInput { text, lead_id } = input;
                if text.trim().is_empty() {
                    return Err(ServeError::InvalidArgument(format!(
                        "invalid inputs[{index}].text: must not be empty"
                    )));
                }
                if text.contains('\0') {
                    return Err(ServeError::InvalidArgument(format!(
                        "invalid inputs[{index}].text: contains a NUL byte, which the text model cannot take"
                    )));
                }
                if text.len() > self.limits.max_text_bytes {
                    return Err(ServeError::InvalidArgument(format!(
                        "invalid inputs[{index}].text: is {} bytes, at most {}",
                        text.len(),
                        self.limits.max_text_bytes
                    )));
                }
                edge::check_lead_id(lead_id, &format!("inputs[{index}].lead_id"))?;
            }
            let ids: Vec<&str> = inputs.iter().map(|i| i.lead_id.as_str()).collect();
            let scores = score_items(&self.slot, &ids, version, deadline, |_, item| {
                Ok(Rows::Texts(vec![inputs[item].text.clone()]))
            })
            .await?;
            let versions = scores.iter().map(|s| (s.version.version, s.arm)).collect();
            let results = scores
                .iter()
                .zip(&inputs)
                .map(|(score, input)| {
                    let row = score.row(0);
                    let dominant = row
                        .iter()
                        .enumerate()
                        .fold(0, |best, (i, p)| if *p > row[best] { i } else { best });
                    v1::EmotionResult {
                        model: Some(score.model_ref()),
                        scores: row
                            .iter()
                            .enumerate()
                            .map(|(state, p)| v1::EmotionScore {
                                state: state as i32 + 1,
                                probability: f64::from(*p),
                            })
                            .collect(),
                        dominant: dominant as i32 + 1,
                        sentiment: sentiment(row),
                        prediction_id: score.answer(
                            &self.served,
                            Inputs {
                                text: Some(&input.text),
                                lead_id: Some(&input.lead_id),
                                ..Inputs::default()
                            },
                            row,
                        ),
                    }
                })
                .collect();
            Ok((v1::AnalyzeEmotionResponse { results }, versions))
        })
        .await
    }
}
