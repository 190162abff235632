//! Training data: the columns of each kind, loading CSV and Parquet with
//! errors that name the row and column, and the fixed holdout split.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nurture_models::ModelKind;
use nurture_models::kind::InputContract;

use crate::error::{Error, Result};

/// Column every dataset starts with: a stable id of the lead (or message).
/// Rows sharing an id land on the same side of the split.
pub const ID_COLUMN: &str = "lead_id";
/// Column holding the text of an emotion dataset.
pub const TEXT_COLUMN: &str = "text";

/// Share of ids (in percent) that go to the holdout.
pub const HOLDOUT_PERCENT: u64 = 20;

/// Name of the label column of a kind's dataset.
pub fn label_column(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Emotion => "emotion",
        ModelKind::Churn => "churned",
        ModelKind::Journey => "stage",
        ModelKind::ChannelTiming => "responded",
        ModelKind::Optimization => "converted",
        // Generic models are not trained here (`load` refuses them).
        ModelKind::Generic => "label",
    }
}

/// The exact header a kind's CSV must have.
pub fn header(kind: ModelKind) -> Vec<String> {
    let mut columns = vec![ID_COLUMN.to_owned()];
    match kind.input() {
        InputContract::Text => columns.push(TEXT_COLUMN.to_owned()),
        InputContract::Any => {}
        InputContract::Features => {
            columns.extend(kind.allowed_features().into_iter().map(str::to_owned))
        }
    }
    columns.push(label_column(kind).to_owned());
    columns
}

/// How a label is written in the CSV: class names for multi-class kinds,
/// 0/1 for binary ones.
pub fn label_text(kind: ModelKind, class: usize) -> String {
    match kind {
        ModelKind::Emotion | ModelKind::Journey => kind.labels()[class].to_owned(),
        _ => class.to_string(),
    }
}

fn parse_label(kind: ModelKind, value: &str) -> Option<usize> {
    match kind {
        ModelKind::Emotion | ModelKind::Journey => {
            kind.labels().iter().position(|label| *label == value)
        }
        _ => match value {
            "0" => Some(0),
            "1" => Some(1),
            _ => None,
        },
    }
}

/// Whether an id belongs to the holdout: FNV-1a (64 bit) of its bytes,
/// modulo 100, below [`HOLDOUT_PERCENT`]. Fixed, so every version of a model
/// (and the scikit-learn reference) is scored on the same rows.
pub fn is_holdout(id: &str) -> bool {
    nurture_models::fnv1a64(id.as_bytes()) % 100 < HOLDOUT_PERCENT
}

/// Inputs of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// Row-major feature matrix, `rows × features.len()`.
    Features {
        /// Column names.
        names: Vec<String>,
        /// Values.
        values: Vec<f32>,
    },
    /// One text per row.
    Texts(Vec<String>),
}

