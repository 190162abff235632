//! The Open Inference Protocol (KServe v2) over gRPC:
//! `inference.GRPCInferenceService`. Every typed model and every generic
//! model is reachable by name; requests from many clients share the same
//! dynamic batchers as the typed RPCs.
//!
//! Typed models take their contract's input (`features` FP32 `[N, F]` or
//! `text` BYTES `[N]`) and answer `probabilities` FP32 `[N, C]`; generic
//! models take and answer whatever their graph declares.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use nurture_models::kind::{FEATURES_INPUT, InputContract, PROBABILITIES_OUTPUT, TEXT_INPUT};
use nurture_models::manifest::TensorSpec;
use nurture_models::{DType, ModelKind};
use nurture_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use nurture_proto::inference::model_infer_request::InferInputTensor;
use nurture_proto::inference::model_infer_response::InferOutputTensor;
use nurture_proto::inference::model_metadata_response::TensorMetadata;
use nurture_proto::inference::{self as kserve, InferTensorContents};
use tonic::{Request, Response, Status};

use super::{Limits, instrumented, prediction_of};
use crate::batcher::Rows;
use crate::batcher::tensor::{NamedTensor, TensorData};
use crate::deployment::Slot;
use crate::edge;
use crate::error::ServeError;
use crate::feedback::Inputs;
use crate::model::LoadedVersion;
use crate::shadow::{Mirror, MirrorInputs};

/// Most elements one input tensor may hold.
pub const MAX_ELEMENTS: usize = 16 * 1024 * 1024;

/// Generic models discovered in the registry, by name.
pub type GenericSlots = Arc<RwLock<BTreeMap<String, Arc<Slot>>>>;

/// The typed models' slots followed by the generic ones found so far.
pub fn all_slots(typed: &[Arc<Slot>], generic: &GenericSlots) -> Vec<Arc<Slot>> {
    let mut slots = typed.to_vec();
    slots.extend(
        generic
            .read()
            .expect("generic slots lock")
            .values()
            .cloned(),
    );
    slots
}

/// The inference service.
#[derive(Debug, Clone)]
pub struct Inference {
    /// Slots of the typed kinds.
    pub typed: Vec<Arc<Slot>>,
    /// Slots of generic models.
    pub generic: GenericSlots,
    /// Limits.
    pub limits: Limits,
    /// Prediction ids and the prediction log, for answers of typed models.
    pub served: Arc<crate::feedback::Served>,
}

fn invalid(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> ServeError {
    ServeError::InvalidArgument(format!("invalid {field}: {reason}"))
}

/// The protocol's name of an element type.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::Float32 => "FP32",
        DType::Float64 => "FP64",
        DType::Int64 => "INT64",
        DType::Int32 => "INT32",
        DType::Bool => "BOOL",
        DType::String => "BYTES",
        DType::Other => "UNSUPPORTED",
    }
}

fn element_size(dtype: DType) -> Option<usize> {
    match dtype {
        DType::Float32 | DType::Int32 => Some(4),
        DType::Float64 | DType::Int64 => Some(8),
        DType::Bool => Some(1),
        DType::String | DType::Other => None,
    }
}

impl Inference {
    fn slot(&self, name: &str) -> Result<Arc<Slot>, ServeError> {
        if let Some(slot) = self.typed.iter().find(|slot| slot.name == name) {
            return Ok(slot.clone());
        }
        self.generic
            .read()
            .expect("generic slots lock")
            .get(name)
            .cloned()
            .ok_or_else(|| ServeError::NotFound(format!("model {name:?} is not served here")))
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        all_slots(&self.typed, &self.generic)
    }

    /// Feature names of a tabular version's input columns and its labels
    /// (the version a metadata request for `name`/`version` describes).
    pub fn column_names(&self, name: &str, version: &str) -> Option<(Vec<String>, Vec<String>)> {
        let slot = self.slot(name).ok()?;
        let pin = parse_version(version).ok()?;
        let deployment = slot.deployment.load();
        let (chosen, _) = slot.route(&deployment, "", pin).ok()?;
        Some((
            chosen.manifest.features.clone(),
            chosen.manifest.labels.clone(),
        ))
    }

