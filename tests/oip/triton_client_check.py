"""NVIDIA's tritonclient against Nurture, unchanged.

  triton_client_check.py make-model OUT_DIR
      trains a scikit-learn classifier, exports it with skl2onnx
      (zipmap off: plain tensors), writes OUT_DIR/model.onnx.
  triton_client_check.py check ADDRESS MODEL_NAME OUT_DIR
      liveness, readiness, metadata and inference through tritonclient.grpc;
      outputs must equal onnxruntime's on the same rows.
  triton_client_check.py check-http ADDRESS MODEL_NAME OUT_DIR TYPED_MODEL
      the same through tritonclient.http (JSON and binary tensors), plus the
      repository index and statistics; TYPED_MODEL's metadata names its
      feature columns and labels.
"""

import sys

import numpy as np


def make_model(out_dir):
    from sklearn.ensemble import GradientBoostingClassifier
    from skl2onnx import to_onnx

    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + 0.3 * rng.normal(size=600)) > 0).astype(np.int64)
    model = GradientBoostingClassifier(n_estimators=40, random_state=0).fit(x, y)
    onnx_model = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    with open(f"{out_dir}/model.onnx", "wb") as f:
        f.write(onnx_model.SerializeToString())


def check(address, name, out_dir):
    import onnxruntime
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=address)
    assert client.is_server_live(), "server not live"
    assert client.is_model_ready(name), "model not ready"
    metadata = client.get_server_metadata()
    assert metadata.name == "nurture", metadata
    model = client.get_model_metadata(name)
    inputs = {i.name: i for i in model.inputs}
    outputs = [o.name for o in model.outputs]
    assert len(inputs) == 1, model
    (input_name, input_meta), = inputs.items()
    assert input_meta.datatype == "FP32", input_meta

    rows = np.random.default_rng(11).normal(size=(17, 6)).astype(np.float32)
    session = onnxruntime.InferenceSession(f"{out_dir}/model.onnx", providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {input_name: rows})))

    tensor = grpcclient.InferInput(input_name, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
    result = client.infer(name, [tensor], outputs=requested, request_id="triton-check")
    version = result.get_response().model_version
    for output in outputs:
        got = result.as_numpy(output)
        want = expected[output]
        assert got.shape == want.shape, (output, got.shape, want.shape)
        if got.dtype.kind == "f":
            assert np.allclose(got, want, atol=1e-6), (output, got, want)
        else:
            assert (got == want).all(), (output, got, want)
    # Typed contents, through the protobuf stubs tritonclient ships.
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    request = service_pb2.ModelInferRequest(model_name=name)
    typed = request.inputs.add(name=input_name, datatype="FP32", shape=list(rows.shape))
    typed.contents.fp32_contents.extend(rows.flatten().tolist())
    for output in outputs:
        request.outputs.add(name=output)
    response = stub.ModelInfer(request)
    for answered in response.outputs:
        want = expected[answered.name]
        got = (
            np.array(answered.contents.fp32_contents, dtype=np.float32)
            if answered.datatype == "FP32"
            else np.array(answered.contents.int64_contents, dtype=np.int64)
        ).reshape(tuple(answered.shape))
        assert got.shape == want.shape, (answered.name, got.shape, want.shape)
        assert np.allclose(got, want, atol=1e-6), (answered.name, got, want)
    assert not response.raw_output_contents, "typed requests get typed contents"
    # A pinned version answers too.
    pinned = client.infer(name, [tensor], model_version="1", outputs=requested)
    assert pinned.get_response().model_version == "1"
    print(f"tritonclient ok: model {name} version {version}, outputs {outputs}, {rows.shape[0]} rows equal to onnxruntime, raw and typed contents")


def check_http(address, name, out_dir, typed):
    import onnxruntime
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=address)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(name), "model not ready"
    assert client.get_server_metadata()["name"] == "nurture"
    model = client.get_model_metadata(name)
    (input_meta,) = model["inputs"]
    outputs = [o["name"] for o in model["outputs"]]
    assert input_meta["datatype"] == "FP32", input_meta

    rows = np.random.default_rng(13).normal(size=(9, 6)).astype(np.float32)
    session = onnxruntime.InferenceSession(f"{out_dir}/model.onnx", providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {input_meta["name"]: rows})))
    # tritonclient's defaults (binary tensors both ways), then JSON both ways.
    for binary in (True, False):
        tensor = httpclient.InferInput(input_meta["name"], list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        requested = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        result = client.infer(name, [tensor], outputs=requested, request_id="triton-http")
        for output in outputs:
            got, want = result.as_numpy(output), expected[output]
            assert got.shape == want.shape, (binary, output, got.shape, want.shape)
            if got.dtype.kind == "f":
                assert np.allclose(got, want, atol=1e-6), (binary, output, got, want)
            else:
                assert (got == want).all(), (binary, output, got, want)
    index = client.get_model_repository_index()
    assert any(entry["name"] == name and entry["state"] == "READY" for entry in index), index
    stats = client.get_inference_statistics(name)["model_stats"]
    assert stats and stats[0]["inference_count"] >= 2, stats
    typed_meta = client.get_model_metadata(typed)
    names = typed_meta["inputs"][0]["parameters"]["names"]
    assert "budget_k_usd" in names and len(names) == typed_meta["inputs"][0]["shape"][1], typed_meta
    labels = typed_meta["outputs"][0]["parameters"]["names"]
    assert len(labels) == typed_meta["outputs"][0]["shape"][1], typed_meta
    print(f"tritonclient.http ok: {name} outputs {outputs} equal to onnxruntime (binary and JSON); {typed} names {len(names)} features and labels {labels}")


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "make-model":
        make_model(sys.argv[2])
    elif command == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    elif command == "check-http":
        check_http(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit(f"unknown command {command}")