/// A loaded, validated dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Kind it trains.
    pub kind: ModelKind,
    /// Id of each row.
    pub ids: Vec<String>,
    /// Inputs.
    pub inputs: Inputs,
    /// Class index of each row.
    pub labels: Vec<usize>,
    /// Weight of each row in fitting (`None`: every row 1).
    pub weights: Option<Vec<f64>>,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of feature columns (0 for text).
    pub fn width(&self) -> usize {
        match &self.inputs {
            Inputs::Features { names, .. } => names.len(),
            Inputs::Texts(_) => 0,
        }
    }

    /// Feature row `row`.
    pub fn row(&self, row: usize) -> &[f32] {
        match &self.inputs {
            Inputs::Features { values, names } => {
                &values[row * names.len()..(row + 1) * names.len()]
            }
            Inputs::Texts(_) => &[],
        }
    }

    /// Text of row `row`.
    pub fn text(&self, row: usize) -> &str {
        match &self.inputs {
            Inputs::Texts(texts) => &texts[row],
            Inputs::Features { .. } => "",
        }
    }

    /// The rows selected by `keep`, in order.
    pub fn subset(&self, keep: impl Fn(usize) -> bool) -> Dataset {
        let rows: Vec<usize> = (0..self.len()).filter(|row| keep(*row)).collect();
        let inputs = match &self.inputs {
            Inputs::Features { names, .. } => Inputs::Features {
                names: names.clone(),
                values: rows
                    .iter()
                    .flat_map(|row| self.row(*row).iter().copied())
                    .collect(),
            },
            Inputs::Texts(texts) => {
                Inputs::Texts(rows.iter().map(|row| texts[*row].clone()).collect())
            }
        };
        Dataset {
            kind: self.kind,
            ids: rows.iter().map(|row| self.ids[*row].clone()).collect(),
            inputs,
            labels: rows.iter().map(|row| self.labels[*row]).collect(),
            weights: self
                .weights
                .as_ref()
                .map(|w| rows.iter().map(|row| w[*row]).collect()),
        }
    }

    /// Every row weighted `weight`.
    pub fn with_weight(self, weight: f64) -> Dataset {
        Dataset {
            weights: Some(vec![weight; self.len()]),
            ..self
        }
    }

    /// The rows of `self`, then those of `other`, which must have the same
    /// kind and inputs (the same feature columns, in order).
    pub fn concat(mut self, other: Dataset) -> Result<Dataset> {
        let same_inputs = match (&self.inputs, &other.inputs) {
            (Inputs::Features { names: a, .. }, Inputs::Features { names: b, .. }) => a == b,
            (Inputs::Texts(_), Inputs::Texts(_)) => true,
            _ => false,
        };
        if self.kind != other.kind || !same_inputs {
            return Err(Error::usage(
                "datasets to combine must be of one kind, with the same feature columns",
            ));
        }
        let mut weights = self.weights.take().unwrap_or_else(|| vec![1.0; self.len()]);
        weights.extend(
            other
                .weights
                .unwrap_or_else(|| vec![1.0; other.labels.len()]),
        );
        match (&mut self.inputs, other.inputs) {
            (Inputs::Features { values, .. }, Inputs::Features { values: more, .. }) => {
                values.extend(more)
            }
            (Inputs::Texts(texts), Inputs::Texts(more)) => texts.extend(more),
            _ => unreachable!("checked above"),
        }
        self.ids.extend(other.ids);
        self.labels.extend(other.labels);
        self.weights = Some(weights);
        Ok(self)
    }

    /// Keeps only the named feature columns, in the given order.
    pub fn select_features(&self, selected: &[String]) -> Result<Dataset> {
        let Inputs::Features { names, values } = &self.inputs else {
            return Err(Error::usage("--features applies to tabular kinds only"));
        };
        let mut columns = Vec::new();
        for name in selected {
            let index = names.iter().position(|n| n == name).ok_or_else(|| {
                Error::usage(format!(
                    "--features names {name:?}, which the dataset does not have"
                ))
            })?;
            columns.push(index);
        }
        let width = names.len();
        let values = (0..self.len())
            .flat_map(|row| {
                columns
                    .iter()
                    .map(move |column| values[row * width + column])
            })
            .collect();
        Ok(Dataset {
            inputs: Inputs::Features {
                names: selected.to_vec(),
                values,
            },
            ..self.clone()
        })
    }

    /// Splits into (train, holdout) by [`is_holdout`] of each row's id.
    pub fn split(&self) -> (Dataset, Dataset) {
        let train = self.subset(|row| !is_holdout(&self.ids[row]));
        let holdout = self.subset(|row| is_holdout(&self.ids[row]));
        (train, holdout)
    }

    /// Rows per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.kind.labels().len()];
        for label in &self.labels {
            counts[*label] += 1;
        }
        counts
    }
}

/// A table as read from a file: column names, and each row's cells as
/// text with its position (CSV: line, the header being line 1; Parquet:
/// row, from 1).
struct Table {
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

/// Loads a kind's training data from CSV (`.csv`) or Parquet (`.parquet`,
/// `.pq`). The columns may come in any order and may be any subset of the
/// kind's features (at least one), beside the label (required), the text
/// (emotion) and `lead_id` (optional: without it, rows are ids `row-N`).
/// Flags take `true`/`false` or `1`/`0`, as do binary labels. A missing
/// value is an error naming its row and column: nothing is imputed.
pub fn load(kind: ModelKind, path: &Path) -> Result<Dataset> {
    if kind == ModelKind::Generic {
        return Err(Error::usage(
            "nurture-trainer trains the five typed kinds; publish other ONNX models with nurturectl publish --generic NAME FILE",
        ));
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let table = match extension.as_str() {
        "csv" => read_csv(path)?,
        "parquet" | "pq" => read_parquet(path)?,
        other => {
            return Err(Error::data(
                path,
                None,
                None,
                format!("unsupported format {other:?}: use a .csv or .parquet file"),
            ));
        }
    };
    from_table(kind, path, table)
}

fn read_csv(path: &Path) -> Result<Table> {
    let file = std::fs::File::open(path)
        .map_err(|error| Error::data(path, None, None, format!("cannot open: {error}")))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file);
    let header: Vec<String> = reader
        .headers()
        .map_err(|error| {
            Error::data(
                path,
                Some(1),
                None,
                format!("cannot read the header: {error}"),
            )
        })?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record =
            record.map_err(|error| Error::data(path, Some(line), None, error.to_string()))?;
        if record.len() != header.len() {
            return Err(Error::data(
                path,
                Some(line),
                None,
                format!(
                    "has {} fields, the header has {}",
                    record.len(),
                    header.len()
                ),
            ));
        }
        rows.push((line, record.iter().map(str::to_owned).collect()));
    }
    Ok(Table { header, rows })
}

