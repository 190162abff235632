//! The seam under a batcher worker: something that runs the rows of one or
//! more requests as one call. [`OrtRunner`] is ONNX Runtime; tests put a
//! fake here to drive carry, linger, shedding and error fan-out without a
//! model.

use nurture_models::kind::{FEATURES_INPUT, PROBABILITIES_OUTPUT, TEXT_INPUT};
use ort::session::Session;
use ort::value::Tensor;

use super::Rows;
use super::tensor::{self, NamedTensor};
use crate::error::ServeError;

/// What one request's rows produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Row-major class probabilities of a typed model, `rows × classes`.
    Probabilities(Vec<f32>),
    /// Every output tensor of a generic model.
    Tensors(Vec<NamedTensor>),
}

/// Runs batches. Each worker thread owns one, so `run` may take `&mut self`
/// (ONNX Runtime's `Run` is not safe to call concurrently on one session).
pub trait Runner: Send + 'static {
    /// Runs the rows of `requests` as one call and returns each request's
    /// output, in order. Every request in one call has the same row kind and
    /// batch key. A lone request's rows may be moved out (they are not
    /// needed again); with several, the rows must stay intact, because a
    /// failed call is re-run in parts to find the request that caused it.
    fn run(&mut self, requests: &mut [Rows]) -> Result<Vec<Output>, ServeError>;
}

/// ONNX Runtime behind the seam: one session, the kind's classes and the
/// rank of a text input.
#[derive(Debug)]
pub struct OrtRunner {
    /// The session this worker owns.
    pub session: Session,
    /// Classes a typed model scores (columns of its probabilities).
    pub classes: usize,
    /// Rank of a text model's input: 1 for `[batch]`, 2 for `[batch, 1]`.
    pub text_rank: usize,
}

fn failed(error: ort::Error) -> ServeError {
    ServeError::Inference(error.to_string())
}

fn bug(what: &str) -> ServeError {
    ServeError::Inference(format!("{what} in one batch; this is a bug"))
}

impl Runner for OrtRunner {
    fn run(&mut self, requests: &mut [Rows]) -> Result<Vec<Output>, ServeError> {
        let counts: Vec<usize> = requests.iter().map(Rows::len).collect();
        let rows: usize = counts.iter().sum();
        let outputs = match requests.first() {
            None => return Ok(Vec::new()),
            Some(Rows::Tensors { .. }) => {
                let inputs: Vec<&[NamedTensor]> = requests
                    .iter()
                    .map(|request| match request {
                        Rows::Tensors { tensors, .. } => Ok(tensors.as_slice()),
                        _ => Err(bug("mixed row kinds")),
                    })
                    .collect::<Result<_, _>>()?;
                let merged = tensor::concat(&inputs)?;
                let outputs = tensor::run(&mut self.session, merged)?;
                return Ok(tensor::split(outputs, &counts)?
                    .into_iter()
                    .map(Output::Tensors)
                    .collect());
            }
            Some(Rows::Features { width, .. }) => {
                let width = *width;
                let values = if let [Rows::Features { values, .. }] = requests {
                    std::mem::take(values)
                } else {
                    let mut values = Vec::with_capacity(rows * width);
                    for request in requests.iter() {
                        match request {
                            Rows::Features {
                                values: v,
                                width: w,
                            } if *w == width => values.extend_from_slice(v),
                            _ => return Err(bug("mixed row shapes")),
                        }
                    }
                    values
                };
                let tensor = Tensor::from_array(([rows, width], values)).map_err(failed)?;
                self.session
                    .run(ort::inputs![FEATURES_INPUT => tensor])
                    .map_err(failed)?
            }
            Some(Rows::Texts(_)) => {
                let mut texts: Vec<String> = Vec::with_capacity(rows);
                for request in requests.iter() {
                    match request {
                        Rows::Texts(t) => texts.extend(t.iter().cloned()),
                        Rows::Features { .. } | Rows::Tensors { .. } => {
                            return Err(bug("mixed row kinds"));
                        }
                    }
                }
                let shape: Vec<usize> = if self.text_rank == 2 {
                    vec![rows, 1]
                } else {
                    vec![rows]
                };
                let tensor =
                    Tensor::from_string_array((shape, texts.as_slice())).map_err(failed)?;
                self.session
                    .run(ort::inputs![TEXT_INPUT => tensor])
                    .map_err(failed)?
            }
        };
        let classes = self.classes;
        let (shape, data) = outputs[PROBABILITIES_OUTPUT]
            .try_extract_tensor::<f32>()
            .map_err(failed)?;
        if shape.len() != 2 || shape[0] as usize != rows || shape[1] as usize != classes {
            return Err(ServeError::Inference(format!(
                "model returned shape {shape:?}, expected [{rows}, {classes}]"
            )));
        }
        let mut offset = 0;
        Ok(counts
            .into_iter()
            .map(|count| {
                let end = offset + count * classes;
                let part = data[offset..end].to_vec();
                offset = end;
                Output::Probabilities(part)
            })
            .collect())
    }
}
