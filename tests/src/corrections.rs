//! The realistic lead messages of `benches/corrections/messages.csv`
//! (written for Nurture, never in any training set): reading them,
//! analysing them on a server, correcting the answers as an agent would,
//! and scoring an emotion model on them.

use std::path::Path;

use anyhow::{Context, bail};
use nurture_models::kind::{EMOTION_LABELS, PROBABILITIES_OUTPUT, TEXT_INPUT};
use nurture_models::runtime;
use nurture_proto::v1;
use nurture_proto::v1::emotion_service_client::EmotionServiceClient;

/// The file, from the project root.
pub const MESSAGES: &str = "benches/corrections/messages.csv";

/// One message and its true state (index into `EMOTION_LABELS`).
#[derive(Debug, Clone)]
pub struct Message {
    /// Its id (used as the lead id).
    pub id: String,
    /// The text.
    pub text: String,
    /// The true state.
    pub label: usize,
}

/// The messages of `path`: (pool, held apart), by their `set` column.
pub fn read(path: &Path) -> anyhow::Result<(Vec<Message>, Vec<Message>)> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader.headers()?.clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no {name} column", path.display()))
    };
    let (id, text, emotion, set) = (
        column("lead_id")?,
        column("text")?,
        column("emotion")?,
        column("set")?,
    );
    let (mut pool, mut heldout) = (Vec::new(), Vec::new());
    for (line, row) in reader.records().enumerate() {
        let row = row?;
        let label = EMOTION_LABELS
            .iter()
            .position(|l| *l == &row[emotion])
            .with_context(|| format!("line {}: unknown emotion {:?}", line + 2, &row[emotion]))?;
        let message = Message {
            id: row[id].to_owned(),
            text: row[text].to_owned(),
            label,
        };
        match &row[set] {
            "pool" => pool.push(message),
            "heldout" => heldout.push(message),
            other => bail!("line {}: set {other:?}; use pool or heldout", line + 2),
        }
    }
    Ok((pool, heldout))
}

/// Share of `messages` whose most probable state is their label.
pub fn accuracy(probabilities: &[Vec<f32>], messages: &[Message]) -> f64 {
    let right = probabilities
        .iter()
        .zip(messages)
        .filter(|(p, m)| {
            let best = p
                .iter()
                .enumerate()
                .fold(0, |best, (i, v)| if *v > p[best] { i } else { best });
            best == m.label
        })
        .count();
    right as f64 / messages.len() as f64
}

/// Probabilities (label order) of an emotion ONNX model on `messages`.
pub fn score_onnx(path: &Path, messages: &[Message]) -> anyhow::Result<Vec<Vec<f32>>> {
    let environment = runtime::environment(None)?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut session = runtime::session(environment, &bytes, 1)?;
    let texts: Vec<String> = messages.iter().map(|m| m.text.clone()).collect();
    let tensor = ort::value::Tensor::from_string_array(([texts.len()], &texts[..]))?;
    let outputs = session.run(ort::inputs![TEXT_INPUT => tensor])?;
    let (_, values) = outputs[PROBABILITIES_OUTPUT].try_extract_tensor::<f32>()?;
    Ok(values
        .chunks(EMOTION_LABELS.len())
        .map(<[f32]>::to_vec)
        .collect())
}

/// Analyses `messages` on the server: each answer's prediction id and
/// probabilities (in label order).
pub async fn analyse(
    client: &mut EmotionServiceClient<tonic::transport::Channel>,
    messages: &[Message],
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let mut out = Vec::new();
    for chunk in messages.chunks(50) {
        let response = client
            .analyze_emotion(v1::AnalyzeEmotionRequest {
                inputs: chunk
                    .iter()
                    .map(|m| v1::EmotionInput {
                        text: m.text.clone(),
                        lead_id: m.id.clone(),
                    })
                    .collect(),
                version: 0,
            })
            .await?
            .into_inner();
        for result in response.results {
            let mut probabilities = vec![0.0; EMOTION_LABELS.len()];
            for score in &result.scores {
                probabilities[(score.state - 1) as usize] = score.probability as f32;
            }
            out.push((result.prediction_id, probabilities));
        }
    }
    Ok(out)
}

/// Each answer corrected with its message's true state (outcome ids
/// prefixed by `tag`).
pub fn corrections(
    answers: &[(String, Vec<f32>)],
    messages: &[Message],
    tag: &str,
) -> Vec<v1::OutcomeReport> {
    answers
        .iter()
        .zip(messages)
        .map(|((id, _), message)| v1::OutcomeReport {
            prediction_id: id.clone(),
            outcome_id: format!("correction-{tag}-{}", message.id),
            label: Some(v1::outcome_report::Label::Emotion(message.label as i32 + 1)),
            ..Default::default()
        })
        .collect()
}
