#!/usr/bin/env bash
# Runs the serving benchmarks and rewrites docs/performance.md.
#
#   benches/run.sh            # about 10 minutes on 2 cores
#   REPEATS=1 DURATION=3 benches/run.sh   # a quick pass
#
# Starts nurture-server (release build) on a fresh registry with every kind
# trained, then runs the scenarios below with nurture-load, each REPEATS
# times; the report shows medians and ratios measured within the same run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. benches/lib.sh
repeats="${REPEATS:-3}"
duration="${DURATION:-8}"
work="$root/var/bench"
bin="$root/target/release"

scripts/fetch-ort.sh
cargo build --quiet --release -p nurture-server -p nurture-trainer -p nurture-models -p nurture-benches
rm -rf "$work"
mkdir -p "$work"
registry="file://$work/registry"
"$bin/nurture-trainer" generate --out "$work/data" --rows 20000 >/dev/null 2>&1
"$bin/nurture-trainer" --json train all --data "$work/data" --registry "$registry" --promote > "$work/train.json"
# A second churn version, for hot-swap scenarios.
"$bin/nurture-trainer" --json train churn --data "$work/data/churn.csv" --registry "$registry" --publish --seed 9 > /dev/null
# A third, the shadow of the shadow scenarios.
"$bin/nurture-trainer" --json train churn --data "$work/data/churn.csv" --registry "$registry" --publish --seed 11 > /dev/null

server_pid=""
start_server() {
    stop_server
    "$bin/nurture-server" --registry "$registry" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
        --cache-dir "$work/cache" --poll-interval 200ms "$@" > "$work/server.out" 2> "$work/server.log" &
    server_pid=$!
    for _ in $(seq 1 300); do
        address="$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$work/server.out" | head -n 1)"
        [ -n "$address" ] && break
        sleep 0.1
    done
    target="http://$address"
    metrics_address="$(sed -n 's/.*metrics=\([^ ]*\).*/\1/p' "$work/server.out" | head -n 1)"
    # Wait until every model is live (churn answers).
    for _ in $(seq 1 300); do
        if "$bin/nurture-load" run --target "$target" --rpc churn --duration 0.2 --warmup 0 --json 2>/dev/null \
            | python3 -c 'import json,sys; sys.exit(0 if not json.load(sys.stdin)["errors"] else 1)'; then
            break
        fi
        sleep 0.2
    done
}
stop_server() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
# "SUM COUNT" of the server's nurture_batch_rows (rows per inference call).
batch_rows() {
    python3 - "$metrics_address" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
total = {"sum": 0.0, "count": 0.0}
for line in text.splitlines():
    for part in total:
        if line.startswith(f"nurture_batch_rows_{part}"):
            total[part] += float(line.rsplit(" ", 1)[1])
print(total["sum"], total["count"])
PY
}
# Context switches (voluntary and not) of every server thread so far.
context_switches() {
    cat /proc/"$server_pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'
}

# scenario NAME [nurture-load run args...]: REPEATS runs, one JSON line each,
# with the server's CPU seconds over the run.
scenario() {
    local name="$1"
    shift
    for r in $(seq 1 "$repeats"); do
        local before after switches_before switches_after
        # Counted over the whole run, warm-up included, so report.py divides
        # by total_requests (warm-up included too).
        before="$(cpu_ticks)"
        switches_before="$(context_switches)"
        local batches_before batches_after shadow_before shadow_after
        batches_before="$(batch_rows)"
        shadow_before="$(shadow_counts "$metrics_address")"
        local json
        json="$("$bin/nurture-load" run --target "$target" --duration "$duration" --warmup 1 --json "$@")"
        after="$(cpu_ticks)"
        switches_after="$(context_switches)"
        batches_after="$(batch_rows)"
        # Mirrors finish on idle cores after the load stops: counted then.
        sleep 0.5
        shadow_after="$(shadow_counts "$metrics_address")"
        python3 -c 'import json,sys,os; d=json.loads(sys.argv[1]); d["scenario"]=sys.argv[2]; d["repeat"]=int(sys.argv[3]); d["server_cpu_seconds"]=(int(sys.argv[5])-int(sys.argv[4]))/os.sysconf("SC_CLK_TCK"); d["server_context_switches"]=int(sys.argv[7])-int(sys.argv[6]); b0=[float(x) for x in sys.argv[8].split()]; b1=[float(x) for x in sys.argv[9].split()]; d["mean_batch_rows"]=(b1[0]-b0[0])/max(b1[1]-b0[1],1); s0=[float(x) for x in sys.argv[10].split()]; s1=[float(x) for x in sys.argv[11].split()]; d["shadow_mirrored"]=s1[0]-s0[0]; d["shadow_shed"]=s1[1]-s0[1]; print(json.dumps(d))' \
            "$json" "$name" "$r" "$before" "$after" "$switches_before" "$switches_after" "$batches_before" "$batches_after" "$shadow_before" "$shadow_after" >> "$work/results.jsonl"
        echo "$name #$r done" >&2
    done
}

