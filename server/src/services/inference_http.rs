//! The Open Inference Protocol's REST binding (KServe v2 over HTTP/JSON),
//! on its own port (`--http-listen`): health, server and model metadata,
//! model readiness, inference with JSON tensors or Triton's binary tensor
//! extension, the repository index and per-model statistics, as
//! tritonclient's HTTP client calls them.
//!
//! Every route is translated into the gRPC service's own messages and
//! answered by it ([`Inference`]), so both bindings share every check, the
//! routing, batching, prediction ids and the prediction log. Inputs always
//! travel as raw little-endian buffers inside (the gRPC service's
//! `raw_input_contents`), whether they came as JSON or binary.
//!
//! Health routes are open, like gRPC health; the others need the bearer
//! token when `--auth-tokens-file` is set.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nurture_proto::inference as kserve;
use nurture_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use serde_json::{Map, Value, json};
use tonic::Code;

use super::inference::Inference;
use crate::security::Auth;

/// The header carrying the JSON part's length when binary tensors follow.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// What the routes share.
#[derive(Debug, Clone)]
pub struct Rest {
    /// The gRPC service every route is answered by.
    pub inference: Inference,
    /// Bearer tokens, as on the gRPC port.
    pub auth: Auth,
}

/// The routes.
pub fn router(rest: Arc<Rest>) -> Router {
    let protected = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v2/models/{model}/stats", get(statistics))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(statistics),
        )
        .route("/v2/repository/index", post(repository_index))
        .route_layer(axum::middleware::from_fn_with_state(
            rest.clone(),
            authorize,
        ));
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .merge(protected)
        .with_state(rest)
}

/// A gRPC status as an HTTP error with the protocol's `{"error": ...}` body.
fn error(status: tonic::Status) -> Response {
    let code = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({ "error": status.message() }))).into_response()
}

/// A request the binding cannot translate: `invalid FIELD: REASON`.
struct Invalid(String);

fn invalid(field: &str, reason: impl std::fmt::Display) -> Invalid {
    Invalid(format!("invalid {field}: {reason}"))
}

async fn authorize(State(rest): State<Arc<Rest>>, request: Request, next: Next) -> Response {
    let mut probe = tonic::Request::new(());
    if let Some(value) = request.headers().get(header::AUTHORIZATION)
        && let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes())
    {
        probe.metadata_mut().insert("authorization", value);
    }
    let mut auth = rest.auth.clone();
    match tonic::service::Interceptor::call(&mut auth, probe) {
        Ok(_) => next.run(request).await,
        Err(status) => error(status),
    }
}

