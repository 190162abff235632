#!/usr/bin/env bash
# Compares nurture-trainer with scikit-learn on the same generated data and
# the same holdout, then on small real datasets shipped with scikit-learn
# (small.py), and rewrites docs/models.md.
#
#   benches/reference/run.sh [ROWS] [SEED]
#
# Installs scikit-learn and onnxruntime into .tools/reference-venv on first use.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
rows="${1:-20000}"
seed="${2:-42}"
venv="$root/.tools/reference-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sklearn, onnxruntime" 2>/dev/null; then
    echo "installing scikit-learn and onnxruntime into .tools/reference-venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "scikit-learn==1.7.*" "numpy<3" "scipy<2" "onnxruntime==1.*"
fi
scripts/fetch-ort.sh
cargo build --quiet --release -p nurture-trainer

work="$root/var/reference"
rm -rf "$work"
mkdir -p "$work"
./target/release/nurture-trainer --json generate --out "$work/data" --rows "$rows" --seed "$seed" > "$work/bayes.json"
/usr/bin/time -f "%e" -o "$work/nurture.seconds" \
    ./target/release/nurture-trainer --json train all --data "$work/data" --seed "$seed" > "$work/nurture.json"
"$venv/bin/python" benches/reference/compare.py "$work/data" "$work/sklearn.json"
echo "small real datasets (20 splits each)" >&2
"$venv/bin/python" benches/reference/small.py ./target/release/nurture-trainer "$work/small" "$work/small.json"
"$venv/bin/python" benches/reference/report.py "$work" "$rows" "$seed" > docs/models.md
echo "wrote docs/models.md" >&2
