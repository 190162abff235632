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
//! mirror_of       STRING      (optional: a shadow row's live prediction id)
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

/// One served prediction, borrowed for as long as it takes to append it
/// to a [`LogBatch`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Its id.
    pub prediction_id: &'a str,
    /// Version that answered.
    pub version: u64,
    /// Arm that answered.
    pub arm: Arm,
    /// A shadow's answer: the id of the live answer it mirrors.
    pub mirror_of: Option<&'a str>,
    /// When (ms since the Unix epoch).
    pub served_at_ms: i64,
    /// The lead, if the request named one (empty: none).
    pub lead_id: &'a str,
    /// Tabular kinds: the lead's features by `LEAD_FEATURES` index, then the
    /// kind's own (slot, variant) in `extra_features()` order; NaN where
    /// absent. Empty for text kinds.
    pub features: &'a [f64],
    /// The text (emotion).
    pub text: Option<&'a str>,
    /// Every class probability, in label order.
    pub probabilities: &'a [f32],
}

/// Texts in one buffer, with their ends and definition levels (0: absent).
#[derive(Debug, Clone, Default, PartialEq)]
struct Texts {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    levels: Vec<i16>,
}

impl Texts {
    fn push(&mut self, text: Option<&str>) {
        if let Some(text) = text {
            self.bytes.extend_from_slice(text.as_bytes());
        }
        self.ends.push(self.bytes.len());
        self.levels.push(i16::from(text.is_some()));
    }

    fn with_capacity(rows: usize, bytes_per_row: usize) -> Self {
        Texts {
            bytes: Vec::with_capacity(rows * bytes_per_row),
            ends: Vec::with_capacity(rows),
            levels: Vec::with_capacity(rows),
        }
    }

    fn get(&self, row: usize) -> Option<&str> {
        if self.levels[row] == 0 {
            return None;
        }
        let start = if row == 0 { 0 } else { self.ends[row - 1] };
        std::str::from_utf8(&self.bytes[start..self.ends[row]]).ok()
    }

    /// The present values as Parquet byte arrays sharing one buffer.
    fn column(&self, optional: bool) -> Column<'_> {
        let buffer = bytes::Bytes::copy_from_slice(&self.bytes);
        let mut start = 0;
        let mut present = Vec::with_capacity(self.ends.len());
        for (end, level) in self.ends.iter().zip(&self.levels) {
            if *level == 1 {
                present.push(ByteArray::from(buffer.slice(start..*end)));
            }
            start = *end;
        }
        Column::Strings(present, optional.then_some(self.levels.as_slice()))
    }
}

/// Served predictions of one model, column by column, as the Parquet file
/// will hold them: an answer appends each value once to its column, with
/// no record built, moved or freed on another thread.
///
/// NOTE: a record per answer (about 700 bytes, copied into a channel,
/// out of it and into a file's list) was most of the log's cost per answer.
#[derive(Debug, Clone, PartialEq)]
pub struct LogBatch {
    kind: ModelKind,
    ids: Texts,
    versions: Vec<i64>,
    arms: Vec<Arm>,
    mirrors: Texts,
    served_at: Vec<i64>,
    lead_ids: Texts,
    /// One column per feature of a tabular kind (NaN: absent); none for text.
    features: Vec<Vec<f64>>,
    texts: Texts,
    probabilities: Vec<f32>,
    probability_ends: Vec<usize>,
}

impl LogBatch {
    /// An empty batch of a kind's predictions.
    pub fn new(kind: ModelKind) -> Self {
        LogBatch::with_capacity(kind, 0)
    }

    /// An empty batch with room for `rows` predictions (ids of up to 80
    /// bytes, two classes) before any column grows.
    pub fn with_capacity(kind: ModelKind, rows: usize) -> Self {
        let width = match kind.input() {
            crate::kind::InputContract::Features => {
                LEAD_FEATURES.len() + kind.extra_features().len()
            }
            _ => 0,
        };
        LogBatch {
            kind,
            ids: Texts::with_capacity(rows, 80),
            versions: Vec::with_capacity(rows),
            arms: Vec::with_capacity(rows),
            mirrors: Texts::with_capacity(rows, 0),
            served_at: Vec::with_capacity(rows),
            lead_ids: Texts::with_capacity(rows, 0),
            features: (0..width).map(|_| Vec::with_capacity(rows)).collect(),
            texts: Texts::default(),
            probabilities: Vec::with_capacity(2 * rows),
            probability_ends: Vec::with_capacity(rows),
        }
    }

