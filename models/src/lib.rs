//! Nurture's domain: model kinds and their contracts, manifests, ONNX Runtime
//! checks, and the versioned registry with its rollback-aware release log.
//!
//! Nothing here knows about gRPC or protobuf; the server maps between these
//! types and `nurture-proto` at its edge.

pub mod batches;
pub mod error;
pub mod experiments;
pub mod features;
pub mod feedback;
pub mod input;
pub mod kind;
pub mod manifest;
pub mod registry;
pub mod rollout;
pub mod runtime;

pub use error::{Error, Result};

/// FNV-1a (64 bit) of `bytes`: the stable hash behind the holdout split and
/// sticky canary buckets (the same in every process and language).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
pub use kind::{DType, ModelKind};
pub use manifest::{Manifest, ManifestDraft};
pub use registry::{LogFollower, ModelName, ModelState, Registry};
