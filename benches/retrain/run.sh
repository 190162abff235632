#!/usr/bin/env bash
# retrain's gate on simulated feedback (nurture-retrain-sim): how often a
# challenger is released when the concept has not changed (false releases)
# and when it has (power), at several window sizes. ~5 minutes at 200
# trials; prints the markdown table of docs/continuous-training.md.
#
#   benches/retrain/run.sh              # TRIALS=200
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
scripts/fetch-ort.sh >&2
cargo build --release --quiet -p nurture-benches --bin nurture-retrain-sim
target/release/nurture-retrain-sim --trials "${TRIALS:-200}"
