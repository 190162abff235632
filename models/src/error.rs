//! The one error type of `nurture-models`.

use std::path::PathBuf;

/// Errors from model kinds, manifests, ONNX Runtime checks and the registry.
///
/// `Clone` so that a batch-wide failure can be sent to every waiting request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A user-supplied value is malformed; `field` names it.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field, e.g. `name` or `manifest.features[3]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The ONNX file does not meet the kind's contract (or is not ONNX).
    #[error("model does not meet the {kind} contract: {reason}")]
    Contract {
        /// The kind whose contract was checked.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// The ONNX Runtime library could not be found or loaded.
    #[error("ONNX Runtime library not available: {0}")]
    RuntimeUnavailable(String),
    /// ONNX Runtime failed while running a model.
    #[error("ONNX Runtime error: {0}")]
    Runtime(String),
    /// No such model or version.
    #[error("{0} not found")]
    NotFound(String),
    /// The operation is not allowed in the current state (e.g. promoting a
    /// revoked version without force).
    #[error("{0}")]
    Refused(String),
    /// Another writer appended to the release log first; nothing was written.
    #[error("conflict: {0}; nothing was written, re-read the state and retry")]
    Conflict(String),
    /// Stored bytes do not match the sha256 recorded in their manifest.
    #[error("integrity check failed for {object}: sha256 is {actual}, manifest says {expected}")]
    Integrity {
        /// The object that failed the check.
        object: String,
        /// sha256 from the manifest.
        expected: String,
        /// sha256 of the bytes read.
        actual: String,
    },
    /// The release log or a stored object cannot be understood.
    #[error("corrupt registry data at {object}: {reason}")]
    Corrupt {
        /// The object path.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// The object store failed (network, permissions, ...).
    #[error("object store error: {0}")]
    Store(String),
    /// A local file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
}

impl Error {
    /// Builds [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Builds [`Error::Contract`].
    pub fn contract(kind: impl ToString, reason: impl Into<String>) -> Self {
        Error::Contract {
            kind: kind.to_string(),
            reason: reason.into(),
        }
    }

    /// A short, bounded class name, fit for metric labels and scripts.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "invalid_argument",
            Error::Contract { .. } => "contract_violation",
            Error::RuntimeUnavailable(_) => "runtime_unavailable",
            Error::Runtime(_) => "runtime_error",
            Error::NotFound(_) => "not_found",
            Error::Refused(_) => "refused",
            Error::Conflict(_) => "conflict",
            Error::Integrity { .. } => "sha256_mismatch",
            Error::Corrupt { .. } => "corrupt",
            Error::Store(_) => "store_error",
            Error::Io { .. } => "io_error",
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { path, .. } => Error::NotFound(format!("object {path}")),
            other => Error::Store(other.to_string()),
        }
    }
}

impl From<ort::Error> for Error {
    fn from(error: ort::Error) -> Self {
        Error::Runtime(error.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