: > "$work/results.jsonl"
start_server
scenario a1 --rpc infer-churn --rows 1 --concurrency 1
scenario a16 --rpc infer-churn --rows 1 --concurrency 16
scenario a64 --rpc infer-churn --rows 1 --concurrency 64
scenario a64-typed --rpc churn --rows 1 --concurrency 64
scenario b256 --rpc infer-churn --rows 256 --concurrency 4
scenario b256-c16 --rpc infer-churn --rows 256 --concurrency 16
scenario b256-c64 --rpc infer-churn --rows 256 --concurrency 64
scenario c-emotion --rpc emotion --rows 1 --concurrency 16
scenario d-timing --rpc timing --rows 1 --concurrency 4
scenario open-loop --rpc infer-churn --rows 1 --rate 2000

# Profiles of the server under scenarios a64 and b256 (software clock;
# hardware counters are not available on every virtual machine): by thread,
# by library, and the hottest symbols.
profile() {
    local name="$1"
    shift
    "$bin/nurture-load" run --target "$target" --duration 7 --warmup 0.5 "$@" >/dev/null &
    local load_pid=$!
    sleep 1.5
    if perf record -e cpu-clock -F 1999 -g -p "$server_pid" -o "$work/perf-$name.data" -- sleep 4 >/dev/null 2>&1; then
        # sed reads to the end, so no SIGPIPE trips pipefail.
        for sort in comm dso sym; do
            perf report -i "$work/perf-$name.data" --stdio --no-children --sort "$sort" -g none 2>/dev/null \
                | sed -e '/^#/d' -e '/^$/d' | sed -n '1,12p' > "$work/profile-$name-$sort.txt" || true
        done
        perf report -i "$work/perf-$name.data" --stdio --no-children --sort comm,dso -g none 2>/dev/null \
            | sed -e '/^#/d' -e '/^$/d' | sed -n '1,8p' > "$work/profile-$name-comm-dso.txt" || true
    fi
    wait "$load_pid" || true
}
if command -v perf >/dev/null 2>&1; then
    profile a64 --rpc infer-churn --rows 1 --concurrency 64
    profile b256 --rpc infer-churn --rows 256 --concurrency 4
fi

# (i) An independent client: h2load (Debian's nghttp2-client) replays a
# pre-encoded ModelInfer request, to cross-check nurture-load's figures.
if command -v h2load >/dev/null 2>&1; then
    for rows in 1 256; do
        "$bin/nurture-load" encode --rows "$rows" > "$work/body-$rows.bin"
        for r in $(seq 1 "$repeats"); do
            h2load --duration "$duration" --warm-up-time 1 -c 4 -m 16 -t 1 \
                --data "$work/body-$rows.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
                "$target/inference.GRPCInferenceService/ModelInfer" > "$work/h2load.txt" 2>&1 || true
            python3 - "$work/h2load.txt" "$rows" "$r" >> "$work/results.jsonl" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
def ms(value):
    number = float(re.match(r"[\d.]+", value).group())
    return number / 1000 if value.endswith("us") else number * 1000 if value.endswith("s") and not value.endswith("ms") else number
print(json.dumps({
    "scenario": f"i-h2load-{sys.argv[2]}", "repeat": int(sys.argv[3]), "rows_per_request": int(sys.argv[2]),
    "requests_per_second": float(rps.group(1)) if rps else float("nan"),
    "succeeded": int(done.group(2)) if done else 0, "failed": int(done.group(3)) if done else 0,
    "mean_ms": ms(mean.group(1)) if mean else float("nan"),
}))
PY
        done
    done
fi

# (f) p99 during continuous hot swaps (promote/rollback every second).
(
    end=$(( $(date +%s) + repeats * (duration + 2) ))
    while [ "$(date +%s)" -lt "$end" ]; do
        "$bin/nurturectl" --registry "$registry" promote churn 2 --force >/dev/null 2>&1 || true
        sleep 1
        "$bin/nurturectl" --registry "$registry" rollback churn --reason bench >/dev/null 2>&1 || true
        sleep 1
    done
) &
swapper=$!
scenario f-swaps --rpc infer-churn --rows 1 --concurrency 64
wait "$swapper" || true

# (g) resident memory with every kind loaded plus a previous churn version.
rss_kib="$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")"
echo "{\"scenario\":\"g-memory\",\"rss_kib\":$rss_kib}" >> "$work/results.jsonl"

scenario e-emotion-on --rpc emotion --rows 1 --concurrency 64

# (e) batching off: one row per inference call.
start_server --max-batch 1
scenario e-batching-off --rpc infer-churn --rows 1 --concurrency 64
scenario e-emotion-off --rpc emotion --rows 1 --concurrency 64

