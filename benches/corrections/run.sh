#!/usr/bin/env bash
# Do agents' corrections teach the emotion model? A release server with
# emotion trained on the generator's synthetic messages; the realistic
# messages of benches/corrections/messages.csv (written for this, never
# trained on by the live version) are analysed and corrected through
# RecordOutcomes; nurture-trainer retrain builds challengers from the newest
# 25, 100 and 400 corrections mixed with the synthetic data, each scored on
# the 100 held-apart messages (nurture-corrections). Prints the curve.
#
#   benches/corrections/run.sh            # TRIALS=5 MIX_WEIGHT=0.2 STEPS=25,50,100,200,400, ~6 minutes
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
. benches/lib.sh
trials="${TRIALS:-5}"
mix_weight="${MIX_WEIGHT:-0.2}"
steps="${STEPS:-25,50,100,200,400}"
serving_bench nurture-corrections
registry="file://$work/registry"

"$bin/nurture-trainer" generate --out "$work/data" --rows 10000 >/dev/null 2>&1
"$bin/nurture-trainer" train emotion --data "$work/data/emotion.csv" --registry "$registry" --promote --json >/dev/null
"$bin/nurture-server" --registry "$registry" --models emotion --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --cache-dir "$work/cache" --prediction-log-flush 200ms > "$work/out" 2> "$work/server.log" &
until grep -q grpc= "$work/out"; do sleep 0.05; done
target="http://$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$work/out")"
# Ready once the live version is loaded.
until grep -q "live version swapped" "$work/server.log"; do sleep 0.1; done

"$bin/nurture-corrections" --target "$target" --registry "$registry" --synthetic "$work/data/emotion.csv" \
    --trials "$trials" --mix-weight "$mix_weight" --steps "$steps" --trainer "$bin/nurture-trainer" --work "$work/challengers"
