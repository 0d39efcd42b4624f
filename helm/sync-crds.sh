#!/usr/bin/env bash
# Copies the repository's CRDs (crds/*.yaml, the source of truth) into the chart's crds/
# directory. Helm installs crds/ before the templates and never templates them.
# test/helm/chart.test.ts fails when the two differ.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rm -f "$root/helm/kube-prewarm/crds/"*.yaml
cp "$root/crds/"*.yaml "$root/helm/kube-prewarm/crds/"
