//! ONNX Runtime: finding the shared library, the process-wide environment,
//! and checking an ONNX graph against its kind's contract.
//!
//! `ort` is built with `load-dynamic`: the library is loaded at run time from
//! `ORT_DYLIB_PATH` (passed in by the binaries' flags) or else from the
//! project's `.ort/` folder, which `scripts/fetch-ort.sh` fills.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::error::{Error, Result};
use crate::kind::{
    DType, FEATURES_INPUT, InputContract, ModelKind, PROBABILITIES_OUTPUT, TEXT_INPUT,
};
use crate::manifest::{CheckedDraft, TensorSpec};

/// File name of the ONNX Runtime library the project pins.
pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";
/// Folder, relative to the project root, where `scripts/fetch-ort.sh` puts it.
pub const ORT_FOLDER: &str = ".ort";

/// Largest absolute difference allowed between a golden example's stored
/// probabilities and the ones ONNX Runtime computes.
pub const GOLDEN_TOLERANCE: f32 = 1e-4;

/// Whether `got` reproduces a golden example's `expected` probabilities:
/// same length, every value within [`GOLDEN_TOLERANCE`], no NaN.
pub fn reproduces(got: &[f32], expected: &[f32]) -> bool {
    got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(a, b)| (a - b).abs() <= GOLDEN_TOLERANCE)
}

/// Finds the ONNX Runtime library: `explicit` (from `ORT_DYLIB_PATH`) when
/// given, else `.ort/` in the working directory or any of its ancestors, else
/// beside the running executable or its ancestors.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        return Err(Error::RuntimeUnavailable(format!(
            "ORT_DYLIB_PATH points to {}, which is not a file (unset it to use {ORT_FOLDER}/{ORT_LIBRARY} from scripts/fetch-ort.sh)",
            path.display()
        )));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots
        .iter()
        .map(|root| root.join(ORT_FOLDER).join(ORT_LIBRARY))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Error::RuntimeUnavailable(format!(
                "{ORT_LIBRARY} was found neither at ORT_DYLIB_PATH (unset) nor in a {ORT_FOLDER}/ folder \
                 of the working directory or its parents; run scripts/fetch-ort.sh or set ORT_DYLIB_PATH"
            ))
        })
}

static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first
/// use. ONNX Runtime allows one environment per process, so later calls
/// return the first one (and ignore `explicit`).
pub fn environment(explicit: Option<&Path>) -> Result<&'static Environment> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        let path = locate_library(explicit).map_err(|error| error.to_string())?;
        let builder = ort::init_from(&path)
            .map_err(|error| format!("cannot load {}: {error}", path.display()))?;
        builder
            .with_name("nurture")
            .build()
            .map_err(|error| format!("cannot create the ONNX Runtime environment: {error}"))
    });
    loaded
        .as_ref()
        .map_err(|message| Error::RuntimeUnavailable(message.clone()))
}

/// Builds a session for `bytes` with `intra_threads` threads per run.
pub fn session(environment: &Environment, bytes: &[u8], intra_threads: usize) -> Result<Session> {
    let session = Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|error| Error::Runtime(error.to_string()))?
        .with_intra_threads(intra_threads)
        .map_err(|error| Error::Runtime(error.to_string()))?
        .commit_from_memory(bytes)?;
    Ok(session)
}

/// Maps ONNX Runtime's element type to the contract's.
fn dtype_of(ty: &TensorElementType) -> DType {
    match ty {
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float64 => DType::Float64,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::String => DType::String,
        TensorElementType::Bool => DType::Bool,
        _ => DType::Other,
    }
}

fn spec_of(name: &str, value: &ValueType) -> TensorSpec {
    match value {
        ValueType::Tensor { ty, shape, .. } => TensorSpec {
            name: name.to_owned(),
            dtype: dtype_of(ty),
            shape: shape.to_vec(),
        },
        _ => TensorSpec {
            name: name.to_owned(),
            dtype: DType::Other,
            shape: Vec::new(),
        },
    }
}

/// The graph signature and contract check of one ONNX file.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    /// Graph inputs.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs.
    pub outputs: Vec<TensorSpec>,
}

