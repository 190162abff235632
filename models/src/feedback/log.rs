//! The prediction log: what each replica served, as Parquet files that
//! DuckDB, Spark or Trino read where they lie.
//!
//! One file holds predictions of one model (one kind), so its columns are
//! that kind's inputs by name:
//!
//! ```text
//! prediction_id   STRING      (required)
//! model           STRING      (required)
//! version         INT64       (required)
//! arm             STRING      (required: live, canary, shadow, pinned)
//! served_at       TIMESTAMP(MILLIS, UTC) (required)
//! replica         STRING      (required)
//! lead_id         STRING      (optional)
//! <lead feature>  DOUBLE      (optional; one column per LeadProfile feature, tabular kinds)
//! <kind feature>  DOUBLE      (optional; slot or variant features)
//! text            STRING      (optional; emotion)
//! predicted       INT32       (required: the most probable class, 0-based)
//! score           DOUBLE      (required: binary kinds the positive class's probability, else the top one)
//! probabilities   LIST<DOUBLE> (required: every class, in label order)
//! ```

use std::sync::Arc;

use parquet::basic::{ConvertedType, LogicalType, Repetition, TimeUnit, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::Arm;
use crate::error::{Error, Result};
use crate::features::LEAD_FEATURES;
use crate::kind::ModelKind;

/// One served prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRecord {
    /// Its id.
    pub prediction_id: InlineStr<192>,
    /// Version that answered.
    pub version: u64,
    /// Arm that answered.
    pub arm: Arm,
    /// When (ms since the Unix epoch).
    pub served_at_ms: i64,
    /// The lead, if the request named one.
    pub lead_id: InlineStr<128>,
    /// Lead features by `LEAD_FEATURES` index, NaN where absent (all NaN
    /// for text kinds).
    pub lead: [f64; LEAD_FEATURES.len()],
    /// The kind's own features (slot, variant) in `extra_features()` order.
    pub extra: Inline<f64, 16>,
    /// The text (emotion).
    pub text: Option<String>,
    /// Every class probability, in label order.
    pub probabilities: Inline<f32, 16>,
}

/// Text of up to `N` bytes kept inline (longer text is cut at a character
/// boundary; an empty one reads as absent where a column is optional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InlineStr<const N: usize> {
    bytes: [u8; N],
    len: u16,
}

impl<const N: usize> InlineStr<N> {
    /// `text`, cut to at most `N` bytes.
    pub fn new(text: &str) -> Self {
        let mut len = text.len().min(N);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; N];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        InlineStr {
            bytes,
            len: len as u16,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The text, or `None` when empty.
    pub fn non_empty(&self) -> Option<&str> {
        (self.len > 0).then(|| self.as_str())
    }
}

/// Up to `N` values kept inline. NOTE: a record is built on the request
/// path and freed on the writer's thread; every heap allocation it carries
/// is a cross-thread free that contends on the allocator's locks, which was
/// most of the log's cost per answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inline<T: Copy + Default, const N: usize> {
    values: [T; N],
    len: u8,
}

impl<T: Copy + Default, const N: usize> Inline<T, N> {
    /// The first `N` values of `values`.
    pub fn new(values: &[T]) -> Self {
        let len = values.len().min(N);
        let mut inline = [T::default(); N];
        inline[..len].copy_from_slice(&values[..len]);
        Inline {
            values: inline,
            len: len as u8,
        }
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        &self.values[..usize::from(self.len)]
    }
}

impl<T: Copy + Default, const N: usize> Default for Inline<T, N> {
    fn default() -> Self {
        Inline::new(&[])
    }
}

impl PredictionRecord {
    /// The class with the highest probability.
    pub fn predicted(&self) -> usize {
        let ps = self.probabilities.as_slice();
        ps.iter()
            .enumerate()
            .fold(0, |best, (i, p)| if *p > ps[best] { i } else { best })
    }

    /// The positive class's probability of a binary kind, else the top one.
    pub fn score(&self) -> f64 {
        match self.probabilities.as_slice() {
            [_, positive] => f64::from(*positive),
            ps => ps.get(self.predicted()).map_or(0.0, |p| f64::from(*p)),
        }
    }
}