async fn live(State(rest): State<Arc<Rest>>) -> StatusCode {
    match rest
        .inference
        .server_live(tonic::Request::new(kserve::ServerLiveRequest {}))
        .await
    {
        Ok(answer) if answer.get_ref().live => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn ready(State(rest): State<Arc<Rest>>) -> StatusCode {
    match rest
        .inference
        .server_ready(tonic::Request::new(kserve::ServerReadyRequest {}))
        .await
    {
        Ok(answer) if answer.get_ref().ready => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn server_metadata(State(rest): State<Arc<Rest>>) -> Response {
    match rest
        .inference
        .server_metadata(tonic::Request::new(kserve::ServerMetadataRequest {}))
        .await
    {
        Ok(answer) => {
            let answer = answer.into_inner();
            Json(json!({
                "name": answer.name,
                "version": answer.version,
                "extensions": ["binary_tensor_data", "model_repository", "statistics"],
            }))
            .into_response()
        }
        Err(status) => error(status),
    }
}

/// `{model}` alone, or `{model}` and `{version}`.
fn model_and_version(path: &Path<Vec<(String, String)>>) -> (String, String) {
    let get = |key: &str| {
        path.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    (get("model"), get("version"))
}

async fn model_metadata(
    State(rest): State<Arc<Rest>>,
    path: Path<Vec<(String, String)>>,
) -> Response {
    let (name, version) = model_and_version(&path);
    let answer = match rest
        .inference
        .model_metadata(tonic::Request::new(kserve::ModelMetadataRequest {
            name: name.clone(),
            version: version.clone(),
        }))
        .await
    {
        Ok(answer) => answer.into_inner(),
        Err(status) => return error(status),
    };
    let names = rest.inference.column_names(&name, &version);
    let tensor = |t: &kserve::model_metadata_response::TensorMetadata,
                  names: Option<&Vec<String>>| {
        let mut value = json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape });
        if let Some(names) = names {
            value["parameters"] = json!({ "names": names });
        }
        value
    };
    // The first input of a typed tabular model holds the features; its
    // output's columns are the labels.
    let (features, labels) = names.unwrap_or_default();
    let features = (!features.is_empty()).then_some(&features);
    let labels = (!labels.is_empty()).then_some(&labels);
    Json(json!({
        "name": answer.name,
        "versions": answer.versions,
        "platform": answer.platform,
        "inputs": answer.inputs.iter().enumerate()
            .map(|(i, t)| tensor(t, features.filter(|_| i == 0)))
            .collect::<Vec<_>>(),
        "outputs": answer.outputs.iter().enumerate()
            .map(|(i, t)| tensor(t, labels.filter(|_| i == 0)))
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn model_ready(State(rest): State<Arc<Rest>>, path: Path<Vec<(String, String)>>) -> Response {
    let (name, version) = model_and_version(&path);
    match rest
        .inference
        .model_ready(tonic::Request::new(kserve::ModelReadyRequest {
            name,
            version,
        }))
        .await
    {
        Ok(answer) if answer.get_ref().ready => StatusCode::OK.into_response(),
        Ok(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Err(status) => error(status),
    }
}

async fn repository_index(State(rest): State<Arc<Rest>>) -> Response {
    Json(rest.inference.repository_index()).into_response()
}

async fn statistics(State(rest): State<Arc<Rest>>, path: Path<Vec<(String, String)>>) -> Response {
    let (name, version) = model_and_version(&path);
    match rest.inference.statistics(Some(&name), &version) {
        Ok(stats) => Json(json!({ "model_stats": stats })).into_response(),
        Err(status) => error(status),
    }
}

async fn all_statistics(State(rest): State<Arc<Rest>>) -> Response {
    match rest.inference.statistics(None, "") {
        Ok(stats) => Json(json!({ "model_stats": stats })).into_response(),
        Err(status) => error(status),
    }
}

async fn infer(
    State(rest): State<Arc<Rest>>,
    path: Path<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (name, version) = model_and_version(&path);
    let (request, binary) = match decode_request(name, version, &headers, &body) {
        Ok(decoded) => decoded,
        Err(Invalid(message)) => return error(tonic::Status::invalid_argument(message)),
    };
    match rest
        .inference
        .model_infer(tonic::Request::new(request))
        .await
    {
        Ok(answer) => encode_response(answer.into_inner(), &binary),
        Err(status) => error(status),
    }
}

/// Which outputs the caller wants as binary data.
struct BinaryOutputs {
    /// `binary_data_output` on the request: every output.
    all: bool,
    /// Per requested output.
    named: Vec<(String, bool)>,
}

impl BinaryOutputs {
    fn wants(&self, name: &str) -> bool {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.all, |(_, binary)| *binary)
    }
}

/// The JSON (and any binary tensors after it) as the gRPC service's
/// request, every input as a raw buffer.
fn decode_request(
    model_name: String,
    model_version: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(kserve::ModelInferRequest, BinaryOutputs), Invalid> {
    let json_length = match headers.get(HEADER_LENGTH) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                invalid(
                    "Inference-Header-Content-Length",
                    "must be a length within the body",
                )
            })?,
        None => body.len(),
    };
    let (head, mut tail) = body.split_at(json_length);
    let json: Value = serde_json::from_slice(head).map_err(|e| invalid("request", e))?;
    let inputs = json["inputs"]
        .as_array()
        .ok_or_else(|| invalid("inputs", "must be an array of tensors"))?;
    let mut request = kserve::ModelInferRequest {
        model_name,
        model_version,
        id: json["id"].as_str().unwrap_or_default().to_owned(),
        ..Default::default()
    };
    for (i, input) in inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let name = input["name"]
            .as_str()
            .ok_or_else(|| invalid(&format!("{field}.name"), "must be a string"))?;
        let datatype = input["datatype"]
            .as_str()
            .ok_or_else(|| invalid(&format!("{field}.datatype"), "must be a string"))?;
        let shape: Vec<i64> = input["shape"]
            .as_array()
            .and_then(|dims| dims.iter().map(Value::as_i64).collect())
            .ok_or_else(|| invalid(&format!("{field}.shape"), "must be an array of integers"))?;
        let raw = match input["parameters"]["binary_data_size"].as_u64() {
            Some(size) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > tail.len() {
                    return Err(invalid(
                        &format!("{field}.parameters.binary_data_size"),
                        format!("{size} bytes, but {} remain in the body", tail.len()),
                    ));
                }
                let (data, rest) = tail.split_at(size);
                tail = rest;
                data.to_vec()
            }
            None => {
                let elements: i64 = shape.iter().product();
                let data = &input["data"];
                let mut flat = Vec::new();
                flatten(data, &mut flat);
                if !data.is_array() {
                    return Err(invalid(&format!("{field}.data"), "must be an array"));
                }
                if shape.iter().all(|d| *d >= 0) && flat.len() as i64 != elements {
                    return Err(invalid(
                        &format!("{field}.data"),
                        format!(
                            "{} elements, the shape {shape:?} needs {elements}",
                            flat.len()
                        ),
                    ));
                }
                raw_from_json(&field, datatype, &flat)?
            }
        };
        request
            .inputs
            .push(kserve::model_infer_request::InferInputTensor {
                name: name.to_owned(),
                datatype: datatype.to_owned(),
                shape,
                ..Default::default()
            });
        request.raw_input_contents.push(raw);
    }
    if !tail.is_empty() {
        return Err(invalid(
            "body",
            format!("{} bytes after the last binary tensor", tail.len()),
        ));
    }
    let all = json["parameters"]["binary_data_output"]
        .as_bool()
        .unwrap_or(false);
    let mut named = Vec::new();
    if let Some(outputs) = json["outputs"].as_array() {
        for (i, output) in outputs.iter().enumerate() {
            let name = output["name"]
                .as_str()
                .ok_or_else(|| invalid(&format!("outputs[{i}].name"), "must be a string"))?;
            let binary = output["parameters"]["binary_data"].as_bool().unwrap_or(all);
            named.push((name.to_owned(), binary));
            request
                .outputs
                .push(kserve::model_infer_request::InferRequestedOutputTensor {
                    name: name.to_owned(),
                    ..Default::default()
                });
        }
    }
    Ok((request, BinaryOutputs { all, named }))
}

/// JSON `data` (flattened from flat or nested arrays, row-major) as a raw
/// little-endian buffer.
fn raw_from_json(field: &str, datatype: &str, flat: &[&Value]) -> Result<Vec<u8>, Invalid> {
    let bad =
        |j: usize, what: &str| invalid(&format!("{field}.data[{j}]"), format!("must be {what}"));
    let mut raw = Vec::new();
    for (j, value) in flat.iter().enumerate() {
        match datatype {
            "FP32" => {
                raw.extend((value.as_f64().ok_or_else(|| bad(j, "a number"))? as f32).to_le_bytes())
            }
            "FP64" => raw.extend(
                value
                    .as_f64()
                    .ok_or_else(|| bad(j, "a number"))?
                    .to_le_bytes(),
            ),
            "INT32" => raw.extend(
                i32::try_from(value.as_i64().ok_or_else(|| bad(j, "an integer"))?)
                    .map_err(|_| bad(j, "a 32-bit integer"))?
                    .to_le_bytes(),
            ),
            "INT64" => raw.extend(
                value
                    .as_i64()
                    .ok_or_else(|| bad(j, "an integer"))?
                    .to_le_bytes(),
            ),
            "BOOL" => raw.push(u8::from(
                value.as_bool().ok_or_else(|| bad(j, "true or false"))?,
            )),
            "BYTES" => {
                let text = value.as_str().ok_or_else(|| bad(j, "a string"))?;
                raw.extend((text.len() as u32).to_le_bytes());
                raw.extend(text.as_bytes());
            }
            other => {
                return Err(invalid(
                    &format!("{field}.datatype"),
                    format!("{other} is not served; use FP32, FP64, INT32, INT64, BOOL or BYTES"),
                ));
            }
        }
    }
    Ok(raw)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

/// A raw little-endian buffer as JSON `data`.
fn json_from_raw(datatype: &str, raw: &[u8]) -> Value {
    let numbers = |size: usize, read: &dyn Fn(&[u8]) -> Value| -> Value {
        Value::Array(raw.chunks_exact(size).map(read).collect())
    };
    match datatype {
        "FP32" => numbers(4, &|b| {
            json!(f32::from_le_bytes(b.try_into().expect("4 bytes")))
        }),
        "FP64" => numbers(8, &|b| {
            json!(f64::from_le_bytes(b.try_into().expect("8 bytes")))
        }),
        "INT32" => numbers(4, &|b| {
            json!(i32::from_le_bytes(b.try_into().expect("4 bytes")))
        }),
        "INT64" => numbers(8, &|b| {
            json!(i64::from_le_bytes(b.try_into().expect("8 bytes")))
        }),
        "BOOL" => Value::Array(raw.iter().map(|b| json!(*b != 0)).collect()),
        _ => {
            // BYTES: 4-byte little-endian length, then the bytes.
            let mut items = Vec::new();
            let mut rest = raw;
            while rest.len() >= 4 {
                let n = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                let end = (4 + n).min(rest.len());
                items.push(json!(String::from_utf8_lossy(&rest[4..end])));
                rest = &rest[end..];
            }
            Value::Array(items)
        }
    }
}

fn parameter(value: &kserve::InferParameter) -> Value {
    use kserve::infer_parameter::ParameterChoice;
    match &value.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(i)) => json!(i),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        Some(ParameterChoice::DoubleParam(d)) => json!(d),
        Some(ParameterChoice::Uint64Param(u)) => json!(u),
        None => Value::Null,
    }
}

/// The gRPC answer as JSON, with the outputs the caller asked for as
/// binary after it.
fn encode_response(answer: kserve::ModelInferResponse, binary: &BinaryOutputs) -> Response {
    let mut tail = Vec::new();
    let mut outputs = Vec::new();
    for (i, output) in answer.outputs.iter().enumerate() {
        let raw = answer
            .raw_output_contents
            .get(i)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut value = json!({
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        });
        if binary.wants(&output.name) {
            value["parameters"] = json!({ "binary_data_size": raw.len() });
            tail.extend_from_slice(raw);
        } else {
            value["data"] = json_from_raw(&output.datatype, raw);
        }
        outputs.push(value);
    }
    let parameters: Map<String, Value> = answer
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), parameter(v)))
        .collect();
    let mut body = json!({
        "model_name": answer.model_name,
        "model_version": answer.model_version,
        "outputs": outputs,
    });
    if !answer.id.is_empty() {
        body["id"] = json!(answer.id);
    }
    if !parameters.is_empty() {
        body["parameters"] = Value::Object(parameters);
    }
    let head = serde_json::to_vec(&body).expect("JSON values serialise");
    if tail.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], head).into_response();
    }
    let length = head.len();
    let mut bytes = head;
    bytes.extend(tail);
    let mut response =
        ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
    response.headers_mut().insert(
        HEADER_LENGTH,
        HeaderValue::from_str(&length.to_string()).expect("digits are a valid header"),
    );
    response
}