    /// The repository index of the protocol's model-repository extension:
    /// every loaded version of every model, and models with none.
    pub fn repository_index(&self) -> serde_json::Value {
        let mut index = Vec::new();
        for slot in self.all_slots() {
            let deployment = slot.deployment.load();
            let loaded = deployment.loaded();
            if loaded.is_empty() {
                index.push(serde_json::json!({
                    "name": slot.name, "state": "UNAVAILABLE", "reason": "no version loaded",
                }));
            }
            for version in loaded {
                index.push(serde_json::json!({
                    "name": slot.name, "version": version.version.to_string(), "state": "READY",
                }));
            }
        }
        serde_json::Value::Array(index)
    }

    /// Per-version statistics (the protocol's statistics extension, as
    /// Triton reports them) of `model` (every model when `None`), or of one
    /// `version`: calls since the version was loaded here.
    pub fn statistics(
        &self,
        model: Option<&str>,
        version: &str,
    ) -> Result<Vec<serde_json::Value>, Status> {
        let pin = parse_version(version)?;
        let slots = match model {
            Some(name) => vec![self.slot(name)?],
            None => self.all_slots(),
        };
        let mut stats = Vec::new();
        for slot in slots {
            let deployment = slot.deployment.load();
            for loaded in deployment.loaded() {
                if pin != 0 && loaded.version != pin {
                    continue;
                }
                let totals = loaded.operations.totals();
                let duration =
                    |count: u64, nanos: u64| serde_json::json!({ "count": count, "ns": nanos });
                stats.push(serde_json::json!({
                    "name": slot.name,
                    "version": loaded.version.to_string(),
                    "last_inference": totals.last_unix_ms,
                    "inference_count": totals.calls,
                    "execution_count": totals.calls,
                    "inference_stats": {
                        "success": duration(totals.calls - totals.failures, totals.success_nanos),
                        "fail": duration(totals.failures, totals.failure_nanos),
                        "queue": duration(0, 0),
                        "compute_input": duration(0, 0),
                        "compute_infer": duration(totals.calls - totals.failures, totals.success_nanos),
                        "compute_output": duration(0, 0),
                    },
                    "batch_stats": [],
                }));
            }
        }
        Ok(stats)
    }
}

fn parse_version(version: &str) -> Result<u64, ServeError> {
    if version.is_empty() {
        return Ok(0);
    }
    version
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            invalid(
                "model_version",
                format!("{version:?} is not a version number"),
            )
        })
}

/// The inputs and outputs a client sees for a version.
fn signature(version: &LoadedVersion) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let manifest = &version.manifest;
    match manifest.kind {
        ModelKind::Generic => (manifest.inputs.clone(), manifest.outputs.clone()),
        _ => (
            manifest.inputs.clone(),
            manifest
                .outputs
                .iter()
                .filter(|o| o.name == PROBABILITIES_OUTPUT)
                .cloned()
                .collect(),
        ),
    }
}

fn metadata(spec: &TensorSpec) -> TensorMetadata {
    TensorMetadata {
        name: spec.name.clone(),
        datatype: datatype(spec.dtype).to_owned(),
        shape: spec.shape.clone(),
    }
}

