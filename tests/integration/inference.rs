//! The Open Inference Protocol (KServe v2) on a real server: generic models
//! published with `nurturectl publish --generic`, typed models through the
//! same protocol, version pins, rollback, malformed tensors.

use std::process::Command;
use std::time::{Duration, Instant};

use nurture_models::ModelKind;
use nurture_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nurture_proto::inference::model_infer_request::InferInputTensor;
use nurture_proto::inference::{self as kserve, InferTensorContents};
use nurture_tests::fixtures::Tabular;
use nurture_tests::server::ServerProcess;
use nurture_tests::{eventually, run_tool};
use tonic::Code;
use tonic::transport::Channel;

const WIDTH: usize = 20;

fn nurturectl(registry: &str, args: &[&str]) {
    run_tool("nurturectl", registry, args, &[]);
}

/// `n` rows of churn-width features (shared with `server.rs`).
pub(crate) fn rows(n: usize) -> Vec<f32> {
    (0..n * WIDTH)
        .map(|i| ((i * 7) % 11) as f32 / 10.0)
        .collect()
}

/// A ModelInferRequest of `values`, raw little-endian buffers or typed
/// contents (shared with `server.rs`).
pub(crate) fn request(
    model: &str,
    version: &str,
    values: &[f32],
    raw: bool,
) -> kserve::ModelInferRequest {
    let n = values.len() / WIDTH;
    let mut input = InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![n as i64, WIDTH as i64],
        ..Default::default()
    };
    let mut raw_input_contents = Vec::new();
    if raw {
        raw_input_contents.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        input.contents = Some(InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        });
    }
    kserve::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: "req-1".into(),
        inputs: vec![input],
        raw_input_contents,
        ..Default::default()
    }
}

fn probabilities(response: &kserve::ModelInferResponse) -> Vec<f32> {
    let output = &response.outputs[0];
    assert_eq!(output.name, "probabilities");
    match &output.contents {
        Some(contents) => contents.fp32_contents.clone(),
        None => response.raw_output_contents[0]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    }
}

/// What ONNX Runtime computes in process for the same bytes and rows.
fn reference(onnx: &[u8], values: &[f32]) -> Vec<f32> {
    let environment = nurture_models::runtime::environment(None).unwrap();
    let mut session = nurture_models::runtime::session(environment, onnx, 1).unwrap();
    let tensor =
        ort::value::Tensor::from_array(([values.len() / WIDTH, WIDTH], values.to_vec())).unwrap();
    let outputs = session.run(ort::inputs!["features" => tensor]).unwrap();
    outputs["probabilities"]
        .try_extract_tensor::<f32>()
        .unwrap()
        .1
        .to_vec()
}

