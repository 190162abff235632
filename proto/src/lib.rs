//! Nurture's wire formats.
//!
//! * [`v1`]: the `nurture.v1` gRPC API (messages, clients and servers).
//! * [`inference`]: the Open Inference Protocol (KServe v2) gRPC service.
//! * [`onnx`]: the subset of the ONNX model format that the trainer writes.
//!
//! This crate owns generated code, plus small helpers for building its
//! messages (`onnx::build`, [`v1::LeadProfile::set_feature`]); domain types
//! live in `nurture-models` and the server converts between the two at its
//! edge.

mod lead;

pub use prost_types;

/// The `nurture.v1` gRPC API.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("nurture.v1");
}

/// The Open Inference Protocol (KServe v2) `inference` package.
#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Encoded `FileDescriptorSet` of the `nurture.v1` and `inference` APIs, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nurture_descriptor.bin"));

/// ONNX model-format messages (`ModelProto`, `GraphProto`, ...).
#[allow(clippy::all, missing_docs)]
pub mod onnx {
    tonic::include_proto!("onnx");

    pub mod build;
}