# Lingering for stragglers (--max-delay above 0) against the default.
start_server --max-delay 2ms
scenario e-linger-2ms --rpc infer-churn --rows 1 --concurrency 64
scenario e-linger-emotion-2ms --rpc emotion --rows 1 --concurrency 64

# (k) The feedback loop's cost on the typed path: prediction ids, the
# prediction log and its label-free drift monitor (all on by default)
# against the log off (ids are still minted), alternating to share drift.
# Pairs of one run each, adjacent in time, ABBA (odd pairs log on first,
# even pairs log off first: the second of two back-to-back runs tends to be
# slower here): the report takes the median of the pairs' ratios, so the
# machine's drift over the benchmark cancels within each pair.
pairs=$(( 2 * repeats ))
all_repeats="$repeats"
repeats=1
log_on() {
    start_server
    scenario k-a64-log --rpc infer-churn --rows 1 --concurrency 64
    scenario k-typed-log --rpc churn --rows 1 --concurrency 64
    if [ "$1" -eq "$pairs" ]; then
        # Answers the log dropped (a full buffer) and wrote, so a cheap log
        # is not a log that kept nothing.
        sleep 11  # one --prediction-log-flush
        python3 - "$metrics_address" >> "$work/results.jsonl" <<'PY'
import json, sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
total = {"dropped": 0.0, "written": 0.0}
for line in text.splitlines():
    if line.startswith("nurture_prediction_log_dropped_total"):
        total["dropped"] += float(line.rsplit(" ", 1)[1])
    if line.startswith("nurture_prediction_log_records_total") and 'result="ok"' in line:
        total["written"] += float(line.rsplit(" ", 1)[1])
print(json.dumps({"scenario": "k-log-counts", **total}))
PY
    fi
}
log_off() {
    start_server --prediction-log-sample 0
    scenario k-a64-nolog --rpc infer-churn --rows 1 --concurrency 64
    scenario k-typed-nolog --rpc churn --rows 1 --concurrency 64
}
abba "$pairs" log_on log_off
repeats="$all_repeats"
"$bin/nurture-drift" cost --delta 0.001 --clock 64 --max-buckets 64 \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); d["scenario"]="k-adwin-update"; print(json.dumps(d))' \
    >> "$work/results.jsonl"

# (s) Shadow traffic: version 3 shadows 100% of live churn requests, against
# no shadow, alternating on one server: at saturation (a64) and open loop
# at half the saturated rate.
half_rate="$(python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rates = [json.loads(l)["requests_per_second"] for l in open(sys.argv[1]) if json.loads(l).get("scenario") == "a64"]
print(int(statistics.median(rates) / 2))
PY
)"
start_server
set_shadow() {
    "$bin/nurturectl" --registry "$registry" "$@" >/dev/null
    sleep 3  # a poll, and the shadow's load
}
repeats=1
shadow_off() {
    scenario s-a64-off --rpc infer-churn --rows 1 --concurrency 64
    scenario s-open-off --rpc infer-churn --rows 1 --rate "$half_rate" --concurrency 64
}
shadow_on() {
    set_shadow shadow churn 3 --percent 100
    scenario s-a64-shadow --rpc infer-churn --rows 1 --concurrency 64
    scenario s-open-shadow --rpc infer-churn --rows 1 --rate "$half_rate" --concurrency 64
    set_shadow shadow-clear churn
}
# ABBA: odd pairs run without the shadow first, even pairs with it first
# (the server's log and memory grow over the section).
abba "$pairs" shadow_off shadow_on
repeats="$all_repeats"
echo "{\"scenario\":\"s-half-rate\",\"rate\":$half_rate}" >> "$work/results.jsonl"

# Two async-runtime threads (every core of a 2-core machine) instead of the default.
start_server --io-threads 2
scenario a64-io2 --rpc infer-churn --rows 1 --concurrency 64
scenario b256-io2 --rpc infer-churn --rows 256 --concurrency 4
stop_server

# (h) the in-process limit, straight through ort.
for rows in 1 256; do
    for r in $(seq 1 "$repeats"); do
        "$bin/nurture-load" inprocess --registry "$registry" --model churn --rows "$rows" --duration 3 --json \
            | python3 -c 'import json,sys; d=json.load(sys.stdin); d["scenario"]="h-inprocess-"+sys.argv[1]; print(json.dumps(d))' "$rows" \
            >> "$work/results.jsonl"
    done
done
for rows in 1 64; do
    "$bin/nurture-load" inprocess --registry "$registry" --model emotion --rows "$rows" --duration 3 --json \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); d["scenario"]="h-inprocess-emotion-"+sys.argv[1]; print(json.dumps(d))' "$rows" \
        >> "$work/results.jsonl"
done

# Micro-benchmarks (criterion).
cargo bench --quiet -p nurture-benches --bench micro > "$work/micro.txt" 2>&1 || true

python3 benches/report.py "$work/results.jsonl" "$repeats" "$duration" > docs/performance.md
echo "wrote docs/performance.md" >&2
