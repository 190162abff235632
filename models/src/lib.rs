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
/// Parses `250ms`, `2s`, `1m`, `12h`, `180d` or a bare number of seconds.
pub fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a duration (e.g. 250ms, 2s, 1m)"))?;
    if !number.is_finite() || number < 0.0 {
        return Err(format!("{value:?} must be a non-negative duration"));
    }
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {value:?}; use us, ms, s, m, h or d"
            ));
        }
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

pub use kind::{DType, ModelKind};
pub use manifest::{Manifest, ManifestDraft};
pub use registry::{LogFollower, ModelName, ModelState, Registry};
