//! Nurture's ADWIN against River's, run side by side on the same streams:
//! both must report drifts at the same indices.

use nurture_models::feedback::drift::{Adwin, AdwinConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Streams of every shape the server feeds ADWIN: 0/1 errors with a jump,
/// a slow ramp, none at all, and real-valued losses.
fn streams() -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut streams = Vec::new();
    for (before, after) in [
        (0.2, 0.25),
        (0.05, 0.07),
        (0.2, 0.2),
        (0.5, 0.1),
        (0.01, 0.3),
    ] {
        for _ in 0..6 {
            let stream = (0..8_000)
                .map(|i| {
                    let p = if i < 4_000 { before } else { after };
                    f64::from(u8::from(rng.random_bool(p)))
                })
                .collect();
            streams.push(stream);
        }
    }
    for _ in 0..4 {
        // Gradual: 0.2 → 0.3 over 4,000 values.
        streams.push(
            (0..10_000)
                .map(|i| {
                    let p = 0.2 + 0.1 * (f64::from(i - 3_000).clamp(0.0, 4_000.0) / 4_000.0);
                    f64::from(u8::from(rng.random_bool(p)))
                })
                .collect(),
        );
        // Log-losses whose scale changes.
        streams.push(
            (0..6_000)
                .map(|i| {
                    let scale = if i < 3_000 { 0.4 } else { 0.55 };
                    -(1.0 - rng.random::<f64>() * 0.999).ln() * scale
                })
                .collect(),
        );
    }
    streams
}

/// Where Nurture's detector reports drifts, starting afresh after each one
/// (as River's `ADWIN.update` does).
fn ours(stream: &[f64], config: AdwinConfig) -> Vec<usize> {
    let mut detector = Adwin::new(config);
    let mut found = Vec::new();
    for (index, value) in stream.iter().enumerate() {
        if detector.update(*value) {
            found.push(index);
            detector = Adwin::new(config);
        }
    }
    found
}

fn river(streams: &[Vec<f64>], config: AdwinConfig) -> Vec<Vec<usize>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("streams.txt");
    let text: Vec<String> = streams
        .iter()
        .map(|s| {
            s.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    let settings = [
        config.delta.to_string(),
        config.clock.to_string(),
        config.max_buckets.to_string(),
        config.min_window.to_string(),
        config.grace.to_string(),
    ];
    let mut args = vec![path.to_str().unwrap()];
    args.extend(settings.iter().map(String::as_str));
    let output =
        nurture_tests::run_python("analysis-venv", "tests/feedback/adwin_river.py", &args, &[]);
    String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn adwin_reports_the_same_drifts_as_rivers_on_the_same_streams() {
    let streams = streams();
    for config in [
        AdwinConfig::default(),
        AdwinConfig {
            delta: 0.05,
            clock: 1,
            max_buckets: 9,
            min_window: 10,
            grace: 100,
        },
    ] {
        let theirs = river(&streams, config);
        assert_eq!(theirs.len(), streams.len());
        let mut drifts = 0;
        for (index, (stream, expected)) in streams.iter().zip(&theirs).enumerate() {
            let found = ours(stream, config);
            assert_eq!(&found, expected, "stream {index} with {config:?}");
            drifts += found.len();
        }
        assert!(
            drifts > streams.len() / 2,
            "the streams exercise detection ({drifts})"
        );
    }
}