async fn wait_ready(client: &mut GrpcInferenceServiceClient<Channel>, model: &str, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client
            .model_ready(kserve::ModelReadyRequest {
                name: model.into(),
                version: version.into(),
            })
            .await
            .map(|r| r.into_inner().ready)
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "{model} {version} never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_and_typed_models_answer_the_open_inference_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("file://{}", dir.path().join("registry").display());
    let first = Tabular::new(WIDTH, 2, 1).build();
    let second = Tabular::new(WIDTH, 2, 2).build();
    let churn = Tabular::new(ModelKind::Churn.allowed_features().len(), 2, 3).build();
    for (name, bytes) in [
        ("first.onnx", &first),
        ("second.onnx", &second),
        ("churn.onnx", &churn),
    ] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    nurturectl(
        &registry,
        &[
            "publish",
            "--generic",
            "lead-scorer",
            &path("first.onnx"),
            "--promote",
        ],
    );
    nurturectl(
        &registry,
        &["publish", "churn", &path("churn.onnx"), "--promote"],
    );

    let server = ServerProcess::start(
        &registry,
        &dir.path().join("cache"),
        &["--models", "churn", "--poll-interval", "200ms"],
    );
    let channel = server.channel().await;
    let mut client = GrpcInferenceServiceClient::new(channel);
    assert!(
        client
            .server_live(kserve::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    wait_ready(&mut client, "lead-scorer", "").await;
    wait_ready(&mut client, "churn", "").await;
    assert!(
        client
            .server_ready(kserve::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let metadata = client
        .server_metadata(kserve::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.name, "nurture");

    // Generic models show up in the status RPC beside the typed ones.
    let status =
        nurture_proto::v1::status_service_client::StatusServiceClient::new(server.channel().await)
            .get_status(nurture_proto::v1::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
    let scorer = status
        .models
        .iter()
        .find(|m| m.name == "lead-scorer")
        .expect("generic model listed");
    assert_eq!((scorer.kind.as_str(), scorer.live_version), ("generic", 1));

    let model = client
        .model_metadata(kserve::ModelMetadataRequest {
            name: "lead-scorer".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.inputs[0].name, "features");
    assert_eq!(model.inputs[0].datatype, "FP32");
    assert_eq!(model.inputs[0].shape, vec![-1, WIDTH as i64]);
    assert_eq!(model.outputs[0].name, "probabilities");

    // Typed and raw contents give ONNX Runtime's own answer.
    let values = rows(3);
    let expected = reference(&first, &values);
    for raw in [false, true] {
        let response = client
            .model_infer(request("lead-scorer", "", &values, raw))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.model_version, "1");
        assert_eq!(response.id, "req-1");
        assert_eq!(response.outputs[0].shape, vec![3, 2]);
        assert_eq!(response.outputs[0].contents.is_none(), raw);
        let got = probabilities(&response);
        assert!(
            got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?} vs {expected:?}"
        );
    }
    // Many clients at once: batched together, each gets its own rows back.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = client.clone();
        let values: Vec<f32> = rows(1 + i % 3)
            .iter()
            .map(|v| v + i as f32 / 100.0)
            .collect();
        let expected = reference(&first, &values);
        tasks.push(tokio::spawn(async move {
            let response = client
                .model_infer(request("lead-scorer", "", &values, true))
                .await
                .unwrap()
                .into_inner();
            let got = probabilities(&response);
            assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // A typed model through the same protocol.
    let churn_rows: Vec<f32> = (0..2 * 20).map(|i| (i % 5) as f32 / 5.0).collect();
    let response = client
        .model_infer(request("churn", "", &churn_rows, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs[0].shape, vec![2, 2]);
    assert_eq!(response.model_version, "1");

    // A second version, pins, and a rollback visible through the protocol.
    nurturectl(
        &registry,
        &[
            "publish",
            "--generic",
            "lead-scorer",
            &path("second.onnx"),
            "--promote",
        ],
    );
    eventually(
        "version 2 never served",
        Duration::from_secs(30),
        async || {
            client
                .model_infer(request("lead-scorer", "", &values, false))
                .await
                .unwrap()
                .into_inner()
                .model_version
                == "2"
        },
    )
    .await;
    let pinned = client
        .model_infer(request("lead-scorer", "1", &values, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pinned.model_version, "1");
    assert!(
        probabilities(&pinned)
            .iter()
            .zip(&expected)
            .all(|(a, b)| (a - b).abs() < 1e-6)
    );
    let second_expected = reference(&second, &values);
    let current = client
        .model_infer(request("lead-scorer", "", &values, false))
        .await
        .unwrap()
        .into_inner();
    assert!(
        probabilities(&current)
            .iter()
            .zip(&second_expected)
            .all(|(a, b)| (a - b).abs() < 1e-6)
    );
    nurturectl(
        &registry,
        &["rollback", "lead-scorer", "--reason", "regression"],
    );
    eventually(
        "rollback never visible",
        Duration::from_secs(30),
        async || {
            client
                .model_infer(request("lead-scorer", "", &values, false))
                .await
                .unwrap()
                .into_inner()
                .model_version
                == "1"
        },
    )
    .await;
    let revoked = client
        .model_infer(request("lead-scorer", "2", &values, false))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::FailedPrecondition);
    let unknown = client
        .model_infer(request("nobody", "", &values, false))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let missing_version = client
        .model_infer(request("lead-scorer", "9", &values, false))
        .await
        .unwrap_err();
    assert_eq!(missing_version.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tensors_are_invalid_arguments_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("file://{}", dir.path().join("registry").display());
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, Tabular::new(WIDTH, 2, 1).build()).unwrap();
    nurturectl(
        &registry,
        &[
            "publish",
            "--generic",
            "scorer",
            model.to_str().unwrap(),
            "--promote",
        ],
    );
    let server = ServerProcess::start(
        &registry,
        &dir.path().join("cache"),
        &["--models", "churn", "--poll-interval", "200ms"],
    );
    let channel = server.channel().await;
    let mut client = GrpcInferenceServiceClient::new(channel);
    wait_ready(&mut client, "scorer", "").await;

    let good = request("scorer", "", &rows(2), true);
    let mut short = good.clone();
    short.raw_input_contents[0].truncate(13);
    let mut overflow = good.clone();
    overflow.inputs[0].shape = vec![i64::MAX / 2, WIDTH as i64];
    let mut negative = good.clone();
    negative.inputs[0].shape = vec![-2, WIDTH as i64];
    let mut wrong_type = good.clone();
    wrong_type.inputs[0].datatype = "INT64".into();
    let mut wrong_name = good.clone();
    wrong_name.inputs[0].name = "x".into();
    let mut extra_buffer = good.clone();
    extra_buffer.raw_input_contents.push(vec![1, 2, 3]);
    let mut wrong_output = good.clone();
    wrong_output
        .outputs
        .push(kserve::model_infer_request::InferRequestedOutputTensor {
            name: "logits".into(),
            ..Default::default()
        });
    let cases = [
        (short, "raw_input_contents"),
        (overflow, "inputs[0].shape"),
        (negative, "inputs[0].shape[0]"),
        (wrong_type, "inputs[0].datatype"),
        (wrong_name, "inputs[0].name"),
        (extra_buffer, "raw_input_contents"),
        (wrong_output, "outputs[0].name"),
    ];
    for (bad, field) in cases {
        let status = client.model_infer(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    assert_eq!(
        client.model_infer(good).await.unwrap().into_inner().outputs[0].shape,
        vec![2, 2]
    );
}

/// NVIDIA's Python client (tritonclient.grpc), unchanged, against a
/// scikit-learn model exported with skl2onnx and published with
/// `nurturectl publish --generic`: liveness, readiness, metadata, and
/// inference whose outputs equal onnxruntime's on the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_tritonclient_talks_to_nurture_unchanged() {
    let root = nurture_tests::project_root();
    let python = root.join(".tools/oip-venv/bin/python");
    assert!(
        python.is_file(),
        "tritonclient is missing: run scripts/install-test-tools.sh (make test does)"
    );
    let script = root.join("tests/oip/triton_client_check.py");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_owned();
    let made = Command::new(&python)
        .arg(&script)
        .args(["make-model", &out])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let registry = format!("file://{}", dir.path().join("registry").display());
    let model = dir.path().join("model.onnx");
    nurturectl(
        &registry,
        &[
            "publish",
            "--generic",
            "sklearn-gbdt",
            model.to_str().unwrap(),
            "--promote",
        ],
    );
    let churn = dir.path().join("churn.onnx");
    std::fs::write(
        &churn,
        Tabular::new(ModelKind::Churn.allowed_features().len(), 2, 3).build(),
    )
    .unwrap();
    nurturectl(
        &registry,
        &["publish", "churn", churn.to_str().unwrap(), "--promote"],
    );
    let server = ServerProcess::start(
        &registry,
        &dir.path().join("cache"),
        &[
            "--models",
            "churn",
            "--poll-interval",
            "200ms",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let channel = server.channel().await;
    wait_ready(
        &mut GrpcInferenceServiceClient::new(channel),
        "sklearn-gbdt",
        "",
    )
    .await;

    let address = server.grpc.to_string();
    let out = dir.path().to_str().unwrap().to_owned();
    let checked = triton_check(&["check", &address, "sklearn-gbdt", &out]).await;
    assert!(checked.contains("equal to onnxruntime"), "{checked}");

    // The same through the protocol's HTTP binding, with tritonclient.http.
    let http = server
        .http
        .expect("--http-listen gives an http= address")
        .to_string();
    let checked = triton_check(&["check-http", &http, "sklearn-gbdt", &out, "churn"]).await;
    println!("{checked}");
}

/// Runs tests/oip/triton_client_check.py with `args` in the tritonclient
/// venv; panics with its output unless it succeeds; returns its stdout.
async fn triton_check(args: &[&str]) -> String {
    let root = nurture_tests::project_root();
    let (python, script) = (
        root.join(".tools/oip-venv/bin/python"),
        root.join("tests/oip/triton_client_check.py"),
    );
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let checked = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        checked.status.success(),
        "tritonclient check failed:\n{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    String::from_utf8_lossy(&checked.stdout).into_owned()
}