    /// The kind of model whose predictions these are.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Predictions held.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Appends one prediction. Features beyond the kind's columns are
    /// ignored and missing ones are absent.
    pub fn push(&mut self, row: &Row<'_>) {
        self.ids.push(Some(row.prediction_id));
        self.versions.push(row.version as i64);
        self.arms.push(row.arm);
        self.mirrors.push(row.mirror_of);
        self.served_at.push(row.served_at_ms);
        self.lead_ids
            .push(Some(row.lead_id).filter(|id| !id.is_empty()));
        for (index, column) in self.features.iter_mut().enumerate() {
            column.push(row.features.get(index).copied().unwrap_or(f64::NAN));
        }
        if self.kind.input() == crate::kind::InputContract::Text {
            self.texts.push(row.text);
        }
        self.probabilities.extend_from_slice(row.probabilities);
        self.probability_ends.push(self.probabilities.len());
    }

    /// The id of the prediction at `row`.
    pub fn prediction_id(&self, row: usize) -> Option<&str> {
        self.ids.get(row)
    }

    /// The version that answered at each row.
    pub fn versions(&self) -> impl Iterator<Item = u64> + '_ {
        self.versions.iter().map(|v| *v as u64)
    }

    /// One feature's values (tabular kinds, in the order of [`Row::features`];
    /// NaN where absent).
    pub fn feature(&self, index: usize) -> &[f64] {
        self.features.get(index).map_or(&[], Vec::as_slice)
    }

    /// Every class probability at `row`, in label order.
    pub fn probabilities(&self, row: usize) -> &[f32] {
        let start = if row == 0 {
            0
        } else {
            self.probability_ends[row - 1]
        };
        &self.probabilities[start..self.probability_ends[row]]
    }

    /// The class with the highest probability at `row`.
    pub fn predicted(&self, row: usize) -> usize {
        let ps = self.probabilities(row);
        ps.iter()
            .enumerate()
            .fold(0, |best, (i, p)| if *p > ps[best] { i } else { best })
    }

    /// At `row`: the positive class's probability of a binary kind, else
    /// the top one.
    pub fn score(&self, row: usize) -> f64 {
        match self.probabilities(row) {
            [_, positive] => f64::from(*positive),
            ps => ps.get(self.predicted(row)).map_or(0.0, |p| f64::from(*p)),
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
        string("mirror_of", Repetition::OPTIONAL)?,
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

/// One column's values of one batch, with definition levels where the
/// column is optional (and repetition levels for the list).
enum Column<'a> {
    Strings(Vec<ByteArray>, Option<&'a [i16]>),
    /// One value on every row.
    Constant(ByteArray, usize),
    Int64(&'a [i64]),
    Int32(Vec<i32>),
    Doubles(Vec<f64>, Option<Vec<i16>>),
    List(Vec<f64>, Vec<i16>, Vec<i16>),
}

/// Most copies of a constant value built at once (a constant column is
/// written in chunks of this many).
const CONSTANT_CHUNK: usize = 1024;

impl LogBatch {
    /// The values of the schema's column `index` (see [`schema`]).
    fn column(&self, index: usize, model: &str, replica: &str) -> Column<'_> {
        let rows = self.len();
        let width = self.features.len();
        let text = usize::from(self.kind.input() == crate::kind::InputContract::Text);
        match index {
            0 => self.ids.column(false),
            1 => Column::Constant(ByteArray::from(model), rows),
            2 => Column::Int64(&self.versions),
            // Arm names are static: their copies share no counter.
            3 => Column::Strings(
                self.arms
                    .iter()
                    .map(|arm| ByteArray::from(bytes::Bytes::from_static(arm.as_str().as_bytes())))
                    .collect(),
                None,
            ),
            4 => self.mirrors.column(true),
            5 => Column::Int64(&self.served_at),
            6 => Column::Constant(ByteArray::from(replica), rows),
            7 => self.lead_ids.column(true),
            i if i < 8 + width => {
                let values = &self.features[i - 8];
                let present = values.iter().copied().filter(|v| !v.is_nan()).collect();
                let levels = values.iter().map(|v| i16::from(!v.is_nan())).collect();
                Column::Doubles(present, Some(levels))
            }
            i if i < 8 + width + text => self.texts.column(true),
            i if i == 8 + width + text => {
                Column::Int32((0..rows).map(|row| self.predicted(row) as i32).collect())
            }
            i if i == 9 + width + text => {
                Column::Doubles((0..rows).map(|row| self.score(row)).collect(), None)
            }
            _ => {
                let (mut values, mut definitions, mut repetitions) =
                    (Vec::new(), Vec::new(), Vec::new());
                for row in 0..rows {
                    let probabilities = self.probabilities(row);
                    if probabilities.is_empty() {
                        definitions.push(0);
                        repetitions.push(0);
                    }
                    for (i, p) in probabilities.iter().enumerate() {
                        values.push(f64::from(*p));
                        definitions.push(1);
                        repetitions.push(i16::from(i > 0));
                    }
                }
                Column::List(values, definitions, repetitions)
            }
        }
    }
}

/// Writes one batch's values of a column.
fn write(
    column: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    data: Column<'_>,
) -> Result<()> {
    match data {
        Column::Strings(values, levels) => column
            .typed::<ByteArrayType>()
            .write_batch(&values, levels, None),
        Column::Constant(value, rows) => {
            let chunk = vec![value; rows.min(CONSTANT_CHUNK)];
            let mut left = rows;
            while left > 0 {
                let n = left.min(chunk.len());
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&chunk[..n], None, None)
                    .map_err(parquet_error)?;
                left -= n;
            }
            Ok(0)
        }
        Column::Int64(values) => column.typed::<Int64Type>().write_batch(values, None, None),
        Column::Int32(values) => column.typed::<Int32Type>().write_batch(&values, None, None),
        Column::Doubles(values, levels) => {
            column
                .typed::<DoubleType>()
                .write_batch(&values, levels.as_deref(), None)
        }
        Column::List(values, definitions, repetitions) => column.typed::<DoubleType>().write_batch(
            &values,
            Some(&definitions),
            Some(&repetitions),
        ),
    }
    .map(|_| ())
    .map_err(parquet_error)
}

/// Encodes batches of one model's predictions (of one kind, served by
/// `replica`) as one Parquet file (one row group, Snappy pages), a column
/// at a time, with no copy of the batches.
pub fn encode(model: &str, replica: &str, batches: &[LogBatch]) -> Result<Vec<u8>> {
    let Some(kind) = batches.first().map(LogBatch::kind) else {
        return Err(Error::Store("parquet: no predictions to encode".into()));
    };
    if batches.iter().any(|batch| batch.kind != kind) {
        return Err(Error::Store(
            "parquet: predictions of different kinds in one file; this is a bug".into(),
        ));
    }
    let rows: usize = batches.iter().map(LogBatch::len).sum();
    // NOTE: dictionaries only where values repeat (model, arm, replica,
    // lead ids), statistics only where engines prune files by them
    // (served_at, version): together about half the encoding cost of the
    // defaults.
    let mut properties = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
        .set_dictionary_enabled(false)
        .set_created_by("nurture-server".to_owned());
    for column in ["model", "arm", "replica", "lead_id", "version"] {
        properties = properties
            .set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from(column), true);
    }
    for column in ["served_at", "version"] {
        properties = properties.set_column_statistics_enabled(
            parquet::schema::types::ColumnPath::from(column),
            parquet::file::properties::EnabledStatistics::Chunk,
        );
    }
    // Ids are signed, so random: compressing them costs half the encoding
    // and saves nothing.
    properties = properties.set_column_compression(
        parquet::schema::types::ColumnPath::from("prediction_id"),
        parquet::basic::Compression::UNCOMPRESSED,
    );
    let properties = properties.build();
    // About what a row takes once encoded, so the file grows in place.
    let estimate = rows * (128 + 8 * batches[0].features.len());
    let mut writer = SerializedFileWriter::new(
        Vec::with_capacity(estimate),
        Arc::new(schema(kind)?),
        Arc::new(properties),
    )
    .map_err(parquet_error)?;
    let mut group = writer.next_row_group().map_err(parquet_error)?;
    let mut index = 0;
    while let Some(mut column) = group.next_column().map_err(parquet_error)? {
        for batch in batches {
            write(&mut column, batch.column(index, model, replica))?;
        }
        column.close().map_err(parquet_error)?;
        index += 1;
    }
    group.close().map_err(parquet_error)?;
    writer.into_inner().map_err(parquet_error)
}

