#!/usr/bin/env bash
# Drift benchmark: Nurture's ADWIN (as the server runs it: δ = 0.001, 64
# buckets per level, a check every 64 values) against River's ADWIN (δ = 0.002, its defaults) on the same streams,
# 100 trials per scenario, plus long stable streams for the false-alarm rate
# and the cost of one update. Writes docs/drift.md.
#
#   benches/drift/run.sh              # ~3 minutes on 2 cores
#   STABLE_STREAMS=100 benches/drift/run.sh   # the documented run, ~8 minutes
#   STABLE_STREAMS=5 benches/drift/run.sh   # quicker, coarser false-alarm rate
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
scripts/install-test-tools.sh
cargo build --release --quiet -p nurture-benches --bin nurture-drift
drift="$root/target/release/nurture-drift"
river=(".tools/analysis-venv/bin/python" "tests/feedback/adwin_river.py")
summarise=(python3 benches/drift/summarise.py)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stable_streams="${STABLE_STREAMS:-20}"

ours=(--delta 0.001 --clock 64 --max-buckets 64 --min-window 5 --grace 10)
ours_at_rivers=(--delta 0.002 --clock 64 --max-buckets 64 --min-window 5 --grace 10)
results="$work/results.jsonl"

run() { # name, stream file, change, post
    local name="$1" file="$2" change="$3" post="$4"
    echo "  $name" >&2
    "$drift" detect "$file" "${ours[@]}" > "$work/ours.txt"
    "$drift" detect "$file" "${ours_at_rivers[@]}" > "$work/ours_at_rivers.txt"
    "${river[@]}" "$file" 0.002 32 5 5 10 > "$work/river.txt"
    "${river[@]}" "$file" 0.001 32 5 5 10 > "$work/river_at_ours.txt"
    for who in ours ours_at_rivers river river_at_ours; do
        printf '{"scenario": "%s", "detector": "%s", "result": %s}\n' "$name" "$who" \
            "$("${summarise[@]}" "$work/$who.txt" "$change" "$post")" >> "$results"
    done
}

echo "streams and detections:" >&2
"$drift" streams --out "$work/jump.txt" --before 0.2 --after 0.25 --seed 1
run "0.20 → 0.25 at 20,000" "$work/jump.txt" 20000 20000
"$drift" streams --out "$work/small.txt" --before 0.05 --after 0.07 --after-len 40000 --seed 2
run "0.05 → 0.07 at 20,000" "$work/small.txt" 20000 40000
"$drift" streams --out "$work/gradual.txt" --before 0.2 --after 0.25 --gradual 5000 --seed 3
run "0.20 → 0.25 over 5,000 from 20,000" "$work/gradual.txt" 20000 20000
"$drift" streams --out "$work/stable.txt" --before 0.2 --after 0.2 --stable 1000000 --after-len 0 \
    --trials "$stable_streams" --seed 4
run "stable 0.20, ${stable_streams} × 1,000,000" "$work/stable.txt" 1000000 1
"$drift" streams --out "$work/stable05.txt" --before 0.05 --after 0.05 --stable 1000000 --after-len 0 \
    --trials "$stable_streams" --seed 5
run "stable 0.05, ${stable_streams} × 1,000,000" "$work/stable05.txt" 1000000 1

echo "cost:" >&2
cost="$("$drift" cost "${ours[@]}")"
river_cost="$(.tools/analysis-venv/bin/python - <<'PY'
import random, time
from river import drift
rng = random.Random(7)
values = [1.0 if rng.random() < 0.2 else 0.0 for _ in range(1_000_000)]
detector = drift.ADWIN()
started = time.perf_counter()
for v in values:
    detector.update(v)
print((time.perf_counter() - started) / len(values) * 1e9)
PY
)"
python3 benches/drift/report.py "$results" "$cost" "$river_cost" > docs/drift.md
echo "wrote docs/drift.md" >&2
