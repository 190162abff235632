//! Manifests: what the registry stores beside each version's ONNX bytes.
//!
//! A [`ManifestDraft`] is what an ML engineer (or the trainer) supplies; the
//! registry validates it against the kind, inspects the ONNX graph and writes
//! the complete [`Manifest`]. Both are JSON.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kind::{DType, InputContract, ModelKind};

/// Version of the manifest format written by this crate.
pub const MANIFEST_FORMAT: u32 = 1;

/// Default churn risk thresholds: boundaries between very_low | low | medium |
/// high | critical.
pub const DEFAULT_RISK_THRESHOLDS: [f64; 4] = [0.1, 0.25, 0.5, 0.75];

/// Name, element type and shape of one graph input or output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; -1 for a dynamic one.
    pub shape: Vec<i64>,
}

/// An input with the output the version must reproduce (within 1e-4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenExample {
    /// Feature values in manifest feature order (tabular kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<f32>>,
    /// Input text (emotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Expected `probabilities` row.
    pub probabilities: Vec<f32>,
}

/// The part of a manifest that its author supplies (`nurturectl publish
/// --manifest FILE`). Every field is optional; unknown fields are refused so
/// that a typo is not silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDraft {
    /// Kind; when given it must match the kind being published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModelKind>,
    /// Feature names in input-column order (tabular kinds). Defaults to every
    /// feature the kind allows, in [`ModelKind::allowed_features`] order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Class names in output-column order; must equal the kind's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Churn only: four ascending probabilities separating the risk levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_thresholds: Option<[f64; 4]>,
    /// Holdout metrics (e.g. `auc`, `log_loss`, `macro_f1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Training mean of each feature, for factor explanations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_means: BTreeMap<String, f64>,
    /// Relative importance of each feature.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_importances: BTreeMap<String, f64>,
    /// Inputs with their expected outputs, replayed before serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub golden: Vec<GoldenExample>,
    /// sha256 of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// Version of the tool that produced the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer_version: Option<String>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Training distribution of every feature and of the score, for
    /// label-free drift (`feedback::reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::feedback::reference::Reference>,
    /// When the version was retrained from production feedback: how it
    /// compared with the champion it challenged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain: Option<RetrainEvidence>,
}

/// Why a version retrained from feedback was released: the champion and the
/// challenger scored on the same time-split holdout of fresh outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainEvidence {
    /// The live version when the challenger was trained.
    pub champion_version: u64,
    /// Metric compared (`auc` or `macro_f1`), higher is better.
    pub metric: String,
    /// The champion's score on the holdout.
    pub champion: f64,
    /// The challenger's score on the holdout.
    pub challenger: f64,
    /// 95% paired-bootstrap interval of challenger − champion.
    pub interval: [f64; 2],
    /// Smallest gain that releases the challenger.
    pub min_gain: f64,
    /// Whether the gate passed.
    pub passed: bool,
    /// Outcomes in the holdout: the newest share, by observation time.
    pub holdout_outcomes: usize,
    /// Outcomes the challenger was fit on before the holdout measured it.
    pub train_outcomes: usize,
    /// Rows of original training data mixed in, and their weight.
    pub mixed_rows: usize,
    /// Weight of each mixed-in row (feedback rows weigh 1).
    pub mixed_weight: f64,
    /// Observation times (ms since the epoch) of the holdout's first and
    /// last outcome.
    pub holdout_observed_ms: [i64; 2],
    /// sha256 of the joined feedback rows (ids, labels, inputs) in order:
    /// the same snapshot gives the same hash, and the same model.
    pub snapshot_sha256: String,
}