/// Decodes one input tensor (typed or raw contents), checking it against
/// the model's declaration.
fn decode(
    index: usize,
    input: &InferInputTensor,
    raw: Option<&[u8]>,
    spec: &TensorSpec,
) -> Result<NamedTensor, ServeError> {
    let field = format!("inputs[{index}]");
    let expected = datatype(spec.dtype);
    if input.datatype != expected {
        return Err(invalid(
            format!("{field}.datatype"),
            format!(
                "input {:?} is {expected}, got {:?}",
                spec.name, input.datatype
            ),
        ));
    }
    if input.shape.len() != spec.shape.len() {
        return Err(invalid(
            format!("{field}.shape"),
            format!(
                "input {:?} has rank {}, got {:?}",
                spec.name,
                spec.shape.len(),
                input.shape
            ),
        ));
    }
    let mut count: usize = 1;
    let mut shape = Vec::with_capacity(input.shape.len());
    for (axis, (dim, declared)) in input.shape.iter().zip(&spec.shape).enumerate() {
        if *dim < 0 {
            return Err(invalid(
                format!("{field}.shape[{axis}]"),
                format!("{dim} is negative"),
            ));
        }
        if *declared >= 0 && *dim != *declared {
            return Err(invalid(
                format!("{field}.shape[{axis}]"),
                format!("input {:?} needs {declared}, got {dim}", spec.name),
            ));
        }
        let dim = usize::try_from(*dim)
            .map_err(|_| invalid(format!("{field}.shape[{axis}]"), "too large"))?;
        count = count
            .checked_mul(dim)
            .filter(|c| *c <= MAX_ELEMENTS)
            .ok_or_else(|| {
                invalid(
                    format!("{field}.shape"),
                    format!("{:?} holds more than {MAX_ELEMENTS} elements", input.shape),
                )
            })?;
        shape.push(dim);
    }
    let data = match raw {
        Some(bytes) => decode_raw(&field, spec.dtype, bytes, count)?,
        None => decode_typed(&field, spec.dtype, input.contents.as_ref(), count)?,
    };
    Ok(NamedTensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

fn decode_raw(
    field: &str,
    dtype: DType,
    bytes: &[u8],
    count: usize,
) -> Result<TensorData, ServeError> {
    let raw_field = format!("raw_input_contents for {field}");
    if let Some(size) = element_size(dtype) {
        let expected = count * size;
        if bytes.len() != expected {
            return Err(invalid(
                raw_field,
                format!("{} bytes, the shape needs {expected}", bytes.len()),
            ));
        }
    }
    Ok(match dtype {
        DType::Float32 => TensorData::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        DType::Float64 => TensorData::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        DType::Int32 => TensorData::I32(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        DType::Int64 => TensorData::I64(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        DType::Bool => TensorData::Bool(bytes.iter().map(|b| *b != 0).collect()),
        DType::String => {
            let mut strings = Vec::with_capacity(count.min(1 << 16));
            let mut rest = bytes;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(invalid(&raw_field, "a BYTES element is cut short"));
                }
                let length = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                rest = &rest[4..];
                if rest.len() < length {
                    return Err(invalid(
                        &raw_field,
                        "a BYTES element is longer than the buffer",
                    ));
                }
                let text = std::str::from_utf8(&rest[..length])
                    .map_err(|_| invalid(&raw_field, "BYTES elements must be UTF-8"))?;
                check_text(&raw_field, strings.len(), text)?;
                strings.push(text.to_owned());
                rest = &rest[length..];
            }
            if strings.len() != count {
                return Err(invalid(
                    raw_field,
                    format!("{} BYTES elements, the shape needs {count}", strings.len()),
                ));
            }
            TensorData::Str(strings)
        }
        DType::Other => return Err(invalid(field, "unsupported datatype")),
    })
}

/// ONNX Runtime passes strings to C: a NUL byte would fail the whole batch
/// the request joins, so it is refused here, naming the element.
fn check_text(field: &str, element: usize, text: &str) -> Result<(), ServeError> {
    if text.contains('\0') {
        return Err(invalid(
            field,
            format!("BYTES element {element} contains a NUL byte"),
        ));
    }
    Ok(())
}

fn decode_typed(
    field: &str,
    dtype: DType,
    contents: Option<&InferTensorContents>,
    count: usize,
) -> Result<TensorData, ServeError> {
    let empty = InferTensorContents::default();
    let contents = contents.unwrap_or(&empty);
    let contents_field = format!("{field}.contents");
    let check = |len: usize| {
        if len == count {
            Ok(())
        } else {
            Err(invalid(
                &contents_field,
                format!("{len} values, the shape needs {count}"),
            ))
        }
    };
    Ok(match dtype {
        DType::Float32 => {
            check(contents.fp32_contents.len())?;
            TensorData::F32(contents.fp32_contents.clone())
        }
        DType::Float64 => {
            check(contents.fp64_contents.len())?;
            TensorData::F64(contents.fp64_contents.clone())
        }
        DType::Int32 => {
            check(contents.int_contents.len())?;
            TensorData::I32(contents.int_contents.clone())
        }
        DType::Int64 => {
            check(contents.int64_contents.len())?;
            TensorData::I64(contents.int64_contents.clone())
        }
        DType::Bool => {
            check(contents.bool_contents.len())?;
            TensorData::Bool(contents.bool_contents.clone())
        }
        DType::String => {
            check(contents.bytes_contents.len())?;
            let strings = contents
                .bytes_contents
                .iter()
                .enumerate()
                .map(|(element, b)| {
                    let text = String::from_utf8(b.clone())
                        .map_err(|_| invalid(&contents_field, "BYTES elements must be UTF-8"))?;
                    check_text(&contents_field, element, &text)?;
                    Ok(text)
                })
                .collect::<Result<_, ServeError>>()?;
            TensorData::Str(strings)
        }
        DType::Other => return Err(invalid(field, "unsupported datatype")),
    })
}

fn encode(tensor: &NamedTensor, raw: bool) -> (InferOutputTensor, Option<Vec<u8>>) {
    let datatype = match &tensor.data {
        TensorData::F32(_) => "FP32",
        TensorData::F64(_) => "FP64",
        TensorData::I32(_) => "INT32",
        TensorData::I64(_) => "INT64",
        TensorData::Bool(_) => "BOOL",
        TensorData::Str(_) => "BYTES",
    };
    // Only the representation the caller used is built.
    let (contents, bytes) = if raw {
        let bytes: Vec<u8> = match &tensor.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
            TensorData::Str(v) => v
                .iter()
                .flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes()))
                .collect(),
        };
        (None, Some(bytes))
    } else {
        let contents = match &tensor.data {
            TensorData::F32(v) => InferTensorContents {
                fp32_contents: v.clone(),
                ..Default::default()
            },
            TensorData::F64(v) => InferTensorContents {
                fp64_contents: v.clone(),
                ..Default::default()
            },
            TensorData::I32(v) => InferTensorContents {
                int_contents: v.clone(),
                ..Default::default()
            },
            TensorData::I64(v) => InferTensorContents {
                int64_contents: v.clone(),
                ..Default::default()
            },
            TensorData::Bool(v) => InferTensorContents {
                bool_contents: v.clone(),
                ..Default::default()
            },
            TensorData::Str(v) => InferTensorContents {
                bytes_contents: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
                ..Default::default()
            },
        };
        (Some(contents), None)
    };
    let output = InferOutputTensor {
        name: tensor.name.clone(),
        datatype: datatype.to_owned(),
        shape: tensor.shape.iter().map(|d| *d as i64).collect(),
        parameters: Default::default(),
        contents,
    };
    (output, bytes)
}

