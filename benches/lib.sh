# Helpers shared by the bench scripts; source it.

# shadow_counts METRICS_ADDRESS: "MIRRORED SHED", the server's
# nurture_shadow_requests_total so far, summed over models.
shadow_counts() {
    python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
total = {"mirrored": 0, "shed": 0}
for line in text.splitlines():
    if line.startswith("nurture_shadow_requests_total"):
        for result in total:
            if f'result="{result}"' in line:
                total[result] += int(float(line.rsplit(" ", 1)[1]))
print(total["mirrored"], total["shed"])
PY
}

# abba PAIRS A B: runs the commands A and B in PAIRS adjacent pairs, A first
# in odd pairs and B first in even ones (A B B A A B ...), each given the
# pair's number, so a drift of the machine or the server over the section
# does not always fall on the same side.
abba() {
    local pairs="$1" a="$2" b="$3" pass
    for pass in $(seq 1 "$pairs"); do
        if [ $((pass % 2)) -eq 1 ]; then
            "$a" "$pass"
            "$b" "$pass"
        else
            "$b" "$pass"
            "$a" "$pass"
        fi
    done
}

# serving_bench [BENCH_BIN...]: the preamble of a bench that runs real
# servers: ONNX Runtime, the release server, trainer and nurturectl, and the
# named nurture-benches binaries; sets $bin, and $work to a temporary
# directory that is removed, with the script's background jobs stopped, at
# exit. Call it from the project root ($root).
serving_bench() {
    scripts/fetch-ort.sh >&2
    cargo build --release --quiet -p nurture-trainer -p nurture-models -p nurture-server
    local bins=() name
    for name in "$@"; do bins+=(--bin "$name"); done
    if [ "${#bins[@]}" -gt 0 ]; then
        cargo build --release --quiet -p nurture-benches "${bins[@]}"
    fi
    bin="$root/target/release"
    work="$(mktemp -d)"
    trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
}
