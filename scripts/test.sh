#!/usr/bin/env bash
# Runs every test file (test/**/*.test.ts) with node:test through tsx, one file at a time:
# integration tests start real registries, Redis, containerd and kube-apiservers, and two
# cores are not enough to run several of those at once reliably.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(find test -name '*.test.ts' -not -path '*/node_modules/*' | sort)
exec node --import tsx --test --test-concurrency=1 "$@" "${files[@]}"
