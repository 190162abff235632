//! Micro-benchmarks of the serving path's pieces (criterion):
//! batcher overhead per request, LeadProfile → tensor mapping, release-log
//! fold, and the text request path. Results: docs/performance.md.

use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nurture_models::input::FeatureLayout;
use nurture_models::registry::{Event, EventKind, ModelState};
use nurture_models::{ModelKind, runtime};
use nurture_proto::v1;
use nurture_server::batcher::{BatchConfig, Batcher, Labels, OrtRunner, Rows};

fn lead(i: usize) -> v1::LeadProfile {
    nurture_tests::fixtures::lead_profile(&format!("lead-{i}"))
}

fn mapping(c: &mut Criterion) {
    let features: Vec<String> = ModelKind::Churn
        .allowed_features()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let layout = FeatureLayout::new(ModelKind::Churn, &features).unwrap();
    let leads: Vec<v1::LeadProfile> = (0..256).map(lead).collect();
    c.bench_function("lead_profile_to_rows/256_leads", |b| {
        b.iter(|| {
            let values = nurture_server::edge::leads(&leads, 256).unwrap();
            let mut rows = Vec::with_capacity(256 * layout.width());
            for (i, lead) in values.iter().enumerate() {
                layout
                    .push_row(lead, &[], &format!("leads[{i}]"), &mut rows)
                    .unwrap();
            }
            std::hint::black_box(rows)
        })
    });
}

fn fold(c: &mut Criterion) {
    let at: DateTime<Utc> = DateTime::UNIX_EPOCH;
    let mut events = Vec::new();
    for version in 1..=200u64 {
        let seq = events.len() as u64 + 1;
        events.push(Event {
            seq,
            at,
            actor: "a".into(),
            kind: EventKind::Published {
                version,
                kind: ModelKind::Churn,
                sha256: "x".repeat(64),
                retrain: None,
            },
        });
        let seq = events.len() as u64 + 1;
        events.push(Event {
            seq,
            at,
            actor: "a".into(),
            kind: EventKind::Promoted {
                version,
                forced: false,
            },
        });
    }
    c.bench_function("release_log_fold/400_events", |b| {
        b.iter(|| ModelState::fold("churn", std::hint::black_box(&events)).unwrap())
    });
    let json: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    c.bench_function("release_log_parse_and_fold/400_events", |b| {
        b.iter(|| {
            let parsed: Vec<Event> = json
                .iter()
                .map(|j| serde_json::from_slice(j).unwrap())
                .collect();
            ModelState::fold("churn", &parsed).unwrap()
        })
    });
}

/// A small real model: 20 inputs, softmax over 2 classes.
fn tabular_model() -> Vec<u8> {
    nurture_tests::fixtures::Tabular::new(20, 2, 1).build()
}

/// A batcher with one worker and the server's default limits.
fn start_batcher(onnx: &[u8], classes: usize, text_rank: usize, model: &str) -> Batcher {
    let environment = runtime::environment(None).expect("ONNX Runtime (scripts/fetch-ort.sh)");
    let config = BatchConfig {
        background: false,
        max_batch: 256,
        max_delay: Duration::ZERO,
        linger: nurture_server::batcher::LINGER,
        queue_capacity: 4096,
        max_queue_delay: None,
    };
    Batcher::start(
        vec![OrtRunner {
            session: runtime::session(environment, onnx, 1).unwrap(),
            classes,
            text_rank,
        }],
        config,
        Labels {
            model: model.into(),
            version: "1".into(),
        },
    )
}

