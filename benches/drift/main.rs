//! `nurture-drift`: streams for the drift benchmark, and Nurture's ADWIN run
//! over them. `benches/drift/run.sh` runs River's ADWIN over the same files
//! and writes the comparison into docs/feedback.md.
//!
//! ```text
//! nurture-drift streams --out FILE --before 0.2 --after 0.25 [--gradual N] [--stable 20000] [--after-len 20000] [--trials 100] [--seed 1]
//! nurture-drift detect FILE --change 20000 [--delta D --clock C --max-buckets M --min-window L --grace G]
//! nurture-drift cost [--updates 10000000]
//! ```

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use nurture_models::feedback::drift::{Adwin, AdwinConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Parser)]
#[command(name = "nurture-drift")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Detector {
    /// ADWIN's confidence.
    #[arg(long, default_value_t = 0.002)]
    delta: f64,
    /// Values between checks.
    #[arg(long, default_value_t = 32)]
    clock: u32,
    /// Buckets per level.
    #[arg(long, default_value_t = 5)]
    max_buckets: usize,
    /// Shortest sub-window.
    #[arg(long, default_value_t = 5)]
    min_window: u32,
    /// Values before the first check.
    #[arg(long, default_value_t = 10)]
    grace: u32,
}

impl Detector {
    fn config(&self) -> AdwinConfig {
        AdwinConfig {
            delta: self.delta,
            clock: self.clock,
            max_buckets: self.max_buckets,
            min_window: self.min_window,
            grace: self.grace,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes Bernoulli streams (one per line, 0/1 values).
    Streams {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Rate before the change.
        #[arg(long)]
        before: f64,
        /// Rate after it.
        #[arg(long)]
        after: f64,
        /// Values over which the rate moves linearly (0: a jump).
        #[arg(long, default_value_t = 0)]
        gradual: usize,
        /// Stable values before the change.
        #[arg(long, default_value_t = 20_000)]
        stable: usize,
        /// Values after the change begins.
        #[arg(long, default_value_t = 20_000)]
        after_len: usize,
        /// Streams.
        #[arg(long, default_value_t = 100)]
        trials: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Runs Nurture's ADWIN over a stream file (restarting after each
    /// detection, as River does) and prints each stream's detections as a
    /// JSON list per line.
    Detect {
        /// Stream file.
        file: PathBuf,
        #[command(flatten)]
        detector: Detector,
    },
    /// Times one detector update on a stable 0/1 stream.
    Cost {
        /// Updates to time.
        #[arg(long, default_value_t = 10_000_000)]
        updates: usize,
        #[command(flatten)]
        detector: Detector,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Streams {
            out,
            before,
            after,
            gradual,
            stable,
            after_len,
            trials,
            seed,
        } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut file = BufWriter::new(std::fs::File::create(&out)?);
            for _ in 0..trials {
                let mut line = String::with_capacity(2 * (stable + after_len));
                for i in 0..stable + after_len {
                    let p = if i < stable {
                        before
                    } else if gradual == 0 {
                        after
                    } else {
                        let t = ((i - stable) as f64 / gradual as f64).min(1.0);
                        before + (after - before) * t
                    };
                    line.push(if rng.random_bool(p) { '1' } else { '0' });
                    line.push(' ');
                }
                line.pop();
                writeln!(file, "{line}")?;
            }
        }
        Command::Detect { file, detector } => {
            let config = detector.config();
            let reader = std::io::BufReader::new(std::fs::File::open(file)?);
            for line in reader.lines() {
                let mut adwin = Adwin::new(config);
                let mut found = Vec::new();
                for (index, value) in line?.split(' ').enumerate() {
                    if adwin.update(if value == "1" { 1.0 } else { 0.0 }) {
                        found.push(index);
                        adwin = Adwin::new(config);
                    }
                }
                println!("{}", serde_json::to_string(&found)?);
            }
        }
        Command::Cost { updates, detector } => {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let values: Vec<f64> = (0..updates)
                .map(|_| f64::from(u8::from(rng.random_bool(0.2))))
                .collect();
            let mut adwin = Adwin::new(detector.config());
            let started = Instant::now();
            let mut drifts = 0u64;
            for value in &values {
                drifts += u64::from(adwin.update(std::hint::black_box(*value)));
            }
            let elapsed = started.elapsed();
            println!(
                "{}",
                serde_json::json!({
                    "updates": updates,
                    "ns_per_update": elapsed.as_nanos() as f64 / updates as f64,
                    "drifts": drifts,
                    "window": adwin.width(),
                })
            );
        }
    }
    Ok(())
}
