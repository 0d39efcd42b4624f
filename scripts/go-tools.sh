#!/usr/bin/env bash
# Builds the pinned Go tools the tests and benchmarks need (helm, etcd, crane, and the
# Kubernetes binaries kube-apiserver, kubelet, kube-scheduler, kube-controller-manager)
# into a cache directory and reuses them on later runs.
# Usage: scripts/go-tools.sh [tool...]   (default: all). Prints the bin dir.
set -euo pipefail
BIN="${KP_TESTBIN:-$HOME/.cache/kube-prewarm-testbin}"
mkdir -p "$BIN"
HELM_VERSION=v3.22.0
ETCD_VERSION=v3.6.16
CRANE_VERSION=v0.22.1
K8S_VERSION=1.34.2

want=("$@"); [ ${#want[@]} -eq 0 ] && want=(helm etcd crane kubernetes coredns)
K8S_BINS=(kube-apiserver kubelet kube-scheduler kube-controller-manager kube-proxy)
COREDNS_VERSION=v1.14.7

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

build_helm() {
  # `go install` alone leaves helm believing it talks to Kubernetes v1.20 (chartutil's
  # default capabilities) and reporting no version; helm's Makefile sets both with
  # ldflags derived from the client-go version in its go.mod. Do the same here.
  local mod=helm.sh/helm/v3 stamp="$BIN/.helm.version" want="$HELM_VERSION ldflags-v1"
  if [ -x "$BIN/helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "building helm $HELM_VERSION" >&2
  local src; src=$(GOFLAGS=-mod=mod go mod download -json "$mod@$HELM_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  local cg; cg=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$src/go.mod")
  [ -n "$cg" ] || { echo "helm: cannot read client-go's version from $src/go.mod" >&2; return 1; }
  local ld="-s -w -X $mod/internal/version.version=$HELM_VERSION -X $mod/internal/version.metadata="
  ld="$ld -X $mod/internal/version.gitTreeState=clean"
  local p; for p in pkg/lint/rules pkg/chartutil; do
    ld="$ld -X $mod/$p.k8sVersionMajor=1 -X $mod/$p.k8sVersionMinor=$cg"
  done
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$BIN/helm.tmp" ./cmd/helm)
  mv "$BIN/helm.tmp" "$BIN/helm"
  echo "$want" >"$stamp"
}

build_coredns() {
  # The test cluster's DNS (Service names): CoreDNS with only the plugins its Corefile
  # uses, so the build skips the cloud DNS SDKs the full binary carries.
  local stamp="$BIN/.coredns.version" want="$COREDNS_VERSION minimal-v1"
  if [ -x "$BIN/coredns" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "building coredns $COREDNS_VERSION (kubernetes, forward-less plugin set)" >&2
  local dir; dir=$(mktemp -d)
  cat >"$dir/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func init() {
	dnsserver.Directives = []string{"bind", "errors", "log", "health", "ready", "cache", "template", "kubernetes"}
}

func main() { coremain.Run() }
GO
  (cd "$dir" && go mod init kpdns >/dev/null 2>&1 && GOFLAGS=-mod=mod go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null 2>&1 &&
    GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/coredns.tmp" .) || {
    rm -rf "$dir"; echo "coredns build failed" >&2; return 1; }
  mv "$BIN/coredns.tmp" "$BIN/coredns"
  echo "$want" >"$stamp"
  rm -rf "$dir"
}

build_kubernetes() {
  # All four binaries come from one `go build` of one scratch module, so they share the
  # compiled packages and Go builds them in parallel. The stamp includes how they were
  # built, so a change here rebuilds once (quickly: Go's build cache keeps the packages).
  local stamp="$BIN/.kubernetes.version" want="$K8S_VERSION ldflags-v1 ${K8S_BINS[*]}" b ok=1
  for b in "${K8S_BINS[@]}"; do [ -x "$BIN/$b" ] || ok=0; done
  if [ $ok = 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "building ${K8S_BINS[*]} v$K8S_VERSION (about 30 minutes on 2 cores the first time)" >&2
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

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  # Without these the binary reports v0.0.0-master and the apiserver's compatibility
  # version checks see a nonsense version.
  local pkg=k8s.io/component-base/version
  local kminor; kminor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kminor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  local out="$dir/out" pkgs=()
  for b in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  mkdir -p "$out"
  if ! (cd "$dir" && GOFLAGS=-mod=mod go mod tidy -e >"$dir/tidy.log" 2>&1 &&
        GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}"); then
    echo "kubernetes build failed; go mod tidy said:" >&2
    cat "$dir/tidy.log" >&2
    rm -rf "$dir"
    return 1
  fi
  for b in "${K8S_BINS[@]}"; do mv "$out/$b" "$BIN/$b"; done
  echo "$want" >"$stamp"
  rm -rf "$dir"
}

for t in "${want[@]}"; do
  case $t in
    helm) build_helm ;;
    etcd) build_go etcd go.etcd.io/etcd/server/v3@$ETCD_VERSION go.etcd.io/etcd/server/v3 ;;
    crane) build_go crane github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION ;;
    coredns) build_coredns ;;
    kubernetes | kube-apiserver | kubelet | kube-scheduler | kube-controller-manager | kube-proxy) build_kubernetes ;;
    *) echo "unknown tool $t" >&2; exit 2 ;;
  esac
done
echo "$BIN"
