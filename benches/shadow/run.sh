#!/usr/bin/env bash
# Shadow traffic's cost to live latency, open loop at half the saturated rate.
#
# One server; churn version 2 shadows 100% of the live version's requests,
# switched on and off in blocks of two windows (order on-on-off-off, then
# off-off-on-on, ...), every window at the same offered rate. Each window's
# latencies are kept as histogram buckets and pooled by state, so the p99
# compared is the p99 of every request sent in that state, not a median of
# per-window p99s (one window's p99 swings several-fold here). The two
# windows of a block are also compared with each other (an A/A: same state),
# which shows how far the method moves when nothing changes.
#
#   benches/shadow/run.sh                 # ~13 minutes here; writes docs/shadow-latency.md
#   CYCLES=4 WINDOW=3 benches/shadow/run.sh   # a quick pass
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
. benches/lib.sh
serving_bench nurture-load
# Each window's latencies stay here, so the report can be read again:
# python3 benches/shadow/pool.py var/bench-shadow
raw="$root/var/bench-shadow"
rm -rf "$raw"
mkdir -p "$raw"
cycles="${CYCLES:-12}"
window="${WINDOW:-5}"
out="${OUT:-docs/shadow-latency.md}"
# PIN=1: the server on core 0, the generator on core 1, so the generator's
# own bursts never land on the server's core and the shadow's work competes
# only with the live work beside it. PIN=0 lets both share both cores.
pin="${PIN:-0}"
if [ "$pin" = 1 ]; then server_cpus=(taskset -c 0); load_cpus=(taskset -c 1); else server_cpus=(); load_cpus=(); fi
registry="file://$work/registry"

"$bin/nurture-trainer" generate --out "$work/data" --rows 20000 >/dev/null 2>&1
"$bin/nurture-trainer" train churn --data "$work/data/churn.csv" --registry "$registry" --promote --json >/dev/null
"$bin/nurture-trainer" train churn --data "$work/data/churn.csv" --registry "$registry" --publish --seed 11 --json >/dev/null

"${server_cpus[@]}" "$bin/nurture-server" --registry "$registry" --models churn --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --cache-dir "$work/cache" --poll-interval 200ms > "$work/out" 2> "$work/server.log" &
pid=$!
until grep -q grpc= "$work/out"; do sleep 0.01; done
target="http://$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$work/out")"
metrics="$(sed -n 's/.*metrics=\([^ ]*\).*/\1/p' "$work/out")"
until "$bin/nurture-load" run --target "$target" --rpc infer-churn --duration 0.2 --warmup 0 --json 2>/dev/null \
    | python3 -c 'import json,sys; sys.exit(0 if not json.load(sys.stdin)["errors"] else 1)'; do sleep 0.2; done

# "STEAL IDLE TOTAL" jiffies of every core so far: steal is the time the
# hypervisor ran something else on this machine's cores while they had work;
# idle counts iowait too.
cpu_jiffies() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, $5 + $6, t}' /proc/stat; }
# The server's CPU ticks so far, by thread group (JSON).
server_ticks() { python3 benches/shadow/threads.py "$pid"; }

echo "== saturation (closed loop, 64 streams)" >&2
"${load_cpus[@]}" "$bin/nurture-load" run --target "$target" --rpc infer-churn --concurrency 64 --duration "$window" --warmup 1 --json > "$raw/saturated.json"
saturated="$(python3 -c "import json; print(int(json.load(open('$raw/saturated.json'))['ok_requests_per_second']))")"
rate="${RATE:-$((saturated / 2))}"

# What the server keeps up with in open loop, where requests arrive one by
# one instead of in the closed loop's trains: offered rates from half the
# closed-loop rate up to all of it, no shadow.
echo "== open loop, no shadow, 50% to 100% of the closed-loop rate" >&2
sleep 2  # the log of the closed loop's answers is written
: > "$raw/capacity.jsonl"
for share in 50 60 70 80 90 100; do
    "${load_cpus[@]}" "$bin/nurture-load" --threads 1 run --target "$target" --rpc infer-churn \
        --rate "$((saturated * share / 100))" --duration 3 --warmup 1 --json >> "$raw/capacity.jsonl"
done

: > "$raw/windows.jsonl"
n=0
block() {  # block STATE CYCLE
    local state="$1" cycle="$2"
    if [ "$state" = on ]; then
        "$bin/nurturectl" --registry "$registry" shadow churn 2 --percent 100 >/dev/null
    else
        "$bin/nurturectl" --registry "$registry" shadow-clear churn >/dev/null
    fi
    sleep 2  # a poll, and the shadow's load
    for slot in 1 2; do
        n=$((n + 1))
        local before after jiffies_before jiffies_after ticks_before ticks_after
        before="$(shadow_counts "$metrics")"
        jiffies_before="$(cpu_jiffies)"
        ticks_before="$(server_ticks)"
        "${load_cpus[@]}" "$bin/nurture-load" --threads 1 run --target "$target" --rpc infer-churn --rate "$rate" --concurrency 64 \
            --duration "$window" --warmup 1 --json --latency-out "$raw/window-$n.txt" > "$work/window.json"
        jiffies_after="$(cpu_jiffies)"
        ticks_after="$(server_ticks)"
        sleep 0.5  # mirrors finish after the load stops
        after="$(shadow_counts "$metrics")"
        python3 benches/shadow/window.py "$work/window.json" "$state" "$cycle" "$slot" "window-$n.txt" \
            "$before" "$after" "$jiffies_before" "$jiffies_after" "$ticks_before" "$ticks_after" >> "$raw/windows.jsonl"
        tail -n 1 "$raw/windows.jsonl" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("cycle %d %s #%d: p99 %.2f ms, cores busy %.0f%%, steal %.1f%%" % (d["cycle"], d["state"], d["slot"], d["latency_ms"]["p99"], 100 * d["busy_share"], 100 * d["steal_share"]))' >&2
    done
}
block_on() { block on "$1"; }
block_off() { block off "$1"; }
abba "$cycles" block_on block_off
kill -TERM "$pid"; wait "$pid" || true

echo "{\"rate\": $rate, \"window\": $window, \"pin\": $pin}" > "$raw/params.json"
python3 benches/shadow/pool.py "$raw" > "$out"
cat "$out"
