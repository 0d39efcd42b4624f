#!/usr/bin/env bash
# Runs every test file (test/**/*.test.ts) with node:test through tsx, one file at a time:
# integration tests start real registries, Redis, containerd, kube-apiservers and whole
# clusters, and two cores are not enough to run several of those at once reliably.
#
# Files that need the Kubernetes binaries (they start a kube-apiserver or a cluster) run
# last: scripts/deps.sh may still be building those in the background (a fresh machine:
# ~25 min), and the other files run meanwhile. Extra arguments go to `node --test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${KP_TESTBIN:-$HOME/.cache/kube-prewarm-testbin}
t0=$(date +%s)
mapfile -t files < <(find test -name '*.test.ts' -not -path '*/node_modules/*' | sort)
kube_re="startKube|startCluster|startE2e|from '\\./env\\.js'"
needs=() rest=()
for f in "${files[@]}"; do
  if grep -qE "$kube_re" "$f"; then needs+=("$f"); else rest+=("$f"); fi
done
failures=$(mktemp -d)
trap 'rm -rf "$failures"' EXIT
runs=0
# TAP on stdout as before; the failures with their errors in a file of their own, printed last.
run() {
  runs=$((runs + 1))
  node --import tsx --test --test-concurrency=1 \
    --test-reporter=tap --test-reporter-destination=stdout \
    --test-reporter=./scripts/failures-reporter.mjs --test-reporter-destination="$failures/$runs.txt" "$@"
}
summary() {
  if [ -n "$(cat "$failures"/*.txt 2>/dev/null)" ]; then
    echo "test.sh: failures (errors below; full output above):" >&2
    cat "$failures"/*.txt >&2
  fi
}

status=0
echo "test.sh: ${#rest[@]} files without Kubernetes binaries" >&2
run "$@" "${rest[@]}" || status=$?

if [ -f "$bin_dir/.k8s-build.log" ] && [ ! -f "$bin_dir/.k8s-build.rc" ]; then
  echo "test.sh: waiting for the Kubernetes build (log: $bin_dir/.k8s-build.log)" >&2
  while [ ! -f "$bin_dir/.k8s-build.rc" ]; do sleep 5; done
fi
if [ -f "$bin_dir/.k8s-build.rc" ] && [ "$(cat "$bin_dir/.k8s-build.rc")" != 0 ]; then
  echo "test.sh: the Kubernetes build failed:" >&2
  tail -n 60 "$bin_dir/.k8s-build.log" >&2
  summary
  exit 1
fi
echo "test.sh: ${#needs[@]} files with Kubernetes binaries (after $(( $(date +%s) - t0 ))s)" >&2
run "$@" "${needs[@]}" || status=$?
summary
echo "test.sh: done after $(( $(date +%s) - t0 ))s" >&2
exit $status
