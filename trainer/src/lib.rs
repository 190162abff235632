//! `nurture-trainer`: synthetic datasets, gradient-boosted trees for the
//! tabular kinds, a TF-IDF + logistic-regression text model for emotion, ONNX
//! export, parity checks against ONNX Runtime, and publishing through the
//! registry behind a quality gate.

pub mod dataset;
pub mod error;
pub mod export;
pub mod gbdt;
pub mod generate;
pub mod metrics;
pub mod retrain;
pub mod text;
pub mod train;
pub mod watch;

pub use error::{Error, Result};
