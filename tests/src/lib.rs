//! Support for Nurture's end-to-end tests: ONNX fixtures built in code, the
//! S3-compatible test server, and paths of the project's binaries.

pub mod corrections;
pub mod fixtures;
pub mod proxy;
pub mod s3;
pub mod server;
pub mod tls;
pub mod traffic;

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace; this is a bug")
        .to_path_buf()
}

/// Path of a workspace binary built into the same target folder as the
/// running test (`cargo build --workspace --bins` builds them; `make test`
/// does this first).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}

/// Runs one of the workspace's tools (`nurturectl`, `nurture-trainer`)
/// against `registry` from the project root, with `env` added, and returns
/// its standard output; panics with its standard error if it fails.
pub fn run_tool(binary: &str, registry: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(self::binary(binary))
        .args(args)
        .env("NURTURE_REGISTRY", registry)
        .envs(env.iter().copied())
        .env_remove("ORT_DYLIB_PATH")
        .current_dir(project_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{binary} cannot start: {error}"));
    assert!(
        output.status.success(),
        "{binary} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("tools print UTF-8")
}

/// Asserts that `status` is INVALID_ARGUMENT with a message naming `field`.
#[track_caller]
pub fn assert_invalid_argument(status: &tonic::Status, field: &str) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{field}: {status:?}"
    );
    assert!(
        status.message().contains(field),
        "{field} is not named in {:?}",
        status.message()
    );
}

/// Checks `condition` every 50 ms until it holds; panics naming `what`
/// once `timeout` has passed without it holding.
pub async fn eventually(
    what: &str,
    timeout: std::time::Duration,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs one of the project's Python scripts (`script`, relative to the
/// project root) with the interpreter of the `.tools/{venv}` that
/// `scripts/install-test-tools.sh` made, and returns its standard output;
/// panics with its standard error when it fails.
pub fn run_python(venv: &str, script: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let root = project_root();
    let python = root.join(".tools").join(venv).join("bin/python");
    assert!(
        python.is_file(),
        ".tools/{venv} is missing: run scripts/install-test-tools.sh (make test does)"
    );
    let output = std::process::Command::new(python)
        .arg(root.join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Writes a version straight into the store, bypassing publish and its
/// checks (and promotes it with `promote`): what a buggy pipeline or a hand
/// edit could do. The model is churn; its manifest is version 1's.
pub async fn write_bypassing_publish(
    url: &str,
    version: u64,
    onnx: Vec<u8>,
    manifest_sha: Option<String>,
    promote: bool,
) {
    use nurture_models::registry::{EventKind, sha256_hex};
    use object_store::{ObjectStoreExt, PutPayload};

    let registry = nurture_models::Registry::open(url).unwrap();
    let (store, _) = nurture_models::registry::open_store(url).unwrap();
    let name = nurture_models::ModelName::new("churn").unwrap();
    let mut manifest = registry.manifest(&name, 1).await.unwrap();
    manifest.version = version;
    manifest.sha256 = manifest_sha.unwrap_or_else(|| sha256_hex(&onnx));
    let model_path = registry.model_path(&name, version);
    let manifest_path =
        object_store::path::Path::from(model_path.as_ref().replace("model.onnx", "manifest.json"));
    store
        .put(
            &manifest_path,
            PutPayload::from(serde_json::to_vec(&manifest).unwrap()),
        )
        .await
        .unwrap();
    store
        .put(&model_path, PutPayload::from(onnx))
        .await
        .unwrap();
    let seq = registry.state(&name).await.unwrap().seq;
    let published = EventKind::Published {
        version,
        kind: nurture_models::ModelKind::Churn,
        sha256: manifest.sha256.clone(),
        retrain: None,
    };
    registry
        .append(&name, seq + 1, "intruder", published)
        .await
        .unwrap();
    if !promote {
        return;
    }
    registry
        .append(
            &name,
            seq + 2,
            "intruder",
            EventKind::Promoted {
                version,
                forced: false,
            },
        )
        .await
        .unwrap();
}

/// Churn through the Open Inference Protocol, one row per value (every
/// model column set to it): each row's prediction id and probability.
pub async fn oip_churn(channel: &tonic::transport::Channel, values: &[f32]) -> Vec<(String, f32)> {
    use nurture_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use nurture_proto::inference::{self as kserve, infer_parameter::ParameterChoice};
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let metadata = client
        .model_metadata(kserve::ModelMetadataRequest {
            name: "churn".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let width = metadata.inputs[0].shape[1] as usize;
    let response = client
        .model_infer(kserve::ModelInferRequest {
            model_name: "churn".into(),
            inputs: vec![kserve::model_infer_request::InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![values.len() as i64, width as i64],
                contents: Some(kserve::InferTensorContents {
                    fp32_contents: values
                        .iter()
                        .flat_map(|v| std::iter::repeat_n(*v, width))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(ParameterChoice::StringParam(ids)) = response.parameters["prediction_ids"]
        .parameter_choice
        .clone()
    else {
        panic!("no prediction ids: {:?}", response.parameters);
    };
    let probabilities = &response.outputs[0].contents.as_ref().unwrap().fp32_contents;
    ids.split(',')
        .zip(probabilities.chunks(2))
        .map(|(id, row)| (id.to_owned(), row[1]))
        .collect()
}