/// One logged answer, read back from a file of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Its id.
    pub prediction_id: String,
    /// Version that answered.
    pub version: u64,
    /// Arm that answered (`live`, `canary`, `shadow`, `pinned`).
    pub arm: String,
    /// When (ms since the Unix epoch).
    pub served_at_ms: i64,
    /// The lead, if the request named one.
    pub lead_id: Option<String>,
    /// Tabular kinds: the inputs named by [`feature_columns`], in that
    /// order; `None` where the answer had none.
    pub features: Vec<Option<f64>>,
    /// The text (emotion).
    pub text: Option<String>,
}

/// The input columns of a kind's log: every lead feature, then the kind's
/// own (empty for text kinds).
pub fn feature_columns(kind: ModelKind) -> Vec<&'static str> {
    if kind.input() != crate::kind::InputContract::Features {
        return Vec::new();
    }
    LEAD_FEATURES
        .iter()
        .chain(kind.extra_features())
        .map(|feature| feature.name)
        .collect()
}

/// Reads one file of a kind's prediction log (as [`encode`] writes it, or
/// any file with those columns): `file` names it in errors.
pub fn decode(kind: ModelKind, file: &str, bytes: bytes::Bytes) -> Result<Vec<Logged>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let corrupt = |reason: String| Error::Corrupt {
        object: file.to_owned(),
        reason,
    };
    let reader = SerializedFileReader::new(bytes).map_err(|e| corrupt(e.to_string()))?;
    let inputs = feature_columns(kind);
    let mut out = Vec::with_capacity(reader.metadata().file_metadata().num_rows().max(0) as usize);
    for row in reader
        .get_row_iter(None)
        .map_err(|e| corrupt(e.to_string()))?
    {
        let row = row.map_err(|e| corrupt(e.to_string()))?;
        let mut logged = Logged {
            prediction_id: String::new(),
            version: 0,
            arm: String::new(),
            served_at_ms: 0,
            lead_id: None,
            features: vec![None; inputs.len()],
            text: None,
        };
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("prediction_id", Field::Str(id)) => logged.prediction_id = id.clone(),
                ("version", Field::Long(version)) => logged.version = *version as u64,
                ("arm", Field::Str(arm)) => logged.arm = arm.clone(),
                ("served_at", Field::TimestampMillis(ms)) => logged.served_at_ms = *ms,
                ("lead_id", Field::Str(lead)) => logged.lead_id = Some(lead.clone()),
                ("text", Field::Str(text)) => logged.text = Some(text.clone()),
                (name, Field::Double(value)) => {
                    if let Some(slot) = inputs.iter().position(|input| *input == name) {
                        logged.features[slot] = Some(*value);
                    }
                }
                _ => {}
            }
        }
        if logged.prediction_id.is_empty() {
            return Err(corrupt("a row without a prediction_id".to_owned()));
        }
        out.push(logged);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    /// Id, lead features, probabilities, text.
    type Served<'a> = (&'a str, Vec<Option<f64>>, Vec<f32>, Option<&'a str>);

    fn batch(kind: ModelKind, rows: &[Served<'_>]) -> LogBatch {
        let mut batch = LogBatch::new(kind);
        for (id, lead, probabilities, text) in rows {
            let features: Vec<f64> = lead.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
            let lead_id = format!("lead-{id}");
            batch.push(&Row {
                prediction_id: id,
                version: 3,
                arm: Arm::Canary,
                mirror_of: (*id == "b").then_some("live-b"),
                served_at_ms: 1_764_000_000_000,
                lead_id: &lead_id,
                features: &features,
                text: *text,
                probabilities,
            });
        }
        batch
    }

    /// Every row of an encoded file.
    fn read(bytes: Vec<u8>) -> Vec<parquet::record::Row> {
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| row.unwrap())
            .collect()
    }

    /// Column `name` of `row`.
    fn field(rows: &[parquet::record::Row], row: usize, name: &str) -> Field {
        rows[row]
            .get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f.clone())
            .unwrap()
    }

    #[test]
    fn a_churn_log_reads_back_row_by_row() {
        let mut lead = vec![None; LEAD_FEATURES.len()];
        lead[3] = Some(0.25);
        // Two batches in one file, as the writer gathers them.
        let batches = [
            batch(
                ModelKind::Churn,
                &[("a", lead.clone(), vec![0.9, 0.1], None)],
            ),
            batch(
                ModelKind::Churn,
                &[(
                    "b",
                    vec![Some(1.0); LEAD_FEATURES.len()],
                    vec![0.2, 0.8],
                    None,
                )],
            ),
        ];
        assert_eq!(batches[1].prediction_id(0), Some("b"));
        let rows = read(encode("churn", "replica-1", &batches).unwrap());
        assert_eq!(rows.len(), 2);
        let get = |row: usize, name: &str| field(&rows, row, name);
        assert_eq!(get(0, "prediction_id"), Field::Str("a".into()));
        assert_eq!(get(0, "arm"), Field::Str("canary".into()));
        assert_eq!(get(0, "mirror_of"), Field::Null);
        assert_eq!(get(1, "mirror_of"), Field::Str("live-b".into()));
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
    fn decode_reads_back_what_encode_wrote() {
        let mut lead = vec![None; LEAD_FEATURES.len()];
        lead[3] = Some(0.25);
        lead[19] = Some(420.0);
        let rows = [
            ("a", lead, vec![0.9, 0.1], None),
            (
                "b",
                vec![Some(1.0); LEAD_FEATURES.len()],
                vec![0.2, 0.8],
                None,
            ),
        ];
        let bytes = encode("churn", "r", &[batch(ModelKind::Churn, &rows)]).unwrap();
        let logged = decode(ModelKind::Churn, "f", bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(logged.len(), 2);
        assert_eq!(feature_columns(ModelKind::Churn).len(), LEAD_FEATURES.len());
        assert_eq!(logged[0].prediction_id, "a");
        assert_eq!(logged[0].arm, "canary");
        assert_eq!(logged[0].version, 3);
        assert_eq!(logged[0].served_at_ms, 1_764_000_000_000);
        assert_eq!(logged[0].lead_id.as_deref(), Some("lead-a"));
        assert_eq!(logged[0].features[3], Some(0.25));
        assert_eq!(logged[0].features[19], Some(420.0));
        assert_eq!(logged[0].features[4], None);
        assert_eq!(logged[1].features, vec![Some(1.0); LEAD_FEATURES.len()]);

        let text = batch(
            ModelKind::Emotion,
            &[("t", vec![], vec![0.1; 10], Some("so excited"))],
        );
        let bytes = encode("emotion", "r", &[text]).unwrap();
        let logged = decode(ModelKind::Emotion, "f", bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(logged[0].text.as_deref(), Some("so excited"));
        assert!(logged[0].features.is_empty());

        let error = decode(
            ModelKind::Churn,
            "feedback/x.parquet",
            bytes::Bytes::from_static(b"nope"),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("feedback/x.parquet"), "{error}");
    }

    #[test]
    fn an_emotion_log_has_text_and_no_feature_columns() {
        let mut probabilities = vec![0.1; 10];
        probabilities[4] = 0.5;
        let records = batch(
            ModelKind::Emotion,
            &[
                ("t", vec![], probabilities.clone(), Some("so excited")),
                ("u", vec![], probabilities.clone(), None),
                ("v", vec![], probabilities, Some("déçu")),
            ],
        );
        let bytes = encode("emotion", "r", &[records]).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let names: Vec<String> = schema
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        assert!(names.contains(&"text".to_owned()));
        assert!(!names.contains(&LEAD_FEATURES[0].name.to_owned()));
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let get = |row: usize, name: &str| field(&rows, row, name);
        assert_eq!(get(0, "predicted"), Field::Int(4));
        assert_eq!(get(0, "text"), Field::Str("so excited".into()));
        assert_eq!(get(1, "text"), Field::Null);
        assert_eq!(get(2, "text"), Field::Str("déçu".into()));
        assert_eq!(get(2, "lead_id"), Field::Str("lead-v".into()));
        assert_eq!(get(2, "prediction_id"), Field::Str("v".into()));
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert!(encode("churn", "r", &[]).is_err());
        assert!(
            encode(
                "churn",
                "r",
                &[
                    LogBatch::new(ModelKind::Churn),
                    LogBatch::new(ModelKind::Emotion)
                ]
            )
            .is_err()
        );
    }
}