fn read_parquet(path: &Path) -> Result<Table> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path)
        .map_err(|error| Error::data(path, None, None, format!("cannot open: {error}")))?;
    let not_parquet = |error: parquet::errors::ParquetError| {
        Error::data(path, None, None, format!("cannot read as Parquet: {error}"))
    };
    let reader = SerializedFileReader::new(file).map_err(not_parquet)?;
    let header: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut rows = Vec::new();
    for (index, row) in reader.get_row_iter(None).map_err(not_parquet)?.enumerate() {
        let row = row.map_err(|error| {
            Error::data(
                path,
                Some(index + 1),
                None,
                format!("cannot read the row: {error}"),
            )
        })?;
        let cells = row
            .get_column_iter()
            .map(|(_, field)| match field {
                Field::Null => String::new(),
                Field::Str(text) => text.clone(),
                Field::Bool(flag) => flag.to_string(),
                other => other.to_string(),
            })
            .collect();
        rows.push((index + 1, cells));
    }
    Ok(Table { header, rows })
}

/// Parses one cell of feature `name`; `None` names why it is refused.
fn parse_feature(kind: ModelKind, name: &str, raw: &str) -> std::result::Result<f32, String> {
    let feature = kind
        .feature(name)
        .expect("the header was checked against the kind's features");
    if raw.is_empty() {
        return Err("is empty (missing values are not imputed: fill or drop the row)".to_owned());
    }
    let value = match (feature.unit, raw.to_ascii_lowercase().as_str()) {
        (nurture_models::features::FeatureUnit::Flag, "true") => 1.0,
        (nurture_models::features::FeatureUnit::Flag, "false") => 0.0,
        _ => raw
            .parse::<f64>()
            .map_err(|_| format!("{raw:?} is not a number"))?,
    };
    if !feature.unit.accepts(value) {
        let (low, high) = feature.unit.range();
        let range = if high == f64::MAX {
            format!(">= {low}")
        } else {
            format!("in [{low}, {high}]")
        };
        return Err(format!("{raw} is not a finite value {range}"));
    }
    Ok(value as f32)
}

fn from_table(kind: ModelKind, path: &Path, table: Table) -> Result<Dataset> {
    let Table { header, rows } = table;
    if header.iter().all(String::is_empty) {
        return Err(Error::data(
            path,
            None,
            None,
            "the file is empty".to_owned(),
        ));
    }
    let layout = check_header(kind, path, &header)?;
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut values = Vec::new();
    let mut texts = Vec::new();
    for (at, cells) in &rows {
        let line = Some(*at);
        let id = match layout.id {
            Some(column) => {
                let id = cells[column].trim();
                if id.is_empty() {
                    return Err(Error::data(
                        path,
                        line,
                        Some(ID_COLUMN),
                        "is empty".to_owned(),
                    ));
                }
                id.to_owned()
            }
            None => format!("row-{at}"),
        };
        ids.push(id);
        if let Some(column) = layout.text {
            texts.push(cells[column].clone());
        }
        for (name, column) in &layout.features {
            let raw = cells[*column].trim();
            let value = parse_feature(kind, name, raw)
                .map_err(|reason| Error::data(path, line, Some(name), reason))?;
            values.push(value);
        }
        let raw_label = cells[layout.label].trim();
        let binary = match raw_label.to_ascii_lowercase().as_str() {
            "true" if kind.labels().len() == 2 => Some(1),
            "false" if kind.labels().len() == 2 => Some(0),
            _ => None,
        };
        let label = binary
            .or_else(|| parse_label(kind, raw_label))
            .ok_or_else(|| {
                let allowed: Vec<String> = (0..kind.labels().len())
                    .map(|class| label_text(kind, class))
                    .collect();
                Error::data(
                    path,
                    line,
                    Some(label_column(kind)),
                    format!("{raw_label:?} is not one of {}", allowed.join(", ")),
                )
            })?;
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(Error::data(
            path,
            None,
            None,
            "has a header but no rows".to_owned(),
        ));
    }
    let classes: BTreeSet<usize> = labels.iter().copied().collect();
    if classes.len() < 2 {
        return Err(Error::data(
            path,
            None,
            Some(label_column(kind)),
            format!(
                "every row has the same label ({}); a model needs at least two classes",
                label_text(kind, labels[0])
            ),
        ));
    }
    let inputs = match kind.input() {
        InputContract::Any => unreachable!("generic kinds are refused above"),
        InputContract::Text => Inputs::Texts(texts),
        InputContract::Features => Inputs::Features {
            names: layout.features.iter().map(|(f, _)| f.clone()).collect(),
            values,
        },
    };
    Ok(Dataset {
        kind,
        ids,
        inputs,
        labels,
        weights: None,
    })
}