/// The stored, immutable description of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] at write time.
    pub format: u32,
    /// Registry name of the model.
    pub name: String,
    /// Model kind.
    pub kind: ModelKind,
    /// Version number, from 1.
    pub version: u64,
    /// Hex sha256 of the ONNX bytes.
    pub sha256: String,
    /// Size of the ONNX bytes.
    pub size_bytes: u64,
    /// Graph inputs as ONNX Runtime reports them.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs as ONNX Runtime reports them.
    pub outputs: Vec<TensorSpec>,
    /// Feature names in input-column order (empty for text kinds).
    pub features: Vec<String>,
    /// Class names in `probabilities` column order.
    pub labels: Vec<String>,
    /// Churn risk thresholds (churn only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_thresholds: Option<[f64; 4]>,
    /// Holdout metrics.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Training mean of each feature.
    #[serde(default)]
    pub feature_means: BTreeMap<String, f64>,
    /// Relative importance of each feature.
    #[serde(default)]
    pub feature_importances: BTreeMap<String, f64>,
    /// Golden examples.
    #[serde(default)]
    pub golden: Vec<GoldenExample>,
    /// sha256 of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// Producer version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer_version: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Training distribution of every feature and of the score, for
    /// label-free drift (`feedback::reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::feedback::reference::Reference>,
    /// Fields the author left out that publishing filled with defaults
    /// (`risk_thresholds`), so that `show` can say so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub defaulted: Vec<String>,
    /// The evidence that released a version retrained from feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain: Option<RetrainEvidence>,
    /// Publication time.
    pub created_at: DateTime<Utc>,
    /// Who published it.
    pub created_by: String,
}

/// A draft checked against its kind: what publishing needs before touching
/// ONNX Runtime or the store.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedDraft {
    /// The kind.
    pub kind: ModelKind,
    /// Resolved feature list.
    pub features: Vec<String>,
    /// Resolved labels.
    pub labels: Vec<String>,
    /// Resolved thresholds (churn only).
    pub risk_thresholds: Option<[f64; 4]>,
    /// The draft as supplied.
    pub draft: ManifestDraft,
}

impl Manifest {
    /// What serving fills in or leaves out because the author did not say:
    /// one line each, for `nurturectl publish` and `show` to print.
    pub fn serving_defaults(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.kind == ModelKind::Churn {
            if self.defaulted.iter().any(|f| f == "risk_thresholds") {
                notes.push(format!(
                    "risk_thresholds not given: the defaults {:?} set each lead's risk level",
                    self.risk_thresholds.unwrap_or(DEFAULT_RISK_THRESHOLDS)
                ));
            }
            if self.feature_means.is_empty() {
                notes.push(
                    "feature_means not given: PredictChurn answers carry no contributing factors"
                        .to_owned(),
                );
            }
        }
        notes
    }

    /// The author-supplied part of this manifest, to check it again (e.g.
    /// when a server loads a version written by someone else).
    pub fn draft(&self) -> ManifestDraft {
        ManifestDraft {
            kind: Some(self.kind),
            features: (!self.features.is_empty()).then(|| self.features.clone()),
            labels: Some(self.labels.clone()),
            risk_thresholds: self.risk_thresholds,
            metrics: self.metrics.clone(),
            feature_means: self.feature_means.clone(),
            feature_importances: self.feature_importances.clone(),
            golden: self.golden.clone(),
            data_hash: self.data_hash.clone(),
            trainer_version: self.trainer_version.clone(),
            description: self.description.clone(),
            reference: self.reference.clone(),
            retrain: self.retrain.clone(),
        }
    }
}

fn check_reference(
    reference: &crate::feedback::reference::Reference,
    features: &[String],
) -> Result<()> {
    let named = reference.features.iter().map(|(name, bins)| {
        (
            format!("manifest.reference.features.{name}"),
            Some(name),
            bins,
        )
    });
    let score = reference
        .score
        .iter()
        .map(|bins| ("manifest.reference.score".to_owned(), None, bins));
    for (field, name, bins) in named.chain(score) {
        if let Some(name) = name
            && !features.contains(name)
        {
            return Err(Error::invalid(
                field,
                "names a feature missing from manifest.features",
            ));
        }
        let ascending = bins.edges.windows(2).all(|w| w[0] < w[1]);
        let finite = bins
            .edges
            .iter()
            .chain(&bins.expected)
            .all(|v| v.is_finite());
        let total: f64 = bins.expected.iter().sum();
        if !ascending
            || !finite
            || bins.expected.len() != bins.edges.len() + 1
            || bins.expected.iter().any(|share| *share < 0.0)
            || (total - 1.0).abs() > 1e-6
        {
            return Err(Error::invalid(
                field,
                "needs ascending finite edges and one share per bin, the shares adding up to 1",
            ));
        }
    }
    Ok(())
}