/// Checks every value of a typed model's feature tensor against its
/// column's range, as the typed RPCs check `LeadProfile` fields; the error
/// names the row and the column.
fn check_feature_ranges(
    kind: ModelKind,
    columns: &[String],
    values: &[f32],
) -> Result<(), ServeError> {
    if columns.is_empty() {
        return Ok(());
    }
    for (index, value) in values.iter().enumerate() {
        let (row, column) = (index / columns.len(), index % columns.len());
        let name = &columns[column];
        let Some(feature) = kind.feature(name) else {
            continue;
        };
        if !feature.unit.accepts(f64::from(*value)) {
            let (low, high) = feature.unit.range();
            let range = if high == f64::MAX {
                format!(">= {low}")
            } else {
                format!("in [{low}, {high}]")
            };
            return Err(invalid(
                format!("input {FEATURES_INPUT:?} row {row} column {name:?}"),
                format!("must be a finite number {range}, got {value}"),
            ));
        }
    }
    Ok(())
}

/// Rows for a typed model (`version`) from its single decoded input.
fn typed_rows(version: &LoadedVersion, tensor: NamedTensor) -> Result<Rows, ServeError> {
    let kind = version.kind();
    match (kind.input(), tensor.data) {
        (InputContract::Features, TensorData::F32(values)) => {
            if values.iter().any(|v| !v.is_finite()) {
                return Err(invalid(
                    format!("input {FEATURES_INPUT:?}"),
                    "values must be finite",
                ));
            }
            if let Some(layout) = &version.layout {
                check_feature_ranges(kind, layout.names(), &values)?;
            }
            Ok(Rows::Features {
                width: tensor.shape.get(1).copied().unwrap_or(1),
                values,
            })
        }
        (InputContract::Text, TensorData::Str(texts)) => Ok(Rows::Texts(texts)),
        _ => Err(invalid(
            "inputs",
            format!("a {kind} model takes {FEATURES_INPUT:?} FP32 or {TEXT_INPUT:?} BYTES"),
        )),
    }
}