/// Loads `bytes` in ONNX Runtime and checks them against the kind's contract
/// and the draft: input name, dtype and shape; `probabilities` output dtype
/// and shape; a probe run on a batch of two whose output must be finite
/// probabilities summing to 1; and every golden example reproduced within
/// [`GOLDEN_TOLERANCE`].
pub fn check_contract(
    environment: &Environment,
    bytes: &[u8],
    draft: &CheckedDraft,
) -> Result<Signature> {
    let kind = draft.kind;
    let mut session = session(environment, bytes, 1)
        .map_err(|error| Error::contract(kind, format!("ONNX Runtime cannot load it: {error}")))?;
    let signature = Signature {
        inputs: session
            .inputs()
            .iter()
            .map(|o| spec_of(o.name(), o.dtype()))
            .collect(),
        outputs: session
            .outputs()
            .iter()
            .map(|o| spec_of(o.name(), o.dtype()))
            .collect(),
    };
    if kind == ModelKind::Generic {
        for (role, specs) in [("input", &signature.inputs), ("output", &signature.outputs)] {
            if let Some(spec) = specs.iter().find(|spec| spec.dtype == DType::Other) {
                return Err(Error::contract(
                    kind,
                    format!(
                        "{role} {:?} is not a tensor of a supported type (float32/64, int32/64, bool, string); \
                         for scikit-learn classifiers export with options {{'zipmap': False}}",
                        spec.name
                    ),
                ));
            }
        }
        if signature.inputs.is_empty() || signature.outputs.is_empty() {
            return Err(Error::contract(
                kind,
                "the graph needs at least one input and one output",
            ));
        }
        return Ok(signature);
    }
    check_signature(kind, &signature, draft.features.len(), draft.labels.len())?;

    // Probe: two rows of plausible input.
    let probe = match kind.input() {
        InputContract::Features => {
            let width = draft.features.len();
            let row: Vec<f32> = draft
                .features
                .iter()
                .map(|name| draft.draft.feature_means.get(name).copied().unwrap_or(0.0) as f32)
                .collect();
            ProbeInput::Features(vec![row.clone(), vec![0.0; width]])
        }
        InputContract::Text => ProbeInput::Text(vec![
            "I'd love to see the house on Saturday".to_owned(),
            String::new(),
        ]),
        InputContract::Any => unreachable!("generic models return before the probe"),
    };
    let rows = run_probabilities(&mut session, kind, &signature, &probe)?;
    for (row_index, row) in rows.iter().enumerate() {
        check_distribution(kind, &format!("probe row {row_index}"), row)?;
    }

    for (index, golden) in draft.draft.golden.iter().enumerate() {
        let input = match (&golden.features, &golden.text) {
            (Some(features), _) => ProbeInput::Features(vec![features.clone()]),
            (None, Some(text)) => ProbeInput::Text(vec![text.clone()]),
            (None, None) => unreachable!("checked drafts carry an input per golden example"),
        };
        let got = run_probabilities(&mut session, kind, &signature, &input)?;
        if !reproduces(&got[0], &golden.probabilities) {
            return Err(Error::contract(
                kind,
                format!(
                    "golden example {index} is not reproduced: ONNX Runtime gives {:?}, the manifest says {:?}",
                    got[0], golden.probabilities
                ),
            ));
        }
    }
    Ok(signature)
}