fn batcher(c: &mut Criterion) {
    let environment = runtime::environment(None).expect("ONNX Runtime (scripts/fetch-ort.sh)");
    let onnx = tabular_model();
    let mut session = runtime::session(environment, &onnx, 1).unwrap();
    let row: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
    c.bench_function("direct_session_run/1_row", |b| {
        b.iter(|| {
            let tensor = ort::value::Tensor::from_array(([1usize, 20], row.clone())).unwrap();
            let outputs = session.run(ort::inputs!["features" => tensor]).unwrap();
            std::hint::black_box(
                outputs["probabilities"]
                    .try_extract_tensor::<f32>()
                    .unwrap()
                    .1
                    .to_vec(),
            )
        })
    });
    let batcher = start_batcher(&onnx, 2, 1, "bench");
    c.bench_function("batcher_round_trip/1_row", |b| {
        b.iter_batched(
            || Rows::Features {
                width: 20,
                values: row.clone(),
            },
            |rows| {
                batcher
                    .submit(rows, None)
                    .unwrap()
                    .blocking_recv()
                    .unwrap()
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

fn text(c: &mut Criterion) {
    let batcher = start_batcher(&nurture_tests::fixtures::emotion(1), 10, 2, "bench-text");
    c.bench_function("text_request_path/1_text", |b| {
        b.iter(|| {
            let rows = Rows::Texts(vec!["thrilled".to_owned()]);
            batcher
                .submit(rows, None)
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap()
        })
    });
}

/// The prediction log's costs per answer: appending a churn prediction
/// to a batch (on the request path), Parquet encoding of a file of them,
/// and counting them into the label-free drift monitor (on the writer).
fn prediction_log(c: &mut Criterion) {
    use nurture_models::features::LEAD_FEATURES;
    use nurture_models::feedback::Arm;
    use nurture_models::feedback::log::{LogBatch, Row, encode};
    use nurture_models::feedback::reference::{Bins, Monitor, Reference};
    // Like real ids: 72 characters of base64 that do not repeat.
    let ids: Vec<String> = (0..10_000i64)
        .map(|i| {
            (0..6)
                .map(|k| {
                    format!(
                        "{:012x}",
                        nurture_models::fnv1a64(&(i * 6 + k).to_le_bytes())
                    )
                })
                .collect()
        })
        .collect();
    let features = [1.5; LEAD_FEATURES.len()];
    let row = |i: usize| Row {
        prediction_id: &ids[i],
        version: 1,
        arm: Arm::Live,
        mirror_of: None,
        served_at_ms: 1_764_000_000_000 + i as i64,
        lead_id: "",
        features: &features,
        text: None,
        probabilities: &[0.3, 0.7],
    };
    let mut batch = LogBatch::new(ModelKind::Churn);
    for i in 0..ids.len() {
        batch.push(&row(i));
    }
    c.bench_function("prediction_log_append/1_record", |b| {
        let mut appended = LogBatch::new(ModelKind::Churn);
        let mut i = 0;
        b.iter(|| {
            if appended.len() == 10_000 {
                appended = LogBatch::new(ModelKind::Churn);
            }
            appended.push(std::hint::black_box(&row(i % ids.len())));
            i += 1;
        })
    });
    c.bench_function("prediction_log_encode/10000_records", |b| {
        b.iter(|| {
            encode(
                "churn",
                "r",
                std::hint::black_box(std::slice::from_ref(&batch)),
            )
            .unwrap()
        })
    });
    let sample: Vec<f64> = (0..1000).map(f64::from).collect();
    let reference = Reference {
        features: LEAD_FEATURES
            .iter()
            .map(|f| (f.name.to_owned(), Bins::from_sample(&sample, 10).unwrap()))
            .collect(),
        score: Bins::from_sample(&sample, 10),
    };
    let names: Vec<&str> = LEAD_FEATURES.iter().map(|f| f.name).collect();
    let mut monitor = Monitor::new(&reference, &names);
    // Every record counted (a quiet window; busy ones are thinned).
    c.bench_function("input_drift_observe/10000_records", |b| {
        b.iter(|| {
            for position in 0..names.len() {
                monitor.observe_column(position, batch.feature(position));
            }
            monitor.observe_scores((0..batch.len()).map(|row| batch.score(row)));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = mapping, fold, batcher, text, prediction_log
}
criterion_main!(benches);
