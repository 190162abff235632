//! Compiles `nurture/v1/*.proto` (gRPC services) and `onnx/onnx.proto`
//! (messages only) with protox, so no system `protoc` is needed.

use std::path::PathBuf;

const API_FILES: &[&str] = &[
    "nurture/v1/common.proto",
    "nurture/v1/emotion.proto",
    "nurture/v1/churn.proto",
    "nurture/v1/journey.proto",
    "nurture/v1/channel_timing.proto",
    "nurture/v1/optimization.proto",
    "nurture/v1/status.proto",
    "nurture/v1/feedback.proto",
    "inference/grpc_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=nurture");
    println!("cargo:rerun-if-changed=onnx");
    println!("cargo:rerun-if-changed=inference");

    let api = protox::compile(API_FILES, ["."])?;
    // The encoded descriptor set feeds gRPC server reflection.
    std::fs::write(
        out_dir.join("nurture_descriptor.bin"),
        prost::Message::encode_to_vec(&api),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(api)?;

    let onnx = protox::compile(["onnx/onnx.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(onnx)?;
    Ok(())
}