impl ManifestDraft {
    /// Parses a draft from JSON, naming the offending field on error.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|error| Error::invalid("manifest", error.to_string()))
    }

    /// Checks the draft against `kind`: known, unique features; the kind's
    /// labels; ascending thresholds in (0, 1); finite metrics; golden examples
    /// of the right width.
    pub fn check(self, kind: ModelKind) -> Result<CheckedDraft> {
        if let Some(declared) = self.kind
            && declared != kind
        {
            return Err(Error::invalid(
                "manifest.kind",
                format!("manifest says {declared}, but the model is published as {kind}"),
            ));
        }
        let features = match (&self.features, kind.input()) {
            (None, InputContract::Features) => kind
                .allowed_features()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            (None, InputContract::Text | InputContract::Any) => Vec::new(),
            (Some(_), InputContract::Text) => {
                return Err(Error::invalid(
                    "manifest.features",
                    format!("{kind} models take text, not features"),
                ));
            }
            (Some(_), InputContract::Any) => {
                return Err(Error::invalid(
                    "manifest.features",
                    "generic models take the named tensors their graph declares, not features",
                ));
            }
            (Some(features), InputContract::Features) => {
                check_features(kind, features)?;
                features.clone()
            }
        };
        let labels = match &self.labels {
            None => kind
                .labels()
                .iter()
                .map(|label| (*label).to_owned())
                .collect(),
            Some(labels) => {
                if labels.len() != kind.labels().len()
                    || labels.iter().zip(kind.labels()).any(|(a, b)| a != b)
                {
                    return Err(Error::invalid(
                        "manifest.labels",
                        format!(
                            "{kind} models have {} classes {:?}, got {} {:?}",
                            kind.labels().len(),
                            kind.labels(),
                            labels.len(),
                            labels
                        ),
                    ));
                }
                labels.clone()
            }
        };
        let risk_thresholds = match (kind, self.risk_thresholds) {
            (ModelKind::Churn, None) => Some(DEFAULT_RISK_THRESHOLDS),
            (ModelKind::Churn, Some(thresholds)) => {
                let ascending = thresholds.windows(2).all(|pair| pair[0] < pair[1]);
                let inside = thresholds
                    .iter()
                    .all(|t| t.is_finite() && *t > 0.0 && *t < 1.0);
                if !ascending || !inside {
                    return Err(Error::invalid(
                        "manifest.risk_thresholds",
                        format!(
                            "need four strictly ascending probabilities in (0, 1), got {thresholds:?}"
                        ),
                    ));
                }
                Some(thresholds)
            }
            (_, Some(_)) => {
                return Err(Error::invalid(
                    "manifest.risk_thresholds",
                    format!("only churn models have risk thresholds, not {kind}"),
                ));
            }
            (_, None) => None,
        };
        for (name, value) in &self.metrics {
            if !value.is_finite() {
                return Err(Error::invalid(
                    format!("manifest.metrics.{name}"),
                    "must be a finite number",
                ));
            }
        }
        if let Some(reference) = &self.reference {
            check_reference(reference, &features)?;
        }
        for (field, map) in [
            ("feature_means", &self.feature_means),
            ("feature_importances", &self.feature_importances),
        ] {
            for (name, value) in map {
                if !features.contains(name) {
                    return Err(Error::invalid(
                        format!("manifest.{field}.{name}"),
                        "names a feature missing from manifest.features",
                    ));
                }
                if !value.is_finite() {
                    return Err(Error::invalid(
                        format!("manifest.{field}.{name}"),
                        "must be a finite number",
                    ));
                }
            }
        }
        for (index, golden) in self.golden.iter().enumerate() {
            check_golden(kind, index, golden, features.len(), labels.len())?;
        }
        Ok(CheckedDraft {
            kind,
            features,
            labels,
            risk_thresholds,
            draft: self,
        })
    }
}

