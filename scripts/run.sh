#!/usr/bin/env bash
# The main job on the embedded default: fetch ONNX Runtime if missing, build,
# generate data and train every kind into ./var/registry if it is empty,
# start nurture-server, and print example calls. Ctrl-C stops the server.
#
# Environment (all optional):
#   NURTURE_LISTEN          gRPC address         (127.0.0.1:50051)
#   NURTURE_METRICS_LISTEN  metrics address      (127.0.0.1:9090)
#   NURTURE_HTTP_LISTEN     Open Inference Protocol over HTTP (127.0.0.1:8000)
#   NURTURE_VAR             data/registry/cache  (./var)
#   NURTURE_RUN_ROWS        rows per dataset     (20000)
#   NURTURE_PROFILE         cargo profile        (release)
#   NURTURE_SKIP_BUILD=1    use binaries already built
#   NURTURE_BIN_DIR         where the binaries are (target/$NURTURE_PROFILE)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
listen="${NURTURE_LISTEN:-127.0.0.1:50051}"
metrics_listen="${NURTURE_METRICS_LISTEN:-127.0.0.1:9090}"
http_listen="${NURTURE_HTTP_LISTEN:-127.0.0.1:8000}"
var="${NURTURE_VAR:-$root/var}"
rows="${NURTURE_RUN_ROWS:-20000}"
profile="${NURTURE_PROFILE:-release}"
registry="file://$var/registry"

scripts/fetch-ort.sh
scripts/install-grpcurl.sh
if [ "${NURTURE_SKIP_BUILD:-0}" != 1 ]; then
    if [ "$profile" = release ]; then
        cargo build --release -p nurture-server -p nurture-trainer -p nurture-models
    else
        cargo build -p nurture-server -p nurture-trainer -p nurture-models
    fi
fi
bin="${NURTURE_BIN_DIR:-$root/target/$profile}"
grpcurl="$root/.tools/venv/bin/grpcurl"

mkdir -p "$var/registry"
models="$("$bin/nurturectl" --registry "$registry" --json ls | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["models"]))')"
if [ "$models" = 0 ]; then
    echo "== $registry is empty: generating data and training every kind" >&2
    "$bin/nurture-trainer" generate --out "$var/data" --rows "$rows"
    "$bin/nurture-trainer" train all --data "$var/data" --registry "$registry" --promote
fi

echo "== starting nurture-server" >&2
out="$var/server.out"
mkdir -p "$var"
: > "$out"
"$bin/nurture-server" --registry "$registry" --listen "$listen" --metrics-listen "$metrics_listen" \
    --http-listen "$http_listen" \
    --cache-dir "$var/cache" >"$out" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT INT TERM

address=""
for _ in $(seq 1 600); do
    address="$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$out" | head -n 1)"
    [ -n "$address" ] && break
    kill -0 "$server" 2>/dev/null || { echo "nurture-server exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$address" ] || { echo "nurture-server did not start" >&2; exit 1; }
metrics_address="$(sed -n 's/.*metrics=\([^ ]*\).*/\1/p' "$out" | head -n 1)"
http_address="$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$out" | head -n 1)"
for _ in $(seq 1 600); do
    if "$grpcurl" -plaintext "$address" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
        break
    fi
    sleep 0.1
done

lead='{"lead_id":"lead-42","days_since_first_contact":40,"days_since_last_contact":3,"days_since_last_reply":21,"email_open_rate":0.35,"email_click_rate":0.05,"sms_reply_rate":0.4,"call_answer_rate":0.2,"video_join_rate":0.1,"messages_sent_30d":6,"messages_received_30d":2,"avg_response_hours":14,"sentiment_score":-0.4,"complaints_90d":1,"website_visits_30d":3,"listings_viewed_30d":5,"saved_searches":1,"showings_attended":0,"pre_approved":false,"mortgage_calculator_uses_30d":0,"budget_k_usd":380}'
cat <<EXAMPLES
== nurture-server is serving on $address (metrics: http://$metrics_address/metrics)
== example calls (grpcurl is in .tools/venv/bin):
$grpcurl -plaintext $address grpc.health.v1.Health/Check
$grpcurl -plaintext $address nurture.v1.StatusService/GetStatus
$grpcurl -plaintext -d '{"inputs":[{"text":"I am so excited about the condo downtown!","lead_id":"lead-42"}]}' $address nurture.v1.EmotionService/AnalyzeEmotion
$grpcurl -plaintext -d '{"leads":[$lead],"max_factors":3}' $address nurture.v1.ChurnService/PredictChurn
$grpcurl -plaintext -d '{"leads":[$lead]}' $address nurture.v1.JourneyService/ClassifyStage
$grpcurl -plaintext -d '{"inputs":[{"lead":$lead,"top_k":3,"do_not_contact":["CHANNEL_CALL"],"quiet_hours":{"start_hour":21,"end_hour":8}}]}' $address nurture.v1.ChannelTimingService/RecommendTiming
== the Open Inference Protocol over HTTP (curl):
curl -s http://$http_address/v2/models/churn
curl -s -X POST http://$http_address/v2/models/churn/infer -d '{"inputs":[{"name":"features","datatype":"FP32","shape":[1,20],"data":[40,3,21,0.35,0.05,0.4,0.2,0.1,6,2,14,-0.4,1,3,5,1,0,0,0,380]}]}'
== end of examples; Ctrl-C stops the server
EXAMPLES
wait "$server"