fn batch_key(version: &LoadedVersion, tensors: &[NamedTensor]) -> Option<u64> {
    // Requests share a batch only if the graph keeps a free first dimension
    // on every input and output and the requests agree on everything else.
    let manifest = &version.manifest;
    let free_first = |specs: &[TensorSpec]| specs.iter().all(|s| s.shape.first() == Some(&-1));
    if !free_first(&manifest.inputs) || !free_first(&manifest.outputs) {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for tensor in tensors {
        tensor.name.hash(&mut hasher);
        std::mem::discriminant(&tensor.data).hash(&mut hasher);
        tensor.shape[1..].hash(&mut hasher);
    }
    Some(hasher.finish())
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<kserve::ServerLiveRequest>,
    ) -> Result<Response<kserve::ServerLiveResponse>, Status> {
        Ok(Response::new(kserve::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<kserve::ServerReadyRequest>,
    ) -> Result<Response<kserve::ServerReadyResponse>, Status> {
        let ready = self
            .all_slots()
            .iter()
            .all(|slot| slot.deployment.load().live.is_some());
        Ok(Response::new(kserve::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<kserve::ModelReadyRequest>,
    ) -> Result<Response<kserve::ModelReadyResponse>, Status> {
        let kserve::ModelReadyRequest { name, version } = request.into_inner();
        let slot = self.slot(&name)?;
        let pin = parse_version(&version)?;
        let deployment = slot.deployment.load();
        let ready = slot.route(&deployment, "", pin).is_ok();
        Ok(Response::new(kserve::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<kserve::ServerMetadataRequest>,
    ) -> Result<Response<kserve::ServerMetadataResponse>, Status> {
        Ok(Response::new(kserve::ServerMetadataResponse {
            name: "nurture".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<kserve::ModelMetadataRequest>,
    ) -> Result<Response<kserve::ModelMetadataResponse>, Status> {
        let kserve::ModelMetadataRequest { name, version } = request.into_inner();
        let slot = self.slot(&name)?;
        let pin = parse_version(&version)?;
        slot.prepare_pin(pin).await?;
        let deployment = slot.deployment.load();
        let (chosen, _) = slot.route(&deployment, "", pin)?;
        let (inputs, outputs) = signature(&chosen);
        Ok(Response::new(kserve::ModelMetadataResponse {
            name,
            versions: deployment
                .loaded()
                .iter()
                .map(|v| v.version.to_string())
                .collect(),
            platform: "onnxruntime_onnx".to_owned(),
            inputs: inputs.iter().map(metadata).collect(),
            outputs: outputs.iter().map(metadata).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<kserve::ModelInferRequest>,
    ) -> Result<Response<kserve::ModelInferResponse>, Status> {
        let deadline = edge::deadline(&request);
        let kserve::ModelInferRequest {
            model_name,
            model_version,
            id,
            parameters: _,
            inputs,
            outputs,
            raw_input_contents,
        } = request.into_inner();
        let slot = self.slot(&model_name)?;
        instrumented("ModelInfer", &slot.name.clone(), deadline, async move {
            let pin = parse_version(&model_version)?;
            slot.prepare_pin(pin).await?;
            // The request id doubles as the sticky canary key. The guard is
            // dropped at once: nothing holds it across an `.await`.
            let (version, arm, shadow) = {
                let deployment = slot.deployment.load();
                let (version, arm) = slot.route(&deployment, &id, pin)?;
                let shadow = self.served.shadows.wants(&deployment, arm);
                (version, arm, shadow)
            };
            let (declared_inputs, declared_outputs) = signature(&version);
            let raw = !raw_input_contents.is_empty();
            if raw && raw_input_contents.len() != inputs.len() {
                return Err(invalid(
                    "raw_input_contents",
                    format!(
                        "{} buffers for {} inputs",
                        raw_input_contents.len(),
                        inputs.len()
                    ),
                ));
            }
            let mut decoded: Vec<Option<NamedTensor>> =
                declared_inputs.iter().map(|_| None).collect();
            for (index, input) in inputs.iter().enumerate() {
                let Some(position) = declared_inputs
                    .iter()
                    .position(|spec| spec.name == input.name)
                else {
                    return Err(invalid(
                        format!("inputs[{index}].name"),
                        format!("model {model_name} has no input {:?}", input.name),
                    ));
                };
                let tensor = decode(
                    index,
                    input,
                    raw.then(|| raw_input_contents[index].as_slice()),
                    &declared_inputs[position],
                )?;
                decoded[position] = Some(tensor);
            }
            let tensors: Vec<NamedTensor> = decoded
                .into_iter()
                .zip(&declared_inputs)
                .map(|(tensor, spec)| {
                    tensor
                        .ok_or_else(|| invalid("inputs", format!("missing input {:?}", spec.name)))
                })
                .collect::<Result<_, _>>()?;
            let rows = tensors.first().map_or(1, NamedTensor::rows);
            if rows > self.limits.max_items {
                return Err(invalid(
                    "inputs",
                    format!("{rows} rows, at most {} per request", self.limits.max_items),
                ));
            }
            let wanted: Vec<String> = outputs.iter().map(|o| o.name.clone()).collect();
            for (index, name) in wanted.iter().enumerate() {
                if !declared_outputs.iter().any(|spec| &spec.name == name) {
                    return Err(invalid(
                        format!("outputs[{index}].name"),
                        format!("model {model_name} has no output {name:?}"),
                    ));
                }
            }

            let kind = version.manifest.kind;
            let mut prediction_ids = Vec::new();
            // What goes to the shadow, once the answer is built.
            let mut mirror = None;
            let results: Vec<NamedTensor> = if kind == ModelKind::Generic {
                let key = batch_key(&version, &tensors);
                version
                    .score(Rows::Tensors { tensors, key }, deadline)
                    .await?
                    .tensors
            } else {
                let input = tensors
                    .into_iter()
                    .next()
                    .ok_or_else(|| invalid("inputs", "missing input"))?;
                // A shadow takes the same rows only if it takes the same
                // columns.
                let shadow = shadow.filter(|shadow| {
                    let same = shadow.layout == version.layout;
                    if !same {
                        self.served.shadows.incompatible(shadow);
                    }
                    same
                });
                // What the prediction log (and a shadow) keeps of each row:
                // model columns or texts (a copy, only when needed).
                let logged =
                    (self.served.log.is_on() || shadow.is_some()).then(|| input.data.clone());
                let scored = version
                    .score(typed_rows(&version, input)?, deadline)
                    .await?;
                let classes = version.manifest.labels.len().max(1);
                let rows = (scored.probabilities.len() / classes).max(1);
                prediction_ids = scored
                    .probabilities
                    .chunks(classes)
                    .enumerate()
                    .map(|(row, probabilities)| {
                        let inputs = match &logged {
                            Some(TensorData::F32(values)) => {
                                let width = values.len() / rows;
                                Inputs {
                                    columns: version.layout.as_ref().map(|layout| {
                                        (layout, &values[row * width..(row + 1) * width])
                                    }),
                                    ..Inputs::default()
                                }
                            }
                            Some(TensorData::Str(texts)) => Inputs {
                                text: texts.get(row).map(String::as_str),
                                ..Inputs::default()
                            },
                            _ => Inputs::default(),
                        };
                        self.served.answer(
                            &version,
                            arm,
                            inputs,
                            prediction_of(probabilities),
                            probabilities,
                        )
                    })
                    .collect();
                if let (Some(shadow), Some(data)) = (shadow, logged) {
                    mirror = match data {
                        TensorData::F32(values) => Some((shadow, MirrorInputs::Columns(values))),
                        TensorData::Str(texts) => Some((shadow, MirrorInputs::Texts(texts))),
                        _ => None,
                    };
                }
                vec![NamedTensor {
                    name: PROBABILITIES_OUTPUT.to_owned(),
                    shape: vec![scored.probabilities.len() / classes.max(1), classes],
                    data: TensorData::F32(scored.probabilities),
                }]
            };
            let mut response = kserve::ModelInferResponse {
                model_name: model_name.clone(),
                model_version: version.version.to_string(),
                id,
                ..Default::default()
            };
            if !prediction_ids.is_empty() {
                // One id per row, in row order, comma-separated (ids never
                // contain a comma).
                response.parameters.insert(
                    "prediction_ids".to_owned(),
                    kserve::InferParameter {
                        parameter_choice: Some(
                            kserve::infer_parameter::ParameterChoice::StringParam(
                                prediction_ids.join(","),
                            ),
                        ),
                    },
                );
            }
            for tensor in results
                .iter()
                .filter(|t| wanted.is_empty() || wanted.contains(&t.name))
            {
                let (output, bytes) = encode(tensor, raw);
                response.outputs.push(output);
                response.raw_output_contents.extend(bytes);
            }
            // Typed models count each row as an item; a generic request is one.
            let items = prediction_ids.len().max(1);
            if let Some((shadow, inputs)) = mirror {
                self.served.shadows.offer(Mirror {
                    shadow,
                    inputs,
                    live_ids: prediction_ids,
                });
            }
            Ok((response, vec![(version.version, arm); items]))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dtype: DType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    fn input(datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn malformed_tensors_are_refused_with_the_field() {
        let fp32 = spec(DType::Float32, &[-1, 2]);
        let cases: Vec<(InferInputTensor, Option<Vec<u8>>, &str)> = vec![
            (input("INT64", &[1, 2]), None, "inputs[0].datatype"),
            (input("FP32", &[1, 2, 3]), None, "inputs[0].shape"),
            (input("FP32", &[-1, 2]), None, "inputs[0].shape[0]"),
            (input("FP32", &[1, 3]), None, "inputs[0].shape[1]"),
            (input("FP32", &[i64::MAX, 2]), None, "inputs[0].shape"),
            (
                input("FP32", &[2, 2]),
                Some(vec![0; 15]),
                "raw_input_contents for inputs[0]",
            ),
            (input("FP32", &[2, 2]), None, "inputs[0].contents"),
        ];
        for (tensor, raw, field) in cases {
            let error = decode(0, &tensor, raw.as_deref(), &fp32)
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
        let strings = spec(DType::String, &[-1]);
        let error = decode(
            0,
            &input("BYTES", &[2]),
            Some(&[5, 0, 0, 0, b'h', b'i']),
            &strings,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("longer than the buffer"), "{error}");
    }

    #[test]
    fn raw_and_typed_contents_decode_alike() {
        let fp32 = spec(DType::Float32, &[-1, 2]);
        let values = [1.5_f32, -2.0, 0.25, 8.0];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let from_raw = decode(0, &input("FP32", &[2, 2]), Some(&raw), &fp32).unwrap();
        let mut typed = input("FP32", &[2, 2]);
        typed.contents = Some(InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        });
        let from_typed = decode(0, &typed, None, &fp32).unwrap();
        assert_eq!(from_raw, from_typed);
        let strings = spec(DType::String, &[-1]);
        let raw = [2, 0, 0, 0, b'h', b'i', 0, 0, 0, 0];
        let decoded = decode(0, &input("BYTES", &[2]), Some(&raw), &strings).unwrap();
        assert_eq!(
            decoded.data,
            TensorData::Str(vec!["hi".into(), String::new()])
        );
        let (_, bytes) = encode(&decoded, true);
        assert_eq!(bytes.unwrap(), raw.to_vec());
    }

    #[test]
    fn nul_bytes_in_bytes_elements_are_refused_with_the_element() {
        let strings = spec(DType::String, &[-1]);
        let raw = [2, 0, 0, 0, b'o', b'k', 3, 0, 0, 0, b'a', 0, b'b'];
        let error = decode(1, &input("BYTES", &[2]), Some(&raw), &strings)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("raw_input_contents for inputs[1]") && error.contains("element 1"),
            "{error}"
        );
        let mut typed = input("BYTES", &[2]);
        typed.contents = Some(InferTensorContents {
            bytes_contents: vec![b"a\0".to_vec(), b"fine".to_vec()],
            ..Default::default()
        });
        let error = decode(0, &typed, None, &strings).unwrap_err().to_string();
        assert!(
            error.contains("inputs[0].contents") && error.contains("element 0"),
            "{error}"
        );
    }

    #[test]
    fn typed_feature_tensors_get_the_typed_range_checks() {
        let columns: Vec<String> = ["email_open_rate", "complaints_90d", "slot_hour"]
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        let good = [0.5, 2.0, 23.0, 1.0, 0.0, 0.0];
        assert!(check_feature_ranges(ModelKind::ChannelTiming, &columns, &good).is_ok());
        for (values, named) in [
            (
                [0.5, 2.0, 23.0, 1.5, 0.0, 0.0],
                "row 1 column \"email_open_rate\"",
            ),
            (
                [0.5, -1.0, 23.0, 1.0, 0.0, 0.0],
                "row 0 column \"complaints_90d\"",
            ),
            (
                [0.5, 2.0, 24.0, 1.0, 0.0, 0.0],
                "row 0 column \"slot_hour\"",
            ),
        ] {
            let error = check_feature_ranges(ModelKind::ChannelTiming, &columns, &values)
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{named}: {error}");
            assert!(error.starts_with("invalid input"), "{error}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn datatype() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("FP32".to_owned()),
                Just("FP64".to_owned()),
                Just("INT32".to_owned()),
                Just("INT64".to_owned()),
                Just("BOOL".to_owned()),
                Just("BYTES".to_owned()),
                Just("FP16".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Arbitrary tensors (shapes, datatypes, typed or raw contents)
            /// are decoded or refused as INVALID_ARGUMENT, never a panic.
            #[test]
            fn arbitrary_tensors_are_decoded_or_refused(
                shape in proptest::collection::vec(any::<i64>().prop_map(|v| v % 6), 0..4),
                declared in proptest::collection::vec(prop_oneof![Just(-1i64), 0i64..5], 1..3),
                datatype in datatype(),
                raw in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
                floats in proptest::collection::vec(any::<f32>(), 0..16),
                strings in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..6),
                spec_type in 0usize..6,
            ) {
                let dtypes = [DType::Float32, DType::Float64, DType::Int32, DType::Int64, DType::Bool, DType::String];
                let spec = TensorSpec { name: "x".into(), dtype: dtypes[spec_type], shape: declared };
                let mut tensor = input(&datatype, &shape);
                tensor.contents = Some(InferTensorContents {
                    fp32_contents: floats,
                    bytes_contents: strings,
                    ..Default::default()
                });
                if let Err(error) = decode(0, &tensor, raw.as_deref(), &spec) {
                    prop_assert_eq!(error.error_type(), "invalid_argument");
                }
            }
        }
    }
}
