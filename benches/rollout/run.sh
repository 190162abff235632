#!/usr/bin/env bash
# The guard's sequential test on simulated canaries: false rollbacks of
# identical canaries, power for a 2% → 3% error regression (and a log-loss
# regression of the same size), the smallest regression found with 80%
# power, at 50, 200, 1,000 and 20,000 canary outcomes per interval.
# Runs the server's decision code; writes docs/rollout-test.md.
#
#   benches/rollout/run.sh                 # 10,000 runs per figure, ~2 minutes
#   RUNS=1000 benches/rollout/run.sh       # quicker, coarser
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --quiet -p nurture-benches --bin nurture-rollout-sim
target/release/nurture-rollout-sim --runs "${RUNS:-10000}" > docs/rollout-test.md
echo "wrote docs/rollout-test.md" >&2
