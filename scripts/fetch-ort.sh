#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library into .ort/ from the onnxruntime
# wheel on PyPI (the only place the project takes it from). Idempotent: does
# nothing when the library is present with the expected checksum.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="1.31.1"
library="libonnxruntime.so.$version"
# sha256 of onnxruntime/capi/libonnxruntime.so.1.31.1 in the
# onnxruntime-1.31.1 manylinux x86_64 wheels.
expected="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"
target="$root/.ort/$library"

check() {
    [ -f "$target" ] && [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$expected" ]
}

if check; then
    exit 0
fi
case "$(uname -m)" in
    x86_64) ;;
    *) echo "fetch-ort.sh: the pinned checksum is for x86_64; on $(uname -m) set ORT_DYLIB_PATH to your own $library" >&2; exit 1 ;;
esac

echo "fetching ONNX Runtime $version (onnxruntime wheel) into .ort/" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$work" "onnxruntime==$version"
wheel="$(ls "$work"/onnxruntime-"$version"-*.whl)"
python3 - "$wheel" "$work" "onnxruntime/capi/$library" <<'PY'
import sys, zipfile
wheel, out, member = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    archive.extract(member, out)
PY
mkdir -p "$root/.ort"
mv "$work/onnxruntime/capi/$library" "$target.partial"
if [ "$(sha256sum "$target.partial" | cut -d' ' -f1)" != "$expected" ]; then
    rm -f "$target.partial"
    echo "fetch-ort.sh: checksum mismatch for $library; refusing to install it" >&2
    exit 1
fi
mv "$target.partial" "$target"
echo "ONNX Runtime ready: .ort/$library" >&2