fn string(name: &str, repetition: Repetition) -> Result<Arc<Type>> {
    Ok(Arc::new(
        Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
            .with_repetition(repetition)
            .with_logical_type(Some(LogicalType::String))
            .build()
            .map_err(parquet_error)?,
    ))
}

fn primitive(name: &str, physical: Physical, repetition: Repetition) -> Result<Arc<Type>> {
    Ok(Arc::new(
        Type::primitive_type_builder(name, physical)
            .with_repetition(repetition)
            .build()
            .map_err(parquet_error)?,
    ))
}

fn parquet_error(error: parquet::errors::ParquetError) -> Error {
    Error::Store(format!("parquet: {error}"))
}

/// The Parquet schema of a kind's prediction log.
pub fn schema(kind: ModelKind) -> Result<Type> {
    let mut fields = vec![
        string("prediction_id", Repetition::REQUIRED)?,
        string("model", Repetition::REQUIRED)?,
        primitive("version", Physical::INT64, Repetition::REQUIRED)?,
        string("arm", Repetition::REQUIRED)?,
        Arc::new(
            Type::primitive_type_builder("served_at", Physical::INT64)
                .with_repetition(Repetition::REQUIRED)
                .with_logical_type(Some(LogicalType::timestamp(true, TimeUnit::MILLIS)))
                .build()
                .map_err(parquet_error)?,
        ),
        string("replica", Repetition::REQUIRED)?,
        string("lead_id", Repetition::OPTIONAL)?,
    ];
    if kind.input() == crate::kind::InputContract::Features {
        for feature in LEAD_FEATURES {
            fields.push(primitive(
                feature.name,
                Physical::DOUBLE,
                Repetition::OPTIONAL,
            )?);
        }
        for feature in kind.extra_features() {
            fields.push(primitive(
                feature.name,
                Physical::DOUBLE,
                Repetition::OPTIONAL,
            )?);
        }
    }
    if kind.input() == crate::kind::InputContract::Text {
        fields.push(string("text", Repetition::OPTIONAL)?);
    }
    fields.push(primitive(
        "predicted",
        Physical::INT32,
        Repetition::REQUIRED,
    )?);
    fields.push(primitive("score", Physical::DOUBLE, Repetition::REQUIRED)?);
    let element = primitive("element", Physical::DOUBLE, Repetition::REQUIRED)?;
    let list = Arc::new(
        Type::group_type_builder("list")
            .with_repetition(Repetition::REPEATED)
            .with_fields(vec![element])
            .build()
            .map_err(parquet_error)?,
    );
    fields.push(Arc::new(
        Type::group_type_builder("probabilities")
            .with_repetition(Repetition::REQUIRED)
            .with_converted_type(ConvertedType::LIST)
            .with_logical_type(Some(LogicalType::List))
            .with_fields(vec![list])
            .build()
            .map_err(parquet_error)?,
    ));
    Type::group_type_builder("prediction")
        .with_fields(fields)
        .build()
        .map_err(parquet_error)
}

/// One column's values and definition levels, in schema order.
enum Column {
    Strings(Vec<ByteArray>, Option<Vec<i16>>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Doubles(Vec<f64>, Option<Vec<i16>>),
    List(Vec<f64>, Vec<i16>, Vec<i16>),
}

/// A string column whose values all live in one buffer (one allocation
/// for the column, not one per value); `optional` adds definition levels.
fn strings<'a>(values: impl Iterator<Item = Option<&'a str>> + Clone, optional: bool) -> Column {
    let total: usize = values.clone().flatten().map(str::len).sum();
    let mut buffer = Vec::with_capacity(total);
    let mut ranges = Vec::new();
    let mut levels = Vec::new();
    for value in values {
        levels.push(i16::from(value.is_some()));
        if let Some(value) = value {
            ranges.push(buffer.len()..buffer.len() + value.len());
            buffer.extend_from_slice(value.as_bytes());
        }
    }
    let buffer = bytes::Bytes::from(buffer);
    let present = ranges
        .into_iter()
        .map(|range| ByteArray::from(buffer.slice(range)))
        .collect();
    Column::Strings(present, optional.then_some(levels))
}