/// Where each needed column is in a file's header.
struct Layout {
    id: Option<usize>,
    text: Option<usize>,
    label: usize,
    /// The features present, in the kind's order, with their columns.
    features: Vec<(String, usize)>,
}

fn check_header(kind: ModelKind, path: &Path, found: &[String]) -> Result<Layout> {
    let label_name = label_column(kind);
    let allowed = kind.allowed_features();
    let takes = || {
        let mut parts = vec![format!("the label {label_name}")];
        if kind.input() == InputContract::Text {
            parts.push(format!("the text column {TEXT_COLUMN}"));
        } else {
            parts.push(format!("any of the features {}", allowed.join(",")));
        }
        parts.push(format!("optionally {ID_COLUMN}"));
        parts.join(", ")
    };
    for (index, column) in found.iter().enumerate() {
        if found[..index].contains(column) {
            return Err(Error::data(
                path,
                Some(1),
                Some(column),
                "appears twice".to_owned(),
            ));
        }
        let known = column == ID_COLUMN
            || column == label_name
            || (kind.input() == InputContract::Text && column == TEXT_COLUMN)
            || (kind.input() == InputContract::Features && allowed.contains(&column.as_str()));
        if !known {
            return Err(Error::data(
                path,
                Some(1),
                Some(column),
                format!("unexpected column (a {kind} dataset takes {})", takes()),
            ));
        }
    }
    let position = |name: &str| found.iter().position(|c| c == name);
    let label = position(label_name).ok_or_else(|| {
        Error::data(
            path,
            Some(1),
            Some(label_name),
            format!("missing column (a {kind} dataset takes {})", takes()),
        )
    })?;
    let text = position(TEXT_COLUMN);
    if kind.input() == InputContract::Text && text.is_none() {
        return Err(Error::data(
            path,
            Some(1),
            Some(TEXT_COLUMN),
            format!("missing column (a {kind} dataset takes {})", takes()),
        ));
    }
    let features: Vec<(String, usize)> = allowed
        .iter()
        .filter_map(|name| position(name).map(|column| ((*name).to_owned(), column)))
        .collect();
    if kind.input() == InputContract::Features && features.is_empty() {
        return Err(Error::data(
            path,
            Some(1),
            None,
            format!("no feature column (a {kind} dataset takes {})", takes()),
        ));
    }
    Ok(Layout {
        id: position(ID_COLUMN),
        text,
        label,
        features,
    })
}

/// Default file name of a kind's dataset inside a data folder.
pub fn default_file(folder: &Path, kind: ModelKind) -> PathBuf {
    folder.join(format!("{kind}.csv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_about_a_fifth_and_stable() {
        let held = (0..10_000)
            .filter(|i| is_holdout(&format!("lead-{i}")))
            .count();
        assert!((1_800..2_200).contains(&held), "{held}");
        assert!(is_holdout("lead-3") == is_holdout("lead-3"));
    }

    #[test]
    fn header_lists_id_features_and_label() {
        let churn = header(ModelKind::Churn);
        assert_eq!(churn.first().map(String::as_str), Some("lead_id"));
        assert_eq!(churn.last().map(String::as_str), Some("churned"));
        assert_eq!(header(ModelKind::Emotion), ["lead_id", "text", "emotion"]);
    }
}
