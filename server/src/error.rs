//! The server's error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};

use crate::batcher::queue::Refusal;

/// Errors answering a request. `Clone` so a failed batch can answer every
/// request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The version's queue cannot take the request in time (load shedding).
    #[error("the {model} queue cannot take this request: {refusal}; retry with backoff")]
    Overloaded {
        /// Model name.
        model: String,
        /// What the admission check found.
        refusal: Refusal,
    },
    /// No version is live (yet) for the model.
    #[error("{0}")]
    Unavailable(String),
    /// Unknown model or version.
    #[error("{0}")]
    NotFound(String),
    /// A pinned version may not be served (revoked).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request's deadline passed before inference.
    #[error("deadline exceeded before inference")]
    DeadlineExceeded,
    /// ONNX Runtime failed.
    #[error("inference failed: {0}")]
    Inference(String),
}

impl ServeError {
    /// Bounded label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            ServeError::InvalidArgument(_) => "invalid_argument",
            ServeError::Overloaded { .. } => "overloaded",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::NotFound(_) => "not_found",
            ServeError::FailedPrecondition(_) => "failed_precondition",
            ServeError::AlreadyExists(_) => "already_exists",
            ServeError::DeadlineExceeded => "deadline_exceeded",
            ServeError::Inference(_) => "inference_error",
        }
    }
}

impl From<nurture_models::Error> for ServeError {
    fn from(error: nurture_models::Error) -> Self {
        match error {
            nurture_models::Error::Invalid { .. } => ServeError::InvalidArgument(error.to_string()),
            nurture_models::Error::NotFound(_) => ServeError::NotFound(error.to_string()),
            nurture_models::Error::Conflict(_) => ServeError::AlreadyExists(error.to_string()),
            nurture_models::Error::Store(_) => ServeError::Unavailable(error.to_string()),
            other => ServeError::Inference(other.to_string()),
        }
    }
}

impl From<ServeError> for Status {
    fn from(error: ServeError) -> Self {
        let code = match &error {
            ServeError::InvalidArgument(_) => Code::InvalidArgument,
            ServeError::Overloaded { .. } => Code::ResourceExhausted,
            ServeError::Unavailable(_) => Code::Unavailable,
            ServeError::NotFound(_) => Code::NotFound,
            ServeError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServeError::AlreadyExists(_) => Code::AlreadyExists,
            ServeError::DeadlineExceeded => Code::DeadlineExceeded,
            ServeError::Inference(_) => Code::Internal,
        };
        let mut status = Status::new(code, error.to_string());
        if let ServeError::Overloaded { refusal, .. } = &error {
            let seconds = refusal.retry_after().as_secs().to_string();
            if let Ok(value) = seconds.parse() {
                status.metadata_mut().insert("retry-after", value);
            }
        }
        status
    }
}
