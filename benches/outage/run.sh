#!/usr/bin/env bash
# A replica restarted while its store is down: how long from listening to
# ready (every model served from the disk cache), and how long SIGTERM takes
# to exit with the store still down and nothing in flight. "Down" means
# nothing answers at the store's endpoint (connections refused), as when the
# S3-compatible server is stopped.
#
#   benches/outage/run.sh            # 5 restarts; prints each and the worst
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
. benches/lib.sh
scripts/install-grpcurl.sh >&2
serving_bench
grpcurl="$root/.tools/venv/bin/grpcurl"

# Fill a cache from a healthy (file) registry.
"$bin/nurture-trainer" generate --out "$work/data" --rows 3000 >/dev/null
"$bin/nurture-trainer" train all --data "$work/data" --registry "file://$work/registry" --promote --json >/dev/null
start() { # REGISTRY -> starts the server, sets $pid and $addr
    : > "$work/out"
    "$bin/nurture-server" --registry "$1" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
        --cache-dir "$work/cache" --poll-interval 1s > "$work/out" 2>> "$work/log" &
    pid=$!
    until grep -q grpc= "$work/out"; do sleep 0.005; done
    addr="$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$work/out")"
}
serving() { "$grpcurl" -plaintext "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; }
start "file://$work/registry"
until serving; do sleep 0.05; done
kill -TERM "$pid"; wait "$pid" || true

export AWS_ENDPOINT=http://127.0.0.1:9 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=y AWS_REGION=us-east-1
worst_ready=0; worst_exit=0
for run in 1 2 3 4 5; do
    start "s3://nurture-down/models"
    t0=$(date +%s%N)
    until serving; do sleep 0.01; done
    ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    sleep 2
    t1=$(date +%s%N)
    kill -TERM "$pid"; wait "$pid" || true
    exit_ms=$(( ($(date +%s%N) - t1) / 1000000 ))
    echo "restart $run: ready $ready_ms ms after listening, SIGTERM to exit $exit_ms ms"
    (( ready_ms > worst_ready )) && worst_ready=$ready_ms
    (( exit_ms > worst_exit )) && worst_exit=$exit_ms
done
echo "worst of 5: ready $worst_ready ms after listening (target 1,000), exit $worst_exit ms after SIGTERM (target 2,000)"
