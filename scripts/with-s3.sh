#!/usr/bin/env bash
# Runs a command with a real S3-compatible server (moto_server) listening on
# 127.0.0.1, then stops the server, whatever the command's outcome.
#
#   scripts/with-s3.sh cargo test
#
# Exports NURTURE_TEST_S3_ENDPOINT (http://127.0.0.1:PORT) and
# NURTURE_TEST_S3_BUCKET (created empty) for the command. Installs the
# server first if needed (scripts/install-test-tools.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-test-tools.sh" >&2
python="$root/.tools/venv/bin/python"
moto="$root/.tools/venv/bin/moto_server"

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
log="$(mktemp -t nurture-moto.XXXXXX.log)"
"$moto" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
cleanup() {
    kill "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT INT TERM

endpoint="http://127.0.0.1:$port"
bucket="nurture-test"
# Wait (at most 30 s) until the server answers, then create the bucket with
# an unsigned PUT, which moto accepts.
"$python" - "$endpoint" "$bucket" <<'PY'
import sys, time, urllib.request, urllib.error
endpoint, bucket = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 30
while True:
    try:
        urllib.request.urlopen(endpoint + "/", timeout=2).read()
        break
    except urllib.error.HTTPError:
        break
    except Exception:
        if time.monotonic() > deadline:
            sys.exit("moto_server did not start within 30 s")
        time.sleep(0.2)
request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
urllib.request.urlopen(request, timeout=10).read()
PY
echo "S3-compatible test server on $endpoint (bucket $bucket)" >&2

export NURTURE_TEST_S3_ENDPOINT="$endpoint"
export NURTURE_TEST_S3_BUCKET="$bucket"
status=0
"$@" || status=$?
if [ "$status" -ne 0 ] && [ -s "$log" ]; then
    echo "--- last lines of the S3 server log ---" >&2
    tail -n 20 "$log" >&2
fi
exit "$status"
