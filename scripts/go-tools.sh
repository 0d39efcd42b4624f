#!/usr/bin/env bash
# Builds the pinned Go tools the tests and benchmarks need (helm, etcd, crane,
# kube-apiserver) into a cache directory and reuses them on later runs.
# Usage: scripts/go-tools.sh [tool...]   (default: all). Prints the bin dir.
set -euo pipefail
BIN="${KP_TESTBIN:-$HOME/.cache/kube-prewarm-testbin}"
mkdir -p "$BIN"
HELM_VERSION=v3.22.0
ETCD_VERSION=v3.6.16
CRANE_VERSION=v0.22.1
K8S_VERSION=1.34.2

want=("$@"); [ ${#want[@]} -eq 0 ] && want=(helm etcd crane kube-apiserver)

build_go() { # name module@version [package]
  local name=$1 mod=$2 pkg=${3:-} stamp="$BIN/.$1.version"
  if [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$mod" ]; then return; fi
  echo "building $name ($mod)" >&2
  if [ -z "$pkg" ]; then
    GOBIN="$BIN" go install "$mod"
  else
    # Modules whose go.mod has replace directives cannot be `go install`ed:
    # build them from a scratch module that requires the released version.
    local dir; dir=$(mktemp -d)
    (cd "$dir" && go mod init kpbuild >/dev/null 2>&1 && go get "$mod" >/dev/null && go build -o "$BIN/$name" "$pkg")
    rm -rf "$dir"
  fi
  echo "$mod" >"$stamp"
}

build_apiserver() {
  # The stamp includes how the binary was built, so a change here rebuilds once
  # (quickly: Go's build cache keeps the compiled packages).
  local stamp="$BIN/.kube-apiserver.version" want="$K8S_VERSION ldflags-v1"
  if [ -x "$BIN/kube-apiserver" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "building kube-apiserver v$K8S_VERSION (about 10 minutes on 2 cores the first time)" >&2
  local dir; dir=$(mktemp -d)
  local minor="0.${K8S_VERSION#1.}"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # ./staging/... in its own go.mod; replace directives of a dependency do not apply,
  # so this scratch module maps each one to the published v0.<minor>.<patch> tag.
  cat >"$dir/go.mod" <<MOD
module kpbuild

go 1.24

require k8s.io/kubernetes v$K8S_VERSION
MOD
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet
    metrics mount-utils pod-security-admission sample-apiserver)
  for s in "${staging[@]}"; do
    echo "replace k8s.io/$s => k8s.io/$s v$minor" >>"$dir/go.mod"
  done
  cat >"$dir/tools.go" <<'GO'
//go:build tools
package kpbuild

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  # Without these the binary reports v0.0.0-master and the apiserver's compatibility
  # version checks see a nonsense version.
  local pkg=k8s.io/component-base/version
  local kminor; kminor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kminor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  if ! (cd "$dir" && GOFLAGS=-mod=mod go mod tidy -e >"$dir/tidy.log" 2>&1 &&
        GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$BIN/kube-apiserver.tmp" \
          k8s.io/kubernetes/cmd/kube-apiserver); then
    echo "kube-apiserver build failed; go mod tidy said:" >&2
    cat "$dir/tidy.log" >&2
    rm -rf "$dir"
    return 1
  fi
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  echo "$want" >"$stamp"
  rm -rf "$dir"
}

for t in "${want[@]}"; do
  case $t in
    helm) build_go helm helm.sh/helm/v3/cmd/helm@$HELM_VERSION ;;
    etcd) build_go etcd go.etcd.io/etcd/server/v3@$ETCD_VERSION go.etcd.io/etcd/server/v3 ;;
    crane) build_go crane github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION ;;
    kube-apiserver) build_apiserver ;;
    *) echo "unknown tool $t" >&2; exit 2 ;;
  esac
done
echo "$BIN"
