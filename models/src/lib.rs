//! Nurture's domain: model kinds and their contracts, manifests, ONNX Runtime
//! checks, and the versioned registry with its rollback-aware release log.
//!
//! Nothing here knows about gRPC or protobuf; the server maps between these
//! types and `nurture-proto` at its edge.

pub mod error;
pub mod experiments;
pub mod features;
pub mod input;
pub mod kind;
pub mod manifest;
pub mod registry;
pub mod runtime;

pub use error::{Error, Result};
pub use kind::{DType, ModelKind};
pub use manifest::{Manifest, ManifestDraft};
pub use registry::{ModelName, ModelState, Registry};