/// Checks names, dtypes and static shapes.
pub fn check_signature(
    kind: ModelKind,
    signature: &Signature,
    features: usize,
    classes: usize,
) -> Result<()> {
    let [input] = signature.inputs.as_slice() else {
        return Err(Error::contract(
            kind,
            format!(
                "expected exactly one input, found {} ({})",
                signature.inputs.len(),
                signature
                    .inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    match kind.input() {
        InputContract::Features => {
            if input.name != FEATURES_INPUT {
                return Err(Error::contract(
                    kind,
                    format!(
                        "input is named {:?}, expected {FEATURES_INPUT:?}",
                        input.name
                    ),
                ));
            }
            if input.dtype != DType::Float32 {
                return Err(Error::contract(
                    kind,
                    format!(
                        "input {FEATURES_INPUT:?} is {}, expected float32",
                        input.dtype
                    ),
                ));
            }
            let width_ok =
                matches!(input.shape.as_slice(), [_, w] if *w == -1 || *w == features as i64);
            if !width_ok {
                return Err(Error::contract(
                    kind,
                    format!(
                        "input {FEATURES_INPUT:?} has shape {:?}, expected [batch, {features}] for the manifest's {features} features",
                        input.shape
                    ),
                ));
            }
        }
        InputContract::Text => {
            if input.name != TEXT_INPUT {
                return Err(Error::contract(
                    kind,
                    format!("input is named {:?}, expected {TEXT_INPUT:?}", input.name),
                ));
            }
            if input.dtype != DType::String {
                return Err(Error::contract(
                    kind,
                    format!("input {TEXT_INPUT:?} is {}, expected string", input.dtype),
                ));
            }
            let shape_ok = matches!(input.shape.as_slice(), [_] | [_, -1 | 1]);
            if !shape_ok {
                return Err(Error::contract(
                    kind,
                    format!(
                        "input {TEXT_INPUT:?} has shape {:?}, expected [batch] or [batch, 1]",
                        input.shape
                    ),
                ));
            }
        }
        InputContract::Any => return Ok(()),
    }
    let Some(output) = signature
        .outputs
        .iter()
        .find(|o| o.name == PROBABILITIES_OUTPUT)
    else {
        return Err(Error::contract(
            kind,
            format!(
                "no output named {PROBABILITIES_OUTPUT:?} (outputs: {})",
                signature
                    .outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if output.dtype != DType::Float32 {
        return Err(Error::contract(
            kind,
            format!(
                "output {PROBABILITIES_OUTPUT:?} is {}, expected float32",
                output.dtype
            ),
        ));
    }
    let classes_ok = matches!(output.shape.as_slice(), [_, c] if *c == -1 || *c == classes as i64);
    if !classes_ok {
        return Err(Error::contract(
            kind,
            format!(
                "output {PROBABILITIES_OUTPUT:?} has shape {:?}, expected [batch, {classes}] ({} classes)",
                output.shape,
                kind.labels().join(", ")
            ),
        ));
    }
    Ok(())
}

enum ProbeInput {
    Features(Vec<Vec<f32>>),
    Text(Vec<String>),
}

/// Runs one batch and returns the `probabilities` rows, checking the shape.
fn run_probabilities(
    session: &mut Session,
    kind: ModelKind,
    signature: &Signature,
    input: &ProbeInput,
) -> Result<Vec<Vec<f32>>> {
    let batch = match input {
        ProbeInput::Features(rows) => rows.len(),
        ProbeInput::Text(texts) => texts.len(),
    };
    let run_error =
        |error: ort::Error| Error::contract(kind, format!("ONNX Runtime cannot run it: {error}"));
    let outputs = match input {
        ProbeInput::Features(rows) => {
            let width = rows.first().map_or(0, Vec::len);
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let tensor = Tensor::from_array(([batch, width], flat)).map_err(run_error)?;
            session
                .run(ort::inputs![FEATURES_INPUT => tensor])
                .map_err(run_error)?
        }
        ProbeInput::Text(texts) => {
            let rank2 = signature.inputs[0].shape.len() == 2;
            let shape: Vec<usize> = if rank2 { vec![batch, 1] } else { vec![batch] };
            let tensor = Tensor::from_string_array((shape, texts.as_slice())).map_err(run_error)?;
            session
                .run(ort::inputs![TEXT_INPUT => tensor])
                .map_err(run_error)?
        }
    };
    let value = outputs.get(PROBABILITIES_OUTPUT).ok_or_else(|| {
        Error::contract(
            kind,
            format!("the run produced no {PROBABILITIES_OUTPUT:?}"),
        )
    })?;
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(run_error)?;
    let classes = kind.labels().len();
    if shape.len() != 2 || shape[0] != batch as i64 || shape[1] != classes as i64 {
        return Err(Error::contract(
            kind,
            format!(
                "a batch of {batch} gave probabilities of shape {shape:?}, expected [{batch}, {classes}] \
                 ({classes} classes: {})",
                kind.labels().join(", ")
            ),
        ));
    }
    Ok(data.chunks(classes).map(<[f32]>::to_vec).collect())
}

fn check_distribution(kind: ModelKind, what: &str, row: &[f32]) -> Result<()> {
    let valid = row
        .iter()
        .all(|p| p.is_finite() && (-1e-6..=1.0 + 1e-6).contains(p));
    let sum: f32 = row.iter().sum();
    if !valid || (sum - 1.0).abs() > 1e-3 {
        return Err(Error::contract(
            kind,
            format!("{what}: {PROBABILITIES_OUTPUT:?} is not a probability distribution: {row:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn signature_checks_name_dtype_and_width() {
        let good = Signature {
            inputs: vec![spec("features", DType::Float32, &[-1, 3])],
            outputs: vec![
                spec("label", DType::Int64, &[-1]),
                spec("probabilities", DType::Float32, &[-1, 2]),
            ],
        };
        check_signature(ModelKind::Churn, &good, 3, 2).unwrap();
        let error = check_signature(ModelKind::Churn, &good, 4, 2)
            .unwrap_err()
            .to_string();
        assert!(error.contains("[batch, 4]"), "{error}");
        let error = check_signature(ModelKind::Journey, &good, 3, 5)
            .unwrap_err()
            .to_string();
        assert!(error.contains("[batch, 5]"), "{error}");

        let mut renamed = good.clone();
        renamed.inputs[0].name = "input".into();
        assert!(
            check_signature(ModelKind::Churn, &renamed, 3, 2)
                .unwrap_err()
                .to_string()
                .contains("\"input\"")
        );
        let mut doubles = good.clone();
        doubles.inputs[0].dtype = DType::Float64;
        assert!(
            check_signature(ModelKind::Churn, &doubles, 3, 2)
                .unwrap_err()
                .to_string()
                .contains("float64")
        );
    }

    #[test]
    fn text_inputs_may_be_rank_one_or_two() {
        let outputs = vec![spec("probabilities", DType::Float32, &[-1, 10])];
        for shape in [&[-1][..], &[-1, 1][..]] {
            let signature = Signature {
                inputs: vec![spec("text", DType::String, shape)],
                outputs: outputs.clone(),
            };
            check_signature(ModelKind::Emotion, &signature, 0, 10).unwrap();
        }
        let wide = Signature {
            inputs: vec![spec("text", DType::String, &[-1, 3])],
            outputs,
        };
        assert!(check_signature(ModelKind::Emotion, &wide, 0, 10).is_err());
    }

    #[test]
    fn missing_library_error_names_both_places() {
        let error = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ORT_DYLIB_PATH") && error.contains(".ort/"),
            "{error}"
        );
    }
}