fn check_features(kind: ModelKind, features: &[String]) -> Result<()> {
    if features.is_empty() {
        return Err(Error::invalid(
            "manifest.features",
            "must name at least one feature",
        ));
    }
    let mut seen = HashSet::new();
    for (index, name) in features.iter().enumerate() {
        if kind.feature(name).is_none() {
            return Err(Error::invalid(
                format!("manifest.features[{index}]"),
                format!(
                    "unknown feature {name:?}: {kind} models may use LeadProfile fields{}",
                    match kind.extra_features() {
                        [] => String::new(),
                        extra => format!(
                            " and {}",
                            extra.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                        ),
                    }
                ),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid(
                format!("manifest.features[{index}]"),
                format!("duplicate feature {name:?}"),
            ));
        }
    }
    Ok(())
}

fn check_golden(
    kind: ModelKind,
    index: usize,
    golden: &GoldenExample,
    width: usize,
    classes: usize,
) -> Result<()> {
    let field = |name: &str| format!("manifest.golden[{index}].{name}");
    match kind.input() {
        InputContract::Features => {
            let Some(values) = &golden.features else {
                return Err(Error::invalid(
                    field("features"),
                    "required for tabular kinds",
                ));
            };
            if values.len() != width {
                return Err(Error::invalid(
                    field("features"),
                    format!("has {} values for {width} features", values.len()),
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid(field("features"), "values must be finite"));
            }
        }
        InputContract::Text => {
            if golden.text.is_none() {
                return Err(Error::invalid(field("text"), "required for emotion models"));
            }
        }
        InputContract::Any => {
            return Err(Error::invalid(
                field("probabilities"),
                "golden examples are not supported for generic models",
            ));
        }
    }
    if golden.probabilities.len() != classes {
        return Err(Error::invalid(
            field("probabilities"),
            format!(
                "has {} values for {classes} classes",
                golden.probabilities.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_draft_takes_the_kind_defaults() {
        let checked = ManifestDraft::default().check(ModelKind::Churn).unwrap();
        assert_eq!(
            checked.features.len(),
            ModelKind::Churn.allowed_features().len()
        );
        assert_eq!(checked.labels, ["retained", "churned"]);
        assert_eq!(checked.risk_thresholds, Some(DEFAULT_RISK_THRESHOLDS));
        let emotion = ManifestDraft::default().check(ModelKind::Emotion).unwrap();
        assert!(emotion.features.is_empty());
        assert_eq!(emotion.risk_thresholds, None);
    }

    #[test]
    fn unknown_features_are_named_with_their_index() {
        let draft = ManifestDraft {
            features: Some(vec!["email_open_rate".into(), "shoe_size".into()]),
            ..Default::default()
        };
        let error = draft.check(ModelKind::Churn).unwrap_err().to_string();
        assert!(error.contains("manifest.features[1]"), "{error}");
        assert!(error.contains("shoe_size"), "{error}");
    }

    #[test]
    fn slot_features_are_allowed_only_for_channel_timing() {
        let draft = ManifestDraft {
            features: Some(vec!["slot_hour".into()]),
            ..Default::default()
        };
        assert!(draft.clone().check(ModelKind::ChannelTiming).is_ok());
        assert!(draft.check(ModelKind::Journey).is_err());
    }

    #[test]
    fn labels_must_match_the_kind() {
        let draft = ManifestDraft {
            labels: Some(vec!["a".into(), "b".into(), "c".into()]),
            ..Default::default()
        };
        let error = draft.check(ModelKind::Churn).unwrap_err().to_string();
        assert!(
            error.contains("manifest.labels") && error.contains("2 classes"),
            "{error}"
        );
    }

    #[test]
    fn thresholds_must_ascend_and_belong_to_churn() {
        let bad = ManifestDraft {
            risk_thresholds: Some([0.5, 0.2, 0.7, 0.9]),
            ..Default::default()
        };
        assert!(
            bad.check(ModelKind::Churn)
                .unwrap_err()
                .to_string()
                .contains("risk_thresholds")
        );
        let misplaced = ManifestDraft {
            risk_thresholds: Some([0.1, 0.2, 0.3, 0.4]),
            ..Default::default()
        };
        assert!(misplaced.check(ModelKind::Journey).is_err());
    }

    #[test]
    fn unknown_draft_fields_are_refused() {
        let error = ManifestDraft::from_json(br#"{"featurs": []}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("featurs"), "{error}");
    }

    #[test]
    fn golden_examples_must_fit_the_features() {
        let draft = ManifestDraft {
            features: Some(vec!["email_open_rate".into()]),
            golden: vec![GoldenExample {
                features: Some(vec![0.1, 0.2]),
                text: None,
                probabilities: vec![0.5, 0.5],
            }],
            ..Default::default()
        };
        let error = draft.check(ModelKind::Churn).unwrap_err().to_string();
        assert!(error.contains("manifest.golden[0].features"), "{error}");
    }
}
