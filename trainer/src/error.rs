//! The trainer's error type.

use std::path::{Path, PathBuf};

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad training data; names the file, line and column where known.
    #[error("{}{}{}: {reason}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default(), column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default())]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line (the header is line 1).
        line: Option<usize>,
        /// Column name.
        column: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The exported model does not reproduce the trainer's predictions.
    #[error("parity check failed: {0}")]
    Parity(String),
    /// The quality gate refused a promotion.
    #[error("quality gate: {0}")]
    Gate(String),
    /// Training failed.
    #[error("training failed: {0}")]
    Training(String),
    /// Registry or ONNX Runtime error.
    #[error(transparent)]
    Models(#[from] nurture_models::Error),
    /// File system error.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        reason: String,
    },
}

impl Error {
    /// Builds [`Error::Data`].
    pub fn data(path: &Path, line: Option<usize>, column: Option<&str>, reason: String) -> Self {
        Error::Data {
            path: path.to_path_buf(),
            line,
            column: column.map(str::to_owned),
            reason,
        }
    }

    /// Builds [`Error::Usage`].
    pub fn usage(reason: impl Into<String>) -> Self {
        Error::Usage(reason.into())
    }

    /// Builds [`Error::Io`].
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            reason: error.to_string(),
        }
    }
}

impl From<ort::Error> for Error {
    fn from(error: ort::Error) -> Self {
        Error::Models(nurture_models::Error::Runtime(error.to_string()))
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
