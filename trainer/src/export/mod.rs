//! ONNX export of the trained models.

/// The emotion pipeline (TF-IDF + logistic regression) as one graph.
pub mod text;
/// Gradient-boosted trees as `TreeEnsembleRegressor` graphs.
pub mod trees;
