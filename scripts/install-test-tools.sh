#!/usr/bin/env bash
# Installs the test-only tools into .tools/ (idempotent):
#   - moto_server, the S3-compatible server the S3 backend is tested against
#     (it honours If-None-Match/If-Match, which the release log relies on).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
moto_version="5.2.5"

if [ -x "$venv/bin/moto_server" ] && "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
    exit 0
fi
echo "installing moto_server $moto_version into .tools/venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version"
