//! Building model input rows from a lead's features, by the names a
//! version's manifest lists.

use crate::error::{Error, Result};
use crate::features::{Feature, LEAD_FEATURES};
use crate::kind::ModelKind;

/// A lead's feature values, indexed like [`LEAD_FEATURES`]; `None` when the
/// caller did not send the field.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadValues {
    /// Stable lead id (may be empty).
    pub id: String,
    /// Values by [`LEAD_FEATURES`] index.
    pub values: [Option<f64>; LEAD_FEATURES.len()],
}

impl LeadValues {
    /// A lead with no values.
    pub fn empty(id: impl Into<String>) -> Self {
        LeadValues {
            id: id.into(),
            values: [None; LEAD_FEATURES.len()],
        }
    }

    /// Checks every value that is present against its feature's range;
    /// `field` prefixes the error's field name (e.g. `leads[3]`).
    pub fn validate(&self, field: &str) -> Result<()> {
        for (feature, value) in LEAD_FEATURES.iter().zip(&self.values) {
            if let Some(value) = value {
                check(feature, *value, field)?;
            }
        }
        Ok(())
    }
}

fn check(feature: &Feature, value: f64, field: &str) -> Result<()> {
    if feature.unit.accepts(value) {
        return Ok(());
    }
    let (low, high) = feature.unit.range();
    let range = if high == f64::MAX {
        format!(">= {low}")
    } else {
        format!("in [{low}, {high}]")
    };
    Err(Error::invalid(
        format!("{field}.{}", feature.name),
        format!("must be a finite number {range}, got {value}"),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Lead(usize),
    Extra(usize),
}

/// Where each input column of a version comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureLayout {
    kind: ModelKind,
    sources: Vec<Source>,
    names: Vec<String>,
}

impl FeatureLayout {
    /// The layout of a manifest's feature list.
    pub fn new(kind: ModelKind, features: &[String]) -> Result<Self> {
        let sources = features
            .iter()
            .enumerate()
            .map(|(index, name)| {
                if let Some(position) = LEAD_FEATURES.iter().position(|f| f.name == name) {
                    Ok(Source::Lead(position))
                } else if let Some(position) =
                    kind.extra_features().iter().position(|f| f.name == name)
                {
                    Ok(Source::Extra(position))
                } else {
                    Err(Error::invalid(
                        format!("manifest.features[{index}]"),
                        format!("unknown feature {name:?}"),
                    ))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FeatureLayout {
            kind,
            sources,
            names: features.to_vec(),
        })
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.sources.len()
    }

    /// Column names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Index of the lead feature feeding each column, `None` for kind
    /// extras.
    pub fn lead_columns(&self) -> impl Iterator<Item = (usize, Option<usize>)> + '_ {
        self.sources
            .iter()
            .enumerate()
            .map(|(column, source)| match source {
                Source::Lead(index) => (column, Some(*index)),
                Source::Extra(_) => (column, None),
            })
    }

    /// The inverse of [`FeatureLayout::push_row`]: spreads one row of
    /// model columns over lead features (by [`LEAD_FEATURES`] index) and the
    /// kind's extras. Entries no column feeds are left as they are.
    pub fn scatter(&self, row: &[f32], lead: &mut [f64], extra: &mut [f64]) {
        for (source, value) in self.sources.iter().zip(row) {
            let slot = match source {
                Source::Lead(index) => lead.get_mut(*index),
                Source::Extra(index) => extra.get_mut(*index),
            };
            if let Some(slot) = slot {
                *slot = f64::from(*value);
            }
        }
    }

    /// Appends one row: the lead's values and `extra` (the kind's extra
    /// features in [`ModelKind::extra_features`] order). A value the version
    /// needs but the lead lacks is an error naming `{field}.{feature}`.
    pub fn push_row(
        &self,
        lead: &LeadValues,
        extra: &[f64],
        field: &str,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        for source in &self.sources {
            let value = match source {
                Source::Lead(index) => lead.values[*index].ok_or_else(|| {
                    Error::invalid(
                        format!("{field}.{}", LEAD_FEATURES[*index].name),
                        format!("is required by the serving {} model", self.kind),
                    )
                })?,
                Source::Extra(index) => extra[*index],
            };
            out.push(value as f32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_manifest_order_and_name_missing_fields() {
        let layout = FeatureLayout::new(
            ModelKind::ChannelTiming,
            &["slot_hour".to_owned(), "email_open_rate".to_owned()],
        )
        .unwrap();
        let mut lead = LeadValues::empty("l1");
        let mut row = Vec::new();
        let error = layout
            .push_row(
                &lead,
                &[0.0, 1.0, 0.0, 0.0, 5.0, 13.0],
                "inputs[2].lead",
                &mut row,
            )
            .unwrap_err();
        assert!(
            error.to_string().contains("inputs[2].lead.email_open_rate"),
            "{error}"
        );
        lead.values[3] = Some(0.25);
        row.clear();
        layout
            .push_row(&lead, &[0.0, 1.0, 0.0, 0.0, 5.0, 13.0], "x", &mut row)
            .unwrap();
        assert_eq!(row, vec![13.0, 0.25]);

        let mut values = [f64::NAN; LEAD_FEATURES.len()];
        let mut extra = [f64::NAN; 6];
        layout.scatter(&row, &mut values, &mut extra);
        assert_eq!(values[3], 0.25);
        assert_eq!(extra[5], 13.0);
        assert_eq!(
            values.iter().filter(|v| v.is_nan()).count(),
            LEAD_FEATURES.len() - 1
        );
        assert_eq!(extra.iter().filter(|v| v.is_nan()).count(), 5);
    }

    #[test]
    fn validation_names_the_field() {
        let mut lead = LeadValues::empty("l1");
        lead.values[8] = Some(-1.0);
        let error = lead.validate("leads[0]").unwrap_err().to_string();
        assert!(
            error.contains("leads[0].messages_sent_30d") && error.contains(">= 0"),
            "{error}"
        );
        lead.values[8] = Some(f64::NAN);
        assert!(lead.validate("leads[0]").is_err());
    }
}
