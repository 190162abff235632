//! The five model kinds and the contract each one's ONNX graph must meet.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::features::{Feature, LEAD_FEATURES, SLOT_FEATURES, VARIANT_FEATURES};

/// A model kind: what a model answers and the shape of its ONNX graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Text → distribution over ten emotional states.
    Emotion,
    /// Lead features → churn probability.
    Churn,
    /// Lead features → journey stage probabilities.
    Journey,
    /// Lead features + candidate slot → response probability.
    ChannelTiming,
    /// Lead features + message variant → conversion probability.
    Optimization,
    /// Any ONNX model, served through the Open Inference Protocol; its
    /// signature, read from the graph at publish time, is its contract.
    Generic,
}

/// The ten emotional states, in output-column order.
pub const EMOTION_LABELS: &[&str] = &[
    "excited",
    "anxious",
    "frustrated",
    "confident",
    "hopeful",
    "confused",
    "disappointed",
    "satisfied",
    "overwhelmed",
    "neutral",
];

/// The five journey stages, in output-column order.
pub const JOURNEY_LABELS: &[&str] = &[
    "initial_interest",
    "active_search",
    "property_evaluation",
    "decision_making",
    "ready_to_buy",
];

/// Churn classes; column 1 is the churn probability.
pub const CHURN_LABELS: &[&str] = &["retained", "churned"];
/// Channel-timing classes; column 1 is the response probability.
pub const CHANNEL_TIMING_LABELS: &[&str] = &["no_response", "response"];
/// Optimization classes; column 1 is the conversion probability.
pub const OPTIMIZATION_LABELS: &[&str] = &["no_conversion", "conversion"];

/// Name of the single input of tabular kinds: float32 `[batch, n_features]`.
pub const FEATURES_INPUT: &str = "features";
/// Name of the single input of the emotion kind: string `[batch]` or `[batch, 1]`.
pub const TEXT_INPUT: &str = "text";
/// Name of the output every kind must have: float32 `[batch, n_labels]`.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";

/// Element type of a tensor, as far as contracts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit signed integer.
    Int32,
    /// UTF-8 string.
    String,
    /// Boolean.
    Bool,
    /// Anything else (named for messages only).
    Other,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::String => "string",
            DType::Bool => "bool",
            DType::Other => "other",
        };
        f.write_str(name)
    }
}

/// What a kind's graph must accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputContract {
    /// One float32 input named [`FEATURES_INPUT`], shape `[batch, n_features]`.
    Features,
    /// One string input named [`TEXT_INPUT`], shape `[batch]` or `[batch, 1]`.
    Text,
    /// Whatever the graph declares (generic models).
    Any,
}

impl ModelKind {
    /// The five typed kinds (each with its own RPC), in a stable order.
    /// [`ModelKind::Generic`] is not among them.
    pub const ALL: [ModelKind; 5] = [
        ModelKind::Emotion,
        ModelKind::Churn,
        ModelKind::Journey,
        ModelKind::ChannelTiming,
        ModelKind::Optimization,
    ];

    /// The kind's name as used in URLs, manifests and CLI arguments.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Emotion => "emotion",
            ModelKind::Churn => "churn",
            ModelKind::Journey => "journey",
            ModelKind::ChannelTiming => "channel_timing",
            ModelKind::Optimization => "optimization",
            ModelKind::Generic => "generic",
        }
    }

    /// Output class names, in column order of the `probabilities` output.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            ModelKind::Emotion => EMOTION_LABELS,
            ModelKind::Churn => CHURN_LABELS,
            ModelKind::Journey => JOURNEY_LABELS,
            ModelKind::ChannelTiming => CHANNEL_TIMING_LABELS,
            ModelKind::Optimization => OPTIMIZATION_LABELS,
            ModelKind::Generic => &[],
        }
    }

    /// The input the kind's graph must take.
    pub fn input(self) -> InputContract {
        match self {
            ModelKind::Emotion => InputContract::Text,
            ModelKind::Generic => InputContract::Any,
            _ => InputContract::Features,
        }
    }

    /// Features the kind may use besides the lead's own.
    pub fn extra_features(self) -> &'static [Feature] {
        match self {
            ModelKind::ChannelTiming => SLOT_FEATURES,
            ModelKind::Optimization => VARIANT_FEATURES,
            ModelKind::Emotion | ModelKind::Churn | ModelKind::Journey | ModelKind::Generic => &[],
        }
    }

    /// Looks up a feature this kind may use.
    pub fn feature(self, name: &str) -> Option<&'static Feature> {
        LEAD_FEATURES
            .iter()
            .chain(self.extra_features())
            .find(|feature| feature.name == name)
    }

    /// Every feature this kind may use, lead features first. Also the default
    /// feature list of a manifest that names none.
    pub fn allowed_features(self) -> Vec<&'static str> {
        match self.input() {
            InputContract::Text | InputContract::Any => Vec::new(),
            InputContract::Features => LEAD_FEATURES
                .iter()
                .chain(self.extra_features())
                .map(|feature| feature.name)
                .collect(),
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names no kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown model kind {0:?}; expected one of emotion, churn, journey, channel_timing, optimization, generic (publish other models with --generic NAME FILE)"
)]
pub struct UnknownKind(pub String);

impl FromStr for ModelKind {
    type Err = UnknownKind;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        ModelKind::ALL
            .into_iter()
            .chain([ModelKind::Generic])
            .find(|kind| {
                kind.as_str() == value
                    || (value == "channel-timing" && *kind == ModelKind::ChannelTiming)
            })
            .ok_or_else(|| UnknownKind(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in ModelKind::ALL {
            assert_eq!(kind.as_str().parse::<ModelKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("sentiment".parse::<ModelKind>().is_err());
    }

    #[test]
    fn label_sets_match_the_design() {
        assert_eq!(ModelKind::Emotion.labels().len(), 10);
        assert_eq!(ModelKind::Journey.labels().len(), 5);
        assert_eq!(ModelKind::Churn.labels().len(), 2);
    }

    #[test]
    fn extra_features_belong_to_their_kind_only() {
        assert!(ModelKind::ChannelTiming.feature("slot_hour").is_some());
        assert!(ModelKind::Churn.feature("slot_hour").is_none());
        assert!(
            ModelKind::Optimization
                .feature("variant_length_words")
                .is_some()
        );
        assert!(ModelKind::Emotion.allowed_features().is_empty());
    }
}