fn optional_doubles(values: impl Iterator<Item = Option<f64>>) -> Column {
    let mut present = Vec::new();
    let mut levels = Vec::new();
    for value in values {
        levels.push(i16::from(value.is_some()));
        present.extend(value);
    }
    Column::Doubles(present, Some(levels))
}

/// Encodes `records` of one model (of `kind`, served by `replica`) as one
/// Parquet file (one row group, Snappy pages).
pub fn encode(
    model: &str,
    kind: ModelKind,
    replica: &str,
    records: &[PredictionRecord],
) -> Result<Vec<u8>> {
    // Repeated strings share one buffer (cloning a ByteArray shares it).
    let constant = |value: &str| {
        let value = ByteArray::from(value);
        Column::Strings(records.iter().map(|_| value.clone()).collect(), None)
    };
    let arms: Vec<ByteArray> = Arm::ALL
        .iter()
        .map(|arm| ByteArray::from(arm.as_str()))
        .collect();
    let arm_of = |arm: Arm| arms[Arm::ALL.iter().position(|a| *a == arm).unwrap_or(0)].clone();
    let mut columns = vec![
        strings(
            records.iter().map(|r| Some(r.prediction_id.as_str())),
            false,
        ),
        constant(model),
        Column::Int64(records.iter().map(|r| r.version as i64).collect()),
        Column::Strings(records.iter().map(|r| arm_of(r.arm)).collect(), None),
        Column::Int64(records.iter().map(|r| r.served_at_ms).collect()),
        constant(replica),
        strings(records.iter().map(|r| r.lead_id.non_empty()), true),
    ];
    if kind.input() == crate::kind::InputContract::Features {
        for index in 0..LEAD_FEATURES.len() {
            columns.push(optional_doubles(
                records
                    .iter()
                    .map(|r| Some(r.lead[index]).filter(|v| !v.is_nan())),
            ));
        }
        for index in 0..kind.extra_features().len() {
            columns.push(optional_doubles(
                records
                    .iter()
                    .map(|r| r.extra.as_slice().get(index).copied()),
            ));
        }
    }
    if kind.input() == crate::kind::InputContract::Text {
        columns.push(strings(records.iter().map(|r| r.text.as_deref()), true));
    }
    columns.push(Column::Int32(
        records.iter().map(|r| r.predicted() as i32).collect(),
    ));
    columns.push(Column::Doubles(
        records.iter().map(PredictionRecord::score).collect(),
        None,
    ));
    let (mut values, mut definitions, mut repetitions) = (Vec::new(), Vec::new(), Vec::new());
    for record in records {
        if record.probabilities.as_slice().is_empty() {
            definitions.push(0);
            repetitions.push(0);
        }
        for (i, p) in record.probabilities.as_slice().iter().enumerate() {
            values.push(f64::from(*p));
            definitions.push(1);
            repetitions.push(i16::from(i > 0));
        }
    }
    columns.push(Column::List(values, definitions, repetitions));

    // NOTE: dictionaries only where values repeat (model, arm, replica,
    // lead ids), statistics per column chunk (enough for engines to prune
    // files by served_at or version): together about half the encoding cost
    // of the defaults.
    let mut properties = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
        .set_dictionary_enabled(false)
        .set_created_by("nurture-server".to_owned());
    for column in ["model", "arm", "replica", "lead_id", "version"] {
        properties = properties
            .set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from(column), true);
    }
    // Ids are signed, so random: compressing them costs half the encoding
    // and saves nothing.
    properties = properties.set_column_compression(
        parquet::schema::types::ColumnPath::from("prediction_id"),
        parquet::basic::Compression::UNCOMPRESSED,
    );
    let properties = properties.build();
    let mut writer =
        SerializedFileWriter::new(Vec::new(), Arc::new(schema(kind)?), Arc::new(properties))
            .map_err(parquet_error)?;
    let mut group = writer.next_row_group().map_err(parquet_error)?;
    let mut columns = columns.into_iter();
    while let Some(mut column) = group.next_column().map_err(parquet_error)? {
        let data = columns.next().ok_or_else(|| {
            Error::Store("parquet: more columns than values; this is a bug".into())
        })?;
        match data {
            Column::Strings(values, levels) => {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&values, levels.as_deref(), None)
                    .map_err(parquet_error)?;
            }
            Column::Int64(values) => {
                column
                    .typed::<Int64Type>()
                    .write_batch(&values, None, None)
                    .map_err(parquet_error)?;
            }
            Column::Int32(values) => {
                column
                    .typed::<Int32Type>()
                    .write_batch(&values, None, None)
                    .map_err(parquet_error)?;
            }
            Column::Doubles(values, levels) => {
                column
                    .typed::<DoubleType>()
                    .write_batch(&values, levels.as_deref(), None)
                    .map_err(parquet_error)?;
            }
            Column::List(values, definitions, repetitions) => {
                column
                    .typed::<DoubleType>()
                    .write_batch(&values, Some(&definitions), Some(&repetitions))
                    .map_err(parquet_error)?;
            }
        }
        column.close().map_err(parquet_error)?;
    }
    group.close().map_err(parquet_error)?;
    writer.into_inner().map_err(parquet_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    fn record(id: &str, lead: Vec<Option<f64>>, probabilities: Vec<f32>) -> PredictionRecord {
        let mut features = [f64::NAN; LEAD_FEATURES.len()];
        for (slot, value) in features.iter_mut().zip(lead) {
            *slot = value.unwrap_or(f64::NAN);
        }
        PredictionRecord {
            prediction_id: InlineStr::new(id),
            version: 3,
            arm: Arm::Canary,
            served_at_ms: 1_764_000_000_000,
            lead_id: InlineStr::new(&format!("lead-{id}")),
            lead: features,
            extra: Inline::default(),
            text: None,
            probabilities: Inline::new(&probabilities),
        }
    }

    #[test]
    fn a_churn_log_reads_back_row_by_row() {
        let mut lead = vec![None; LEAD_FEATURES.len()];
        lead[3] = Some(0.25);
        let records = vec![
            record("a", lead.clone(), vec![0.9, 0.1]),
            record("b", vec![Some(1.0); LEAD_FEATURES.len()], vec![0.2, 0.8]),
        ];
        let bytes = encode("churn", ModelKind::Churn, "replica-1", &records).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| row.unwrap())
            .collect();
        let get = |row: usize, name: &str| {
            rows[row]
                .get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        assert_eq!(get(0, "prediction_id"), Field::Str("a".into()));
        assert_eq!(get(0, "arm"), Field::Str("canary".into()));
        assert_eq!(get(0, "version"), Field::Long(3));
        assert_eq!(get(0, LEAD_FEATURES[3].name), Field::Double(0.25));
        assert_eq!(get(0, LEAD_FEATURES[4].name), Field::Null);
        assert_eq!(get(1, LEAD_FEATURES[19].name), Field::Double(1.0));
        assert_eq!(get(1, "predicted"), Field::Int(1));
        assert!(matches!(get(1, "score"), Field::Double(s) if (s - 0.8).abs() < 1e-6));
        assert_eq!(get(1, "replica"), Field::Str("replica-1".into()));
        let Field::ListInternal(list) = get(1, "probabilities") else {
            panic!("a list")
        };
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn an_emotion_log_has_text_and_no_feature_columns() {
        let mut probabilities = vec![0.1; 10];
        probabilities[4] = 0.5;
        let mut r = record("t", vec![], probabilities);
        r.text = Some("so excited".into());
        let bytes = encode("emotion", ModelKind::Emotion, "r", &[r]).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let names: Vec<String> = schema
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        assert!(names.contains(&"text".to_owned()));
        assert!(!names.contains(&LEAD_FEATURES[0].name.to_owned()));
        let row = reader.get_row_iter(None).unwrap().next().unwrap().unwrap();
        let predicted = row
            .get_column_iter()
            .find(|(n, _)| n.as_str() == "predicted")
            .map(|(_, f)| f.clone());
        assert_eq!(predicted, Some(Field::Int(4)));
    }
}
